"""Tests of mstlib.experimental.blocksparse: block patterns, dense <-> compact conversion, and the block-sparse linear
backends against a dense reference (float64 on CPU; the Triton backends against gather on CUDA, and the
own Triton kernels also on CPU through Triton's interpreter)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from mstlib.experimental import blocksparse as bs
from mstlib.errors import ConfigError

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (and Triton) for the Triton backends")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tiles_by_loop(weight: torch.Tensor, bm: torch.Tensor, b: int) -> torch.Tensor:
    """The nonzero tiles of ``weight`` in row-major block order, by explicit slicing (independent of the
    library's indexing)."""
    out = []
    for r in range(bm.shape[0]):
        for c in range(bm.shape[1]):
            if bm[r, c]:
                out.append(weight[r * b : (r + 1) * b, c * b : (c + 1) * b])
    return torch.stack(out)


# ------------------------------------------------------------------------------------------------- masks


@pytest.mark.parametrize(
    "out_f, in_f, block, density, expected",
    [
        (64, 32, 8, 0.25, 8),  # 8 x 4 = 32 blocks
        (96, 64, 16, 0.5, 12),  # 6 x 4 = 24 blocks
        (80, 40, 8, 0.3, 15),  # 10 x 5 = 50 blocks
        (48, 16, 16, 1.0, 3),  # all of 3 blocks
        (32, 24, 8, 0.3, 4),  # 0.3 x 12 = 3.6 rounds to 4 (not truncated to 3)
        (32, 32, 8, 0.01, 1),  # round(0.16) = 0, but at least one block
    ],
)
def test_block_mask_has_exactly_the_requested_number_of_blocks(out_f, in_f, block, density, expected) -> None:
    bm = bs.block_mask(out_f, in_f, block, density, gen(0))
    assert bm.dtype == torch.bool
    assert tuple(bm.shape) == (out_f // block, in_f // block)
    assert int(bm.sum()) == expected


def test_block_mask_is_reproducible_and_depends_on_the_seed() -> None:
    a = bs.block_mask(128, 128, 8, 0.3, gen(1))
    assert torch.equal(a, bs.block_mask(128, 128, 8, 0.3, gen(1)))
    assert not torch.equal(a, bs.block_mask(128, 128, 8, 0.3, gen(2)))


@pytest.mark.parametrize(
    "out_f, in_f, block, density",
    [
        (64, 30, 8, 0.5),  # 8 does not divide 30
        (60, 32, 8, 0.5),  # 8 does not divide 60
        (64, 32, 0, 0.5),
        (64, 32, 8, 0.0),
        (64, 32, 8, -0.1),
        (64, 32, 8, 1.01),
        (64, 32, 8, math.nan),
    ],
)
def test_block_mask_rejects_bad_shapes_and_densities(out_f, in_f, block, density) -> None:
    with pytest.raises(ConfigError):
        bs.block_mask(out_f, in_f, block, density, gen(0))


def test_expand_repeats_each_block_entry_over_its_tile() -> None:
    bm = torch.tensor([[True, False, True], [False, True, False]])
    m = bs.expand(bm, 2)
    assert tuple(m.shape) == (4, 6)
    for i in range(4):
        for j in range(6):
            assert bool(m[i, j]) == bool(bm[i // 2, j // 2])


# --------------------------------------------------------------------------------------------- patterns


@pytest.mark.filterwarnings("ignore:Sparse BSR tensor support is in beta state")
def test_pattern_matches_torch_bsr_layout_and_its_transpose() -> None:
    b = 4
    bm = bs.block_mask(24, 16, b, 0.4, gen(3))
    w = torch.randn(24, 16, dtype=torch.float64) * bs.expand(bm, b)
    p = bs.BlockPattern.from_block_mask(bm, b)
    ref = w.to_sparse_bsr((b, b))
    assert torch.equal(p.crow, ref.crow_indices())
    assert torch.equal(p.cols, ref.col_indices())
    values = bs.dense_to_blocks(w, p)
    assert torch.equal(values, ref.values())
    # the transposed pattern, with the re-ordered transposed tiles, is W^T
    ref_t = w.t().contiguous().to_sparse_bsr((b, b))
    assert torch.equal(p.t_crow, ref_t.crow_indices())
    assert torch.equal(p.t_col, ref_t.col_indices())
    assert torch.equal(values[p.t_perm].transpose(1, 2), ref_t.values())
    assert torch.equal(p.block_mask(), bm)
    assert p.nnzb == int(bm.sum()) and p.density == pytest.approx(int(bm.sum()) / bm.numel())


def test_pattern_from_element_mask_accepts_tiles_and_rejects_other_masks() -> None:
    bm = bs.block_mask(16, 24, 8, 0.5, gen(4))
    mask = bs.expand(bm, 8)
    assert torch.equal(bs.BlockPattern.from_element_mask(mask, 8).block_mask(), bm)
    broken = mask.clone()
    broken[0, 0] = ~broken[0, 0]
    with pytest.raises(ConfigError):
        bs.BlockPattern.from_element_mask(broken, 8)


def test_pattern_needs_a_nonzero_block() -> None:
    with pytest.raises(ConfigError):
        bs.BlockPattern.from_block_mask(torch.zeros(2, 3, dtype=torch.bool), 4)


def test_dense_compact_round_trip() -> None:
    b = 8
    bm = bs.block_mask(40, 24, b, 0.5, gen(5))
    p = bs.BlockPattern.from_block_mask(bm, b)
    w = torch.randn(40, 24, dtype=torch.float64)
    values = bs.dense_to_blocks(w, p)
    assert tuple(values.shape) == (p.nnzb, b, b)
    assert torch.equal(values, tiles_by_loop(w, bm, b))
    dense = bs.blocks_to_dense(values, p)
    assert torch.equal(dense, w * bs.expand(bm, b))
    assert torch.equal(bs.dense_to_blocks(dense, p), values)


def test_conversions_reject_mismatched_shapes() -> None:
    p = bs.BlockPattern.from_block_mask(bs.block_mask(16, 16, 4, 0.5, gen(0)), 4)
    with pytest.raises(ConfigError):
        bs.dense_to_blocks(torch.zeros(16, 12), p)
    with pytest.raises(ConfigError):
        bs.blocks_to_dense(torch.zeros(p.nnzb + 1, 4, 4), p)


# -------------------------------------------------------------------------------- linear: CPU backends


SHAPES = [  # out, in, block, density, tokens
    (48, 32, 8, 0.5, 20),
    (32, 64, 16, 0.3, 7),  # wide
    (64, 16, 8, 0.1, 9),  # tall, 2 blocks of 16
    (24, 24, 4, 1.0, 5),  # every block
]


def reference(out_f, in_f, block, density, n, seed=0, lead=()):
    """x, the block mask, the dense masked weight (a leaf) and the random output gradient, in float64."""
    g = gen(seed)
    bm = bs.block_mask(out_f, in_f, block, density, g)
    w = (torch.randn(out_f, in_f, generator=g, dtype=torch.float64) * bs.expand(bm, block)).requires_grad_()
    x = torch.randn(*lead, n, in_f, generator=g, dtype=torch.float64, requires_grad=True)
    gy = torch.randn(*lead, n, out_f, generator=g, dtype=torch.float64)
    return x, bm, w, gy


@pytest.mark.parametrize("backend", ["gather", "dense_masked"])
@pytest.mark.parametrize("out_f, in_f, block, density, n", SHAPES)
def test_linear_forward_and_gradients_match_dense_reference(backend, out_f, in_f, block, density, n) -> None:
    x, bm, w, gy = reference(out_f, in_f, block, density, n)
    y_ref = x @ w.t()
    (y_ref * gy).sum().backward()
    gx_ref, gw_ref = x.grad.clone(), w.grad.clone()

    x2 = x.detach().clone().requires_grad_()
    values = tiles_by_loop(w.detach(), bm, block).clone().requires_grad_()
    p = bs.BlockPattern.from_block_mask(bm, block)
    y = bs.block_sparse_linear(x2, values, p, backend)
    (y * gy).sum().backward()

    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x2.grad, gx_ref, rtol=1e-12, atol=1e-12)
    assert tuple(values.grad.shape) == (p.nnzb, block, block)
    torch.testing.assert_close(values.grad, tiles_by_loop(gw_ref, bm, block), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["gather", "dense_masked"])
def test_linear_accepts_leading_batch_dimensions(backend) -> None:
    x, bm, w, gy = reference(32, 16, 8, 0.5, 6, lead=(3,))
    p = bs.BlockPattern.from_block_mask(bm, 8)
    values = bs.dense_to_blocks(w.detach(), p).requires_grad_()
    y = bs.block_sparse_linear(x, values, p, backend)
    assert tuple(y.shape) == (3, 6, 32)
    torch.testing.assert_close(y, x @ w.detach().t())
    (y * gy).sum().backward()
    torch.testing.assert_close(x.grad, gy @ w.detach())


class _LargestOutput(TorchDispatchMode):
    """Records the largest number of elements of any tensor an op produces."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("backend, forms_dense", [("gather", False), ("dense_masked", True)])
def test_gather_never_forms_a_dense_weight_or_weight_gradient(backend, forms_dense) -> None:
    # a 256x256 weight with one 64x64 block and 3 tokens: every tensor the sparse path needs is far
    # smaller than out*in; the dense_masked path shows that the check would catch a dense one
    out_f = in_f = 256
    bm = bs.block_mask(out_f, in_f, 64, 1 / 16, gen(6))
    p = bs.BlockPattern.from_block_mask(bm, 64)
    values = torch.randn(p.nnzb, 64, 64, requires_grad=True)
    x = torch.randn(3, in_f, requires_grad=True)
    with _LargestOutput() as mode:
        y = bs.block_sparse_linear(x, values, p, backend)
        y.sum().backward()
    assert tuple(values.grad.shape) == (1, 64, 64)
    assert (mode.largest >= out_f * in_f) == forms_dense


def test_linear_under_cpu_autocast_computes_in_bfloat16_and_returns_float32_gradients() -> None:
    x, bm, w, gy = reference(32, 32, 8, 0.5, 16)
    p = bs.BlockPattern.from_block_mask(bm, 8)
    values = bs.dense_to_blocks(w.detach(), p).float().requires_grad_()
    x32 = x.detach().float().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = bs.block_sparse_linear(x32, values, p, "gather")
    assert y.dtype == torch.bfloat16
    (y.float() * gy.float()).sum().backward()
    assert values.grad.dtype == torch.float32 and x32.grad.dtype == torch.float32
    torch.testing.assert_close(y.float(), (x @ w.t()).float().detach(), rtol=3e-2, atol=3e-2)


def test_linear_rejects_bad_arguments() -> None:
    p = bs.BlockPattern.from_block_mask(bs.block_mask(16, 16, 4, 0.5, gen(0)), 4)
    values = torch.zeros(p.nnzb, 4, 4)
    with pytest.raises(ConfigError, match="unknown"):
        bs.block_sparse_linear(torch.zeros(2, 16), values, p, "cusparse")
    with pytest.raises(ConfigError):
        bs.block_sparse_linear(torch.zeros(2, 12), values, p)
    with pytest.raises(ConfigError):
        bs.block_sparse_linear(torch.zeros(2, 16), values[:-1], p)
    with pytest.raises(ConfigError, match="dtype"):
        bs.block_sparse_linear(torch.zeros(2, 16, dtype=torch.float64), values, p)


@pytest.mark.parametrize("backend", ["triton_bsr", "triton"])
def test_triton_backend_on_cpu_is_a_clear_config_error(backend) -> None:
    if backend == "triton" and bs._blocksparse_triton is not None and bs._blocksparse_triton.INTERPRET:
        pytest.skip("TRITON_INTERPRET=1 in this process: the triton backend runs on CPU here")
    p = bs.BlockPattern.from_block_mask(bs.block_mask(32, 32, 16, 0.5, gen(0)), 16)
    with pytest.raises(ConfigError, match="CUDA"):
        bs.block_sparse_linear(torch.zeros(16, 32), torch.zeros(p.nnzb, 16, 16), p, backend)


# ------------------------------------------------------------ the own Triton kernels, in the interpreter


_INTERPRET_CHECK = r"""
import os, sys, torch
os.environ["TRITON_INTERPRET"] = "1"
from mstlib.experimental import blocksparse as bs
from mstlib.errors import ConfigError

def run(backend, x, values, p, gy, **kw):
    x = x.detach().clone().requires_grad_()
    values = values.detach().clone().requires_grad_()
    y = bs.block_sparse_linear(x, values, p, backend, **kw)
    y.backward(gy)
    return y.detach(), x.grad, values.grad

g = torch.Generator().manual_seed(0)
cases = []  # name, block mask, block, lead (token dims), x is a strided view, split_k
bm = bs.block_mask(96, 64, 16, 0.5, g)
bm[2] = False  # a block row with no tiles: its outputs must be zeros
bm[:, 1] = False  # a block column with no tiles: its grad_x must be zeros
cases.append(("b16 ragged N=50, empty row and column", bm, 16, (50,), False, None))
cases.append(("b16 density 1, N=33", torch.ones(2, 3, dtype=torch.bool), 16, (33,), False, None))
cases.append(("b32 N=70", bs.block_mask(64, 96, 32, 0.5, g), 32, (70,), False, None))
cases.append(("b16 N=2x150 strided x, 2 token chunks", bm, 16, (2, 150), True, 2))
cases.append(("b16 N=300, 3 requested chunks", bm, 16, (300,), False, 3))
worst = 0.0
for name, mask, b, lead, strided, split_k in cases:
    p = bs.BlockPattern.from_block_mask(mask, b)
    in_f, out_f = p.in_features, p.out_features
    x = torch.randn(*lead, in_f + 8, generator=g)
    x = x[..., 3 : 3 + in_f] if strided else x[..., :in_f].contiguous()
    assert x.is_contiguous() == (not strided)
    # scaled so that every output is O(1): the 1e-5 tolerance is then about 100 float32 roundings
    values = torch.randn(p.nnzb, b, b, generator=g) / (b * mask.sum(1).max()) ** 0.5
    gy = torch.randn(*lead, out_f, generator=g) / x[..., 0].numel() ** 0.5
    got, ref = run("triton", x, values, p, gy, split_k=split_k), run("gather", x, values, p, gy)
    for what, a, r in zip(("y", "grad_x", "grad_values"), got, ref):
        assert a.shape == r.shape and a.dtype == r.dtype, (name, what, a.shape, r.shape)
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}, {what}: {m}")
        worst = max(worst, float((a - r).abs().max()))
    if name.startswith("b16 ragged"):
        y, gx = got[0].view(*lead, 6, 16), got[1].view(*lead, 4, 16)
        assert bool((y[:, 2] == 0).all()) and bool((gx[:, 1] == 0).all()), "empty row/column not zero"
# what the backend refuses even where it runs: 8-blocks (a tl.dot needs 16), a split_k of 0
for block, kw in ((8, {}), (16, {"split_k": 0})):
    q = bs.BlockPattern.from_block_mask(torch.ones(2, 2, dtype=torch.bool), block)
    try:
        bs.block_sparse_linear(torch.zeros(4, q.in_features), torch.zeros(4, block, block), q, "triton", **kw)
    except ConfigError:
        pass
    else:
        sys.exit(f"no ConfigError for block {block}, {kw}")
print("worst abs difference", worst)
"""


def test_triton_kernels_match_gather_in_interpreter() -> None:
    """Forward, ``grad_x`` and ``grad_values`` of the ``"triton"`` backend equal the ``gather`` backend's
    (float32), on CPU through Triton's interpreter (``TRITON_INTERPRET=1``, set before Triton is imported,
    hence a subprocess): ragged token counts, a block row and a block column with no tiles, density 1,
    32-blocks, a strided input with leading dimensions, the SDDMM split into token chunks. Needs Triton
    installed; CUDA builds of torch have it (CI's CPU torch does not: skipped there)."""
    import os
    import subprocess
    import sys

    triton = pytest.importorskip("triton", reason="Triton is not installed (CPU-only torch); the GPU tests cover it")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    res = subprocess.run([sys.executable, "-c", _INTERPRET_CHECK], env=env, capture_output=True, text=True,
                         timeout=300)
    if res.returncode != 0 and "only 0-dimensional arrays can be converted to Python scalars" in res.stderr:
        # older interpreters (seen with triton 3.6 and numpy 2.5) take int() of a 1-element array for a
        # loop bound read from memory, which numpy 2.5 refuses; triton 3.9's squeezes it first
        pytest.skip(f"triton {triton.__version__}'s interpreter cannot loop up to a bound loaded from memory "
                    f"with numpy {np.__version__}")
    assert res.returncode == 0, res.stdout + res.stderr


# ---------------------------------------------------------------------- the Triton glue, with fake kernels


def _fake_bsr_dense_mm(bsr, dense, *, out=None, **_):
    """What torch.sparse._triton_ops.bsr_dense_mm computes (bsr @ dense into ``out``), densely on CPU."""
    assert bsr.layout == torch.sparse_bsr
    res = bsr.to_dense() @ dense
    if out is None:
        return res
    assert out.shape == res.shape and (out.is_contiguous() or out.transpose(-2, -1).is_contiguous())
    return out.copy_(res)


def _fake_sampled_addmm(inp, mat1, mat2, *, beta=1.0, alpha=1.0, **_):
    """What sampled_addmm computes: alpha * (mat1 @ mat2) at inp's tiles (+ beta * inp), batched BSR out."""
    assert inp.layout == torch.sparse_bsr and beta == 0.0
    crow, col = inp.crow_indices(), inp.col_indices()
    b = inp.values().shape[-1]
    prod = alpha * (mat1 @ mat2)  # (s, out, in)
    vals = []
    for i in range(prod.shape[0]):
        rows = torch.repeat_interleave(torch.arange(crow.shape[-1] - 1), crow[i].diff())
        tiles = prod[i].reshape(prod.shape[1] // b, b, prod.shape[2] // b, b).transpose(1, 2)
        vals.append(tiles[rows, col[i]])
    return torch.sparse_bsr_tensor(
        crow, col, torch.stack(vals).to(inp.dtype), size=inp.shape, check_invariants=False
    )


@pytest.mark.parametrize("split_k", [None, 1, 4])
def test_triton_backend_glue_matches_gather_with_reference_kernels(monkeypatch, split_k) -> None:
    # the kernels are replaced by dense CPU equivalents: this checks the transposed pattern, the
    # column-major `out` buffers and the token split of the SDDMM, not the Triton kernels themselves
    fake = bs.TritonKernels(bsr_dense_mm=_fake_bsr_dense_mm, sampled_addmm=_fake_sampled_addmm)
    monkeypatch.setattr(bs, "triton_kernels", lambda device: fake)
    x, bm, w, gy = reference(64, 48, 16, 0.5, 32, seed=7)
    p = bs.BlockPattern.from_block_mask(bm, 16)
    out = {}
    for backend in ("gather", "triton_bsr"):
        xi = x.detach().float().clone().requires_grad_()
        vi = bs.dense_to_blocks(w.detach(), p).float().requires_grad_()
        y = bs.block_sparse_linear(xi, vi, p, backend, split_k=split_k)
        (y * gy.float()).sum().backward()
        out[backend] = (y.detach(), xi.grad, vi.grad)
    for a, b in zip(out["triton_bsr"], out["gather"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_choose_split_k_on_cpu_is_one_and_divides_tokens() -> None:
    assert bs.choose_split_k(8192, 12, torch.device("cpu")) == 1


# ------------------------------------------------------------------------------------------- the module


def test_module_from_dense_forward_and_topology_switch() -> None:
    b = 8
    bm = bs.block_mask(32, 24, b, 0.5, gen(8))
    w = torch.randn(32, 24)
    layer = bs.BlockSparseLinear.from_dense(w, bm, b)
    x = torch.randn(5, 24)
    torch.testing.assert_close(layer(x), F.linear(x, w * bs.expand(bm, b)))
    layer(x).sum().backward()
    assert tuple(layer.values.grad.shape) == (int(bm.sum()), b, b)

    new_bm = bs.block_mask(32, 24, b, 0.5, gen(9))
    layer.set_block_mask(new_bm)
    kept, grown = bs.expand(new_bm & bm, b), bs.expand(new_bm & ~bm, b)
    dense = layer.to_dense().detach()
    assert torch.equal(dense[kept], w[kept])
    assert bool((dense[grown] == 0).all()) and bool((dense[~bs.expand(new_bm, b)] == 0).all())
    assert layer.values.shape[0] == int(new_bm.sum())


def test_module_rejects_a_mask_of_the_wrong_shape() -> None:
    with pytest.raises(ConfigError):
        bs.BlockSparseLinear(32, 16, torch.ones(4, 4, dtype=torch.bool), 8)


# ----------------------------------------------------------------------------------------------- CUDA


CUDA_SHAPES = [  # out, in, block, density, tokens
    (768, 768, 64, 0.25, 1024),
    (2304, 768, 32, 0.5, 512),
    (768, 3072, 128, 0.1, 1024),
    (3072, 768, 64, 1.0, 512),
]


def _run(backend, x, values, p, gy, **kw):
    x = x.detach().clone().requires_grad_()
    values = values.detach().clone().requires_grad_()
    y = bs.block_sparse_linear(x, values, p, backend, **kw)
    y.backward(gy)
    return y.detach().float(), x.grad.float(), values.grad.float()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _cuda_case(out_f: int, in_f: int, block: int, density: float, n: int, mask_seed: int, seed: int):
    """A random pattern on the GPU and float32 ``x``, ``values`` (weights' scale) and ``grad_y`` for it."""
    dev = torch.device("cuda")
    p = bs.BlockPattern.from_block_mask(bs.block_mask(out_f, in_f, block, density, gen(mask_seed)), block).to(dev)
    g = torch.Generator(device=dev).manual_seed(seed)
    x = torch.randn(n, in_f, device=dev, generator=g)
    values = torch.randn(p.nnzb, block, block, device=dev, generator=g) * 0.02
    gy = torch.randn(n, out_f, device=dev, generator=g)
    return p, x, values, gy


@needs_cuda
@pytest.mark.parametrize("out_f, in_f, block, density, n", CUDA_SHAPES)
def test_cuda_triton_bsr_matches_gather_in_bfloat16(out_f, in_f, block, density, n) -> None:
    p, x, values, gy = _cuda_case(out_f, in_f, block, density, n, mask_seed=10, seed=0)
    ref = _run("gather", x, values, p, gy)  # float32 reference on the GPU
    bf = (x.bfloat16(), values.bfloat16(), p, gy.bfloat16())
    for backend in ("triton_bsr", "gather", "dense_masked"):
        got = _run(backend, *bf)
        for name, a, b in zip(("y", "grad_x", "grad_values"), got, ref):
            assert _rel(a, b) < 2e-2, (backend, name, _rel(a, b))


@needs_cuda
@pytest.mark.parametrize("split_k", [1, 2, 8])
def test_cuda_triton_bsr_split_k_does_not_change_the_values_gradient(split_k) -> None:
    dev = torch.device("cuda")
    p = bs.BlockPattern.from_block_mask(bs.block_mask(768, 768, 64, 0.5, gen(11)), 64).to(dev)
    x = torch.randn(2048, 768, device=dev, dtype=torch.bfloat16)
    values = torch.randn(p.nnzb, 64, 64, device=dev, dtype=torch.bfloat16) * 0.02
    gy = torch.randn(2048, 768, device=dev, dtype=torch.bfloat16)
    ref = _run("gather", x.float(), values.float(), p, gy.float())
    got = _run("triton_bsr", x, values, p, gy, split_k=split_k)
    assert _rel(got[2], ref[2]) < 2e-2


@needs_cuda
@pytest.mark.parametrize(
    "out_f, in_f, block, density, n, dtype",
    [(*shape, torch.bfloat16) for shape in CUDA_SHAPES]
    + [
        (768, 768, 16, 0.3, 1000, torch.bfloat16),  # 16-blocks, ragged tokens
        (768, 3072, 64, 0.05, 4097, torch.bfloat16),  # few tiles: the SDDMM in many token chunks
        (2304, 768, 128, 0.05, 333, torch.float16),
        (768, 768, 32, 0.1, 777, torch.float32),  # exact (IEEE) products, not TF32
    ],
)
def test_cuda_triton_matches_gather(out_f, in_f, block, density, n, dtype) -> None:
    # the own kernels against float32 gather (each dtype and block size compiles its autotuning
    # configurations once, hence few combinations)
    p, x, values, gy = _cuda_case(out_f, in_f, block, density, n, mask_seed=13, seed=1)
    ref = _run("gather", x, values, p, gy)
    got = _run("triton", x.to(dtype), values.to(dtype), p, gy.to(dtype))
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    for name, a, b in zip(("y", "grad_x", "grad_values"), got, ref):
        assert _rel(a, b) < tol, (name, _rel(a, b))


@needs_cuda
def test_cuda_triton_values_gradient_is_deterministic() -> None:
    # the token chunks of the SDDMM are summed by torch, not with atomics: bitwise equal results
    dev = torch.device("cuda")
    p = bs.BlockPattern.from_block_mask(bs.block_mask(768, 768, 64, 0.05, gen(14)), 64).to(dev)
    x = torch.randn(8192, 768, device=dev, dtype=torch.bfloat16)
    values = torch.randn(p.nnzb, 64, 64, device=dev, dtype=torch.bfloat16) * 0.02
    gy = torch.randn(8192, 768, device=dev, dtype=torch.bfloat16)
    first = _run("triton", x, values, p, gy)
    for _ in range(3):
        assert all(torch.equal(a, b) for a, b in zip(_run("triton", x, values, p, gy), first))


@needs_cuda
@pytest.mark.parametrize("backend", ["triton_bsr", "triton"])
def test_cuda_module_moves_its_pattern_with_its_values(backend) -> None:
    layer = bs.BlockSparseLinear(256, 512, bs.block_mask(512, 256, 64, 0.5, gen(12)), 64, backend=backend)
    layer = layer.cuda().bfloat16()
    assert layer.pattern.device.type == "cuda"
    x = torch.randn(128, 256, device="cuda", dtype=torch.bfloat16)
    torch.testing.assert_close(layer(x).float(), F.linear(x, layer.to_dense()).float(), rtol=2e-2, atol=2e-2)
