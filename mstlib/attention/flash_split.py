"""The ``"flash_split"`` attention backend: hybrid sparse attention that skips the work it does not need.

The pattern is cut as in :data:`mstlib.attention.SPLITS` into a *near* part and a *far* part with disjoint
key sets, merged exactly by log-sum-exp:

* **near** (``local``'s band of ``window`` keys, or ``fixed``'s own block) runs through FlashAttention's own
  kernel (``aten._flash_attention_forward`` on packed sequences, with ``window_size_left = window - 1`` for
  the band, or one "sequence" per block of ``stride`` tokens for ``fixed``). The kernel visits only the key
  tiles that the window reaches, so at context 1024 with a 128-token band it does ~42 % of causal
  attention's tiles, and at 4096 ~12 %. The ``"cudnn_split"`` backend is this module with the band through
  cuDNN's sliding-window kernels instead (:mod:`mstlib.cudnn_band`, ``near_kernel="cudnn"``): the same
  contract (output and log-sum-exp forward, merged output and log-sum-exp backward); on an H200 its
  forward costs half of FlashAttention 2's per tile, and the whole band (forward and backward) about three
  quarters of FlashAttention's time.
* **far** (the strided keys ``i - m * stride``, ``m >= m_min``; or ``fixed``'s summary columns) has only
  ``T / stride`` keys per query. For the strided keys on CUDA in half precision, Triton kernels
  (:mod:`mstlib.far_triton`: one forward, one backward, on tensor cores) read ``q, k, v`` in place, one program per (batch,
  head, a few residue classes), and fuse the merge with the near part into the forward and the
  accumulation into the near part's gradients into the backward. Elsewhere (``fixed``'s summary columns, CPU, float32) the far part is
  plain tensor algebra on the free view ``[B, T / stride, stride, H, D]`` of the sequence (a residue class
  is one column of it), through ``torch.compile`` on CUDA.

Gradients: FlashAttention's log-sum-exp has no gradient, so the two parts are one
:class:`torch.autograd.Function` whose backward follows ring attention: each part's gradient is computed
with the *merged* output and log-sum-exp (``dS = P * (dP - rowsum(dO * O))`` with ``P = exp(S - lse)``), which
is exact for a softmax over the union of disjoint key sets. FlashAttention's backward kernel takes ``out``
and ``logsumexp`` as inputs, so the band's backward is its own kernel, again visiting only the band's tiles.

Where FlashAttention cannot run (CPU, float32 or float64 inputs, a torch without ``window_size_left``), the
near part uses masked dense math with the same forward/backward formulas, which is how the CPU tests check
the whole construction against the float64 reference.

Shapes: the model's ``q, k, v`` are ``[B, H, T, D]`` views of ``[B, T, H, D]`` buffers; internally
everything is ``[B, T, H, D]`` ("bthd", FlashAttention's layout), log-sum-exps ``[H, B, T]``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..kernels import cudnn_band
from .common import check_length, device_key, masked_attention_lse, no_autocast
from .patterns import SPLITS, check_pattern, far_m_min, near_allowed, summary_columns

try:  # the strided far part's kernels; Triton comes with CUDA builds of torch
    from ..kernels import far_triton
except Exception:  # no Triton (CPU-only installs): the far part runs as torch code
    far_triton = None

NEG_INF = float("-inf")


def flash_window_available() -> bool:
    """Whether this torch's ``aten._flash_attention_forward`` takes ``window_size_left`` (torch >= 2.5)."""
    try:
        schema = str(torch.ops.aten._flash_attention_forward.default._schema)
    except Exception:  # pragma: no cover - an op-less build
        return False
    return "window_size_left" in schema


@dataclass(frozen=True)
class _Spec:
    """Everything the autograd function needs besides the tensors (hashable: one compiled graph per spec
    and shape)."""

    near: Optional[str]  # "local" | "block" | None
    far: Optional[str]  # "strided" | "summary" | None
    window: int
    stride: int
    summary: int
    m_min: int
    use_flash: bool  # the near part on a GPU kernel (CUDA, half precision): FlashAttention's or cuDNN's
    triton_far: bool  # the strided far part (and merge) through the Triton kernels of mstlib.far_triton
    cudnn_band: bool = False  # the band through cuDNN's sliding window (mstlib.cudnn_band; cudnn_split)
    compiled: bool = False  # the torch far part and merge through torch.compile (_PIECES[True])


