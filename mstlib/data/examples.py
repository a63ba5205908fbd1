"""Small synthetic stand-ins for the shared data, in the real layout, for tests and for machines without
the shared folder: a corpus source (``SOURCES.md``, manifests, shards) and the evaluation sets."""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import random
from pathlib import Path

from .evalsets import FILES, GLUE_LABELS, TEXT_SETS, lines_of, sha256_file
from .tokenizer import get_encoding


_CORPUS_WORDS = ("the river and a town of old stone stood near high hills where people kept sheep grew wheat and "
          "wrote long letters about weather trade kings wars songs ships roads bridges schools money").split()


def make_example_source(folder: str | os.PathLike[str], *, train_shards: int = 2, docs_per_shard: int = 5,
                        val_docs: int = 2, seed: int = 0) -> Path:
    """Write a tiny synthetic shard corpus in the layout of ``<shared>/data/corpus`` (for tests and demos).

    Two sources named like the real ones (``wikipedia-en``, ``gutenberg``), each with ``train_shards`` xz
    shards of ``docs_per_shard`` random-word documents, a ``val.txt.xz``, a ``manifest.tsv`` with byte
    offsets and GPT-2 token counts, and a ``SOURCES.md`` whose checksum table has the real one's columns.
    Returns the folder. The text is meaningless; it only exercises the pipeline.
    """
    rng = random.Random(seed)
    root = Path(folder)
    enc = get_encoding()
    table = ["| file | docs | uncompressed bytes | chars | GPT-2 tokens | xz bytes | sha256 (.xz) | sha256 (uncompressed) |",
             "|---|---|---|---|---|---|---|---|"]
    manifests = []
    for pi, part in enumerate(("wikipedia-en", "gutenberg")):
        (root / part).mkdir(parents=True, exist_ok=True)
        rows = ["split\tfile\tdoc_in_file\tbyte_offset\tbyte_len\tchars\tgpt2_tokens\ttitle"]
        files = [(f"shard-{i:03d}.txt", "train", docs_per_shard) for i in range(train_shards)] + [("val.txt", "val", val_docs)]
        for fname, split, n in files:
            docs = []
            for _ in range(n):
                paras = [" ".join(rng.choice(_CORPUS_WORDS) for _ in range(rng.randint(5, 40 * (pi + 1)))).capitalize() + "."
                         for _ in range(rng.randint(1, 4))]
                docs.append("\n\n".join(paras))
            raw = "\n\n".join(docs).encode("utf-8") + b"\n"
            off = 0
            for k, d in enumerate(docs):
                b = d.encode("utf-8")
                rows.append(f"{split}\t{fname}\t{k}\t{off}\t{len(b)}\t{len(d)}\t{len(enc.encode_ordinary(d))}\t{part} {fname} {k}")
                off += len(b) + 2
            xz = lzma.compress(raw, preset=1)
            (root / part / (fname + ".xz")).write_bytes(xz)
            ntok = sum(len(enc.encode_ordinary(d)) for d in docs)
            table.append(f"| {part}/{fname}.xz | {n:,} | {len(raw):,} | {len(raw):,} | {ntok:,} | {len(xz):,} | "
                         f"`{hashlib.sha256(xz).hexdigest()}` | `{hashlib.sha256(raw).hexdigest()}` |")
        man = ("\n".join(rows) + "\n").encode("utf-8")
        (root / part / "manifest.tsv").write_bytes(man)
        manifests.append(f"- `{part}/manifest.tsv` ({len(man):,} B, sha256 `{hashlib.sha256(man).hexdigest()}`)")
    (root / "SOURCES.md").write_text("# Example corpus (synthetic)\n\n## Shards and checksums\n\n" + "\n".join(table) +
                                     "\n\nThe other files are:\n\n" + "\n".join(manifests) + "\n", encoding="utf-8")
    return root


# ----------------------------------------------------------------------------------- example sets
_EVAL_WORDS = ("the river and a town of old stone stood near high hills where people kept sheep grew wheat and "
          "wrote long letters about weather trade kings wars songs ships roads bridges schools money").split()


def make_example_evalsets(folder: str | os.PathLike[str], *, lines: int = 40, seed: int = 0) -> Path:
    """Write every file of :data:`FILES` as tiny synthetic text in the real layout, with a ``SOURCES.md``
    whose table lists their sha256 and word counts, into ``folder`` (for tests and a machine without the
    real sets: the loaders, checksums and scoring run; the numbers mean nothing). ``lines`` lines, passages
    or pairs per file. Returns the folder."""
    rng = random.Random(seed)
    root = Path(folder)

    def sentence(lo: int = 4, hi: int = 14) -> str:
        return " ".join(rng.choice(_EVAL_WORDS) for _ in range(rng.randint(lo, hi)))

    texts: dict[str, str] = {}
    for name in TEXT_SETS:
        for rel in FILES[name].values():
            body = [" = " + sentence(1, 3) + " = ", " "] + [" " + sentence() + " . " for _ in range(lines - 2)]
            texts[rel] = "\n".join(body) + "\n"
    texts[FILES["lambada"]["test"]] = "".join(json.dumps({"text": sentence(12, 40)}) + "\n" for _ in range(lines))
    for task, (pos, neg) in GLUE_LABELS.items():
        for split in FILES[task]:
            for key in (task, "mrpc_msi") if task == "mrpc" else (task,):
                rows = [(pos if k % 2 else neg, sentence(), sentence()) for k in range(lines)]
                if task == "rte":
                    out = ["index\tsentence1\tsentence2\tlabel"] + [f"{k}\t{a}\t{b}\t{lab}" for k, (lab, a, b) in enumerate(rows)]
                else:
                    out = ["\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String"] + [
                        f"{int(lab == pos)}\t{2 * k}\t{2 * k + 1}\t{a}\t{b}" for k, (lab, a, b) in enumerate(rows)]
                texts[FILES[key][split]] = "\n".join(out) + "\n"
    table = ["| dataset | split | file | tokens+eos | sha256 |", "|---|---|---|---|---|"]
    for name, splits in FILES.items():
        for split, rel in splits.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(texts[rel], encoding="utf-8")
            words = (f"{sum(len(ln.split()) + 1 for ln in lines_of(texts[rel])):,}" if name in TEXT_SETS else "n/a")
            table.append(f"| {name} (synthetic) | {split} | `{rel}` | {words} | `{sha256_file(path)}` |")
    (root / "SOURCES.md").write_text("# Example evaluation sets (synthetic, made by mstlib.data.examples."
                                     "make_example_evalsets)\n\n## Summary\n\n" + "\n".join(table) + "\n",
                                     encoding="utf-8")
    return root
