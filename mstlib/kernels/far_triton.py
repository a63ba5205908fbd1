"""Triton kernels for the strided far part of the ``flash_split`` backend (see :mod:`mstlib.attention.flash_split`).

The far part of ``local_strided`` / ``strided`` gives query ``t = a * stride + r`` the keys
``n * stride + r`` with ``n <= a - m_min``: within residue class ``r``, a causal attention over
``M = ceil(T / stride)`` members (8 at T = 1024, stride = 128; 32 at 4096). Each residue class is one
small attention problem, and a program owns all of it: its queries *and* its keys. One program takes
``(batch, head, RB consecutive residues)`` and holds one tile of ``N = Mp * RB`` rows (``Mp``: ``M``
padded to a power of two), one row per (class ``a``, residue ``r``) in memory order, so the rows of one
class are ``RB`` consecutive positions of the sequence (one contiguous load). The scores are one
tensor-core product ``Q K^T`` of ``N x N``, masked to the block diagonal (same residue) and to
``a - n >= m_min``: at most ``RB`` times the useful work, which is negligible next to the memory traffic
this part is bound by (each input is read once, each output written once, in place in the
``[B, T, H, D]`` tensors, no regrouping copies).

* forward: far softmax, then ``L = logaddexp(lse_band, lse_far)`` and
  ``O = O_band * exp(lse_band - L) + O_far * exp(lse_far - L)``, written as the output (the merge with the
  band's output is fused in);
* backward (given the merged ``O``, ``L`` and ``dO``, ring-attention style): ``P = exp(S - L)``,
  ``dS = P * (dO V^T - rowsum(dO * O))``, ``dQ = dS K``, ``dK = dS^T Q``, ``dV = P^T dO``, all in one
  kernel (the program holds both sides of its residues, so nothing is reduced across programs), added to
  the band's (FlashAttention's) gradients in place.

As in FlashAttention, the probabilities and ``dS`` enter the second products in the inputs' precision,
with float32 accumulation.

Only imported where Triton is (the GPU machine); the CPU path of the backend is plain torch. Triton's
interpreter (``TRITON_INTERPRET=1``) runs these kernels on CPU for the tests.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import triton
import triton.language as tl

#: Largest tile edge ``N = Mp * RB`` (rows of ``q, k, v``; the scores are ``N x N``).
MAX_ROWS = 128
#: Smallest tile edge: Triton's tensor-core products need 16.
MIN_ROWS = 16


def _prune(configs, named_args, **kwargs):
    """Keep the configurations whose tile edge ``Mp * RB`` lies in ``[MIN_ROWS, MAX_ROWS]`` (and ``RB``
    within the residues there are)."""
    mp = kwargs.get("MP", named_args.get("MP"))
    stride = named_args.get("STRIDE", kwargs.get("STRIDE"))
    keep = [c for c in configs
            if MIN_ROWS <= mp * c.kwargs["RB"] <= MAX_ROWS and c.kwargs["RB"] <= triton.next_power_of_2(stride)]
    return keep or configs[:1]


_CONFIGS = [triton.Config({"RB": rb}, num_warps=w, num_stages=1) for rb in (1, 2, 4, 8, 16, 32, 64, 128)
            for w in (4, 8)]
_KEY = ["T", "STRIDE", "MP", "D"]


@triton.jit
def _rows(STRIDE, T, MP: tl.constexpr, RB: tl.constexpr):
    """The tile's rows: class index ``a``, residue ``r``, position ``t``, and whether ``t`` is real."""
    i = tl.arange(0, MP * RB)
    a = i // RB
    r = tl.program_id(1) * RB + i % RB
    t = a * STRIDE + r
    return a, r, t, (t < T) & (r < STRIDE)


@triton.jit
def _load(X, b, h, s_b, s_t, s_h, t, d, valid):
    return tl.load(X + b * s_b + h * s_h + t[:, None] * s_t + d[None, :], mask=valid[:, None], other=0.0)


@triton.jit
def _scores(q, k, a, r, valid, scale, M_MIN: tl.constexpr, IEEE: tl.constexpr):
    """Scaled scores ``[N, N]`` (float32) and the allowed pairs (same residue, ``a_q - a_k >= m_min``)."""
    if IEEE:
        s = tl.dot(q, tl.trans(k), input_precision="ieee")
    else:
        s = tl.dot(q, tl.trans(k))
    allowed = (((a[:, None] - a[None, :]) >= M_MIN) & (r[:, None] == r[None, :])
               & valid[:, None] & valid[None, :])
    return s * scale, allowed


@triton.jit
def _mm(x, y, IEEE: tl.constexpr):
    if IEEE:
        return tl.dot(x, y, input_precision="ieee")
    return tl.dot(x, y)


