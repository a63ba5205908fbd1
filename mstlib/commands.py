"""The command lines that run things: ``python -m mstlib train`` (one run, optionally evaluated) and
``python -m mstlib sweep`` (a list of runs over every visible GPU, packed for the trip back). They sit on top
of the house: they combine training (:mod:`mstlib.train`), the sweep's queue (:mod:`mstlib.sweep`),
evaluation (:mod:`mstlib.pipeline`) and the experiments' run lists (:mod:`mstlib.experiments`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from . import sweep
from . import train as trainer
from .config import RunConfig, parse_override
from .errors import ConfigError
from .experiments import runs_for
from . import pipeline  # as a module: tests replace pipeline.train_and_evaluate
from .presets import make
from .results import RunStore
from .sweep import (
    Outcome,
    SweepStopped,
    load_runs_file,
    pack,
    report,
    run_sweep,
    unique,
    unpack,
    write_runs_file,
)
from .workers import die_with_parent

# ------------------------------------------------------------------------- python -m mstlib train


def train_add_arguments(parser: argparse.ArgumentParser) -> None:
    """``python -m mstlib train``: one run (from a preset and method, or a full config JSON)."""
    parser.add_argument("--preset", default="smoke", help="smoke | mini | paper (default: smoke)")
    parser.add_argument("--method", default="mst", help="dense | mst | rigl | ss | tiny | set (default: mst)")
    parser.add_argument("--seed", type=int, default=None, help="run seed (default: 0, or the --config file's)")
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="a JSON RunConfig (as in a run folder's config.json) instead of --preset/--method")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set train.max_iters=100 (repeatable)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    parser.add_argument("--results", default="results", help="run store root (default: results)")
    parser.add_argument("--checkpoints", default=None, help="checkpoint root (default: checkpoints/<results folder name> beside it)")
    parser.add_argument("--no-resume", action="store_true",
                        help="ignore an existing checkpoint; start over (a done run's result stays until the new one is done)")
    parser.add_argument("--stop-after", type=_steps, default=None, metavar="STEPS",
                        help="stop (with a checkpoint) after this many steps in total (>= 1)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--evaluate", action="store_true",
                        help="then evaluate the trained model (mstlib.pipeline.train_and_evaluate) into eval.json")


def _steps(text: str) -> int:
    """``--stop-after``: a whole number of steps >= 1 (0 would stop before the first step)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of steps >= 1, got {text!r}")
    return value


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The RunConfig the command line describes."""
    overrides = dict(parse_override(s) for s in args.set)
    if args.config:
        try:
            base = json.loads(Path(args.config).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"cannot read the run config {args.config}: {e}") from e
        run = RunConfig.from_dict(base)
        if args.seed is not None:
            overrides["seed"] = args.seed
        return run.replace(**overrides) if overrides else run
    return make(args.preset, args.method, seed=args.seed or 0, overrides=overrides or None)


def train_main(args: argparse.Namespace) -> int:
    die_with_parent()  # started by a sweep: do not outlive it
    run = config_from_args(args)
    store = RunStore(args.results, args.checkpoints)
    if int(os.environ.get("RANK", "0")) == 0:  # as the notebooks do; one process writes the corpus
        pipeline.ensure_smoke_corpus(run, progress=not args.no_progress)
    res = trainer.train(run, store, device=args.device, resume=not args.no_resume, stop_after=args.stop_after,
                progress=not args.no_progress)
    if args.evaluate and res.done and int(os.environ.get("RANK", "0")) == 0:
        res = pipeline.train_and_evaluate(run, store, device=args.device, evaluate=True, progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) == 0:
        if res.done:
            m = res.metrics
            print(f"final val loss {_metric(m, 'final_val_loss', '.4f')}, median "
                  f"{_metric(m, 'tokens_per_s_median', ',.0f')} tokens/s, wall {_metric(m, 'wall_time_s', '.1f')} s",
                  file=sys.stderr)
        print(res.path)
    return 0


def _metric(metrics: dict[str, Any], key: str, spec: str) -> str:
    """A metric for the summary line; "?" where a run stored without it (older, or made by hand)."""
    value = metrics.get(key)
    return format(value, spec) if isinstance(value, (int, float)) else "?"


# ------------------------------------------------------------------------- python -m mstlib sweep


def sweep_add_arguments(parser: argparse.ArgumentParser) -> None:
    """``python -m mstlib sweep``."""
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--runs", metavar="FILE", help="a JSON list of run configs")
    src.add_argument("--experiment", metavar="NAME",
                     help="the runs of a notebook (mstlib.experiments), 'all', or a fair-test experiment "
                          "('schedules', 'ladder', 'ladder-<rung>', 'gap')")
    src.add_argument("--methods", nargs="+", metavar="METHOD", help="these methods of --preset, every seed")
    parser.add_argument("--preset", default="mini", help="preset for --experiment/--methods (default: mini)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help="seeds (default: 0; the fair test's experiments have their own)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field of every run (for --methods, before FLOP matching)")
    parser.add_argument("--device", default="auto", help="auto (GPUs if any, else CPU) | cuda | cpu")
    parser.add_argument("--gpus", type=int, default=None, help="use the first N visible GPUs (default: all)")
    parser.add_argument("--per-gpu", type=int, default=1, help="concurrent runs per GPU (default: 1)")
    parser.add_argument("--workers", type=int, default=1, help="parallel CPU runs when there is no GPU (default: 1)")
    parser.add_argument("--results", default="results", help="run store root (default: results)")
    parser.add_argument("--checkpoints", default=None, help="checkpoint root (default: checkpoints/<results folder name> beside it)")
    parser.add_argument("--pack", metavar="OUT.tar.gz", help="pack the runs' results into one archive at the end")
    parser.add_argument("--pack-only", action="store_true", help="pack what is stored; train nothing")
    parser.add_argument("--unpack", metavar="ARCHIVE", help="merge a pack into --results (no training)")
    parser.add_argument("--overwrite", action="store_true", help="with --unpack: replace runs done here")
    parser.add_argument("--evaluate", action="store_true",
                        help="also evaluate every run (eval.json); runs without it are not done")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and whether they are done")
    parser.add_argument("--write-runs", metavar="FILE", help="write the run list as JSON (for --runs) and stop")


def runs_from_args(args: argparse.Namespace, store: RunStore | None = None) -> list[RunConfig]:
    overrides = dict(parse_override(s) for s in args.set)
    if args.runs:
        runs = load_runs_file(args.runs)
    elif args.experiment:
        runs = runs_for(args.experiment, args.preset, args.seeds, store)
    elif args.methods:
        return unique([make(args.preset, m, seed=s, overrides=overrides or None)
                       for m in args.methods for s in (args.seeds or [0])])
    else:
        raise ConfigError("say which runs: --runs FILE, --experiment NAME or --methods M [M ...]")
    return unique([r.replace(**overrides) for r in runs] if overrides else runs)


def sweep_main(args: argparse.Namespace) -> int:
    store = RunStore(args.results, args.checkpoints)
    if args.unpack:
        res = unpack(args.unpack, store, overwrite=args.overwrite)
        for k, v in res.items():
            print(f"{k:>9}: {len(v)}" + (f"  {' '.join(v[:8])}{' ...' if len(v) > 8 else ''}" if v else ""))
        if res["conflict"]:
            print("conflicts were kept as they are here; --overwrite replaces them", file=sys.stderr)
        if res["busy"]:
            print("busy runs are being trained here (their lock is held) and were left alone: unpack again once "
                  "their trainers have stopped", file=sys.stderr)
        return 1 if res["rejected"] else 0
    runs = runs_from_args(args, store)
    if args.write_runs:
        write_runs_file(runs, args.write_runs)
        print(f"{len(runs)} runs written to {args.write_runs}")
        return 0
    if args.dry_run:
        for r in runs:
            state = ("corrupt" if sweep.corruption(r, store) else "done") if store.is_done(r) else "todo"
            print(f"{state:<7} {r.preset}/{r.method}/seed{r.seed} {r.run_id()}")
        return 0
    outcomes: list[Outcome] = []
    if not args.pack_only:
        t0 = time.perf_counter()
        try:
            outcomes = run_sweep(runs, store, device=args.device, gpus=args.gpus, workers=args.workers,
                                 evaluate=args.evaluate, per_gpu=args.per_gpu)
        except SweepStopped as e:
            print(f"sweep stopped by {e.name}; its trainers were stopped and keep their last checkpoints: run "
                  "the same command again to continue", file=sys.stderr)
            return 128 + e.signum
        print(report(outcomes, store))
        print(f"sweep wall time {(time.perf_counter() - t0) / 60:.1f} min")
    corrupt: list[str] = []
    if args.pack:
        man = pack(runs, store, args.pack, outcomes)
        n_done = sum(r["done"] for r in man["runs"])
        corrupt = [r["run_id"] for r in man["runs"] if "corrupt" in r]
        if args.pack_only:  # no report above to say what is wrong with them
            for r in man["runs"]:
                if "corrupt" in r:
                    print(f"--- {r['run_id']} is corrupt, left out: {r['corrupt']}", file=sys.stderr)
        print(f"packed {len(man['runs'])} runs ({n_done} done) into {args.pack}"
              + (f"; {len(corrupt)} corrupt run(s) left out: {' '.join(corrupt)}" if corrupt else ""))
    failed = [o for o in outcomes if o.status == "failed"]
    corrupt = sorted(set(corrupt) | {o.run.run_id() for o in outcomes if o.status == "corrupt"})
    if failed:
        print(f"{len(failed)} run(s) failed: {' '.join(o.run.run_id() for o in failed)}", file=sys.stderr)
    if corrupt:
        print(f"{len(corrupt)} stored run(s) are corrupt and were skipped: {' '.join(corrupt)} (above: how to "
              "repair each)", file=sys.stderr)
    return 1 if failed or corrupt else 0
