"""Topology evolution invariants: exact nonzeros, zeros stay zero (weights, gradients, AdamW moments), grown
weights born at zero, prune == grow at constant sparsity, identical masks across ranks (simulated and a
real 2-process gloo group), sparsity 0 == dense bit for bit, checkpoint round trip."""

from __future__ import annotations

import copy
import io
import os
import socket
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mstlib import schedule as S
from mstlib.config import ModelConfig, RunConfig, ScheduleConfig, SparsityConfig, TopologyConfig, TrainConfig
from mstlib.errors import CheckpointError, MstError
from mstlib.masks import layer_nnz
from mstlib.model import GPT
from mstlib.topology import Sparsifier

TINY = ModelConfig(n_layer=2, n_head=2, n_embd=16, block_size=16, vocab_size=64)
MST = ScheduleConfig(kind="mst", s_max=0.9, s_end=0.5, warmup_end=0.25, restore_start=0.75)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see tests/conftest.py


def make_run(schedule: ScheduleConfig = MST, max_iters: int = 40, seed: int = 0, sparsity=None, **topo) -> RunConfig:
    return RunConfig(
        seed=seed,
        model=TINY,
        schedule=schedule,
        sparsity=sparsity or SparsityConfig(),
        topology=TopologyConfig(**{"update_interval": 4, "skip_step_on_update": False, **topo}),
        train=TrainConfig(max_iters=max_iters, warmup_iters=2),
    ).validate()


def make_model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(TINY)


def batch(step: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 * seed + step)
    return torch.randint(0, TINY.vocab_size, (2, 12), generator=g)


def sparse_step(model, opt, sp: Sparsifier | None, step: int, run: RunConfig, on_update=None):
    """One training step the way the trainer does it."""
    x = batch(step)
    model(x, x)[1].backward()
    skip = False
    if sp is not None and sp.is_update_step(step):
        old = {n: sp.masks.bool_mask(n).clone() for n in sp.masks.names}
        stats = sp.update(step)
        if on_update is not None:
            on_update(step, old, stats)
        skip = run.topology.skip_step_on_update
    if sp is not None:
        sp.mask_grads_()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    if not skip:
        for group in opt.param_groups:
            group["lr"] = S.lr_at(step, run.train) or 1e-3
        opt.step()
    if sp is not None:
        sp.apply_()
    opt.zero_grad(set_to_none=True)


def assert_masked_zero(sp: Sparsifier, opt=None, grads: bool = False):
    for n, p in zip(sp.masks.names, sp.masks.params):
        off = ~sp.masks.bool_mask(n)
        assert int(torch.count_nonzero(p[off])) == 0, n
        if grads and p.grad is not None:
            assert int(torch.count_nonzero(p.grad[off])) == 0, n
        if opt is not None and opt.state.get(p):
            for key in ("exp_avg", "exp_avg_sq"):
                assert int(torch.count_nonzero(opt.state[p][key][off])) == 0, (n, key)


def assert_exact_counts(sp: Sparsifier, sparsity: float):
    targets = layer_nnz(sp.masks.shapes, sparsity, sp.run.sparsity.distribution)
    for n, p in zip(sp.masks.names, sp.masks.params):
        assert int(torch.count_nonzero(sp.masks.masks[n])) == targets[n] == sp.masks.nnz_host[n], n
        assert int(torch.count_nonzero(p)) <= targets[n]


# --------------------------------------------------------------------------------- a whole run


@pytest.mark.parametrize("growth", ["mixed", "gradient", "random", "none"])
def test_mst_run_invariants(growth):
    run = make_run(growth=growth, skip_step_on_update=(growth == "mixed"))
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    sp = Sparsifier(model, run, opt)
    assert sp.density() == 1.0  # MST starts dense
    seen = []

    def check(step, old, stats):
        seen.append(step)
        target = S.target_sparsity(step / run.train.max_iters, run.schedule)
        assert stats["target_sparsity"] == target
        assert_exact_counts(sp, target)
        assert_masked_zero(sp, opt, grads=True)
        for row in stats["layers"]:
            n = row["name"]
            new = sp.masks.bool_mask(n)
            born, died = new & ~old[n], old[n] & ~new
            p = sp.masks.model.get_parameter(n)
            assert int(torch.count_nonzero(p[born])) == 0  # grown weights start at zero
            for key in ("exp_avg", "exp_avg_sq"):
                if opt.state.get(p):
                    assert int(torch.count_nonzero(opt.state[p][key][born | died])) == 0
            assert row["switched_on"] == int(born.sum()) and row["switched_off"] == int(died.sum())
            assert row["pruned"] - row["grown"] == int(old[n].sum()) - int(new.sum())
            if growth == "none":
                assert row["pruned"] == 0 or row["grown"] == 0  # only the net change moves weights

    for step in range(run.train.max_iters):
        sparse_step(model, opt, sp, step, run, check)
        assert_masked_zero(sp, opt)
    assert seen == S.update_steps(run)
    assert sp.density() == pytest.approx(1 - S.sparsity_in_force(run.train.max_iters - 1, run), abs=1e-3)


