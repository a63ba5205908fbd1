"""The ``flash_split`` attention backend (:mod:`mstlib.attention.flash_split`): the pattern's exact function, forward
and backward, with a custom backward that uses the merged output and log-sum-exp (ring-attention style).

On CPU the near part runs as masked dense math through the same autograd function, so the construction
(the far part on the class view, the merge, the backward with merged statistics) is checked against the
float64 reference here; the GPU tests run FlashAttention's windowed kernel and the compiled far part."""

from __future__ import annotations

import pytest
import torch

from mstlib import attention as A
from mstlib.attention import flash_split as FS
from mstlib.config import AttentionConfig
from mstlib.errors import ConfigError


def _qkv(T: int, B: int = 2, H: int = 3, D: int = 8, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, H, T, D, generator=g, dtype=dtype) for _ in range(3))


def _check_against_reference(fn, name, T, w, s, q, k, v, atol, rtol):
    """Output and input gradients of ``fn`` against the float64 reference (inputs may be any dtype)."""
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = A.reference_attention(q64, k64, v64, A.pattern_mask(name, T, w, s, device=q.device))
    g = torch.randn_like(ref)
    theirs = torch.autograd.grad(ref, (q64, k64, v64), g)
    qx, kx, vx = (t.detach().requires_grad_() for t in (q, k, v))
    y = fn(qx, kx, vx)
    ours = torch.autograd.grad(y, (qx, kx, vx), g.to(y.dtype))
    err = [(y.double() - ref).abs().max().item()]
    torch.testing.assert_close(y.double(), ref, atol=atol, rtol=rtol)
    for a, b in zip(ours, theirs):
        assert torch.isfinite(a).all()
        err.append((a.double() - b).abs().max().item())
        torch.testing.assert_close(a.double(), b, atol=atol, rtol=rtol)
    return err


@pytest.mark.parametrize("name,T,w,s", [
    ("local_strided", 64, 8, 8), ("local_strided", 61, 8, 8),  # T not a multiple of the stride
    ("local_strided", 64, 16, 8), ("local_strided", 64, 8, 16),  # window wider / narrower than the stride
    ("local_strided", 64, 12, 8),  # window not a multiple of the stride
    ("strided", 50, 8, 8), ("strided", 64, 8, 8), ("fixed", 64, 8, 8), ("fixed", 45, 8, 8), ("local", 40, 8, 8),
])
def test_flash_split_equals_float64_reference_fwd_bwd_cpu(name, T, w, s):
    """The whole autograd function (masked near part on CPU, far part on the class view, merge, backward
    through the merged statistics) is the pattern's function to float64 rounding."""
    q, k, v = _qkv(T, seed=5)
    fn = FS.flash_split_attention(name, T, w, s, "cpu", compile=False)
    _check_against_reference(fn, name, T, w, s, q, k, v, atol=1e-12, rtol=1e-12)


def test_flash_split_shorter_sequence_and_float32_cpu():
    """Built for T, it serves shorter sequences (prefix-consistent patterns) and float32 inputs."""
    fn = FS.flash_split_attention("local_strided", 64, 8, 8, "cpu", compile=False)
    q, k, v = (t.float() for t in _qkv(37, seed=6))
    _check_against_reference(fn, "local_strided", 37, 8, 8, q, k, v, atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigError, match="rebuild"):
        fn(*_qkv(65))


def test_flash_split_far_part_keeps_no_pair_twice():
    """The far part's keys start beyond the band (``m_min``): with the near part removed, the far part alone
    (through the same function) must equal the pattern minus the band."""
    T, w, s = 48, 12, 8
    spec = FS._Spec(None, "strided", w, s, 1, A.patterns.far_m_min("local_strided", w, s), False, False)
    q, k, v = (t.transpose(1, 2) for t in _qkv(T, seed=7))
    out, lse = FS._far_forward(q, k, v, spec, q.size(-1) ** -0.5)
    pos = torch.arange(T)
    d = pos[:, None] - pos[None, :]
    far = (d >= w) & (d % s == 0)
    has = far.any(-1)
    ref = A.reference_attention(*(t.transpose(1, 2) for t in (q, k, v)), far | ~has[:, None])
    torch.testing.assert_close(out.transpose(1, 2)[:, :, has], ref[:, :, has])
    assert torch.isneginf(lse[:, ~has]).all() and torch.isfinite(lse[:, has]).all()


