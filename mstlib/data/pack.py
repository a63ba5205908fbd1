"""Pack a prepared corpus for a machine with no shared folder (xz pieces in transfer folders under a size
limit, with a manifest of sha256s) and unpack and verify it on arrival."""

from __future__ import annotations

import concurrent.futures as cf
import datetime as _dt
import hashlib
import json
import lzma
import os
import shutil
from pathlib import Path
from typing import Any

from ..errors import DataError
from .catalogue import PACK_FORMAT, corpus_dir, resolve_data_dir
from .files import install, reports_disk_errors, write_json
from .tokenizer import (
    BPE_FILES,
    cache_dir,
    get_encoding,
    sha256_file,
)
from .tokens import check_split_file, verify_corpus


def _compress_block(args: tuple[str, int, int, int]) -> bytes:
    path, start, length, preset = args
    with open(path, "rb") as f:
        f.seek(start)
        return lzma.compress(f.read(length), preset=preset)


@reports_disk_errors(lambda data_dir, name, out_dir, **_: f"Packing corpus {name}",
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
    folder = corpus_dir(data_dir, name)
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
        write_json(tmp / f"t{t:02d}" / "pack.json", manifest)
    os.rename(tmp, root)
    return manifest


@reports_disk_errors(lambda src, data_dir, **_: f"Unpacking {src}", lambda src, data_dir, **_: resolve_data_dir(data_dir))
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
        install(tmp, final)
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
        check_split_file(tmp, split, info, checksum=True)


def _unpack_tokenizer(src: Path, manifest: dict[str, Any]) -> None:
    """Put the packed BPE files into the tiktoken cache (checked against tiktoken's sha256)."""
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
