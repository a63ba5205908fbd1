"""OpenWebText, the paper's corpus, prepared as nanoGPT does (needs the internet and ``datasets``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from .catalogue import CORPORA, DTYPE, SPLIT_RULE_OWT, TOKEN_BYTES, PrepareOptions
from .tokenizer import (
    EOT,
    get_encoding,
    sha256_file,
)


def _owt_process(example: dict[str, Any]) -> dict[str, Any]:
    """nanoGPT's ``process``: encode_ordinary ignores special tokens, then end-of-text is appended."""
    ids = get_encoding().encode_ordinary(example["text"])
    ids.append(EOT)
    return {"ids": ids, "len": len(ids)}


def build_openwebtext(tmp: Path, opts: PrepareOptions, workers: int, dataset: Any = None) -> dict[str, Any]:
    """OpenWebText as nanoGPT's ``data/openwebtext/prepare.py`` makes it (same split, same token stream).

    ``dataset`` is the loaded ``DatasetDict`` (tests inject a small fake); by default it is
    ``datasets.load_dataset(opts.hub_id, num_proc=workers)``, which needs internet (about 54 GB of cache).
    """
    from tqdm import tqdm

    if dataset is None:
        try:
            from datasets import load_dataset  # lazy: only users with internet need it
        except ImportError as e:
            raise DataError("The openwebtext corpus needs the `datasets` package and internet: pip install datasets") from e
        try:
            dataset = load_dataset(opts.hub_id, num_proc=workers)
        except Exception as e:  # offline: ConnectionError, HFValidationError, ... all mean the same to the user
            raise DataError(
                f"Cannot load '{opts.hub_id}' from the Hugging Face hub ({type(e).__name__}: {e}). It needs internet; "
                "offline, use --corpus offline (the default). If the error says 'Dataset scripts are no longer "
                "supported', the hub copy still uses a loading script that datasets>=4 refuses (nanoGPT issue "
                "#633): install datasets<4, or pass --hub-id of a Parquet copy of OpenWebText."
            ) from e
    train = dataset["train"]
    if opts.max_docs is not None:
        train = train.select(range(min(opts.max_docs, len(train))))
    split_dataset = train.train_test_split(test_size=0.0005, seed=2357, shuffle=True)
    split_dataset["val"] = split_dataset.pop("test")
    tokenized = split_dataset.map(_owt_process, remove_columns=["text"], desc="tokenizing the splits", num_proc=workers)
    splits: dict[str, Any] = {}
    for split, dset in tokenized.items():
        arr_len = int(np.sum(dset["len"], dtype=np.uint64))
        path = tmp / f"{split}.bin"
        arr = np.memmap(path, dtype=DTYPE, mode="w+", shape=(arr_len,)) if arr_len else None
        total_batches = max(1, min(1024, len(dset)))
        idx = 0
        for batch_idx in tqdm(range(total_batches), desc=f"writing {path.name}", disable=not opts.progress):
            batch = dset.shard(num_shards=total_batches, index=batch_idx, contiguous=True).with_format("numpy")
            arr_batch = np.concatenate(list(batch["ids"])) if len(batch) else np.zeros(0, DTYPE)
            arr[idx: idx + len(arr_batch)] = arr_batch
            idx += len(arr_batch)
        if arr is None:
            path.write_bytes(b"")
        else:
            arr.flush()
            del arr
        splits[split] = {
            "file": path.name, "tokens": arr_len, "bytes": arr_len * TOKEN_BYTES, "documents": len(dset),
            "sha256": sha256_file(path),
            "sources": {"openwebtext": {"documents": len(dset), "tokens": arr_len, "truncated_documents": 0}},
        }
    return {
        "splits": splits,
        "files": {},
        "split_rule": SPLIT_RULE_OWT,
        "order_rule": "dataset order after the shuffled split (nanoGPT's); --max-docs N keeps the first N documents before splitting",
        "sources": {"openwebtext": {"folder": f"huggingface hub: {opts.hub_id}", "description": CORPORA["openwebtext"].description,
                                    "license": "see the dataset card (web text, CC0 metadata)",
                                    "why": "the paper's own pretraining corpus"}},
    }