def test_flash_split_under_autocast_cpu():
    """Under bf16 autocast (how the model runs) the function keeps its own precision: no matmul is
    autocast to bf16 inside it, so float32 inputs give a float32-accurate result."""
    fn = FS.flash_split_attention("local_strided", 64, 8, 8, "cpu", compile=False)
    q, k, v = (t.float() for t in _qkv(64, seed=8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fn(q, k, v)
    ref = A.reference_attention(q.double(), k.double(), v.double(), A.pattern_mask("local_strided", 64, 8, 8))
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.double(), ref, atol=1e-5, rtol=1e-5)


def test_flash_split_choices():
    assert A.resolve_backend("flash_split", "cpu") == "flash_split"
    fn = A.build_attention(AttentionConfig(pattern="local_strided", window=8, stride=8, backend="flash_split"),
                           32, "cpu")
    assert fn is not None
    with pytest.raises(ConfigError, match="flash_split"):
        FS.flash_split_attention("dense", 32, 8, 8, "cpu")
    with pytest.raises(ConfigError, match="window and stride"):
        FS.flash_split_attention("local", 32, 0, 8, "cpu")
    with pytest.raises(ConfigError, match="near_kernel"):
        FS.flash_split_attention("local", 32, 8, 8, "cpu", near_kernel="cudnn9")


def test_cudnn_split_needs_a_band_and_the_frontend():
    """``cudnn_split`` runs the band through cuDNN: a pattern without a band, or a machine without CUDA and
    ``nvidia-cudnn-frontend``, is a clear error naming what is missing, not a silent fallback."""
    assert A.resolve_backend("cudnn_split", "cpu") == "cudnn_split"
    assert A.tile_fraction("cudnn_split", "local_strided", 1024) == A.tile_fraction("flash_split", "local_strided",
                                                                                    1024)
    with pytest.raises(ConfigError, match="band"):
        FS.flash_split_attention("strided", 64, 8, 8, "cpu", near_kernel="cudnn")
    if not FS.cudnn_band.available():
        with pytest.raises(ConfigError, match="nvidia-cudnn-frontend"):
            A.build_attention(AttentionConfig(pattern="local_strided", window=8, stride=8, backend="cudnn_split"),
                              32, "cpu")


def test_cudnn_stats_layout_found_once_with_fallback(monkeypatch):
    """The cuDNN band tries its statistics in the far kernel's [H, B, T] layout once per process and
    direction; a cuDNN that rejects those strides gets the packed layout from then on (the other direction
    is asked on its own), and a failure of both layouts is raised."""
    CB = FS.cudnn_band
    calls = []

    def picky(hbt):
        calls.append(hbt)
        if hbt:
            raise RuntimeError("cudnn: stride not supported")
        return "packed"

    monkeypatch.setattr(CB, "_stats_hbt", {"fwd": None, "bwd": None})
    assert CB._stats_layout("bwd", picky) == (False, "packed") and calls == [True, False]
    assert CB._stats_layout("bwd", picky) == (False, "packed") and calls == [True, False, False]  # not asked again
    assert CB._stats_layout("fwd", lambda hbt: hbt) == (True, True)
    assert CB._stats_hbt == {"fwd": True, "bwd": False}

    def broken(hbt):
        raise ValueError("no graph at all")

    monkeypatch.setattr(CB, "_stats_hbt", {"fwd": None, "bwd": None})
    with pytest.raises(ValueError, match="no graph at all"):
        CB._stats_layout("fwd", broken)
    lse = torch.arange(2 * 3 * 5, dtype=torch.float32).view(3, 2, 5)  # [H, B, T]
    view = CB._stats_view(lse)
    assert view.shape == (2, 3, 5, 1) and view.stride() == (5, 10, 1, 1) and view.data_ptr() == lse.data_ptr()
    assert torch.equal(view[..., 0], lse.transpose(0, 1))


def test_near_bounds_pack_blocks():
    cu, n = FS._near_bounds("block", 2, 10, 4, torch.device("cpu"))
    assert cu.tolist() == [0, 4, 8, 10, 14, 18, 20] and n == 4
    cu, n = FS._near_bounds("local", 3, 10, 4, torch.device("cpu"))
    assert cu.tolist() == [0, 10, 20, 30] and n == 10


# ----------------------------------------------------------------------------------------------- GPU

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="FlashAttention's windowed kernel and the "
                          "compiled far part need the GPU; these tests run on the GPU machine")