def test_constant_sparsity_prunes_as_many_as_it_grows():
    run = make_run(ScheduleConfig(kind="constant", sparsity=0.8), growth="mixed", drop_fraction=0.3)
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sp = Sparsifier(model, run, opt)
    assert_exact_counts(sp, 0.8)
    exchanged = []

    def check(step, old, stats):
        assert_exact_counts(sp, 0.8)
        for row in stats["layers"]:
            assert row["pruned"] == row["grown"] and row["switched_on"] == row["switched_off"]
        exchanged.append(stats["switched_on"])

    for step in range(20):
        sparse_step(model, opt, sp, step, run, check)
    assert len(exchanged) == 4 and sum(exchanged) > 0  # the topology really moved


def test_sparsity_change_is_net_prune_then_net_grow():
    run = make_run(growth="gradient")
    model = make_model()
    sp = Sparsifier(model, run)
    x = batch(0)
    model(x, x)[1].backward()
    up = sp.update(4)  # warm-up: the target rises
    assert up["pruned"] > up["grown"] and up["density"] < 1.0
    down = sp.update(36)  # restoration: the target falls
    assert down["grown"] > down["pruned"]
    assert_exact_counts(sp, S.target_sparsity(36 / 40, MST))


def test_drop_smallest_magnitude_and_grow_largest_gradient():
    run = make_run(ScheduleConfig(kind="constant", sparsity=0.5), growth="gradient", drop_anneal="constant",
                   drop_fraction=0.1)
    model = make_model()
    sp = Sparsifier(model, run)
    name = "transformer.h.0.mlp.c_fc.weight"
    p = model.get_parameter(name)
    mask = sp.masks.bool_mask(name)
    with torch.no_grad():
        on, off = mask.nonzero()[:1], (~mask).nonzero()[:1]
        smallest, hot = tuple(on[0].tolist()), tuple(off[0].tolist())
        p[smallest] = 1e-12  # the smallest active weight: must be dropped
        for q in sp.masks.params:
            q.grad = torch.ones_like(q)
        p.grad[smallest] = 0.0  # so it cannot be regrown (every other candidate has gradient 1)
        p.grad[hot] = 1e3  # the largest gradient among the inactive: must be grown
    sp.update(4)
    new = sp.masks.bool_mask(name)
    assert not new[smallest] and new[hot]
    assert p[hot] == 0.0


def test_masks_identical_across_simulated_ranks():
    run = make_run(ScheduleConfig(kind="constant", sparsity=0.7), growth="mixed")
    a = make_model()
    b = copy.deepcopy(a)
    sa, sb = Sparsifier(a, run), Sparsifier(b, run)
    for step in (4, 8, 12):
        x = batch(step)
        a(x, x)[1].backward()
        for pa, pb in zip(a.parameters(), b.parameters()):
            pb.grad = pa.grad.clone()  # what DDP's averaging gives every rank
        sa.update(step), sb.update(step)
        for n in sa.masks.names:
            assert torch.equal(sa.masks.masks[n], sb.masks.masks[n])
        a.zero_grad(), b.zero_grad()
    # and the random stream is really used: another seed gives other masks
    c = Sparsifier(copy.deepcopy(a), run.replace(seed=1))
    assert not all(torch.equal(sa.masks.masks[n], c.masks.masks[n]) for n in sa.masks.names)


