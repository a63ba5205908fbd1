"""The FLOP integral checked against hand-computed values (explicit arithmetic, not this module's code)."""

from __future__ import annotations

import json

import pytest

from mstlib import flops as F
from mstlib import masks
from mstlib.cli import main as cli_main
from mstlib.config import (
    AttentionConfig,
    ModelConfig,
    RunConfig,
    ScheduleConfig,
    SparsityConfig,
    TopologyConfig,
    TrainConfig,
)
from mstlib.model import GPT

# one block, width 4, vocabulary 16, context 8: with sparse_set="blocks" the sparse matrices are
# c_attn 12x4 = 48, attn.c_proj 4x4 = 16, c_fc 16x4 = 64, mlp.c_proj 4x16 = 64: S = 192 weights.
# N (nanoGPT) = wte 16*4 = 64 + block (192 + two LayerNorms 8) + ln_f 4 = 268; outside the sparse set
# 268 - 192 = 76 weights -> 6 * 76 = 456 FLOPs per token. Attention 12 * L * d * T = 12 * 1 * 4 * 8 = 384.
TINY = ModelConfig(n_layer=1, n_head=1, n_embd=4, block_size=8, vocab_size=16)


def tiny_run(schedule: ScheduleConfig, growth: str, max_iters: int, update_interval: int,
             attention: AttentionConfig | None = None) -> RunConfig:
    return RunConfig(
        method="rigl",
        model=TINY,
        sparsity=SparsityConfig(sparse_set="blocks", distribution="er"),
        schedule=schedule,
        topology=TopologyConfig(growth=growth, update_interval=update_interval),
        attention=attention or AttentionConfig(),
        train=TrainConfig(max_iters=max_iters, batch_size=1, grad_accum=1, warmup_iters=1),
    ).validate()


def test_nanogpt_params_equal_model_count():
    for cfg in (TINY, ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=100)):
        assert F.nanogpt_params(cfg) == GPT(cfg).num_params()


def test_paper_dense_per_token_is_nanogpts():
    paper = ModelConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304)
    assert F.flops_per_token_dense(paper) == 854_770_176


def test_hand_computed_constant_rigl():
    # sparsity 0.5 -> 96 nonzeros. Steps 0..9, 8 tokens each; updates at 3, 6, 9 (gradient growth: dense
    # weight gradient there). Per token: normal 456 + 6*96 + 384 = 1416; update 456 + 4*96 + 2*192 + 384 = 1608
    run = tiny_run(ScheduleConfig(kind="constant", sparsity=0.5), "gradient", 10, 3)
    r = F.training_flops(run)
    assert r.n_update_steps == 3
    assert r.total_flops == 8 * (7 * 1416 + 3 * 1608) == 117_888
    assert r.flops_per_token_dense == 6 * 268 + 384 == 1992
    assert r.dense_total_flops == 10 * 8 * 1992
    assert r.ratio_to_dense == pytest.approx(117_888 / 159_360)
    assert r.breakdown["dense_gradient_extra"] == 8 * 3 * (2 * 192 - 2 * 96)
    # random growth needs no dense gradient; static sparse training has no updates
    assert F.training_flops(tiny_run(ScheduleConfig(kind="constant", sparsity=0.5), "random", 10, 3)).total_flops == 8 * 10 * 1416
    assert F.training_flops(tiny_run(ScheduleConfig(kind="constant", sparsity=0.5), "none", 10, 3)).n_update_steps == 0


MST_TINY = ScheduleConfig(kind="mst", s_max=0.5, s_end=0.25, warmup_end=0.5, restore_start=0.75, shape="linear")


