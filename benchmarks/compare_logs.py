"""Compare the loss curves of runs of one config: is B equal to A within the noise of repeating A?

Typical use (issue 5): A is a 1-GPU run, B the same config on 2 GPUs with DDP (same global batch: mstlib
splits ``train.grad_accum`` among the ranks and every rank reads its share of the same sequences), and A2 a
second 1-GPU run of A. bf16 training on a GPU is not bitwise repeatable (atomics in the backward), so
"equal" means: the differences between A and B are no larger than those between A and A2.

    python benchmarks/compare_logs.py RUN_DIR_A RUN_DIR_B [RUN_DIR_A2] [--json out.json]

Each RUN_DIR is a run folder (``<results>/<preset>/<method>/<run_id>``) holding ``log.csv``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mstlib.results import atomic_write_json, load_run_dir  # noqa: E402


def curve_difference(a: pd.DataFrame, b: pd.DataFrame, column: str) -> dict[str, float]:
    """Differences of ``column`` over the steps both logs have (NaN rows skipped): max and mean absolute,
    the mean signed (b - a) and the same over the last 10% of the common steps."""
    m = a[["step", column]].merge(b[["step", column]], on="step", suffixes=("_a", "_b")).dropna()
    if m.empty:
        return {"n": 0}
    d = (m[f"{column}_b"] - m[f"{column}_a"]).to_numpy()
    tail = d[-max(1, len(d) // 10):]
    return {"n": int(len(d)), "max_abs": float(np.abs(d).max()), "mean_abs": float(np.abs(d).mean()),
            "mean": float(d.mean()), "tail_mean_abs": float(np.abs(tail).mean())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("a2", nargs="?", default=None, help="a repeat of A: the noise level")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    runs = {k: load_run_dir(v) for k, v in (("A", args.a), ("B", args.b), ("A2", args.a2)) if v}
    ids = {r.run.run_id() for r in runs.values()}
    if len(ids) != 1:
        print(f"warning: the runs have different configs ({sorted(ids)})", file=sys.stderr)
    logs = {k: r.log() for k, r in runs.items()}
    out: dict[str, Any] = {
        "runs": {k: {"path": str(r.path), "world_size": r.metrics.get("world_size"),
                     "device_name": r.provenance.get("device_name"),
                     "final_val_loss": r.metrics.get("final_val_loss")} for k, r in runs.items()},
    }
    for col in ("loss", "val_loss"):
        out[f"{col}: B - A"] = curve_difference(logs["A"], logs["B"], col)
        if "A2" in logs:
            out[f"{col}: A2 - A (noise)"] = curve_difference(logs["A"], logs["A2"], col)
    print(json.dumps(out, indent=1))
    if "A2" in logs:
        b, n = out["loss: B - A"], out["loss: A2 - A (noise)"]
        if b.get("n") and n.get("n"):
            verdict = "within" if b["mean_abs"] <= 1.5 * n["mean_abs"] else "OUTSIDE"
            print(f"\nmean |loss difference|: B-A {b['mean_abs']:.4g}, A2-A {n['mean_abs']:.4g} -> B is {verdict} "
                  "the run-to-run noise (criterion: at most 1.5x)")
    if args.json:
        atomic_write_json(args.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