def test_sparsity_zero_is_dense_bit_for_bit():
    run = make_run(ScheduleConfig(kind="constant", sparsity=0.0), growth="mixed", update_interval=2,
                   drop_anneal="constant", drop_fraction=0.5, skip_step_on_update=False)
    dense = make_model()
    sparse = copy.deepcopy(dense)
    opt_d = torch.optim.AdamW(dense.parameters(), lr=1e-2, weight_decay=0.1)
    opt_s = torch.optim.AdamW(sparse.parameters(), lr=1e-2, weight_decay=0.1)
    sp = Sparsifier(sparse, run, opt_s)
    updates = []
    for step in range(8):
        sparse_step(dense, opt_d, None, step, run)
        sparse_step(sparse, opt_s, sp, step, run, lambda s, o, st_: updates.append(st_["pruned"]))
    assert len(updates) == 3 and all(u > 0 for u in updates)  # drops happened and were all regrown
    for (n, pd), ps in zip(dense.named_parameters(), sparse.parameters()):
        assert torch.equal(pd, ps), n
    for pd, ps in zip(dense.parameters(), sparse.parameters()):
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(opt_d.state[pd][key], opt_s.state[ps][key])


def test_official_moment_behaviour_switch():
    """mask_optimizer_moments=False (the official code) leaves stale AdamW moments at pruned weights."""
    run = make_run(ScheduleConfig(kind="constant", sparsity=0.6), growth="random", drop_fraction=0.3)
    results = {}
    for flag in (True, False):
        model = make_model()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        sp = Sparsifier(model, run.replace(**{"topology.mask_optimizer_moments": flag}), opt)
        assert sp.mask_optimizer_moments is flag
        for step in range(5):
            sparse_step(model, opt, sp, step, run)
        results[flag] = sum(
            int(torch.count_nonzero(opt.state[p]["exp_avg"][~sp.masks.bool_mask(n)]))
            for n, p in zip(sp.masks.names, sp.masks.params)
        )
    assert results[True] == 0 and results[False] > 0
    assert not Sparsifier(make_model(), run, mask_optimizer_moments=False).mask_optimizer_moments  # override


def test_after_step_rezeroes_only_without_masked_moments():
    """after_step_ (the trainer's call after every optimizer step) is a no-op when moments are masked (AdamW
    keeps masked weights at 0 by itself) and re-zeroes the masked weights for the official behaviour."""
    run = make_run(ScheduleConfig(kind="constant", sparsity=0.6), growth="random")
    for flag in (True, False):
        sp = Sparsifier(make_model(), run, mask_optimizer_moments=flag)
        name, param = sp.masks.names[0], sp.masks.params[0]
        off = ~sp.masks.bool_mask(name)
        with torch.no_grad():
            param[off] = 1.0  # as stale moments would move them
        sp.after_step_()
        assert bool((param[off] == 0).all()) is (not flag)


def test_gradient_growth_needs_gradients():
    sp = Sparsifier(make_model(), make_run(ScheduleConfig(kind="constant", sparsity=0.5), growth="gradient"))
    with pytest.raises(MstError, match="no .grad"):
        sp.update(4)


def test_state_dict_round_trip():
    run = make_run(ScheduleConfig(kind="constant", sparsity=0.75), growth="mixed")
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sp = Sparsifier(model, run, opt)
    for step in range(9):
        sparse_step(model, opt, sp, step, run)
    buf = io.BytesIO()
    torch.save(sp.state_dict(), buf)
    buf.seek(0)
    other = make_model(seed=3)
    other.load_state_dict(model.state_dict())
    sp2 = Sparsifier(other, run.replace(seed=9))  # draws different masks first
    sp2.load_state_dict(torch.load(buf))
    for n in sp.masks.names:
        assert torch.equal(sp.masks.masks[n], sp2.masks.masks[n])
    assert sp2.last_update_step == 8 and sp2.target == sp.target and sp2.nnz() == sp.nnz()
    with pytest.raises(CheckpointError):
        sp2.load_state_dict({"version": 0})


# ------------------------------------------------------------------------- property-based update


