import pytest

from mstlib.config import RunConfig
from mstlib.errors import ConfigError
from mstlib.experiments import EXPERIMENTS, runs_for, variants_for
from mstlib.presets import make
from mstlib.results import flatten


def _diff(a: RunConfig, b: RunConfig) -> set[str]:
    fa, fb = flatten(a.to_dict()), flatten(b.to_dict())
    return {k for k in fa if fa[k] != fb[k]}


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_every_variant_is_valid_and_labelled_once_per_seed(name):
    vs = variants_for(name, "smoke", [0, 1])
    assert vs and all(v.table == name for v in vs)
    for seed in (0, 1):
        labels = [v.variant for v in vs if v.run.seed == seed]
        assert len(labels) == len(set(labels)), labels
    for v in vs:
        v.run.validate()
        assert v.run.preset == "smoke"


def test_ablations_change_only_what_they_name():
    mst = make("smoke", "mst", seed=0)
    by = {v.variant: v.run for v in variants_for("te", "smoke", [0])}
    assert _diff(by["random (SET)"], mst) == {"topology.growth"}
    assert _diff(by["none (static)"], mst) == {"topology.growth"}
    assert by["mixed (MG)"] == mst
    sv = {v.variant: v.run for v in variants_for("sv", "smoke", [0])}
    assert _diff(sv["no warm-up"], mst) == {"schedule.warmup_end"}
    # constant sparsity keeps HSA on over MST's ultra-sparsification window
    const = sv["constant sparsity"]
    assert const.schedule.kind == "constant"
    assert (const.attention.start, const.attention.end) == (mst.schedule.warmup_end, mst.schedule.restore_start)
    hsa = {v.variant: v.run for v in variants_for("hsa", "smoke", [0])}
    assert _diff(hsa["dense attention"], mst) <= {"attention.pattern"}


def test_main_table_and_dedup():
    runs = runs_for("main", "smoke", [0, 1, 2])
    assert len(runs) == 15 and len({r.run_id() for r in runs}) == 15
    everything = runs_for("all", "smoke", [0])
    assert len({r.run_id() for r in everything}) == len(everything)
    with pytest.raises(ConfigError, match="unknown experiment"):
        variants_for("tabel3", "smoke", [0])
