"""Training speed in one process: the plain nanoGPT-style loop, then dense and MST through mstlib.train.

Same model, same batch, same number of steps; each mstlib run is a real (short) run of the preset with
``train.max_iters = --steps``, so MST goes through all its phases, topology updates (at the preset's
interval) and hybrid sparse attention window, compressed into those steps. Runs go to a temporary run store
(``--keep DIR`` keeps them) and never touch ``results/``.

Reported per variant: the median tokens/s over log windows after warm-up (compilation excluded; the
headline number), the mean tokens/s over all training time (compilation, recompilation at the attention
switch and topology updates included; evaluation and checkpoints excluded), and both as ratios to dense.
Issue 5 asks for MST >= 0.97 x dense and dense >= the plain loop (median).

Examples::

    python benchmarks/train_speed.py --preset mini --steps 300 --json results/bench/train_speed_mini.json
    python benchmarks/train_speed.py --preset smoke --steps 20 --device cpu --set model.vocab_size=512
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere in the checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

from nanogpt_loop import plain_loop, synthetic_tokens  # noqa: E402

from mstlib import data as corpus  # noqa: E402
from mstlib import provenance  # noqa: E402
from mstlib.config import parse_override  # noqa: E402
from mstlib.presets import make  # noqa: E402
from mstlib.results import RunStore, atomic_write_json  # noqa: E402
from mstlib.train import resolve_device, train  # noqa: E402


def make_synthetic_corpus(root: Path, vocab_size: int, n_train: int = 4_000_000, n_val: int = 400_000) -> Path:
    """A corpus in mstlib's on-disk format with random tokens (speed does not depend on the text)."""
    import hashlib

    d = root / "synthetic"
    d.mkdir(parents=True, exist_ok=True)
    splits = {}
    for i, (split, n) in enumerate((("train", n_train), ("val", n_val))):
        f = d / f"{split}.bin"
        synthetic_tokens(n, vocab_size, seed=i).tofile(f)
        splits[split] = {"file": f.name, "tokens": n, "sha256": hashlib.sha256(f.read_bytes()).hexdigest()}
    (d / "meta.json").write_text(json.dumps({"format": corpus.FORMAT, "splits": splits}))
    return root


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per variant: the median over repeats of the run's median tokens/s, its ratio to mstlib dense's, and
    the paired ratios (variant / dense of the same repeat), whose spread is the measurement noise."""
    import statistics

    variants = list(dict.fromkeys(r["variant"] for r in rows))
    dense = {r["repeat"]: r["tokens_per_s_median"] for r in rows if r["variant"] == "mstlib dense"}
    out = []
    for v in variants:
        mine = [r for r in rows if r["variant"] == v]
        med = statistics.median(r["tokens_per_s_median"] for r in mine)
        mean = statistics.median(r["tokens_per_s_mean"] for r in mine)
        paired = [r["tokens_per_s_median"] / dense[r["repeat"]] for r in mine if r["repeat"] in dense]
        out.append({
            "variant": v, "repeats": len(mine), "tokens_per_s_median": med, "tokens_per_s_mean": mean,
            "ratio_median_to_dense": med / statistics.median(dense.values()) if dense else None,
            "paired_ratios_to_dense": paired,
            "paired_ratio_median": statistics.median(paired) if paired else None,
            "paired_ratio_min": min(paired) if paired else None, "paired_ratio_max": max(paired) if paired else None,
        })
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="mini")
    ap.add_argument("--steps", type=int, default=300, help="optimizer steps per variant (default 300)")
    ap.add_argument("--methods", nargs="+", default=["dense", "mst"],
                    help="mstlib methods (default: dense mst); METHOD+key=value+... adds a variant with overrides, "
                         "e.g. mst+attention.pattern=dense (MST without hybrid sparse attention)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="run every variant this many times, interleaved (default 1); the summary pairs each "
                         "variant with dense of the same repeat")
    ap.add_argument("--no-plain", action="store_true", help="skip the plain nanoGPT loop")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    ap.add_argument("--data", choices=["auto", "corpus", "synthetic"], default="auto",
                    help="the preset's prepared corpus, or random tokens (auto: the corpus when prepared and the "
                         "vocabulary is GPT-2's)")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--keep", default=None, help="keep the runs in this run store (default: a temporary one)")
    args = ap.parse_args(argv)

    dev = resolve_device(args.device)
    overrides = dict(parse_override(s) for s in args.set)
    overrides.update({"train.max_iters": args.steps, "train.eval_interval": 0, "train.eval_iters": 2,
                      "train.checkpoint_interval": 0})
    probe = make(args.preset, "dense", overrides=overrides)

    tmp = tempfile.TemporaryDirectory(prefix="mstlib-speed-")
    use_corpus = args.data == "corpus" or (
        args.data == "auto" and probe.data.corpus in corpus.prepared_names(probe.data.data_dir)
        and probe.model.vocab_size >= 50257)  # a shrunken vocabulary cannot read GPT-2 tokens
    if not use_corpus:
        data_root = make_synthetic_corpus(Path(tmp.name) / "data", probe.model.vocab_size)
        overrides.update({"data.data_dir": str(data_root), "data.corpus": "synthetic"})
    runs = {}
    for spec in args.methods:
        method, *extra = spec.split("+")
        runs[spec] = make(args.preset, method, overrides={**overrides, **dict(parse_override(e) for e in extra)})

    rows: list[dict[str, Any]] = []

    def plain() -> dict[str, Any]:
        run = runs.get("dense", probe)
        tc = run.train
        tokens = corpus.open_tokens(run.data.data_dir, run.data.corpus, "train")
        print(f"plain loop: {args.steps} steps of {run.tokens_per_step():,} tokens on {dev} ...", flush=True)
        res = plain_loop(run.model, tokens, batch_size=tc.batch_size, grad_accum=tc.grad_accum, steps=args.steps,
                         device=str(dev), lr=tc.lr, weight_decay=tc.weight_decay, betas=(tc.beta1, tc.beta2),
                         grad_clip=tc.grad_clip, warmup_iters=tc.warmup_iters, dtype=tc.dtype,
                         compile=tc.compile, log_interval=tc.log_interval)
        return {k: res[k] for k in ("variant", "tokens_per_s_median", "tokens_per_s_mean", "final_loss",
                                    "peak_memory_bytes", "compiled", "autocast_dtype")}

    def mstlib_run(method: str, run, rep: int) -> dict[str, Any]:
        print(f"mstlib.train {method}: {args.steps} steps ...", flush=True)
        t0 = time.perf_counter()
        # a fresh store per repeat: the run store would otherwise hand back the stored result
        res = train(run, RunStore(Path(store_root) / f"repeat{rep}"), device=str(dev), resume=False, progress=True)
        m = res.metrics
        return {"variant": f"mstlib {method}", "run_id": run.run_id(),
                "tokens_per_s_median": m["tokens_per_s_median"], "tokens_per_s_mean": m["tokens_per_s_mean"],
                "final_loss": m["final_train_loss"], "peak_memory_bytes": m["peak_memory_bytes"],
                "compiled": m["compiled"], "autocast_dtype": m["autocast_dtype"],
                "flops_ratio_to_dense": m.get("flops_ratio_to_dense"), "wall_s": time.perf_counter() - t0}

    store_root = args.keep or Path(tmp.name) / "results"
    for rep in range(args.repeats):
        # interleaved (plain, dense, mst, ... then again): a drift of the machine hits every variant alike
        order = ([] if args.no_plain else ["plain"]) + list(runs)
        if rep % 2 == 1:
            order.reverse()  # and alternating the order cancels a first/last position effect
        for name in order:
            row = plain() if name == "plain" else mstlib_run(name, runs[name], rep)
            row["repeat"] = rep
            rows.append(row)
            torch._dynamo.reset()  # each variant compiles from scratch, as in its own process

    for r in rows:  # each row against dense of its own repeat
        dense = next((d for d in rows if d["variant"] == "mstlib dense" and d["repeat"] == r["repeat"]), None)
        for key in ("median", "mean"):
            r[f"ratio_{key}_to_dense"] = (r[f"tokens_per_s_{key}"] / dense[f"tokens_per_s_{key}"]) if dense else None
    summary = summarise(rows)
    print(f"\n{'variant':<36} {'median tok/s':>14} {'vs dense':>9} {'paired ratios (per repeat)':>30}")
    for r in summary:
        ratios = ", ".join(f"{x:.3f}" for x in r["paired_ratios_to_dense"])
        print(f"{r['variant']:<36} {r['tokens_per_s_median']:>14,.0f} {r['ratio_median_to_dense']:>9.3f}   {ratios}")
    out = {
        "preset": args.preset, "steps": args.steps, "device": str(dev), "device_name": provenance.device_name(dev),
        "tokens_per_step": probe.tokens_per_step(), "data": "corpus" if use_corpus else "synthetic",
        "overrides": {k: v for k, v in overrides.items() if not k.startswith("data.")},
        "packages": provenance.package_versions(), "git": provenance.git_state(), "utc": provenance.utc_now(),
        "repeats": args.repeats, "rows": rows, "summary": summary,
    }
    if args.json:
        atomic_write_json(args.json, out)
        print(f"wrote {args.json}")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
