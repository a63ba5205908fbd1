"""Hybrid sparse attention: masks against hand-written examples, densities against hand-counted pairs,
and every backend against a float64 reference, forward and backward."""

from __future__ import annotations

import warnings

import pytest
import torch

from mstlib import attention as A
from mstlib.config import AttentionConfig, ModelConfig
from mstlib.errors import ConfigError
from mstlib.model import GPT


def rows(mask: torch.Tensor) -> list[str]:
    return ["".join("x" if v else "." for v in r) for r in mask.tolist()]


# ------------------------------------------------------------------------------------ masks by hand


def test_local_mask_by_hand():
    # 0 <= i - j < 3
    assert rows(A.pattern_mask("local", 6, window=3, stride=3)) == [
        "x.....",
        "xx....",
        "xxx...",
        ".xxx..",
        "..xxx.",
        "...xxx",
    ]


def test_strided_mask_by_hand():
    # (i - j) % 3 == 0, j <= i
    assert rows(A.pattern_mask("strided", 7, window=2, stride=3)) == [
        "x......",
        ".x.....",
        "..x....",
        "x..x...",
        ".x..x..",
        "..x..x.",
        "x..x..x",
    ]


def test_local_strided_is_union_by_hand():
    assert rows(A.pattern_mask("local_strided", 7, window=2, stride=3)) == [
        "x......",
        "xx.....",
        ".xx....",
        "x.xx...",
        ".x.xx..",
        "..x.xx.",
        "x..x.xx",
    ]


def test_fixed_mask_by_hand():
    # blocks of 3: [0,1,2] [3,4,5] [6,7]; own block (causal) plus the last position of every earlier block
    assert rows(A.pattern_mask("fixed", 8, window=3, stride=3)) == [
        "x.......",
        "xx......",
        "xxx.....",
        "..xx....",
        "..xxx...",
        "..xxxx..",
        "..x..xx.",
        "..x..xxx",
    ]