@cuda
def test_flash_window_is_in_this_torch():
    assert FS.flash_window_available()


_CASES = [("local_strided", 1024, 128), ("local_strided", 1000, 128), ("local_strided", 512, 96),
          ("local", 1024, 128), ("strided", 1024, 128), ("fixed", 1024, 128), ("fixed", 1000, 128)]
needs_cudnn = pytest.mark.skipif(not FS.cudnn_band.available(),
                                 reason="needs a CUDA device and nvidia-cudnn-frontend")
_CUDNN = [pytest.param(*case, "cudnn_split", marks=needs_cudnn) for case in _CASES
          if case[0] in ("local", "local_strided")]


@cuda
@pytest.mark.parametrize("name,T,w,backend", [(*case, "flash_split") for case in _CASES] + _CUDNN)
def test_flash_split_bf16_matches_flex_cuda(name, T, w, backend):
    """In training precision (bf16, FlashAttention's or cuDNN's band kernel, Triton or compiled far part)
    the backend must be as close to the float64 truth as one FlexAttention call over the whole pattern,
    forward and backward."""
    torch.manual_seed(0)
    # q, k, v as the model makes them: [B, H, T, D] views of one [B, T, 3 * H * D] projection
    qkv = torch.randn(4, T, 3 * 6 * 64, device="cuda", dtype=torch.bfloat16)
    q, k, v = (t.view(4, T, 6, 64).transpose(1, 2) for t in qkv.split(6 * 64, dim=2))
    errs = {}
    for b in ("flex", backend):
        fn = A.build_attention(AttentionConfig(pattern=name, window=w, stride=w, backend=b), T, "cuda")
        torch.manual_seed(1)
        errs[b] = _check_against_reference(fn, name, T, w, w, q, k, v, atol=5e-2, rtol=5e-2)
    for ours, flex in zip(errs[backend], errs["flex"]):
        assert ours <= 2 * flex + 2e-3, errs


@cuda
@pytest.mark.parametrize("name", ["local_strided", "fixed", "strided"])
def test_flash_split_float32_cuda(name):
    """float32 inputs on the GPU take the masked near part (FlashAttention is half precision only) and stay
    float32-accurate."""
    T, w = 256, 32
    q, k, v = (t.float().cuda() for t in _qkv(T, B=2, H=4, D=32, seed=9))
    fn = FS.flash_split_attention(name, T, w, w, "cuda")
    with _no_tf32():
        _check_against_reference(fn, name, T, w, w, q, k, v, atol=1e-4, rtol=1e-4)


