"""Token files of a prepared corpus: open a split as a memory map (:func:`open_tokens`), verify it against
its ``meta.json`` (:func:`verify_corpus`), and describe it (:func:`describe_text`). Units: tokens."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from .catalogue import DTYPE, TOKEN_BYTES, corpus_dir, read_meta, remake_command
from .tokenizer import (
    N_VOCAB,
    sha256_file,
)

# (resolved path, size, mtime_ns) -> (sha256, largest token id) of a token file read in this process: a
# run opens train and val once each, evaluation and benchmarks open them again; each file is read once
_SCANNED: dict[tuple[str, int, int], tuple[str, int]] = {}


def _scan_tokens(path: Path, fresh: bool = False) -> tuple[str, int]:
    """sha256 and largest token id of a token file, in one read. Measured on this project's 2-core machine:
    0.37 s for the full offline train.bin (292 MB, page-cached; the largest id alone 0.08 s), against minutes
    to hours of the training that opens it, so every open checks both."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if not fresh and key in _SCANNED:
        return _SCANNED[key]
    h, top = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):  # 4 MiB, even: whole uint16 tokens (the size check ran before)
            h.update(chunk)
            top = max(top, int(np.frombuffer(chunk, dtype=DTYPE).max()))
    _SCANNED[key] = (h.hexdigest(), top)
    return _SCANNED[key]


def check_split_file(folder: Path, split: str, info: dict[str, Any], checksum: bool,
                      vocab_size: int | None = None, fresh: bool = False) -> None:
    path = folder / info["file"]
    redo = remake_command(folder)
    if not path.is_file():
        raise DataError(f"{path} is missing; prepare the corpus again: {redo}")
    size = path.stat().st_size
    expected = int(info["tokens"]) * TOKEN_BYTES
    if size != expected:
        raise DataError(
            f"{path} is truncated or corrupt: {size} bytes, but meta.json says {info['tokens']} tokens = "
            f"{expected} bytes of uint16. Prepare it again: {redo} (or unpack it again)"
        )
    if not checksum:
        return
    got, top = _scan_tokens(path, fresh)
    if got != info["sha256"]:
        raise DataError(
            f"Checksum mismatch for {path}: sha256 {got}, meta.json says {info['sha256']}. The file is "
            f"corrupt; prepare it again: {redo} (or unpack it again)"
        )
    limit = N_VOCAB if vocab_size is None else min(N_VOCAB, vocab_size)
    if size and top >= limit:
        raise DataError(
            f"{path} holds token id {top}, outside the vocabulary (ids 0..{limit - 1}: GPT-2's BPE has {N_VOCAB}"
            + (f", the model's vocab_size is {vocab_size}" if vocab_size is not None else "") + "). It was not "
            f"written by mstlib's GPT-2 tokenization; prepare it again: {redo}"
        )


def open_tokens(
    data_dir: str | os.PathLike[str] | None, name: str, split: str, *, verify: bool = False,
    vocab_size: int | None = None,
) -> np.memmap:
    """The tokens of one split of a prepared corpus, as a read-only ``np.memmap`` of ``uint16`` (shape ``[tokens]``).

    Checks that the file exists, has exactly the size ``meta.json`` records (2 bytes per token) and its
    sha256, and that every id is below GPT-2's 50,257 (and below ``vocab_size``, the model's, when given):
    about 0.4 s per 300 MB, once per file and process (``verify=True`` reads it again). Raises DataError,
    saying how to fix it, for a missing folder, an unknown name, an unknown split, a truncated file, a
    checksum mismatch or an id outside the vocabulary.
    """
    meta = read_meta(data_dir, name)
    folder = corpus_dir(data_dir, name)
    if split not in meta["splits"]:
        raise DataError(f"Corpus '{name}' has no split '{split}'; it has {', '.join(meta['splits'])}")
    info = meta["splits"][split]
    check_split_file(folder, split, info, checksum=True, vocab_size=vocab_size, fresh=verify)
    return np.memmap(folder / info["file"], dtype=DTYPE, mode="r")


def verify_corpus(data_dir: str | os.PathLike[str] | None, name: str, *, checksum: bool = True) -> dict[str, Any]:
    """Check every file of a prepared corpus against its ``meta.json`` (sizes, sha256); returns the meta."""
    meta = read_meta(data_dir, name)
    folder = corpus_dir(data_dir, name)
    for split, info in meta["splits"].items():
        check_split_file(folder, split, info, checksum, fresh=True)
    for fname, digest in meta.get("files", {}).items():
        path = folder / fname
        if not path.is_file() or (checksum and sha256_file(path) != digest):
            raise DataError(f"{path} is missing or corrupt; prepare again: {remake_command(folder)}")
    return meta


def summary_rows(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (split, source) with documents and tokens, plus a total row per split (for tables)."""
    rows = []
    for split, info in meta["splits"].items():
        for src, c in info["sources"].items():
            rows.append({"split": split, "source": src, "documents": c["documents"], "tokens": c["tokens"],
                         "truncated_documents": c.get("truncated_documents", 0)})
        rows.append({"split": split, "source": "total", "documents": info["documents"], "tokens": info["tokens"],
                     "truncated_documents": sum(c.get("truncated_documents", 0) for c in info["sources"].values())})
    return rows


def describe_text(meta: dict[str, Any]) -> str:
    """A plain-text report of a prepared corpus (what ``data describe`` prints)."""
    lines = [f"corpus {meta['name']} ({meta['corpus']}): {meta['description']}",
             f"{'split':6} {'source':14} {'documents':>10} {'tokens':>14}"]
    for r in summary_rows(meta):
        lines.append(f"{r['split']:6} {r['source']:14} {r['documents']:>10,} {r['tokens']:>14,}")
    for split, info in meta["splits"].items():
        lines.append(f"{info['file']}: {info['bytes']:,} bytes, sha256 {info['sha256']}")
    p = meta["provenance"]
    lines += [f"tokenizer: {meta['tokenizer']['name']} (tiktoken {meta['tokenizer']['tiktoken_version']}), "
              f"check {meta['tokenizer']['checked']}",
              f"split rule: {meta['split_rule']}", f"order rule: {meta['order_rule']}",
              f"made {p['created_utc']} in {p['prepare_wall_s']} s with {p['workers']} workers on {p['cpu_count']} "
              f"CPUs; mstlib {p['mstlib_version']} commit {p['git']['commit']} (dirty: {p['git']['dirty']})"]
    return "\n".join(lines)


def read_documents(data_dir: str | os.PathLike[str] | None, name: str) -> "Any":
    """``documents.tsv`` of a prepared shard corpus as a pandas DataFrame (one row per document)."""
    import pandas as pd

    path = corpus_dir(data_dir, name) / "documents.tsv"
    if not path.is_file():
        raise DataError(f"{path} not found: only shard corpora have a document list")
    return pd.read_csv(path, sep="\t", quoting=3, keep_default_na=False)