@triton.autotune(configs=_CONFIGS, key=_KEY, prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _far_fwd_kernel(Q, K, V, OB, LB, O, L,
                    sq_b, sq_t, sq_h, sk_b, sk_t, sk_h, sv_b, sv_t, sv_h, so_b, so_t, so_h,
                    B, T, H, STRIDE, scale,
                    MP: tl.constexpr, D: tl.constexpr, M_MIN: tl.constexpr, HAS_NEAR: tl.constexpr,
                    IEEE: tl.constexpr, RB: tl.constexpr):
    pid_bh = tl.program_id(0)
    b = pid_bh // H
    h = pid_bh % H
    a, r, t, valid = _rows(STRIDE, T, MP, RB)
    d = tl.arange(0, D)
    q = _load(Q, b, h, sq_b, sq_t, sq_h, t, d, valid)
    k = _load(K, b, h, sk_b, sk_t, sk_h, t, d, valid)
    v = _load(V, b, h, sv_b, sv_t, sv_h, t, d, valid)
    s, allowed = _scores(q, k, a, r, valid, scale, M_MIN, IEEE)
    s = tl.where(allowed, s, float("-inf"))
    mx = tl.max(s, axis=1)
    has = mx > float("-inf")
    p = tl.exp(s - tl.where(has, mx, 0.0)[:, None])
    den = tl.sum(p, axis=1)
    den1 = tl.where(has, den, 1.0)
    out = _mm(p.to(v.dtype), v, IEEE) / den1[:, None]
    lse_far = tl.where(has, mx + tl.log(den1), float("-inf"))
    l_off = h * B * T + b * T + t
    o_off = b * so_b + h * so_h + t[:, None] * so_t + d[None, :]
    lse = lse_far
    if HAS_NEAR:
        ob = tl.load(OB + o_off, mask=valid[:, None], other=0.0).to(tl.float32)
        lb = tl.load(LB + l_off, mask=valid, other=0.0)
        lse = tl.maximum(lb, lse_far) + tl.log(1.0 + tl.exp(-tl.abs(lb - lse_far)))
        out = ob * tl.exp(lb - lse)[:, None] + out * tl.exp(lse_far - lse)[:, None]
    tl.store(O + o_off, out.to(O.dtype.element_ty), mask=valid[:, None])
    tl.store(L + l_off, lse, mask=valid)


@triton.autotune(configs=_CONFIGS, key=_KEY, prune_configs_by={"early_config_prune": _prune},
                 restore_value=["DQ", "DK", "DV"])
@triton.jit
def _far_bwd_kernel(Q, K, V, O, DO, L, DQ, DK, DV,
                    sq_b, sq_t, sq_h, sk_b, sk_t, sk_h, sv_b, sv_t, sv_h, so_b, so_t, so_h,
                    sdo_b, sdo_t, sdo_h, sg_b, sg_t, sg_h,
                    B, T, H, STRIDE, scale,
                    MP: tl.constexpr, D: tl.constexpr, M_MIN: tl.constexpr, HAS_NEAR: tl.constexpr,
                    IEEE: tl.constexpr, RB: tl.constexpr):
    """Both sides of the program's residues: ``dq`` for its queries, ``dk, dv`` for its keys."""
    pid_bh = tl.program_id(0)
    b = pid_bh // H
    h = pid_bh % H
    a, r, t, valid = _rows(STRIDE, T, MP, RB)
    d = tl.arange(0, D)
    q = _load(Q, b, h, sq_b, sq_t, sq_h, t, d, valid)
    k = _load(K, b, h, sk_b, sk_t, sk_h, t, d, valid)
    v = _load(V, b, h, sv_b, sv_t, sv_h, t, d, valid)
    do = _load(DO, b, h, sdo_b, sdo_t, sdo_h, t, d, valid)
    o = _load(O, b, h, so_b, so_t, so_h, t, d, valid)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), axis=1)
    lse = tl.load(L + h * B * T + b * T + t, mask=valid, other=0.0)
    s, allowed = _scores(q, k, a, r, valid, scale, M_MIN, IEEE)
    p = tl.where(allowed, tl.exp(s - lse[:, None]), 0.0)
    dv = _mm(tl.trans(p.to(do.dtype)), do, IEEE)
    ds = p * (_mm(do, tl.trans(v), IEEE) - delta[:, None])
    ds_in = ds.to(q.dtype)
    dq = _mm(ds_in, k, IEEE) * scale
    dk = _mm(tl.trans(ds_in), q, IEEE) * scale
    g_off = b * sg_b + h * sg_h + t[:, None] * sg_t + d[None, :]
    vm = valid[:, None]
    if HAS_NEAR:
        dq += tl.load(DQ + g_off, mask=vm, other=0.0).to(tl.float32)
        dk += tl.load(DK + g_off, mask=vm, other=0.0).to(tl.float32)
        dv += tl.load(DV + g_off, mask=vm, other=0.0).to(tl.float32)
    tl.store(DQ + g_off, dq.to(DQ.dtype.element_ty), mask=vm)
    tl.store(DK + g_off, dk.to(DK.dtype.element_ty), mask=vm)
    tl.store(DV + g_off, dv.to(DV.dtype.element_ty), mask=vm)


