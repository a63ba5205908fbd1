"""Write the fair test's run lists for tools/gpu/fair_test.sh, in the order the GPU should train them.

    python tools/gpu/fair_test_lists.py [--preset mini] [--out .gpu/runs] [--rungs mini-65m ...]

first.json: the schedule search's candidates (seeds 0-1 at the first rung), then every baseline of the rungs
named (dense at each length, Tiny, RigL): nothing in it depends on the schedule the search chooses.
chosen.txt: the experiments whose MST runs use the chosen schedule (the rungs' ladder experiments, then the
gap's diagnostics); the GPU machine writes their runs once the search is done. last.json: what is useful but
can wait (dense and the old default on the search's seeds, the sparsity-variation ablation's constant
sparsity matched with hybrid sparse attention included). Runs already done in --results are left out.

Once the search is done in --results (its runs are stored), the schedule is known here: the chosen schedule's
runs go into first.json too, with last.json's, longest first (so the GPU's last minutes are not one long run
alone), and chosen.txt is empty. --seeds keeps only those of the rungs' seeds (a rung spread over calls).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mstlib import experiments, ladder  # noqa: E402
from mstlib.config import RunConfig  # noqa: E402
from mstlib.errors import ConfigError  # noqa: E402
from mstlib.results import RunStore  # noqa: E402
from mstlib.sweep import unique, write_runs_file  # noqa: E402


def _cost(run: RunConfig) -> float:
    """A run's GPU time, roughly: its tokens times its model's non-embedding parameters (the mini runs
    share a GPU with several others, where time follows the work more than the launch overheads)."""
    m = run.model
    return run.train.max_iters * run.train.batch_size * run.train.grad_accum * (m.n_layer * m.n_embd ** 2 + 1e5)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="mini")
    ap.add_argument("--out", default=".gpu/runs")
    ap.add_argument("--results", default="results")
    ap.add_argument("--rungs", nargs="+", default=None, help="rungs whose baselines go first (default: the first)")
    ap.add_argument("--seeds", nargs="+", type=int, default=None, help="only these of the rungs' seeds")
    ap.add_argument("--no-gap", action="store_true", help="leave out the gap's diagnostics")
    args = ap.parse_args(argv)
    store = RunStore(args.results)
    names = args.rungs or [ladder.selection_rung(args.preset).name]
    candidates = {s.name for s in ladder.SCHEDULES}
    search = [r for r in ladder.selection_runs(args.preset) if r.method in candidates]
    known = [r.name for r in ladder.rungs(args.preset)]
    if any(n not in known for n in names):
        ap.error(f"unknown rung(s) {[n for n in names if n not in known]}; the {args.preset} rungs are {known}")
    keep = (lambda seed: True) if args.seeds is None else (lambda seed: seed in args.seeds)
    baselines = [ladder.rung_run(args.preset, n, m, seed) for n in names for rung in ladder.rungs(args.preset)
                 if rung.name == n for m in rung.methods if m != "mst" for seed in rung.seeds if keep(seed)]
    first = unique([r.run for r in search] + baselines)
    rest = [r.run for r in ladder.selection_runs(args.preset) if r.method not in candidates]
    rest += [v.run for v in experiments.variants_for("sv", args.preset, [0, 1]) if v.variant == "constant sparsity"]
    last = [r for r in unique(rest) if r.run_id() not in {x.run_id() for x in first}]
    chosen_txt = "".join(f"ladder-{n}\n" for n in names) + ("" if args.no_gap else "gap\n")
    try:
        ladder.chosen_schedule(args.preset, store)
    except ConfigError:
        pass  # the search is not done here: the GPU machine writes the chosen schedule's runs (chosen.txt)
    else:
        chosen = [r.run for r in ladder.ladder_runs(args.preset, store, tuple(names))
                  if r.method == "mst" and keep(r.seed)]
        chosen += [] if args.no_gap else [r.run for r in ladder.gap_runs(args.preset, store)]
        first = sorted(unique(first + chosen + last), key=_cost, reverse=True)
        last, chosen_txt = [], ""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, runs in (("first", first), ("last", last)):
        todo = [r for r in runs if not store.is_done(r)]
        write_runs_file(todo, out / f"{name}.json")
        print(f"{out / name}.json: {len(todo)} runs ({len(runs) - len(todo)} already done)")
    (out / "chosen.txt").write_text(chosen_txt)
    print(f"{out / 'chosen.txt'}: " + (" ".join(chosen_txt.split()) or "empty (the chosen schedule's runs are in first.json)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
