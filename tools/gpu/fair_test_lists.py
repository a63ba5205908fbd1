"""Write the fair test's run lists for tools/gpu/fair_test.sh, in the order the GPU should train them.

    python tools/gpu/fair_test_lists.py [--preset mini] [--out .gpu/runs] [--rungs mini-65m ...]

first.json: the schedule search's candidates (seeds 0-1 at the first rung), then every baseline of the rungs
named (dense at each length, Tiny, RigL): nothing in it depends on the schedule the search chooses.
chosen.txt: the experiments whose MST runs use the chosen schedule (the rungs' ladder experiments, then the
gap's diagnostics); the GPU machine writes their runs once the search is done. last.json: what is useful but
can wait (dense and the old default on the search's seeds, the sparsity-variation ablation's constant
sparsity matched with hybrid sparse attention included). Runs already done in --results are left out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mstlib import experiments, ladder  # noqa: E402
from mstlib.results import RunStore  # noqa: E402
from mstlib.sweep import unique, write_runs_file  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="mini")
    ap.add_argument("--out", default=".gpu/runs")
    ap.add_argument("--results", default="results")
    ap.add_argument("--rungs", nargs="+", default=None, help="rungs whose baselines go first (default: the first)")
    args = ap.parse_args()
    store = RunStore(args.results)
    names = args.rungs or [ladder.selection_rung(args.preset).name]
    candidates = {s.name for s in ladder.SCHEDULES}
    search = [r for r in ladder.selection_runs(args.preset) if r.method in candidates]
    baselines = [ladder.rung_run(args.preset, n, m, seed) for n in names for rung in ladder.rungs(args.preset)
                 if rung.name == n for m in rung.methods if m != "mst" for seed in rung.seeds]
    first = unique([r.run for r in search] + baselines)
    rest = [r.run for r in ladder.selection_runs(args.preset) if r.method not in candidates]
    rest += [v.run for v in experiments.variants_for("sv", args.preset, [0, 1]) if v.variant == "constant sparsity"]
    last = [r for r in unique(rest) if r.run_id() not in {x.run_id() for x in first}]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, runs in (("first", first), ("last", last)):
        todo = [r for r in runs if not store.is_done(r)]
        write_runs_file(todo, out / f"{name}.json")
        print(f"{out / name}.json: {len(todo)} runs ({len(runs) - len(todo)} already done)")
    (out / "chosen.txt").write_text("".join(f"ladder-{n}\n" for n in names) + "gap\n")
    print(f"{out / 'chosen.txt'}: " + " ".join((out / "chosen.txt").read_text().split()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