def _pow2(n: int) -> int:
    """The smallest power of two ``>= n`` (``n >= 1``): ``triton.next_power_of_2`` in plain Python, because
    :func:`supported` runs inside the attention call, which torch.compile traces, and a call into Triton's
    own module is a graph break there (it broke every compiled model with this backend at each layer)."""
    return 1 << (n - 1).bit_length()


def _classes(T: int, stride: int) -> int:
    """Classes per residue, padded to a power of two."""
    return _pow2(-(-T // stride))


def supported(q: torch.Tensor, T: int, stride: int) -> bool:
    """Shapes these kernels serve on the GPU: half precision, a power-of-two head dim from 16 to 128, at
    most ``MAX_ROWS`` classes per residue (``T / stride``, padded to a power of two), and enough residues
    to fill a tensor-core tile of ``MIN_ROWS`` rows."""
    mp = _classes(T, stride)
    return (q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and q.size(-1) in (16, 32, 64, 128)
            and mp <= MAX_ROWS and mp * _pow2(stride) >= MIN_ROWS)


def _bth(x: torch.Tensor) -> tuple[int, int, int]:
    return x.stride(0), x.stride(1), x.stride(2)


def _launch(kernel, B: int, H: int, stride: int, *args, **kwargs) -> None:
    """Launch an autotuned kernel; under Triton's CPU interpreter (``TRITON_INTERPRET=1``, the tests) the
    autotuner cannot time configurations, so the plain kernel runs with one tile edge of 64 rows or the
    fewest that fit."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        rb = max(1, min(triton.next_power_of_2(stride), 64 // kwargs["MP"]))
        kernel.fn[(B * H, triton.cdiv(stride, rb))](*args, **kwargs, RB=rb)
        return
    kernel[lambda meta: (B * H, triton.cdiv(stride, meta["RB"]))](*args, **kwargs)


def _consts(q: torch.Tensor, T: int, stride: int, m_min: int, has_near: bool) -> dict:
    return dict(MP=_classes(T, stride), D=q.size(-1), M_MIN=m_min, HAS_NEAR=has_near,
                IEEE=q.dtype == torch.float32)


@torch.library.custom_op("mstlib::far_strided_fwd", mutates_args=())
def far_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o_near: Optional[torch.Tensor],
                lse_near: Optional[torch.Tensor], stride: int, m_min: int, scale: float
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Strided far part fused with the merge. ``q, k, v``: ``[B, T, H, D]`` (last dim contiguous);
    ``o_near`` ``[B, T, H, D]`` contiguous and ``lse_near`` ``[H, B, T]`` contiguous, or both ``None``.
    Returns ``(out [B, T, H, D] contiguous, q's dtype; lse [H, B, T] float32)``. A custom operator, so a
    model compiled as a whole calls it as one opaque op."""
    B, T, H, D = q.shape
    out = torch.empty((B, T, H, D), dtype=q.dtype, device=q.device)
    lse = torch.empty((H, B, T), dtype=torch.float32, device=q.device)
    has_near = o_near is not None
    _launch(
        _far_fwd_kernel, B, H, stride, q, k, v, o_near if has_near else out, lse_near if has_near else lse,
        out, lse, *_bth(q), *_bth(k), *_bth(v), *_bth(out), B, T, H, stride, float(scale),
        **_consts(q, T, stride, m_min, has_near))
    return out, lse


@far_forward.register_fake
def _(q, k, v, o_near, lse_near, stride, m_min, scale):
    B, T, H, D = q.shape
    return q.new_empty((B, T, H, D)), q.new_empty((H, B, T), dtype=torch.float32)


@torch.library.custom_op("mstlib::far_strided_bwd", mutates_args=("dq", "dk", "dv"))
def far_backward_(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                  dout: torch.Tensor, dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor, stride: int,
                  m_min: int, scale: float, accumulate: bool) -> None:
    """The far part's gradients into ``dq, dk, dv`` (``[B, T, H, D]`` contiguous): added to what they hold
    (the band's gradients) with ``accumulate``, else written. ``out``/``lse``: the merged forward."""
    B, T, H, D = q.shape
    _launch(
        _far_bwd_kernel, B, H, stride, q, k, v, out, dout, lse, dq, dk, dv, *_bth(q), *_bth(k), *_bth(v),
        *_bth(out), *_bth(dout), *_bth(dq), B, T, H, stride, float(scale),
        **_consts(q, T, stride, m_min, accumulate))


@far_backward_.register_fake
def _(q, k, v, out, lse, dout, dq, dk, dv, stride, m_min, scale, accumulate):
    return None


def far_backward(q, k, v, out, lse, dout, dq, dk, dv, stride: int, m_min: int, scale: float):
    """Adds the far part's gradients to ``dq, dk, dv`` (the band's, updated in place) or, when they are
    ``None``, returns new ones."""
    accumulate = dq is not None
    if not accumulate:
        dq, dk, dv = (torch.empty(x.shape, dtype=x.dtype, device=x.device) for x in (q, k, v))
    far_backward_(q, k, v, out, lse, dout, dq, dk, dv, stride, m_min, float(scale), accumulate)
    return dq, dk, dv