@needs_cudnn
@pytest.mark.parametrize("w", [128, 37])
def test_cudnn_band_is_deterministic_when_asked_cuda(w):
    """With torch's deterministic algorithms on, the cuDNN band's backward gives bit-identical gradients on
    repeated calls (its graph is built with cuDNN's deterministic algorithm)."""
    torch.manual_seed(0)
    q, k, v, do = (torch.randn(2, 512, 4, 64, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    out, lse = FS.cudnn_band.forward(q, k, v, w, 0.125)
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        first, second = (FS.cudnn_band.backward(do, q, k, v, out, lse, w, 0.125) for _ in range(2))
    finally:
        torch.use_deterministic_algorithms(prev)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@needs_cudnn
def test_cudnn_band_stats_layouts_agree_cuda(monkeypatch):
    """Where this cuDNN takes the band's statistics in the far kernel's [H, B, T] layout (no copies), the
    output, log-sum-exp and gradients equal those of cuDNN's packed layout."""
    torch.manual_seed(0)
    qkv = torch.randn(2, 512, 3 * 4 * 64, device="cuda", dtype=torch.bfloat16)
    q, k, v = (t.view(2, 512, 4, 64) for t in qkv.split(4 * 64, dim=2))
    do = torch.randn_like(q)
    FS.cudnn_band.backward(do, q, k, v, *FS.cudnn_band.forward(q, k, v, 64, 0.125), 64, 0.125)
    found = dict(FS.cudnn_band._stats_hbt)
    assert None not in found.values()
    res = {}
    for hbt in (True, False):
        monkeypatch.setattr(FS.cudnn_band, "_stats_hbt", {"fwd": hbt and found["fwd"], "bwd": hbt and found["bwd"]})
        out, lse = FS.cudnn_band.forward(q, k, v, 96, 0.125)
        res[hbt] = (out, lse, *FS.cudnn_band.backward(do, q, k, v, out, lse, 96, 0.125))
    for a, b in zip(res[True], res[False]):
        torch.testing.assert_close(a, b)  # the same math; the backward's atomics may order sums differently


class _no_tf32:
    def __enter__(self):
        self.prev = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False

    def __exit__(self, *exc):
        torch.backends.cuda.matmul.allow_tf32 = self.prev


@cuda
@pytest.mark.parametrize("backend", ["flash_split", pytest.param("cudnn_split", marks=needs_cudnn)])
def test_flash_split_inside_compiled_model_cuda(backend):
    """A model compiled with torch.compile (how whole training runs go) gets the same output and gradients
    from the backend as the eager model."""
    from mstlib.model import GPT
    from mstlib.config import ModelConfig

    cfg = ModelConfig(n_layer=2, n_head=4, n_embd=128, block_size=512, vocab_size=512)
    torch.manual_seed(0)
    model = GPT(cfg).cuda()
    fn = A.build_attention(AttentionConfig(pattern="local_strided", window=64, stride=64,
                                           backend=backend), 512, "cuda")
    model.set_attention(fn, ())
    idx = torch.randint(0, 512, (4, 512), device="cuda")
    outs = []
    for m in (model, torch.compile(model)):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits, loss = m(idx, idx)
        loss.backward()
        outs.append((loss.detach().float(), [p.grad.float().clone() for p in model.parameters()]))
    torch.testing.assert_close(outs[0][0], outs[1][0], atol=2e-2, rtol=2e-2)
    for a, b in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(a, b, atol=5e-2, rtol=5e-2)


def _graph_breaks(backend: str, device: str) -> list[str]:
    """``torch._dynamo.explain`` of a small GPT with ``local_strided`` through ``backend``: the graph breaks."""
    from mstlib.model import GPT
    from mstlib.config import ModelConfig

    cfg = ModelConfig(n_layer=2, n_head=4, n_embd=128, block_size=256, vocab_size=256)
    model = GPT(cfg).to(device)
    # on the CPU with the far part compiled, as on the GPU where the Triton kernels do not serve
    model.set_attention(FS.flash_split_attention("local_strided", 256, 64, 64, device, compile=True) if device == "cpu"
                        else A.build_attention(AttentionConfig(pattern="local_strided", window=64, stride=64,
                                                               backend=backend), 256, device), ())
    idx = torch.randint(0, 256, (2, 256), device=device)
    torch._dynamo.reset()
    with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
        ex = torch._dynamo.explain(model)(idx, idx)
    return [b.reason for b in ex.break_reasons]


def test_flash_split_traces_as_one_graph_cpu():
    """torch.compile sees the whole model with the split attention as one graph: a graph break at the
    attention call splits every layer and leaves the loss uncompiled (on the GPU that made a compiled mini
    model with hybrid attention as slow as the eager one, session 6: torch 2.11 broke the graph on the
    compiled far part passed to ``Function.apply``)."""
    assert _graph_breaks("flash_split", "cpu") == []


def _traced_attention_dtypes(device: str, backend: str) -> list[torch.dtype]:
    """The dtype of ``q`` in each layer's traced attention forward of a 3-layer GPT compiled under bf16
    autocast (Dynamo's graphs, kept by a backend that runs them as they are)."""
    from mstlib.model import GPT
    from mstlib.config import ModelConfig

    model = GPT(ModelConfig(n_layer=3, n_head=2, n_embd=128, block_size=128, vocab_size=128)).to(device)
    fn = (FS.flash_split_attention("local_strided", 128, 32, 32, "cpu", compile=True) if device == "cpu" else
          A.build_attention(AttentionConfig(pattern="local_strided", window=32, stride=32, backend=backend), 128, device))
    model.set_attention(fn, ())
    graphs = []

    def keep(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    idx = torch.randint(0, 128, (2, 128), device=device)
    torch._dynamo.reset()
    with torch.autocast(device, dtype=torch.bfloat16):
        torch.compile(model, backend=keep)(idx, idx)
    return [next(n for n in sub.graph.nodes if n.op == "placeholder").meta["example_value"].dtype
            for g in graphs for name, sub in g.named_modules() if name.startswith("fwd_body")]


def test_every_layer_traces_in_autocast_precision_cpu():
    """Compiled under autocast, every layer's attention call sees the autocast dtype: an autocast context
    entered inside the autograd function's forward leaked out of torch 2.11's tracing, so layers after the
    first traced in float32 and took the masked math path on the GPU (session 6)."""
    assert _traced_attention_dtypes("cpu", "flash_split") == [torch.bfloat16] * 3


@cuda
@pytest.mark.parametrize("backend", ["flash_split", pytest.param("cudnn_split", marks=needs_cudnn)])
def test_every_layer_traces_in_autocast_precision_cuda(backend):
    """The same on the GPU, where the leak sent layers 2 and 3 from FlashAttention's or cuDNN's band and the
    Triton far part to the masked math."""
    assert _traced_attention_dtypes("cuda", backend) == [torch.bfloat16] * 3


@cuda
@pytest.mark.parametrize("backend", ["flash_split", pytest.param("cudnn_split", marks=needs_cudnn)])
def test_split_backends_trace_as_one_graph_cuda(backend):
    """The same on the GPU, where the attention call takes the Triton far part, FlashAttention's or cuDNN's
    band and their custom operators."""
    assert _graph_breaks(backend, "cuda") == []


_INTERPRET_CHECK = r"""
import os, sys, torch
os.environ["TRITON_INTERPRET"] = "1"
from mstlib.attention import flash_split as FS
from mstlib.kernels import far_triton as FT
torch.manual_seed(0)
worst = 0.0
for B, T, H, D, stride, m_min, near in [(2, 64, 3, 16, 8, 1, True), (2, 61, 3, 16, 8, 1, True),
                                          (1, 50, 2, 16, 8, 0, False), (2, 64, 2, 32, 16, 2, True),
                                          (2, 60, 2, 16, 12, 1, True), (1, 40, 2, 16, 2, 2, True)]:
    q, k, v, do = (torch.randn(B, T, H, D, dtype=torch.float64).float() for _ in range(4))
    scale = D ** -0.5
    spec = FS._Spec("local" if near else None, "strided", stride * m_min if near else stride, stride, 1, m_min,
                    False, False)
    ob, lb = ((x.contiguous() for x in FS._near_forward_math(q, k, v, spec, scale)) if near else (None, None))
    ref_o, ref_l = FS._fwd_merge(q, k, v, ob, lb, spec, scale)
    o, l = FT.far_forward(q, k, v, ob, lb, stride, m_min, scale)
    band = ([x.contiguous() for x in FS._near_backward_math(q, k, v, ref_o, ref_l, do, spec, scale)]
            if near else [None] * 3)
    ref_g = FS._bwd_far(q, k, v, ref_o, ref_l, do, *band, spec, scale)
    g = FT.far_backward(q, k, v, ref_o, ref_l, do, *[None if x is None else x.clone() for x in band],
                        stride, m_min, scale)
    for a, b in zip((o, l) + tuple(g), (ref_o, ref_l) + tuple(ref_g)):
        worst = max(worst, (a - b).abs().max().item())
print(worst)
sys.exit(0 if worst < 1e-5 else 1)
"""


def test_triton_far_kernels_match_torch_far_part_in_interpreter():
    """The Triton kernels (forward with the merge, backward adding into the band's gradients) compute the
    same numbers as the torch far part, on CPU through Triton's interpreter (``TRITON_INTERPRET=1``, set
    before Triton is imported, hence a subprocess). Needs Triton installed; CUDA builds of torch have it."""
    import os
    import subprocess
    import sys

    pytest.importorskip("triton", reason="Triton is not installed (CPU-only torch); the GPU tests cover it")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    res = subprocess.run([sys.executable, "-c", _INTERPRET_CHECK], env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