@settings(max_examples=25, deadline=None)
@given(
    s_init=st.floats(0.0, 0.95),
    s_next=st.floats(0.0, 0.95),
    f=st.floats(0.0, 0.9),
    growth=st.sampled_from(["gradient", "random", "mixed", "none"]),
    distribution=st.sampled_from(["er", "uniform"]),
    sparse_set=st.sampled_from(["all", "blocks"]),
    step=st.integers(1, 9).map(lambda k: 4 * k),
)
def test_update_invariants(s_init, s_next, f, growth, distribution, sparse_set, step):
    run = make_run(
        ScheduleConfig(kind="constant", sparsity=s_next),
        sparsity=SparsityConfig(sparse_set=sparse_set, distribution=distribution),
        growth=growth, drop_anneal="constant", drop_fraction=f,
    )
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sp = Sparsifier(model, run, opt)
    sp.masks.init(s_init, seed=2)  # start elsewhere, so the update changes the density
    x = batch(step)
    model(x, x)[1].backward()
    sp.mask_grads_()
    opt.step()
    sp.apply_()
    model(x, x)[1].backward()
    old = {n: sp.masks.bool_mask(n).clone() for n in sp.masks.names}
    stats = sp.update(step)
    assert_exact_counts(sp, s_next)
    assert_masked_zero(sp, opt, grads=True)
    effective_f = 0.0 if growth == "none" else f
    for row in stats["layers"]:
        n = row["name"]
        new = sp.masks.bool_mask(n)
        born = new & ~old[n]
        assert int(torch.count_nonzero(model.get_parameter(n)[born])) == 0
        n_active = int(old[n].sum())
        surplus = n_active - row["target_nnz"]
        assert row["pruned"] == min(max(int(effective_f * n_active), surplus), n_active)
        assert row["grown"] == row["pruned"] - surplus


# ------------------------------------------------------------------------------ real 2-process gloo


def _gloo_worker(rank: int, port: int, out: str) -> None:
    """One rank: its own data, gradients averaged over the group (what DDP does), the trainer's step."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        run = make_run(update_interval=2, growth="mixed", skip_step_on_update=True, max_iters=12)
        model = make_model()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        sp = Sparsifier(model, run, opt)
        for step in range(run.train.max_iters):
            x = batch(step, seed=1 + rank)  # every rank sees different data
            model(x, x)[1].backward()
            for p in model.parameters():  # DDP's all-reduce mean (DDP itself imports torch._dynamo: 5 s)
                dist.all_reduce(p.grad)
                p.grad /= 2
            skip = sp.is_update_step(step)
            if skip:
                sp.update(step)
            sp.mask_grads_()
            if not skip:
                opt.step()
            sp.apply_()
            opt.zero_grad(set_to_none=True)
        torch.save({n: sp.masks.bool_mask(n) for n in sp.masks.names}, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_masks_identical_across_real_gloo_ranks(tmp_path: Path):
    import multiprocessing as mp

    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    # fork: the children inherit the imported torch (a fresh interpreter costs seconds per rank); but not
    # after CUDA was used in this process (earlier tests on a GPU machine): autograd's device threads make
    # a forked child fail ("Unable to handle autograd's threading in combination with fork")
    fork_ok = "fork" in mp.get_all_start_methods() and not (torch.cuda.is_available() and torch.cuda.is_initialized())
    ctx = mp.get_context("fork" if fork_ok else "spawn")
    port = _free_port()
    procs = [ctx.Process(target=_gloo_worker, args=(r, port, str(tmp_path))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    for p in procs:
        if p.is_alive():
            p.kill()
            pytest.fail("gloo worker timed out")
    assert [p.exitcode for p in procs] == [0, 0]
    m0, m1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert list(m0) == list(m1)
    for n in m0:
        assert torch.equal(m0[n], m1[n]), n
    # the masks did evolve (not just the dense start), and rank-local gradients would have differed
    assert sum(int(m.sum()) for m in m0.values()) < sum(m.numel() for m in m0.values())


def test_unwraps_compiled_and_ddp_wrappers():
    class Wrapped(torch.nn.Module):  # what torch.compile returns exposes the module as _orig_mod
        def __init__(self, inner):
            super().__init__()
            self._orig_mod = inner

    model = make_model()
    sp = Sparsifier(Wrapped(model), make_run(ScheduleConfig(kind="constant", sparsity=0.5), growth="random"))
    assert sp.masks.model is model


def test_masked_weights_stay_zero_without_apply():
    """With masked gradients and zeroed moments AdamW itself keeps masked weights at exactly 0 (so apply_()
    after the optimizer step is only a safety net), weight decay included."""
    run = make_run(ScheduleConfig(kind="constant", sparsity=0.7), growth="mixed", update_interval=3)
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    sp = Sparsifier(model, run, opt)
    for step in range(10):
        x = batch(step)
        model(x, x)[1].backward()
        if sp.is_update_step(step):
            sp.update(step)
        sp.mask_grads_()
        opt.step()
        opt.zero_grad(set_to_none=True)
        assert_masked_zero(sp, opt)


# ------------------------------------------------------ the grouped update against a per-layer loop


def reference_update(sp: Sparsifier, step: int) -> dict:
    """The straightforward per-matrix loop (the implementation before matrices were grouped by shape): the
    module docstring's steps 1-4, one matrix at a time. :meth:`Sparsifier.update` must match it exactly."""
    import math

    from mstlib.masks import make_generator, random_topk_

    run, ms = sp.run, sp.masks
    target_s = S.target_sparsity(S.progress(step, run.train.max_iters), run.schedule)
    f = S.drop_fraction(step, run)
    targets = layer_nnz(ms.shapes, target_s, ms.distribution)
    changed, rows, counts = {}, [], []
    with torch.no_grad():
        for layer, (name, param) in enumerate(zip(ms.names, ms.params)):
            old = ms.bool_mask(name).flatten()
            n_active, target = ms.nnz_host[name], targets[name]
            surplus = n_active - target
            n_prune = min(max(math.floor(f * n_active), surplus), n_active)
            n_grow = n_prune - surplus
            w = param.detach().view(-1)
            n_keep = n_active - n_prune
            new = torch.zeros_like(old)
            if n_keep > 0:
                score = w.abs().float().masked_fill_(~old, -1.0)
                new[torch.topk(score, n_keep, sorted=False).indices] = True
            n_grad, n_rand = sp._split_growth(n_grow)
            candidates = ~new
            if n_grad > 0:
                gscore = param.grad.detach().view(-1).abs().float().masked_fill_(~candidates, -1.0)
                idx = torch.topk(gscore, n_grad, sorted=False).indices
                new[idx] = True
                candidates[idx] = False
            if n_rand > 0:
                random_topk_(new, candidates, n_rand, make_generator(run.seed, "grow", step, layer, param.device))
            born, died = new & ~old, old & ~new
            w.masked_fill_(born, 0.0)
            ms.masks[name].copy_(new.view(param.shape))
            ms.nnz_host[name] = target
            changed[name] = (born | died).view(param.shape)
            counts.append(torch.stack([born.sum(), died.sum()]))
            rows.append({"name": name, "target_nnz": target, "nnz": target, "pruned": n_prune, "grown": n_grow})
        if sp.optimizer is not None and sp.mask_optimizer_moments:
            ms.zero_optimizer_state_(sp.optimizer, changed)
        ms.apply_()
        ms.mask_grads_()
    for row, (on, off) in zip(rows, torch.stack(counts).tolist()):
        row["switched_on"], row["switched_off"] = int(on), int(off)
        row["density"] = row["nnz"] / math.prod(ms.shapes[row["name"]])
    sp.target, sp.last_update_step = target_s, step
    return {
        "step": step, "target_sparsity": target_s, "drop_fraction": f,
        "pruned": sum(r["pruned"] for r in rows), "grown": sum(r["grown"] for r in rows),
        "switched_off": sum(r["switched_off"] for r in rows), "switched_on": sum(r["switched_on"] for r in rows),
        "nnz": ms.nnz(), "density": ms.density(), "layers": rows,
    }


