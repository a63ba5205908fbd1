"""The catalogue of corpora: the named corpora and their parts (:data:`CORPORA`, :data:`PARTS`), the
split and order rules, where sources and prepared corpora live, the shared sources' ``SOURCES.md`` and
manifests, and a small example source for tests. Tokens are GPT-2 ids stored as ``uint16``."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from .tokenizer import (
    REPO_ROOT,
    shared_dir,
)

FORMAT = "mstlib-corpus/1"


PACK_FORMAT = "mstlib-corpus-pack/1"


DTYPE = np.uint16


TOKEN_BYTES = 2


SPLITS = ("train", "val")


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


def default_source_dir() -> Path:
    """Where the offline corpus lives: ``<shared>/data/corpus`` (see :func:`mstlib.data.tokenizer.shared_dir`)."""
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


def corpus_dir(data_dir: str | os.PathLike[str] | None, name: str) -> Path:
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
    path = corpus_dir(data_dir, name) / "meta.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path} is unreadable ({e}); prepare again: {remake_command(path.parent)}") from e
    if meta.get("format") != FORMAT:
        raise DataError(f"{path} has format {meta.get('format')!r}, expected {FORMAT!r}; prepare again: "
                        f"{remake_command(path.parent)}")
    return meta


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
