"""Schedules checked against hand-computed values (the FLOP count and the trainer both rely on them)."""

from __future__ import annotations

import math

import pytest

from mstlib import schedule as S
from mstlib.config import AttentionConfig, RunConfig, ScheduleConfig, TopologyConfig, TrainConfig

MST = ScheduleConfig(kind="mst", s_max=0.9, s_end=0.5, warmup_end=0.25, restore_start=0.75, shape="cubic")


def run_cfg(schedule: ScheduleConfig = MST, max_iters: int = 1000, **topo) -> RunConfig:
    return RunConfig(
        schedule=schedule,
        topology=TopologyConfig(**{"update_interval": 100, **topo}),
        train=TrainConfig(max_iters=max_iters, warmup_iters=10),
    ).validate()


def test_phases_mst_and_zero_length_dropped():
    assert [(p.name, p.start, p.end) for p in S.phases(MST)] == [
        ("warmup", 0.0, 0.25),
        ("ultra", 0.25, 0.75),
        ("restoration", 0.75, 1.0),
    ]
    no_ultra = ScheduleConfig(kind="mst", warmup_end=0.5, restore_start=0.5)
    assert [p.name for p in S.phases(no_ultra)] == ["warmup", "restoration"]
    no_warm = ScheduleConfig(kind="mst", warmup_end=0.0, restore_start=1.0)
    assert [p.name for p in S.phases(no_warm)] == ["ultra"]
    assert [p.name for p in S.phases(ScheduleConfig(kind="constant", sparsity=0.5))] == ["constant"]
    assert [p.name for p in S.phases(ScheduleConfig(kind="dense", s_max=0.9))] == ["dense"]


def test_phase_at_boundaries():
    assert S.phase_at(0.0, MST).name == "warmup"
    assert S.phase_at(0.2499, MST).name == "warmup"
    assert S.phase_at(0.25, MST).name == "ultra"
    assert S.phase_at(0.75, MST).name == "restoration"
    assert S.phase_at(1.0, MST).name == "restoration"
    assert S.phase_at(-0.1, MST).name == "warmup"


@pytest.mark.parametrize(
    "p, expected",
    [
        (0.0, 0.0),
        (0.125, 0.9 * (1 - 0.5**3)),  # cubic warm-up midpoint: 0.7875
        (0.25, 0.9),  # hold
        (0.5, 0.9),
        (0.7499, 0.9),
        (0.75, 0.9),  # restoration starts at s_max
        (0.875, 0.9 - 0.4 * (1 - 0.5**3)),  # restoration midpoint: 0.55
        (1.0, 0.5),  # restoration ends at s_end
        (1.5, 0.5),  # clipped
    ],
)
def test_target_sparsity_cubic(p, expected):
    assert S.target_sparsity(p, MST) == pytest.approx(expected, abs=1e-12)


def test_target_sparsity_shapes_and_kinds():
    lin = ScheduleConfig(kind="mst", s_max=0.8, s_end=0.4, warmup_end=0.5, restore_start=0.5, shape="linear")
    assert S.target_sparsity(0.25, lin) == pytest.approx(0.4)
    assert S.target_sparsity(0.75, lin) == pytest.approx(0.6)
    cos = ScheduleConfig(kind="mst", s_max=0.8, s_end=0.4, warmup_end=0.5, restore_start=0.5, shape="cosine")
    assert S.target_sparsity(0.125, cos) == pytest.approx(0.8 * (1 - math.cos(math.pi / 4)) / 2)
    assert S.target_sparsity(0.3, ScheduleConfig(kind="constant", sparsity=0.7)) == 0.7
    assert S.target_sparsity(0.3, ScheduleConfig(kind="dense")) == 0.0
    hold_to_end = ScheduleConfig(kind="mst", s_max=0.8, s_end=0.4, warmup_end=0.5, restore_start=1.0)
    assert S.target_sparsity(1.0, hold_to_end) == 0.8


def test_ramp_endpoints():
    for shape in ("linear", "cosine", "cubic"):
        assert S.ramp(0.0, shape) == 0.0 and S.ramp(1.0, shape) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        S.ramp(0.5, "quartic")


def test_update_steps():
    run = run_cfg()
    assert S.update_steps(run) == [100, 200, 300, 400, 500, 600, 700, 800, 900]
    assert [s for s in range(1001) if S.is_update_step(s, run)] == S.update_steps(run)
    stop = run_cfg(stop_at=0.5)
    assert S.update_steps(stop) == [100, 200, 300, 400]  # 500 is not < 0.5 * 1000
    ss = run_cfg(ScheduleConfig(kind="constant", sparsity=0.5), growth="none")
    assert S.update_steps(ss) == [] and not S.is_update_step(100, ss)
    static_mst = run_cfg(growth="none")
    assert S.update_steps(static_mst) == S.update_steps(run)  # the density still has to change
    dense = run_cfg(ScheduleConfig(kind="dense"), growth="none")
    assert S.update_steps(dense) == []
    assert S.uses_dense_gradient(run) and not S.uses_dense_gradient(static_mst)
    assert not S.uses_dense_gradient(run_cfg(growth="random"))