# ---------------------------------------------------------------------------------------- far part math
# All in float32 (float64 for float64 inputs), on [B, T, H, D] inputs; written as broadcast products and
# sums, so that inductor fuses each into a reduction kernel reading the inputs in place.


def _acc(x: torch.Tensor) -> torch.Tensor:
    return x.double() if x.dtype == torch.float64 else x.float()


def _classes(x: torch.Tensor, stride: int) -> torch.Tensor:
    """``[B, T, *rest]`` -> ``[B, M, stride, *rest]`` with ``M = ceil(T / stride)`` (zero padding at the end):
    entry ``[b, a, r]`` is position ``a * stride + r``, so residue class ``r`` is ``[:, :, r]``. A view when
    ``stride`` divides ``T``. Padding is harmless: a padded key comes after every real query of its class,
    and a padded query has a zero output gradient."""
    B, T = x.shape[:2]
    M = -(-T // stride)
    if M * stride > T:
        x = F.pad(x, (0, 0) * (x.dim() - 2) + (0, M * stride - T))
    return x.reshape(B, M, stride, *x.shape[2:])


def _unclasses(x: torch.Tensor, T: int) -> torch.Tensor:
    B, M, S = x.shape[:3]
    return x.reshape(B, M * S, *x.shape[3:])[:, :T]


def _strided_scores(q, k, stride: int, m_min: int, scale: float) -> torch.Tensor:
    """Scaled scores of the strided far part, ``[B, Mq, Mk, stride, H]``, ``-inf`` where not allowed (key
    class index ``b <= a - m_min`` for query index ``a``)."""
    qg, kg = _acc(_classes(q, stride)), _acc(_classes(k, stride))
    s = (qg[:, :, None] * kg[:, None]).sum(-1) * scale
    M = qg.size(1)
    a = torch.arange(M, device=q.device)
    allowed = (a[:, None] - a[None, :]) >= m_min
    return s.masked_fill(~allowed[:, :, None, None], NEG_INF)


def _summary_scores(q, k, stride: int, summary: int, scale: float) -> torch.Tensor:
    """Scaled scores against ``fixed``'s summary columns, ``[B, T, N, H]``, ``-inf`` unless the column's
    block precedes the query's."""
    T = q.size(1)
    cols = summary_columns(T, stride, summary, q.device)
    kc = _acc(k.index_select(1, cols))
    s = (_acc(q)[:, :, None] * kc[:, None]).sum(-1) * scale
    pos = torch.arange(T, device=q.device)
    allowed = (cols[None, :] // stride) < (pos[:, None] // stride)
    return s.masked_fill(~allowed[:, :, None], NEG_INF)


def _softmax_over_keys(s: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax of the scores ``s`` (keys on dim 2) applied to ``values`` (keys on dim 1, broadcast over
    dim 1 of ``s``): ``(out, lse)``, with ``lse = -inf`` and ``out = 0`` for a row without keys."""
    lse = torch.logsumexp(s, dim=2)
    p = torch.exp(s - lse.masked_fill(torch.isinf(lse), 0.0)[:, :, None])
    return (p[..., None] * values[:, None]).sum(2), lse


def _far_forward(q, k, v, spec: _Spec, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The far part alone: ``(out [B, T, H, D] float32, lse [B, T, H])``; ``lse = -inf`` (and ``out = 0``)
    for a query with no far key."""
    T = q.size(1)
    if spec.far == "strided":
        s = _strided_scores(q, k, spec.stride, spec.m_min, scale)  # [B, Mq, Mk, S, H]
        o, lse = _softmax_over_keys(s, _acc(_classes(v, spec.stride)))
        return _unclasses(o, T), _unclasses(lse, T)
    s = _summary_scores(q, k, spec.stride, spec.summary, scale)  # [B, T, N, H]
    cols = summary_columns(T, spec.stride, spec.summary, q.device)
    return _softmax_over_keys(s, _acc(v.index_select(1, cols)))


def _far_backward(q, k, v, do, lse, delta, spec: _Spec, scale: float):
    """Gradients of the far part's keys given the *merged* ``lse`` and ``delta = rowsum(dO * O)`` (both
    ``[B, T, H]``): ``(dq, dk, dv)`` in float32, ``[B, T, H, D]``."""
    T = q.size(1)
    if spec.far == "strided":
        st = spec.stride
        s = _strided_scores(q, k, st, spec.m_min, scale)
        p = torch.exp(s - _classes(lse, st)[:, :, None])  # masked scores give exactly 0
        dog, vg = _acc(_classes(do, st)), _acc(_classes(v, st))
        dv = (p[..., None] * dog[:, :, None]).sum(1)
        dp = (dog[:, :, None] * vg[:, None]).sum(-1)
        ds = p * (dp - _classes(delta, st)[:, :, None]) * scale
        dq = (ds[..., None] * _acc(_classes(k, st))[:, None]).sum(2)
        dk = (ds[..., None] * _acc(_classes(q, st))[:, :, None]).sum(1)
        return _unclasses(dq, T), _unclasses(dk, T), _unclasses(dv, T)
    cols = summary_columns(T, spec.stride, spec.summary, q.device)
    s = _summary_scores(q, k, spec.stride, spec.summary, scale)  # [B, T, N, H]
    p = torch.exp(s - lse[:, :, None])
    dof, kc, vc = _acc(do), _acc(k.index_select(1, cols)), _acc(v.index_select(1, cols))
    dvc = (p[..., None] * dof[:, :, None]).sum(1)  # [B, N, H, D]
    dp = (dof[:, :, None] * vc[:, None]).sum(-1)
    ds = p * (dp - delta[:, :, None]) * scale
    dq = (ds[..., None] * kc[:, None]).sum(2)
    dkc = (ds[..., None] * _acc(q)[:, :, None]).sum(1)
    zeros = torch.zeros(q.shape, dtype=dq.dtype, device=q.device)
    return dq, zeros.index_add(1, cols, dkc), zeros.index_add(1, cols, dvc)


# ------------------------------------------------------------------------------ the compiled pieces


def _fwd_merge(q, k, v, o_near, lse_near, spec: _Spec, scale: float):
    """Far part plus the merge: ``(out [B, T, H, D] in q's dtype, lse [H, B, T] float32)``. ``o_near`` /
    ``lse_near`` (``[B, T, H, D]``, ``[H, B, T]``) are ``None`` when the pattern has no near part."""
    if spec.far is None:
        return o_near.to(q.dtype), _acc(lse_near)
    o_far, lse_far = _far_forward(q, k, v, spec, scale)
    lse_far = lse_far.permute(2, 0, 1)  # [H, B, T]
    if o_near is None:
        return o_far.to(q.dtype), lse_far.contiguous()
    lse = torch.logaddexp(_acc(lse_near), lse_far)
    w_near = torch.exp(lse_near - lse).permute(1, 2, 0)[..., None]
    w_far = torch.exp(lse_far - lse).permute(1, 2, 0)[..., None]
    out = _acc(o_near) * w_near + o_far * w_far
    return out.to(q.dtype), lse


def _bwd_far(q, k, v, o, lse, do, dq_near, dk_near, dv_near, spec: _Spec, scale: float):
    """Far part's gradients added to the near part's (``None`` when there is none): ``(dq, dk, dv)`` in the
    inputs' dtype."""
    lse_bth = lse.permute(1, 2, 0)
    delta = (_acc(do) * _acc(o)).sum(-1)
    dq, dk, dv = _far_backward(q, k, v, do, lse_bth, delta, spec, scale)
    if dq_near is not None:
        dq, dk, dv = dq + _acc(dq_near), dk + _acc(dk_near), dv + _acc(dv_near)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


@functools.lru_cache(maxsize=1)
def _compiled() -> tuple:
    """``(forward, backward)`` pieces through ``torch.compile``: one pair for the process (each shape gets its
    own graph). Looked up when an attention function is built (into :data:`_PIECES`), not inside the
    autograd function, so a model compiled as a whole traces straight through (nested compilation is
    inlined)."""
    return torch.compile(_fwd_merge, dynamic=False), torch.compile(_bwd_far, dynamic=False)


#: The torch far part and merge, ``(forward, backward)``: plain (``False``) and compiled (``True``, set when
#: an attention function that compiles them is built). The autograd function picks them by
#: ``_Spec.compiled`` instead of taking them as arguments: torch 2.11's tracing of ``Function.apply`` breaks
#: the graph on a function argument (``isinstance()`` of a compiled function), at every layer.
_PIECES: dict[bool, tuple] = {False: (_fwd_merge, _bwd_far)}


# ---------------------------------------------------------------------------------------- near part


def _near_bounds(near: str, B: int, T: int, stride: int, device: torch.device) -> tuple[torch.Tensor, int]:
    """Packed-sequence boundaries for FlashAttention's varlen kernel: one sequence per batch row (``local``)
    or per block of ``stride`` tokens (``block``), and the longest sequence. Built on the device from
    ``arange`` (no host-to-device copy, traceable by torch.compile)."""
    if near == "local":
        return torch.arange(0, (B + 1) * T, T, device=device, dtype=torch.int32), T
    starts = torch.arange(0, T, stride, device=device)
    cu = (torch.arange(B, device=device)[:, None] * T + starts[None, :]).flatten()
    return torch.cat([cu, cu.new_full((1,), B * T)]).to(torch.int32), min(stride, T)


def _flash_window(spec: _Spec) -> int:
    return spec.window - 1 if spec.near == "local" else -1


def _near_mask(spec: _Spec, T: int, device) -> torch.Tensor:
    pos = torch.arange(T, device=device)
    return near_allowed(spec.near, pos[:, None], pos[None, :], spec.window, spec.stride)


def _near_forward_math(q, k, v, spec: _Spec, scale: float):
    """Masked dense math for the near part: ``(out [B, T, H, D] float32, lse [H, B, T])``."""
    out, lse = masked_attention_lse(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                     _near_mask(spec, q.size(1), q.device), scale)
    return out.transpose(1, 2), lse.permute(1, 0, 2)


def _near_backward_math(q, k, v, o, lse, do, spec: _Spec, scale: float):
    """Masked dense math for the near part's gradients with the merged ``o`` and ``lse``."""
    allowed = _near_mask(spec, q.size(1), q.device)
    qa, ka, va, doa = _acc(q), _acc(k), _acc(v), _acc(do)
    s = torch.einsum("bthd,bshd->bhts", qa, ka) * scale
    p = torch.exp(s - lse.permute(1, 0, 2)[..., None]).masked_fill(~allowed, 0.0)
    delta = (doa * _acc(o)).sum(-1).transpose(1, 2)  # [B, H, T]
    dv = torch.einsum("bhts,bthd->bshd", p, doa)
    dp = torch.einsum("bthd,bshd->bhts", doa, va)
    ds = p * (dp - delta[..., None]) * scale
    dq = torch.einsum("bhts,bshd->bthd", ds, ka)
    dk = torch.einsum("bhts,bthd->bshd", ds, qa)
    return dq, dk, dv


class _FlashSplit(torch.autograd.Function):
    """``(q, k, v)`` in ``[B, T, H, D]`` -> attention output ``[B, T, H, D]`` (see the module docstring). Called
    with autocast off (``attend``, :func:`mstlib.attention.no_autocast`: the parts run in their own
    precision, kernels in the inputs' dtype and the masked math in float32); the backward turns it off
    itself if the caller's backward runs under it."""

    @staticmethod
    def forward(ctx, q, k, v, spec: _Spec, scale: float):
        B, T, H, D = q.shape
        o_near = lse_near = None
        flash_state = None
        if spec.cudnn_band:
            o_near, lse_near = cudnn_band.forward(q, k, v, spec.window, scale)
        elif spec.near is not None and spec.use_flash:
            cu, max_len = _near_bounds(spec.near, B, T, spec.stride, q.device)
            o3, lse_near, rng, unused, _ = torch.ops.aten._flash_attention_forward(
                q.reshape(B * T, H, D), k.reshape(B * T, H, D), v.reshape(B * T, H, D), cu, cu,
                max_len, max_len, 0.0, True, False, scale=scale,
                window_size_left=_flash_window(spec), window_size_right=0)
            if lse_near.shape != (H, B * T):
                raise RuntimeError(f"unexpected FlashAttention log-sum-exp shape {tuple(lse_near.shape)}")
            o_near, lse_near = o3.view(B, T, H, D), lse_near.view(H, B, T)
            flash_state = (cu, max_len, rng, unused)
        elif spec.near is not None:
            o_near, lse_near = _near_forward_math(q, k, v, spec, scale)
        if spec.triton_far:
            out, lse = far_triton.far_forward(q, k, v, o_near, lse_near, spec.stride, spec.m_min, float(scale))
        else:
            out, lse = _PIECES[spec.compiled][0](q, k, v, o_near, lse_near, spec, scale)
        ctx.spec, ctx.scale, ctx.flash_state = spec, scale, flash_state
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        spec, scale = ctx.spec, ctx.scale
        B, T, H, D = q.shape
        dq = dk = dv = None
        with no_autocast(q.device.type):
            dout = dout if dout.stride(-1) == 1 else dout.contiguous()  # the Triton kernels take row strides
            if spec.cudnn_band:
                dq, dk, dv = cudnn_band.backward(dout, q, k, v, out, lse, spec.window, scale)
            elif spec.near is not None and spec.use_flash:
                cu, max_len, rng, unused = ctx.flash_state
                dout = dout.reshape(B * T, H, D).contiguous().view(B, T, H, D)  # FlashAttention's backward
                dq, dk, dv = torch.ops.aten._flash_attention_backward(
                    dout.view(B * T, H, D), q.reshape(B * T, H, D), k.reshape(B * T, H, D),
                    v.reshape(B * T, H, D), out.reshape(B * T, H, D), lse.reshape(H, B * T).contiguous(), cu, cu,
                    max_len, max_len, 0.0, True, rng, unused, scale=scale,
                    window_size_left=_flash_window(spec), window_size_right=0)
                dq, dk, dv = dq.view(B, T, H, D), dk.view(B, T, H, D), dv.view(B, T, H, D)
            elif spec.near is not None:
                dq, dk, dv = _near_backward_math(q, k, v, out, lse, dout, spec, scale)
            if spec.triton_far:
                dq, dk, dv = far_triton.far_backward(q, k, v, out, lse, dout, dq, dk, dv, spec.stride,
                                                      spec.m_min, scale)
            elif spec.far is not None:
                dq, dk, dv = _PIECES[spec.compiled][1](q, k, v, out, lse, dout, dq, dk, dv, spec, scale)
            else:
                dq, dk, dv = dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)
        return dq, dk, dv, None, None


def flash_split_attention(name: str, T: int, window: int, stride: int, device, *, summary: int = 1,
                          compile: Optional[bool] = None, far_kernel: str = "auto", near_kernel: str = "flash"):
    """The ``"flash_split"`` backend for pattern ``name`` (module docstring): ``(q, k, v) -> y``, all
    ``[B, H, T, D]``. ``compile``: the torch far part and merge through ``torch.compile`` (default: on
    CUDA). The near part uses FlashAttention for half-precision CUDA inputs when this torch has windowed
    FlashAttention, masked dense math otherwise. ``far_kernel``: ``"auto"`` (the Triton kernels for the
    strided far part where they apply), ``"torch"`` (always the torch far part; for comparisons).
    ``near_kernel``: ``"flash"`` (FlashAttention) or ``"cudnn"`` (the band through cuDNN's sliding window,
    :mod:`mstlib.cudnn_band`: the ``"cudnn_split"`` backend; ``local`` and ``local_strided`` only, and it
    needs ``nvidia-cudnn-frontend`` on a CUDA machine)."""
    check_pattern(name, window, stride, summary)
    if far_kernel not in ("auto", "torch"):
        raise ConfigError(f"far_kernel must be 'auto' or 'torch', got {far_kernel!r}")
    if near_kernel not in ("flash", "cudnn"):
        raise ConfigError(f"near_kernel must be 'flash' or 'cudnn', got {near_kernel!r}")
    if name == "dense":
        raise ConfigError("the flash_split backend is for sparse patterns; dense attention needs no split")
    dev = torch.device(device_key(device))
    near, far = SPLITS[name]
    on_cuda = dev.type == "cuda"
    use_compile = on_cuda if compile is None else compile
    flash_ok = on_cuda and flash_window_available()
    if use_compile:
        _PIECES[True] = _compiled()
    m_min = far_m_min(name, window, stride)
    if near_kernel == "cudnn":
        if near != "local":
            raise ConfigError(f"the cuDNN band is for patterns with a band (local, local_strided), not {name!r}")
        if not (on_cuda and cudnn_band.available()):
            raise ConfigError("attention.backend='cudnn_split' needs a CUDA device and the nvidia-cudnn-frontend "
                              "package (pip install nvidia-cudnn-frontend); use 'flash_split' or 'auto'")

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        t = q.size(-2)
        check_length(t, T)
        use_flash = flash_ok and q.dtype in (torch.float16, torch.bfloat16) and q.size(-1) <= 256
        triton_far = (far == "strided" and far_kernel == "auto" and far_triton is not None
                      and (use_flash or near is None) and far_triton.supported(q, t, stride))
        spec = _Spec(near, far, window, stride, summary, m_min, use_flash, triton_far,
                     use_flash and near_kernel == "cudnn", use_compile)
        with no_autocast(q.device.type):
            y = _FlashSplit.apply(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), spec,
                                  q.size(-1) ** -0.5)
        return y.transpose(1, 2)

    return attend
