"""``python -m mstlib flops`` and ``python -m mstlib masks``: a preset's training FLOPs (per phase and against
dense) and its masks (per-matrix shapes, nonzeros, densities). The command lines sit above the presets, so
that :mod:`mstlib.flops` and :mod:`mstlib.masks` need none."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Iterable

from .config import ModelConfig, RunConfig, SparsityConfig, parse_override
from .flops import FlopReport, training_flops
from .masks import layer_table
from .presets import METHODS, make

# ------------------------------------------------------------------------------------------------ flops


def flops_add_arguments(parser: argparse.ArgumentParser) -> None:
    """``python -m mstlib flops``: training FLOPs of a preset/method, per phase and against dense."""
    parser.add_argument("--preset", default="paper", help="smoke, mini or paper (default paper)")
    parser.add_argument("--method", default="mst", help="dense, mst, rigl, ss, tiny or set (default mst)")
    parser.add_argument("--all-methods", action="store_true", help="one table row per method")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, repeatable (e.g. --set schedule.s_max=0.95)")
    parser.add_argument("--json", action="store_true", help="print JSON (one object, or a list with --all-methods)")
    parser.add_argument("--series", action="store_true", help="include the per-interval density series in JSON")


def _row(r: FlopReport, run: RunConfig) -> dict[str, Any]:
    shape = f"{run.model.n_layer}x{run.model.n_embd}"
    if run.schedule.kind == "constant":
        sp = f"{run.schedule.sparsity:.4f}"
    elif run.schedule.kind == "mst":
        sp = f"{run.schedule.s_max:.2f}->{run.schedule.s_end:.2f}"
    else:
        sp = "0"
    return {"method": r.method, "model": shape, "sparsity": sp, "total_flops": r.total_flops,
            "ratio_to_dense": r.ratio_to_dense, "reduction": 1.0 / r.ratio_to_dense}


def _print_table(reports: Iterable[tuple[FlopReport, RunConfig]]) -> None:
    reports = list(reports)
    r0 = reports[0][0]
    print(f"preset {r0.preset}: {r0.steps:,} steps x {r0.tokens_per_step:,} tokens = {r0.tokens:,} tokens; "
          f"dense {r0.flops_per_token_dense:,} FLOPs/token (6N + 12LdT)")
    print(f"{'method':<7} {'model':>8} {'sparsity':>12} {'total FLOPs':>12} {'/ dense':>8} {'reduction':>9}")
    for r, run in reports:
        row = _row(r, run)
        print(f"{row['method']:<7} {row['model']:>8} {row['sparsity']:>12} {row['total_flops']:>12.4e} "
              f"{row['ratio_to_dense']:>8.4f} {row['reduction']:>8.2f}x")
    if len(reports) == 1 and len(r0.phases) > 1:
        print()
        print(f"{'phase':<12} {'steps':>17} {'FLOPs':>12} {'/ dense':>8} {'weight dens.':>12} {'attn dens.':>10}")
        for ph in r0.phases.values():
            print(f"{ph.name:<12} {f'{ph.start_step:,}-{ph.end_step:,}':>17} {ph.flops:>12.4e} "
                  f"{ph.ratio_to_dense:>8.4f} {ph.mean_weight_density:>12.4f} {ph.mean_attention_density:>10.4f}")


def flops_main(args: argparse.Namespace) -> int:
    overrides = dict(parse_override(o) for o in args.overrides)
    methods = list(METHODS) if args.all_methods else [args.method]
    out = []
    for method in methods:
        run = make(args.preset, method, seed=args.seed, overrides=overrides or None)
        # tiny is compared with the full-size dense model under the same overrides
        ref = make(args.preset, "dense", seed=args.seed, overrides=overrides or None).model
        out.append((training_flops(run, series=args.series, dense_model=ref if run.method == "tiny" else None), run))
    if args.json:
        objs = []
        for r, run in out:
            d = json.loads(r.to_json(series=args.series))
            d["model"] = {"n_layer": run.model.n_layer, "n_head": run.model.n_head, "n_embd": run.model.n_embd}
            d["schedule"] = run.to_dict()["schedule"]
            objs.append(d)
        json.dump(objs if args.all_methods else objs[0], sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    _print_table(out)
    return 0


# ------------------------------------------------------------------------------------------------ masks


def masks_add_arguments(parser: argparse.ArgumentParser) -> None:
    """``python -m mstlib masks``: per-matrix shapes, nonzeros and densities at a sparsity."""
    parser.add_argument("--preset", default="paper", help="model size / preset: smoke, mini or paper")
    parser.add_argument("--method", default="mst", help="method whose sparsity config to use (default mst)")
    parser.add_argument("--sparsity", type=float, required=True, help="global sparsity over the sparse set, [0, 1)")
    parser.add_argument("--distribution", choices=["er", "uniform"], default=None, help="override the preset's")
    parser.add_argument("--sparse-set", choices=["all", "blocks"], default=None, help="override the preset's")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _preset_configs(preset: str, method: str) -> tuple[ModelConfig, SparsityConfig]:
    run = make(preset, method)
    return run.model, run.sparsity


def masks_main(args: argparse.Namespace) -> int:
    model_cfg, sparse_cfg = _preset_configs(args.preset, args.method)
    sparse_cfg = SparsityConfig(
        sparse_set=args.sparse_set or sparse_cfg.sparse_set,
        distribution=args.distribution or sparse_cfg.distribution,
        init=sparse_cfg.init,
    )
    rows = layer_table(model_cfg, args.sparsity, sparse_cfg)
    total = sum(r["shape"][0] * r["shape"][1] for r in rows)
    nnz = sum(r["nnz"] for r in rows)
    report = {
        "preset": args.preset,
        "sparsity": args.sparsity,
        "sparse_set": sparse_cfg.sparse_set,
        "distribution": sparse_cfg.distribution,
        "total": total,
        "nnz": nnz,
        "density": nnz / total,
        "matrices": rows,
    }
    if args.json:
        json.dump(report, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    width = max(len(r["name"]) for r in rows)
    print(f"{'matrix':<{width}}  {'shape':>14}  {'nonzeros':>12}  density")
    for r in rows:
        shape = "x".join(map(str, r["shape"]))
        print(f"{r['name']:<{width}}  {shape:>14}  {r['nnz']:>12,}  {r['density']:.4f}")
    print(f"{'total':<{width}}  {'':>14}  {nnz:>12,}  {nnz / total:.4f}  (of {total:,} weights)")
    return 0