def test_fixed_matches_official_construction():
    """The official code: block-diagonal ones, columns i*L-1 set for i in 1..n/L-1, AND causal."""
    n, L = 32, 8
    a_d = torch.block_diag(*[torch.ones(L, L)] * (n // L))
    for i in range(1, n // L):
        a_d[:, i * L - 1] = 1
    official = torch.logical_and(a_d, torch.tril(torch.ones(n, n)))
    assert torch.equal(A.pattern_mask("fixed", n, window=L, stride=L), official)


def test_local_matches_official_construction():
    n, w = 20, 6
    a = torch.tril(torch.ones(n, n))
    official = torch.triu(a, -min(n - 1, w - 1)).bool()
    assert torch.equal(A.pattern_mask("local", n, window=w, stride=w), official)


def test_dense_is_causal_and_prefix_consistent():
    assert torch.equal(A.pattern_mask("dense", 9), torch.tril(torch.ones(9, 9, dtype=torch.bool)))
    for name in A.PATTERNS:
        big = A.pattern_mask(name, 40, window=5, stride=7)
        assert torch.equal(big[:23, :23], A.pattern_mask(name, 23, window=5, stride=7)), name


def test_unknown_pattern_and_bad_sizes():
    with pytest.raises(ConfigError, match="local_strided"):
        A.pattern_mask("sparse", 8)
    with pytest.raises(ConfigError):
        A.pattern_mask("local", 8, window=0)


# -------------------------------------------------------------------------------------- densities


def test_density_counts_by_hand_at_paper_scale():
    T, w = 1024, 128
    causal = T * (T + 1) // 2  # 524,800
    local = w * (w + 1) // 2 + (T - w) * w  # rows 0..127 see i+1 keys, the rest 128
    strided = sum(i // w + 1 for i in range(T))  # j = i, i - 128, ...
    extra = sum(i // w for i in range(T))  # strided pairs outside the band (i - j >= 128)
    assert A.pattern_pairs("local", T, w, w) == local == 122_944
    assert A.pattern_pairs("strided", T, w, w) == strided
    assert A.pattern_pairs("local_strided", T, w, w) == local + extra == 126_528
    assert A.pattern_density("local_strided", T, w, w) == pytest.approx((local + extra) / causal)
    assert A.pattern_density("dense", T) == 1.0
    # fixed: own block (8 blocks x 128*129/2) + one summary column per earlier block for every later row
    fixed = 8 * (w * 129 // 2) + sum(w * b for b in range(8))
    assert A.pattern_pairs("fixed", T, w, w) == fixed


def test_block_density():
    # causal at T=1024: 36 of 64 tiles; local-128: the diagonal and the one below, 8 + 7 of 64
    assert A.block_density("dense", 1024) == 36 / 64
    assert A.block_density("local", 1024, 128, 128) == 15 / 64
    # a stride equal to the tile size puts a strided pair in every lower tile: no tile skipped
    assert A.block_density("local_strided", 1024, 128, 128) == 36 / 64
    assert A.block_density("local", 200, 16, 16, block=128) == 3 / 4  # ragged last tile counts


# -------------------------------------------------------------------------------------- backends


def _qkv(T: int, seed: int = 0, B: int = 2, H: int = 3, D: int = 8):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, T, D, generator=g, dtype=torch.float64) for _ in range(3)]


@pytest.mark.parametrize("name", ["local", "strided", "local_strided", "fixed"])
def test_sdpa_mask_equals_float64_reference_fwd_bwd(name):
    T, w, s = 48, 8, 6
    q64, k64, v64 = (t.requires_grad_() for t in _qkv(T))
    ref = A.reference_attention(q64, k64, v64, A.pattern_mask(name, T, w, s))
    g = torch.randn_like(ref)
    ref.backward(g)
    q, k, v = (t.detach().float().requires_grad_() for t in (q64, k64, v64))
    y = A.sdpa_mask_attention(name, T, w, s, "cpu")(q, k, v)
    y.backward(g.float())
    torch.testing.assert_close(y.double(), ref, atol=2e-6, rtol=1e-5)
    for ours, theirs in ((q, q64), (k, k64), (v, v64)):
        torch.testing.assert_close(ours.grad.double(), theirs.grad, atol=2e-5, rtol=1e-4)


def test_sdpa_mask_shorter_sequence_uses_corner():
    T = 32
    q, k, v = _qkv(T)
    fn = A.sdpa_mask_attention("local_strided", T, 4, 5, "cpu")
    y = fn(q[:, :, :20], k[:, :, :20], v[:, :, :20])
    ref = A.reference_attention(q[:, :, :20], k[:, :, :20], v[:, :, :20], A.pattern_mask("local_strided", 20, 4, 5))
    torch.testing.assert_close(y, ref)
    with pytest.raises(ConfigError, match="rebuild"):
        fn(*_qkv(40))


@pytest.mark.skipif(not A.flex_available(), reason="torch.nn.attention.flex_attention not in this torch")
@pytest.mark.parametrize("name", ["local", "local_strided", "fixed"])
def test_flex_forward_equals_sdpa_on_cpu(name):
    """FlexAttention's forward runs eagerly on CPU (torch 2.13); its backward does not (see next test)."""
    T, w = 64, 16
    q, k, v = (t.float() for t in _qkv(T, seed=1))
    y_flex = A.flex_pattern_attention(name, T, w, w, "cpu")(q, k, v)
    y_sdpa = A.sdpa_mask_attention(name, T, w, w, "cpu")(q, k, v)
    torch.testing.assert_close(y_flex, y_sdpa, atol=1e-5, rtol=1e-5)


def _cuda_reference(name: str, T: int, w: int):
    """float64 q, k, v on the GPU, the pattern's reference output and an output gradient, with the
    reference gradients in ``.grad`` (for the backends to be compared with)."""
    q64, k64, v64 = (t.cuda().requires_grad_() for t in _qkv(T, B=2, H=4, D=64))
    ref = A.reference_attention(q64, k64, v64, A.pattern_mask(name, T, w, w, device="cuda"))
    g = torch.randn_like(ref)
    ref.backward(g)
    return (q64, k64, v64), ref, g


@pytest.mark.skipif(not torch.cuda.is_available(), reason=(
    "FlexAttention has no backward on CPU (torch 2.13: NotImplementedError 'FlexAttention does not support "
    "backward on CPU'); this test runs on the GPU machine"))
@pytest.mark.parametrize("name", ["local", "strided", "local_strided", "fixed"])
def test_flex_equals_sdpa_and_reference_fwd_bwd_cuda(name):
    T, w = 1024, 128
    (q64, k64, v64), ref, g = _cuda_reference(name, T, w)
    outs = {}
    for backend in ("flex", "split", "sdpa_mask"):
        q, k, v = (t.detach().float().requires_grad_() for t in (q64, k64, v64))
        fn = A.build_attention(AttentionConfig(pattern=name, window=w, stride=w, backend=backend), T, "cuda")
        y = fn(q, k, v)
        y.backward(g.float())
        outs[backend] = (y, q.grad, k.grad, v.grad)
        # TF32 may be on for matmuls on the GPU: tolerances for float32 with reduced-precision products
        torch.testing.assert_close(y.double(), ref, atol=2e-3, rtol=2e-3)
        for ours, theirs in zip((q.grad, k.grad, v.grad), (q64.grad, k64.grad, v64.grad)):
            torch.testing.assert_close(ours.double(), theirs, atol=5e-3, rtol=5e-3)
    for a, b in zip(outs["flex"], outs["sdpa_mask"]):
        torch.testing.assert_close(a, b, atol=2e-3, rtol=2e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="compiled FlexAttention in bf16 needs the GPU")
@pytest.mark.parametrize("name", ["local_strided", "fixed"])
def test_split_bf16_matches_flex_cuda(name):
    """In training precision the split backend must be as close to the float64 truth as one FlexAttention
    call over the whole pattern (both compute the same function)."""
    T, w = 2048, 128
    (q64, k64, v64), ref, g = _cuda_reference(name, T, w)
    err = {}
    for backend in ("flex", "split"):
        q, k, v = (t.detach().bfloat16().requires_grad_() for t in (q64, k64, v64))
        fn = A.build_attention(AttentionConfig(pattern=name, window=w, stride=w, backend=backend), T, "cuda")
        y = fn(q, k, v)
        y.backward(g.bfloat16())
        err[backend] = [(a.double() - b).abs().max().item()
                        for a, b in zip((y, q.grad, k.grad, v.grad), (ref, q64.grad, k64.grad, v64.grad))]
    for e_split, e_flex in zip(err["split"], err["flex"]):
        assert e_split <= 2 * e_flex + 1e-3, err


@pytest.mark.parametrize("name,T,w,s", [
    ("local_strided", 64, 8, 8), ("local_strided", 61, 8, 8),  # T not a multiple of the stride
    ("local_strided", 64, 16, 8), ("local_strided", 64, 8, 16),  # window wider / narrower than the stride
    ("strided", 50, 8, 8), ("fixed", 64, 8, 8), ("fixed", 45, 8, 8), ("local", 40, 8, 8),
])
def test_split_equals_float64_reference_fwd_bwd(name, T, w, s):
    """The split backend is the pattern's exact function: on CPU (masked dense near part) it must match the
    reference to float64 rounding, forward and backward, including queries with no far keys."""
    q, k, v = (t.requires_grad_() for t in _qkv(T, seed=3))
    y = A.split_pattern_attention(name, T, w, s, "cpu")(q, k, v)
    ref = A.reference_attention(q, k, v, A.pattern_mask(name, T, w, s))
    g = torch.randn_like(ref)
    ours = torch.autograd.grad(y, (q, k, v), g)
    theirs = torch.autograd.grad(ref, (q, k, v), g)
    torch.testing.assert_close(y, ref, atol=1e-12, rtol=1e-12)
    for a, b in zip(ours, theirs):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


@pytest.mark.skipif(not A.flex_available(), reason="torch.nn.attention.flex_attention not in this torch")
@pytest.mark.parametrize("name,T,w,s", [
    ("local_strided", 256, 32, 32), ("local_strided", 250, 32, 32), ("local_strided", 256, 64, 32),
    ("strided", 200, 32, 32), ("fixed", 256, 32, 32), ("fixed", 230, 32, 32),
])
def test_split_through_flex_forward_equals_reference_on_cpu(name, T, w, s):
    """The GPU path of the split backend (both parts through FlexAttention: the strided part on the
    class-major sequence, the summary part against gathered columns), run with eager FlexAttention, whose
    forward works on CPU: it must compute the pattern's function."""
    from torch.nn.attention.flex_attention import flex_attention

    q, k, v = (t.float() for t in _qkv(T, seed=4))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager FlexAttention warns that it is slow
        y = A.split._split_attend(q, k, v, name, w, s, 1, A.split._split_masks(name, T, w, s, 1, "cpu"), flex_attention)
    ref = A.reference_attention(q.double(), k.double(), v.double(), A.pattern_mask(name, T, w, s))
    torch.testing.assert_close(y.double(), ref, atol=1e-5, rtol=1e-5)


def test_split_block_density_counts_only_the_band():
    dense = A.block_density("dense", 1024)
    assert A.split_block_density("local_strided", 1024) == A.block_density("local", 1024) == 15 / 64
    assert A.split_block_density("fixed", 1024) == 8 / 64  # its own blocks: the diagonal tiles
    assert A.split_block_density("strided", 1024) == 0.0  # no band: all far part
    assert A.split_block_density("local_strided", 4096) / dense < 0.12


def test_tile_fraction_per_backend():
    """Tiles each backend computes relative to causal attention: masked SDPA all of them, FlexAttention the
    non-empty ones, the split backends their band's."""
    causal = 36 / 64
    assert A.tile_fraction("sdpa_mask", "local", 1024) == 1.0 == A.tile_fraction("flex", "dense", 1024)
    assert A.tile_fraction("flex", "local", 1024) == pytest.approx((15 / 64) / causal)
    assert A.tile_fraction("flex", "local_strided", 1024) == pytest.approx(1.0)  # a strided pair in every tile
    assert A.tile_fraction("flash_split", "local_strided", 1024) == pytest.approx((15 / 64) / causal)
    assert A.tile_fraction("split", "strided", 1024) == 0.0
    assert A.tile_fraction("flex", "local", 1024, block=64) < A.tile_fraction("flex", "local", 1024)
    with pytest.raises(ConfigError, match="unknown resolved backend"):
        A.tile_fraction("auto", "local", 1024)


def test_split_parts_are_disjoint_and_cover_the_pattern():
    """The near and far parts must partition the pattern: a pair in both would be counted twice."""
    T, w, s = 64, 16, 8
    pos = torch.arange(T)
    i, j = pos[:, None], pos[None, :]
    near = A.patterns.near_allowed("local", i, j, w, s)
    m_min = max(1, -(-w // s))
    far = (i >= j) & ((i - j) % s == 0) & ((i - j) // s >= m_min)
    assert not (near & far).any()
    assert torch.equal(near | far, A.pattern_mask("local_strided", T, w, s))
    with pytest.raises(ConfigError, match="split"):
        A.split_pattern_attention("dense", T, w, s, "cpu")
    with pytest.raises(ConfigError, match="rebuild"):
        A.split_pattern_attention("fixed", 16, 4, 4, "cpu")(*_qkv(20))


def test_build_attention_choices():
    assert A.build_attention(AttentionConfig(pattern="dense"), 64, "cpu") is None
    assert A.resolve_backend("auto", "cpu") == "sdpa_mask"
    assert A.resolve_backend("sdpa_mask", "cpu") == "sdpa_mask"
    assert A.resolve_backend("split", "cpu") == "split"
    # "auto" on CUDA (resolution only; nothing runs): cudnn_split for a band where nvidia-cudnn-frontend is
    # installed, else flash_split, where the far part has kernels
    from mstlib.kernels import cudnn_band as _cudnn_band

    band = "cudnn_split" if _cudnn_band.available() else "flash_split"
    assert A.resolve_backend("auto", "cuda", "local_strided") == band == A.resolve_backend("auto", "cuda", "local")
    assert A.resolve_backend("auto", "cuda", "strided") == "flash_split"
    assert A.resolve_backend("auto", "cuda", "fixed") == "flex" == A.resolve_backend("auto", "cuda")
    assert A.resolve_backend("auto", "cpu", "local_strided") == "sdpa_mask"
    assert A.resolve_backend("flex", "cuda", "local_strided") == "flex"
    with pytest.raises(ConfigError, match="larger than the context"):
        A.build_attention(AttentionConfig(pattern="local", window=128, stride=128), 64, "cpu")
    with pytest.raises(ConfigError, match="backend"):
        A.resolve_backend("xformers", "cpu")


def test_model_with_full_band_pattern_equals_causal_model():
    """A local band as wide as the context is causal attention: the model's logits must not change."""
    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=16, block_size=32, vocab_size=64)
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    idx = torch.randint(0, 64, (2, 32))
    with torch.no_grad():
        base, _ = model(idx)
        fn = A.build_attention(AttentionConfig(pattern="local", window=32, stride=32, backend="sdpa_mask"), 32, "cpu")
        model.set_attention(fn)
        same, _ = model(idx)
        model.set_attention(A.build_attention(AttentionConfig(pattern="local", window=4, stride=4), 32, "cpu"))
        other, _ = model(idx)
    torch.testing.assert_close(same, base, atol=1e-5, rtol=1e-5)
    # the first 4 positions see the same keys under both; later ones must differ
    torch.testing.assert_close(other[:, :4], base[:, :4], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(other[:, 8:], base[:, 8:], atol=1e-4)


@pytest.mark.skipif(not A.flex_available(), reason="torch.nn.attention.flex_attention not in this torch")
def test_flex_smaller_tiles_same_result_on_cpu():
    """Smaller block-mask tiles (which let strided patterns skip tiles) compute the same attention."""
    T, w = 128, 32
    q, k, v = (t.float() for t in _qkv(T, seed=2))
    y = A.flex_pattern_attention("local_strided", T, w, w, "cpu", block=32)(q, k, v)
    ref = A.reference_attention(q, k, v, A.pattern_mask("local_strided", T, w, w))
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    assert A.block_density("local_strided", 1024, 128, 128, block=64) < A.block_density("dense", 1024, block=64)