def test_hand_computed_mst_with_attention():
    # 8 steps, updates at 2, 4, 6. Targets (linear): p=0.25 -> 0.25 (warm-up), p=0.5 -> 0.5 (ultra),
    # p=0.75 -> 0.5 (restoration starts at s_max). Masks change after the update step's backward:
    # steps 0,1,2 at sparsity 0 (192 nnz), 3,4 at 0.25 (144), 5,6,7 at 0.5 (96).
    # HSA "local", window 2, during ultra = steps 4, 5: pairs 1 + 2*7 = 15 of 36 causal: 384 * 15/36 = 160.
    att = AttentionConfig(pattern="local", window=2, stride=2, when="ultra")
    run = tiny_run(MST_TINY, "random", 8, 2, att)
    per_step = [
        456 + 6 * 192 + 384,  # 0 (= dense 1992)
        456 + 6 * 192 + 384,  # 1
        456 + 6 * 192 + 384,  # 2
        456 + 6 * 144 + 384,  # 3
        456 + 6 * 144 + 160,  # 4
        456 + 6 * 96 + 160,  # 5
        456 + 6 * 96 + 384,  # 6
        456 + 6 * 96 + 384,  # 7
    ]
    r = F.training_flops(run)
    assert r.total_flops == 8 * sum(per_step) == 105_472
    assert r.phases["warmup"].flops == 8 * sum(per_step[0:4])
    assert r.phases["ultra"].flops == 8 * sum(per_step[4:6])
    assert r.phases["restoration"].flops == 8 * sum(per_step[6:8])
    assert (r.phases["ultra"].start_step, r.phases["ultra"].end_step) == (4, 6)
    assert sum(r.breakdown.values()) == r.total_flops
    # mixed growth adds the dense weight gradient 2 * (192 - nnz) per token on update steps 2, 4, 6,
    # at the density in force during them: 192, 144, 96 nonzeros
    mixed = F.training_flops(tiny_run(MST_TINY, "mixed", 8, 2, att))
    assert mixed.total_flops == 105_472 + 8 * (0 + 2 * 48 + 2 * 96)
    # the series covers every step once, in order
    s = r.series
    assert s["start_step"][0] == 0 and s["end_step"][-1] == 8
    assert all(a == b for a, b in zip(s["end_step"][:-1], s["start_step"][1:]))


def test_sparsity_zero_costs_exactly_dense():
    zero = ScheduleConfig(kind="mst", s_max=0.0, s_end=0.0)
    run = tiny_run(zero, "mixed", 50, 5)
    r = F.training_flops(run)
    assert r.total_flops == r.dense_total_flops and r.ratio_to_dense == 1.0


def test_nnz_identity_matches_layer_nnz():
    paper = ModelConfig()
    for sparse_set in ("all", "blocks"):
        shapes = masks.sparse_shapes(paper, sparse_set)
        S = sum(o * i for o, i in shapes.values())
        for dist in ("er", "uniform"):
            for s in (0.0, 0.1234567, 0.5, 0.8644, 0.95, 0.999):
                assert F._nnz_total(S, s) == sum(masks.layer_nnz(shapes, s, dist).values()), (sparse_set, dist, s)


def test_world_size_changes_nothing_and_bad_world_size():
    run = tiny_run(ScheduleConfig(kind="constant", sparsity=0.5), "gradient", 10, 3)
    assert F.training_flops(run, world_size=4).total_flops == F.training_flops(run).total_flops
    with pytest.raises(ValueError):
        F.training_flops(run, world_size=0)


def test_paper_mst_ratio_and_phases():
    from mstlib.presets import make

    r = F.training_flops(make("paper", "mst"))
    assert 0.22 <= r.ratio_to_dense <= 0.28
    assert list(r.phases) == ["warmup", "ultra", "restoration"]
    assert sum(p.flops for p in r.phases.values()) == pytest.approx(r.total_flops, rel=1e-12)
    assert r.tokens == 600_000 * 491_520
    assert r.n_update_steps == 5999


def test_cli_json_keys(capsys):
    assert cli_main(["flops", "--preset", "smoke", "--method", "mst", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("flops_per_token_dense", "total_flops", "ratio_to_dense", "phases", "tokens", "method", "preset"):
        assert key in out
    assert out["method"] == "mst" and out["preset"] == "smoke"
    assert cli_main(["flops", "--preset", "smoke", "--all-methods"]) == 0
    table = capsys.readouterr().out
    for m in ("dense", "mst", "rigl", "ss", "tiny", "set"):
        assert f"\n{m} " in table
    assert cli_main(["flops", "--preset", "nope", "--method", "mst"]) == 2
    assert "smoke" in capsys.readouterr().err
