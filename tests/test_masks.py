"""Sparse set, exact per-layer nonzeros (ER with dense-capping, uniform), MaskSet and the ``masks`` CLI."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mstlib import cli
from mstlib.config import MODEL_SIZES, ModelConfig
from mstlib.errors import CheckpointError, ConfigError
from mstlib.masks import (
    MaskSet,
    derive_seed,
    layer_nnz,
    make_generator,
    random_topk_,
    sparse_parameter_names,
    sparse_shapes,
    topk_rows,
)
from mstlib.model import GPT

TINY = ModelConfig(n_layer=2, n_head=2, n_embd=16, block_size=16, vocab_size=64)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see tests/conftest.py


def tiny_model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(TINY)


# ------------------------------------------------------------------------------------ sparse set


def test_sparse_set_names_and_shapes_match_the_model():
    model = tiny_model()
    params = dict(model.named_parameters())
    names = sparse_parameter_names(TINY, "all")
    assert len(names) == 4 * TINY.n_layer + 1 and names[-1] == "lm_head.weight"
    assert names[:4] == [f"transformer.h.0.{m}.weight" for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
    for n, shape in sparse_shapes(TINY, "all").items():
        assert tuple(model.get_parameter(n).shape) == shape
    # the tied output layer is the embedding: one tensor
    assert model.get_parameter("lm_head.weight") is params["transformer.wte.weight"]
    from mstlib.config import RunConfig, SparsityConfig

    run = RunConfig(model=TINY, sparsity=SparsityConfig(sparse_set="blocks", distribution="uniform"))
    for spec in (run, run.sparsity):
        ms = MaskSet(model, spec)
        assert (ms.sparse_set, ms.distribution, len(ms.names)) == ("blocks", "uniform", 4 * TINY.n_layer)
    blocks = sparse_parameter_names(TINY, "blocks")
    assert blocks == names[:-1]  # same layer indices for the blocks under both sets
    with pytest.raises(ConfigError):
        sparse_parameter_names(TINY, "everything")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------- exact nonzeros


def test_er_hand_computed_with_capping():
    # A (10x10): raw 0.2; B (100x100): raw 0.02. s=0.5: target 5050, eps=5050/220 -> A density 4.6 > 1, so
    # A is dense (100) and B gets the rest, 4950 (density 0.495).
    shapes = {"A": (10, 10), "B": (100, 100)}
    assert layer_nnz(shapes, 0.5, "er") == {"A": 100, "B": 4950}
    # uniform: 0.5 of each
    assert layer_nnz(shapes, 0.5, "uniform") == {"A": 50, "B": 5000}
    # sparsity 0: everything dense under both
    assert layer_nnz(shapes, 0.0, "er") == {"A": 100, "B": 10000}


def _official_er_densities(shapes: dict[str, tuple[int, int]], sparsity: float) -> list[float]:
    """The official ``DST/scheduler.py::sparse_set`` ER loop (float arithmetic, one layer capped per pass)."""
    sizes = [a * b for a, b in shapes.values()]
    raw_all = [(a + b) / (a * b) for a, b in shapes.values()]
    dense: set[int] = set()
    while True:
        rhs, divisor, raw = 0.0, 0.0, {}
        for i, n in enumerate(sizes):
            if i in dense:
                rhs -= n * sparsity
            else:
                rhs += n * (1 - sparsity)
                raw[i] = raw_all[i]
                divisor += raw[i] * n
        eps = rhs / divisor
        top = max(raw.values())
        if top * eps > 1:
            dense |= {i for i, r in raw.items() if r == top}
        else:
            break
    return [1.0 if i in dense else raw_all[i] * eps for i in range(len(sizes))]


@pytest.mark.parametrize("sparsity", [0.1, 0.2, 0.3, 0.5, 0.9, 0.98])
@pytest.mark.parametrize("sparse_set", ["all", "blocks"])
def test_er_matches_the_official_formula_at_paper_scale(sparsity, sparse_set):
    shapes = sparse_shapes(MODEL_SIZES["paper"], sparse_set)
    nnz = layer_nnz(shapes, sparsity, "er")
    official = _official_er_densities(shapes, sparsity)
    for (name, (a, b)), d in zip(shapes.items(), official):
        assert abs(nnz[name] - d * a * b) < 1.0 + 1e-6 * a * b, name  # equal up to integer rounding
        if d == 1.0:
            assert nnz[name] == a * b  # capped layers are exactly dense
    if sparsity <= 0.2:
        assert any(d == 1.0 for d in official)  # the capping path is exercised


shape_lists = st.lists(
    st.tuples(st.integers(1, 40), st.integers(1, 40)), min_size=1, max_size=8
).map(lambda l: {f"m{i}": s for i, s in enumerate(l)})


@settings(max_examples=60, deadline=None)
@given(shapes=shape_lists, sparsity=st.floats(0.0, 0.999), distribution=st.sampled_from(["er", "uniform"]))
def test_layer_nnz_invariants(shapes, sparsity, distribution):
    nnz = layer_nnz(shapes, sparsity, distribution)
    sizes = {n: a * b for n, (a, b) in shapes.items()}
    total = sum(sizes.values())
    assert sum(nnz.values()) == round((1 - sparsity) * total) or abs(
        sum(nnz.values()) - (1 - sparsity) * total
    ) <= 0.5 + 1e-9 * total  # exact rational rounding vs float product
    assert all(0 <= nnz[n] <= sizes[n] for n in shapes)
    dens = {n: nnz[n] / sizes[n] for n in shapes}
    if distribution == "uniform":
        for n in shapes:
            assert abs(nnz[n] - (1 - sparsity) * sizes[n]) < 1.0 + 1e-9
    else:
        # uncapped layers share one eps: nnz / (n_in + n_out) equal up to one nonzero of rounding
        free = [n for n in shapes if nnz[n] < sizes[n]]
        ratios = [nnz[n] / sum(shapes[n]) for n in free]
        if len(ratios) > 1:
            spread = max(ratios) - min(ratios)
            assert spread <= 2.0 / min(sum(shapes[n]) for n in free) + 1e-12
        # density is monotone in the raw ER density (capping keeps the order), up to rounding
        raw = {n: sum(shapes[n]) / sizes[n] for n in shapes}
        for a in shapes:
            for b in shapes:
                if raw[a] > raw[b]:
                    assert dens[a] >= dens[b] - 1 / sizes[a] - 1 / sizes[b] - 1e-12


def test_layer_nnz_sum_is_exact_at_paper_scale():
    shapes = sparse_shapes(MODEL_SIZES["paper"], "all")
    total = sum(a * b for a, b in shapes.values())
    for s in (0.0, 0.25, 0.5, 0.75, 0.9, 0.95):
        for dist in ("er", "uniform"):
            assert sum(layer_nnz(shapes, s, dist).values()) == round((1 - s) * total)
    with pytest.raises(ConfigError):
        layer_nnz(shapes, 1.0)


# ---------------------------------------------------------------------------------- randomness


def test_derive_seed_is_stable_and_separates_streams():
    assert derive_seed(0, "init", -1, 3) == derive_seed(0, "init", -1, 3)
    seeds = {derive_seed(s, t, step, l) for s in (0, 1) for t in ("init", "grow") for step in (0, 100) for l in (0, 1)}
    assert len(seeds) == 16 and all(0 <= x < 2**63 for x in seeds)
    a = torch.rand(5, generator=make_generator(0, "grow", 100, 2, torch.device("cpu")))
    b = torch.rand(5, generator=make_generator(0, "grow", 100, 2, torch.device("cpu")))
    assert torch.equal(a, b)


@settings(max_examples=40, deadline=None)
@given(
    g_rows=st.integers(1, 5),
    n=st.integers(1, 60),
    data=st.data(),
)
def test_topk_rows_is_a_per_row_topk(g_rows, n, data):
    """Every row gets exactly its k, the k largest of that row (continuous random scores: no ties), for
    equal ks, ks that differ by one (the update's usual case), and arbitrary ones (0 and n included)."""
    ks = data.draw(st.lists(st.integers(0, n), min_size=g_rows, max_size=g_rows))
    seed = data.draw(st.integers(0, 2**31 - 1))
    scores = torch.rand(g_rows, n, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    got = topk_rows(scores, ks)
    assert got.dtype == torch.bool and got.shape == scores.shape
    for row, k in enumerate(ks):
        want = torch.zeros(n, dtype=torch.bool)
        want[torch.topk(scores[row], k).indices] = True
        assert torch.equal(got[row], want), (row, k)
    assert torch.equal(topk_rows(scores, ks), got)  # deterministic


def test_topk_rows_picks_what_a_per_row_topk_picks_among_ties():
    """On the CPU the row-run top-k chooses among tied scores exactly as a top-k of the row alone (what the
    per-matrix update did), also for rows whose k differs from their neighbours'."""
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        rows, n = int(torch.randint(1, 6, (), generator=g)), int(torch.randint(20, 3000, (), generator=g))
        scores = torch.randint(0, 7, (rows, n), generator=g).float()  # heavy ties
        base = int(torch.randint(1, n - 2, (), generator=g))
        ks = [base + int(torch.randint(0, 3, (), generator=g)) for _ in range(rows)]
        got = topk_rows(scores, ks)
        for row, k in enumerate(ks):
            want = torch.zeros(n, dtype=torch.bool)
            want[torch.topk(scores[row], k, sorted=False).indices] = True
            assert torch.equal(got[row], want)


def test_topk_rows_edge_cases():
    scores = torch.tensor([[0.5, -1.0, 2.0, 0.1], [3.0, 1.0, -1.0, -1.0], [0.0, 0.2, 0.3, 0.4]])
    assert torch.equal(topk_rows(scores, [0, 0, 0]), torch.zeros(3, 4, dtype=torch.bool))
    assert torch.equal(topk_rows(scores, [4, 4, 4]), torch.ones(3, 4, dtype=torch.bool))
    assert topk_rows(scores, [1, 2, 0]).tolist() == [
        [False, False, True, False], [True, True, False, False], [False, False, False, False]
    ]
    assert topk_rows(scores, [3, 0, 1]).sum(1).tolist() == [3, 0, 1]  # a k=0 row next to a large k
    assert topk_rows(torch.empty(0, 4), []).shape == (0, 4)
    with pytest.raises(ValueError):
        topk_rows(scores, [1, 2])
    with pytest.raises(ValueError):
        topk_rows(scores, [1, 5, 0])


def test_rand_into_a_row_draws_what_random_topk_draws():
    """The grouped update draws layer l's growth scores into row l of a stacked buffer with ``out=``: the
    same numbers as :func:`random_topk_`'s fresh ``torch.rand``, hence the same random masks."""
    dev = torch.device("cpu")
    buf = torch.empty(3, 50)
    torch.rand((50,), generator=make_generator(0, "grow", 8, 4, dev), device=dev, out=buf[1])
    assert torch.equal(buf[1], torch.rand((50,), generator=make_generator(0, "grow", 8, 4, dev), device=dev))
    cand = torch.rand(50, generator=torch.Generator().manual_seed(3)) > 0.3
    a, b = torch.zeros(50, dtype=torch.bool), torch.zeros(50, dtype=torch.bool)
    random_topk_(a, cand, 7, make_generator(0, "grow", 8, 4, dev))
    b[torch.topk(buf[1].masked_fill(~cand, -1.0), 7).indices] = True
    assert torch.equal(a, b)


# -------------------------------------------------------------------------------------- MaskSet


@settings(max_examples=15, deadline=None)
@given(
    sparsity=st.floats(0.0, 0.97),
    distribution=st.sampled_from(["er", "uniform"]),
    method=st.sampled_from(["random", "magnitude"]),
    sparse_set=st.sampled_from(["all", "blocks"]),
)
def test_init_exact_counts_and_zero_weights(sparsity, distribution, method, sparse_set):
    model = tiny_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    before["lm_head.weight"] = before["transformer.wte.weight"]
    ms = MaskSet(model, sparse_set, distribution)
    targets = ms.init(sparsity, seed=1, method=method)
    assert targets == layer_nnz(ms.shapes, sparsity, distribution)
    for n, p in zip(ms.names, ms.params):
        m = ms.bool_mask(n)
        assert int(torch.count_nonzero(m)) == targets[n] == ms.nnz_host[n]
        assert int(torch.count_nonzero(p[~m])) == 0
        assert torch.equal(p[m], before[n][m])  # active weights untouched
        assert ms.masks[n].dtype == p.dtype and ms.masks[n].device == p.device
        if method == "magnitude" and 0 < targets[n] < p.numel():
            assert before[n][m].abs().min() >= before[n][~m].abs().max()
    # dense parameters untouched
    for n, p in model.named_parameters():
        if n not in ms.names and n != "transformer.wte.weight":
            assert torch.equal(p, before[n])


def test_random_init_depends_on_seed_only():
    a, b, c = MaskSet(tiny_model(0)), MaskSet(tiny_model(1)), MaskSet(tiny_model(0))
    a.init(0.8, seed=5)
    b.init(0.8, seed=5)  # different weights, same seed: same random masks
    c.init(0.8, seed=6)
    assert all(torch.equal(a.masks[n], b.masks[n]) for n in a.names)
    assert not all(torch.equal(a.masks[n], c.masks[n]) for n in a.names)


def test_apply_mask_grads_and_optimizer_state():
    model = tiny_model()
    ms = MaskSet(model)
    ms.init(0.7, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = torch.randint(0, TINY.vocab_size, (2, 8))
    model(x, x)[1].backward()
    opt.step()  # gradients not masked: moments and weights become dense
    ms.mask_grads_()
    for n, p in zip(ms.names, ms.params):
        assert int(torch.count_nonzero(p.grad[~ms.bool_mask(n)])) == 0
    ms.apply_()
    assert all(int(torch.count_nonzero(p[~ms.bool_mask(n)])) == 0 for n, p in zip(ms.names, ms.params))
    where = {n: ~ms.bool_mask(n) for n in ms.names}
    ms.zero_optimizer_state_(opt, where)
    for n, p in zip(ms.names, ms.params):
        st_ = opt.state[p]
        for key in ("exp_avg", "exp_avg_sq"):
            assert int(torch.count_nonzero(st_[key][where[n]])) == 0
            assert int(torch.count_nonzero(st_[key][~where[n]])) > 0  # the rest untouched
    # the fused form: multiply every slot by a 0/1 factor in the parameter dtype (0 = zero)
    before = {n: {k: opt.state[p][k].clone() for k in ("exp_avg", "exp_avg_sq")} for n, p in zip(ms.names, ms.params)}
    g = torch.Generator().manual_seed(0)
    keep = {n: (torch.rand(p.shape, generator=g) > 0.5).to(p.dtype) for n, p in zip(ms.names, ms.params)}
    del keep[ms.names[0]]  # matrices not listed are untouched
    ms.zero_optimizer_state_(opt, keep=keep)
    for n, p in zip(ms.names, ms.params):
        for key in ("exp_avg", "exp_avg_sq"):
            want = before[n][key] * keep[n] if n in keep else before[n][key]
            assert torch.equal(opt.state[p][key], want), (n, key)
        assert opt.state[p]["step"].shape == ()  # scalar slots are left alone
    assert ms.nnz() == sum(layer_nnz(ms.shapes, 0.7).values())
    assert ms.density() == pytest.approx(0.3, abs=1e-3)
    rows = ms.per_layer()
    assert [r["name"] for r in rows] == ms.names and sum(r["nnz"] for r in rows) == ms.nnz()


def test_state_dict_round_trip():
    a = MaskSet(tiny_model(0))
    a.init(0.85, seed=3)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = MaskSet(tiny_model(1))
    b.load_state_dict(torch.load(buf))
    for n, p in zip(b.names, b.params):
        assert torch.equal(a.masks[n], b.masks[n]) and b.nnz_host[n] == a.nnz_host[n]
        assert int(torch.count_nonzero(p[~b.bool_mask(n)])) == 0
    with pytest.raises(CheckpointError):
        MaskSet(tiny_model(), "blocks").load_state_dict(a.state_dict())


# ------------------------------------------------------------------------------------------- CLI


def test_cli_json(capsys):
    assert cli.main(["masks", "--preset", "smoke", "--sparsity", "0.9", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    model_cfg = MODEL_SIZES["smoke"]
    shapes = sparse_shapes(model_cfg, out["sparse_set"])
    assert [m["name"] for m in out["matrices"]] == list(shapes)
    for m in out["matrices"]:
        assert set(m) >= {"name", "shape", "nnz", "density"}
        assert tuple(m["shape"]) == shapes[m["name"]]
        assert m["density"] == pytest.approx(m["nnz"] / np.prod(m["shape"]))
    total = sum(a * b for a, b in shapes.values())
    assert out["nnz"] == sum(m["nnz"] for m in out["matrices"]) == round(0.1 * total)


def test_cli_table_and_errors(capsys):
    assert cli.main(["masks", "--preset", "smoke", "--sparsity", "0.5", "--distribution", "uniform",
                     "--sparse-set", "blocks"]) == 0
    text = capsys.readouterr().out
    assert "transformer.h.1.mlp.c_proj.weight" in text and "lm_head" not in text and "total" in text
    assert cli.main(["masks", "--preset", "smoke", "--sparsity", "1.0"]) == 2
    assert "sparsity" in capsys.readouterr().err