def _random_bundle(run: RunConfig, model_cfg: ModelConfig, s_init: float, moments: bool, device: str):
    """A GPT with random float weights and gradients (no ties in |w| or |grad|) and random AdamW moments,
    its Sparsifier with masks drawn at ``s_init``: built twice from the same seeds, the same bundle."""
    torch.manual_seed(0)
    model = GPT(model_cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sp = Sparsifier(model, run, opt, mask_optimizer_moments=moments)
    sp.masks.init(s_init, seed=5)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():  # after the masks: the init zeroes weights, whose |w| would tie
            p.copy_(torch.randn(p.shape, generator=g))
            p.grad = torch.randn(p.shape, generator=g).to(device)
            opt.state[p] = {"step": torch.tensor(3.0), "exp_avg": torch.randn(p.shape, generator=g).to(device),
                            "exp_avg_sq": torch.rand(p.shape, generator=g).to(device)}
    sp.apply_()
    return model, opt, sp


def _new_weights_and_grads(sp: Sparsifier, step: int) -> None:
    """What training between two updates does to the ties: the weights grown at 0 move away from it."""
    g = torch.Generator().manual_seed(100 + step)
    with torch.no_grad():
        for p in sp.masks.model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
            p.grad = torch.randn(p.shape, generator=g).to(p.device)
    sp.apply_()


#: the grouped update is also compared on the GPU where there is one (its topk and RNG are other kernels)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("growth", ["gradient", "random", "mixed", "none"])
@pytest.mark.parametrize("distribution", ["er", "uniform"])
@pytest.mark.parametrize("sparse_set", ["all", "blocks"])
@pytest.mark.parametrize("direction", ["rising", "falling", "constant"])
def test_grouped_update_matches_per_layer_reference(growth, distribution, sparse_set, direction):
    # 3 blocks: every block-matrix group has 3 rows, whose counts differ by one where ER / uniform rounding
    # gives the first layers the remainder (so the per-row k of the batched top-k is exercised); vocab 64
    # makes lm_head the shape of mlp.c_fc (a 4-row group of two kinds), vocab 80 gives it its own group.
    s_init, s_next = {"rising": (0.3, 0.85), "falling": (0.85, 0.2), "constant": (0.6, 0.6)}[direction]
    sched = ScheduleConfig(kind="constant", sparsity=s_next)
    for device, vocab, moments in [(d, v, m) for d in DEVICES for v, m in ((64, True), (80, growth != "mixed"))]:
        model_cfg = ModelConfig(n_layer=3, n_head=2, n_embd=16, block_size=16, vocab_size=vocab)
        run = make_run(sched, sparsity=SparsityConfig(sparse_set=sparse_set, distribution=distribution),
                       growth=growth, drop_anneal="constant", drop_fraction=0.3, mix_gradient_fraction=0.6)
        run = run.replace(**{"model.n_layer": model_cfg.n_layer, "model.vocab_size": vocab})
        assert run.model == model_cfg
        ma, oa, sa = _random_bundle(run, model_cfg, s_init, moments, device)
        mb, ob, sb = _random_bundle(run, model_cfg, s_init, moments, device)
        for step in (4, 8, 12):  # the first update changes the density, the next ones exchange at constant
            if step > 4:
                _new_weights_and_grads(sa, step), _new_weights_and_grads(sb, step)
            got, want = sa.update(step), reference_update(sb, step)
            assert got == want, (device, vocab, step)
            for n in sa.masks.names:
                assert torch.equal(sa.masks.masks[n], sb.masks.masks[n]), (device, vocab, step, n)
            assert sa.masks.nnz_host == sb.masks.nnz_host
            for (n, pa), pb in zip(ma.named_parameters(), mb.parameters()):
                assert torch.equal(pa, pb), (device, vocab, step, n)
                assert torch.equal(pa.grad, pb.grad), (device, vocab, step, n)
                for key in ("exp_avg", "exp_avg_sq"):
                    assert torch.equal(oa.state[pa][key], ob.state[pb][key]), (device, vocab, step, n, key)
            assert (sa.target, sa.last_update_step) == (sb.target, sb.last_update_step)
        if growth != "none":
            assert got["switched_on"] > 0  # the topology really moved in the last (constant) update


@pytest.mark.parametrize("growth", ["gradient", "random", "mixed", "none"])
def test_grouped_update_matches_per_layer_reference_among_ties_on_cpu(growth):
    """With weights and gradients from five values (ties everywhere, as in a model whose grown weights are
    still 0), the grouped update still picks what the per-matrix loop picked: on the CPU a top-k over
    several rows treats each row like a top-k of that row alone."""
    model_cfg = ModelConfig(n_layer=3, n_head=2, n_embd=16, block_size=16, vocab_size=64)
    run = make_run(ScheduleConfig(kind="constant", sparsity=0.7), growth=growth, drop_anneal="constant",
                   drop_fraction=0.3).replace(**{"model.n_layer": 3})
    bundles = []
    for _ in range(2):
        ma, opt, sp = _random_bundle(run, model_cfg, 0.4, True, "cpu")
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in ma.parameters():
                p.copy_(torch.randint(0, 5, p.shape, generator=g).float())
                p.grad = torch.randint(0, 5, p.shape, generator=g).float()
        sp.apply_()
        bundles.append((ma, sp))
    (ma, sa), (mb, sb) = bundles
    for step in (4, 8, 12):  # the weights grown at 0 tie with each other at the next updates
        assert sa.update(step) == reference_update(sb, step)
        for n in sa.masks.names:
            assert torch.equal(sa.masks.masks[n], sb.masks.masks[n]), (step, n)
        for pa, pb in zip(ma.parameters(), mb.parameters()):
            assert torch.equal(pa, pb)