def test_sparsity_in_force_piecewise_constant():
    run = run_cfg()
    assert S.sparsity_in_force(0, run) == 0.0
    assert S.sparsity_in_force(99, run) == 0.0
    t100 = S.target_sparsity(0.1, MST)
    assert t100 > 0
    for step in range(100, 200):
        assert S.sparsity_in_force(step, run) == t100
    assert S.sparsity_in_force(200, run) == S.target_sparsity(0.2, MST)
    assert S.sparsity_in_force(999, run) == S.target_sparsity(0.9, MST)
    # after stop_at the masks freeze at the last update's target
    stop = run_cfg(stop_at=0.5)
    assert S.sparsity_in_force(777, stop) == S.target_sparsity(0.4, MST)
    stop_odd = run_cfg(stop_at=0.45)
    assert S.last_update_step(900, stop_odd) == 400
    const = run_cfg(ScheduleConfig(kind="constant", sparsity=0.6), growth="none")
    assert {S.sparsity_in_force(s, const) for s in range(0, 1000, 37)} == {0.6}


def test_drop_fraction_cosine_restarts_each_phase():
    run = run_cfg(drop_fraction=0.3)
    # phase starts: full zeta
    assert S.drop_fraction(0, run) == pytest.approx(0.3)
    assert S.drop_fraction(250, run) == pytest.approx(0.3)
    assert S.drop_fraction(750, run) == pytest.approx(0.3)
    # phase midpoints: half
    assert S.drop_fraction(125, run) == pytest.approx(0.15)
    assert S.drop_fraction(500, run) == pytest.approx(0.15)
    assert S.drop_fraction(875, run) == pytest.approx(0.15)
    # just before a boundary: near 0, then restart
    assert S.drop_fraction(249, run) < 0.001
    # whole-run anneal
    whole = run_cfg(drop_fraction=0.3, restart_per_phase=False)
    assert S.drop_fraction(500, whole) == pytest.approx(0.15)
    assert S.drop_fraction(250, whole) == pytest.approx(0.15 * (1 + math.cos(math.pi / 4)))
    # whole run clipped at stop_at
    assert S.drop_fraction(250, run_cfg(restart_per_phase=False, stop_at=0.5)) == pytest.approx(0.15)
    assert S.drop_fraction(500, run_cfg(drop_anneal="constant", drop_fraction=0.2)) == 0.2
    assert S.drop_fraction(500, run_cfg(growth="none")) == 0.0


def test_lr_schedule():
    t = TrainConfig(max_iters=1000, lr=6e-4, min_lr=6e-5, warmup_iters=100, lr_decay_iters=900)
    assert S.lr_at(0, t) == 0.0
    assert S.lr_at(50, t) == pytest.approx(3e-4)
    assert S.lr_at(100, t) == pytest.approx(6e-4)
    assert S.lr_at(500, t) == pytest.approx(6e-5 + 0.5 * (6e-4 - 6e-5))
    assert S.lr_at(900, t) == pytest.approx(6e-5)
    assert S.lr_at(950, t) == 6e-5
    no_decay_field = TrainConfig(max_iters=1000, warmup_iters=0)
    assert S.lr_at(0, no_decay_field) == pytest.approx(6e-4)
    assert S.lr_at(1000, no_decay_field) == pytest.approx(6e-5)


def test_attention_active():
    base = run_cfg()
    ultra = RunConfig(
        schedule=MST, attention=AttentionConfig(pattern="local", window=16, stride=16, when="ultra"),
        train=TrainConfig(max_iters=1000),
    ).validate()
    assert not S.attention_active(249, ultra)
    assert S.attention_active(250, ultra) and S.attention_active(749, ultra)
    assert not S.attention_active(750, ultra)
    assert not S.attention_active(500, base)  # pattern dense
    custom = ultra.replace(**{"attention.when": "custom", "attention.start": 0.1, "attention.end": 0.2})
    assert [S.attention_active(s, custom) for s in (99, 100, 199, 200)] == [False, True, True, False]
    assert S.attention_active(0, ultra.replace(**{"attention.when": "always"}))
    assert not S.attention_active(500, ultra.replace(**{"attention.when": "never"}))
