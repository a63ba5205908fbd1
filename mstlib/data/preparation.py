"""Prepare a shard corpus from the shared sources: select documents, tokenize shards in parallel, write
``train.bin`` / ``val.bin`` with ``meta.json`` and ``documents.tsv``, atomically and idempotently (a
folder with the same recipe that verifies is kept)."""

from __future__ import annotations

import concurrent.futures as cf
import datetime as _dt
import hashlib
import lzma
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..provenance import MSTLIB_VERSION, git_state
from .catalogue import (
    CORPORA,
    DTYPE,
    FORMAT,
    ORDER_RULE_SHARDS,
    PARTS,
    SPLIT_RULE_SHARDS,
    SPLITS,
    TOKEN_BYTES,
    CorpusSpec,
    Doc,
    PrepareOptions,
    ShardInfo,
    default_source_dir,
    read_manifest,
    read_sources_table,
    resolve_data_dir,
)
from .files import clean_stale, install, reports_disk_errors, write_json
from .openwebtext import build_openwebtext
from .tokenizer import (
    EOT,
    get_encoding,
    self_check,
    sha256_file,
)
from .tokens import verify_corpus


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
    """The commit of the code that made the corpus, and whether tracked files differed from it (the project's
    one definition, :func:`mstlib.provenance.git_state`; it also reads MSTLIB_GIT_COMMIT without .git)."""
    return git_state()


def _provenance(wall_s: float, workers: int) -> dict[str, Any]:
    return {
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "prepare_wall_s": round(wall_s, 2),
        "workers": workers,
        "cpu_count": os.cpu_count(),
        "mstlib_version": MSTLIB_VERSION,
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


def verify_sources(source_dir: Path, sources: dict[str, str], progress: bool) -> None:
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


@reports_disk_errors(lambda opts, **_: f"Preparing corpus {opts.out_name}",
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
    clean_stale(data_dir, opts.out_name)
    tmp = data_dir / f".tmp-{opts.out_name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        if spec.kind == "shards":
            assert source_dir is not None
            verify_sources(source_dir, sources, opts.progress)
            body = _build_shards(tmp, opts, spec, source_dir, plan, shards, workers)
        else:
            body = build_openwebtext(tmp, opts, workers, dataset)
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
        write_json(tmp / "meta.json", meta)
        install(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return meta
