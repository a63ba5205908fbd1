"""Triton kernels for the strided far part of the ``flash_split`` backend (see :mod:`mstlib.flash_split`).

The far part of ``local_strided`` / ``strided`` gives query ``t = a * stride + r`` the keys
``n * stride + r`` with ``n <= a - m_min``: within residue class ``r``, a causal attention over
``M = ceil(T / stride)`` members (8 at T = 1024, stride = 128). Tensor cores need 16 x 16 tiles, so a
tile-based kernel would waste most of its work on these 8 x 8 problems; instead one program takes
``(batch, head, R residues)`` and holds a 2D tile of ``M * R`` rows of ``D`` (one row per (class,
residue)); it streams the ``M`` classes of the other side, each row loading the row of its own residue
(rows of one residue share it through the cache, and rows the pattern does not allow load nothing), and
does the dot products on CUDA cores. Inputs are read from their place in the ``[B, T, H, D]`` tensors (no
regrouping copies), and the merge with the band's output is fused in:

* forward: far softmax (online over key classes), then ``L = logaddexp(lse_band, lse_far)`` and
  ``O = O_band * exp(lse_band - L) + O_far * exp(lse_far - L)``, written as the output;
* backward (given the merged ``O``, ``L`` and ``dO``, ring-attention style): ``P = exp(S - L)``,
  ``dS = P * (dO V^T - rowsum(dO * O))``, in two kernels (queries' side: ``dq``; keys' side: ``dk``, ``dv``,
  each program holding its key classes so nothing is reduced across classes), added to the band's
  (FlashAttention's) gradients in place. Each key belongs to exactly one program, so there are no races.

Only imported where Triton is (the GPU machine); the CPU path of the backend is plain torch.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import triton
import triton.language as tl


#: Largest register tile a program holds, in values: ``(M * R) x D`` rows of the 2D tiles.
TILE_VALUES = 8192


def _prune(configs, named_args, **kwargs):
    """Keep the configurations whose register tile ``(M * R) x D`` stays within ``TILE_VALUES`` (and ``R``
    within the residues there are)."""
    M = kwargs.get("M", named_args.get("M"))
    D = kwargs.get("D", named_args.get("D"))
    stride = named_args.get("STRIDE", kwargs.get("STRIDE"))
    keep = [c for c in configs if M * c.kwargs["R"] * D <= TILE_VALUES and c.kwargs["R"] <= max(1, stride)]
    return keep or configs[:1]


_CONFIGS = [triton.Config({"R": r}, num_warps=w, num_stages=st)
            for r in (2, 4, 8, 16) for w in (2, 4) for st in (1, 2)]
_KEY = ["T", "STRIDE", "M", "D"]


@triton.autotune(configs=_CONFIGS, key=_KEY, prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _far_fwd_kernel(Q, K, V, OB, LB, O, L,
                    sq_b, sq_t, sq_h, sk_b, sk_t, sk_h, sv_b, sv_t, sv_h, so_b, so_t, so_h,
                    B, T, H, STRIDE, scale,
                    M: tl.constexpr, D: tl.constexpr, M_MIN: tl.constexpr, HAS_NEAR: tl.constexpr,
                    R: tl.constexpr):
    pid_bh = tl.program_id(0)
    b = pid_bh // H
    h = pid_bh % H
    i = tl.arange(0, M * R)  # one row per (query class a, residue r): rows are 2D tiles [M * R, D]
    a = i // R
    r = tl.program_id(1) * R + i % R
    d = tl.arange(0, D)
    t = a * STRIDE + r
    valid = (t < T) & (r < STRIDE)
    q = tl.load(Q + b * sq_b + h * sq_h + t[:, None] * sq_t + d[None, :], mask=valid[:, None], other=0.0)
    q = (q.to(tl.float32) * scale).to(tl.float32)
    mx = tl.full([M * R], float("-inf"), tl.float32)
    den = tl.zeros([M * R], tl.float32)
    acc = tl.zeros([M * R, D], tl.float32)
    for n in range(0, M):
        tk = n * STRIDE + r
        allowed = ((a - n) >= M_MIN) & (tk < T) & valid
        # each row loads the key of its own residue (rows of one residue share it, from cache)
        kn = tl.load(K + b * sk_b + h * sk_h + tk[:, None] * sk_t + d[None, :], mask=allowed[:, None],
                     other=0.0).to(tl.float32)
        vn = tl.load(V + b * sv_b + h * sv_h + tk[:, None] * sv_t + d[None, :], mask=allowed[:, None],
                     other=0.0).to(tl.float32)
        s = tl.where(allowed, tl.sum(q * kn, axis=1), float("-inf"))
        m_new = tl.maximum(mx, s)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(mx - m_safe)
        p = tl.exp(s - m_safe)
        den = den * alpha + p
        acc = acc * alpha[:, None] + p[:, None] * vn
        mx = m_new
    has = den > 0
    lse_far = tl.where(has, mx + tl.log(tl.where(has, den, 1.0)), float("-inf"))
    out = acc / tl.where(has, den, 1.0)[:, None]
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
                 restore_value=["DQ"])
@triton.jit
def _far_bwd_dq_kernel(Q, K, V, O, DO, L, DELTA, DQ,
                       sq_b, sq_t, sq_h, sk_b, sk_t, sk_h, sv_b, sv_t, sv_h, so_b, so_t, so_h,
                       sdo_b, sdo_t, sdo_h, sg_b, sg_t, sg_h,
                       B, T, H, STRIDE, scale,
                       M: tl.constexpr, D: tl.constexpr, M_MIN: tl.constexpr, HAS_NEAR: tl.constexpr,
                       R: tl.constexpr):
    """Queries' side: ``dq`` (added to the band's) and ``delta = rowsum(dO * O)`` for the keys' kernel."""
    pid_bh = tl.program_id(0)
    b = pid_bh // H
    h = pid_bh % H
    i = tl.arange(0, M * R)
    a = i // R
    r = tl.program_id(1) * R + i % R
    d = tl.arange(0, D)
    t = a * STRIDE + r
    valid = (t < T) & (r < STRIDE)
    vm = valid[:, None]
    q = tl.load(Q + b * sq_b + h * sq_h + t[:, None] * sq_t + d[None, :], mask=vm, other=0.0).to(tl.float32)
    do = tl.load(DO + b * sdo_b + h * sdo_h + t[:, None] * sdo_t + d[None, :], mask=vm, other=0.0).to(tl.float32)
    o = tl.load(O + b * so_b + h * so_h + t[:, None] * so_t + d[None, :], mask=vm, other=0.0).to(tl.float32)
    delta = tl.sum(do * o, axis=1)
    l_off = h * B * T + b * T + t
    tl.store(DELTA + l_off, delta, mask=valid)
    lse = tl.load(L + l_off, mask=valid, other=0.0)
    dq = tl.zeros([M * R, D], tl.float32)
    for n in range(0, M):
        tk = n * STRIDE + r
        allowed = ((a - n) >= M_MIN) & (tk < T) & valid
        kn = tl.load(K + b * sk_b + h * sk_h + tk[:, None] * sk_t + d[None, :], mask=allowed[:, None],
                     other=0.0).to(tl.float32)
        vn = tl.load(V + b * sv_b + h * sv_h + tk[:, None] * sv_t + d[None, :], mask=allowed[:, None],
                     other=0.0).to(tl.float32)
        s = (tl.sum(q * kn, axis=1) * scale).to(tl.float32)
        p = tl.where(allowed, tl.exp(s - lse), 0.0)
        ds = p * (tl.sum(do * vn, axis=1) - delta)
        dq += ds[:, None] * kn
    dq = (dq * scale).to(tl.float32)
    q_off = b * sg_b + h * sg_h + t[:, None] * sg_t + d[None, :]
    if HAS_NEAR:
        dq += tl.load(DQ + q_off, mask=vm, other=0.0).to(tl.float32)
    tl.store(DQ + q_off, dq.to(DQ.dtype.element_ty), mask=vm)


@triton.autotune(configs=_CONFIGS, key=_KEY, prune_configs_by={"early_config_prune": _prune},
                 restore_value=["DK", "DV"])
@triton.jit
def _far_bwd_dkdv_kernel(Q, K, V, DO, L, DELTA, DK, DV,
                         sq_b, sq_t, sq_h, sk_b, sk_t, sk_h, sv_b, sv_t, sv_h,
                         sdo_b, sdo_t, sdo_h, sg_b, sg_t, sg_h,
                         B, T, H, STRIDE, scale,
                         M: tl.constexpr, D: tl.constexpr, M_MIN: tl.constexpr, HAS_NEAR: tl.constexpr,
                         R: tl.constexpr):
    """Keys' side: one row per (key class n, residue r); the program streams the query classes, so ``dk``
    and ``dv`` accumulate in place without reductions across rows."""
    pid_bh = tl.program_id(0)
    b = pid_bh // H
    h = pid_bh % H
    i = tl.arange(0, M * R)
    n = i // R
    r = tl.program_id(1) * R + i % R
    d = tl.arange(0, D)
    tk = n * STRIDE + r
    kvalid = (tk < T) & (r < STRIDE)
    km = kvalid[:, None]
    k = tl.load(K + b * sk_b + h * sk_h + tk[:, None] * sk_t + d[None, :], mask=km, other=0.0).to(tl.float32)
    v = tl.load(V + b * sv_b + h * sv_h + tk[:, None] * sv_t + d[None, :], mask=km, other=0.0).to(tl.float32)
    dk = tl.zeros([M * R, D], tl.float32)
    dv = tl.zeros([M * R, D], tl.float32)
    for a in range(0, M):
        t = a * STRIDE + r
        allowed = ((a - n) >= M_MIN) & (t < T) & kvalid
        am = allowed[:, None]
        qa = tl.load(Q + b * sq_b + h * sq_h + t[:, None] * sq_t + d[None, :], mask=am, other=0.0).to(tl.float32)
        doa = tl.load(DO + b * sdo_b + h * sdo_h + t[:, None] * sdo_t + d[None, :], mask=am,
                      other=0.0).to(tl.float32)
        l_off = h * B * T + b * T + t
        lse = tl.load(L + l_off, mask=allowed, other=0.0)
        delta = tl.load(DELTA + l_off, mask=allowed, other=0.0)
        s = (tl.sum(k * qa, axis=1) * scale).to(tl.float32)
        p = tl.where(allowed, tl.exp(s - lse), 0.0)
        dv += p[:, None] * doa
        ds = p * (tl.sum(v * doa, axis=1) - delta)
        dk += ds[:, None] * qa
    dk = (dk * scale).to(tl.float32)
    g_off = b * sg_b + h * sg_h + tk[:, None] * sg_t + d[None, :]
    if HAS_NEAR:
        dk += tl.load(DK + g_off, mask=km, other=0.0).to(tl.float32)
        dv += tl.load(DV + g_off, mask=km, other=0.0).to(tl.float32)
    tl.store(DK + g_off, dk.to(DK.dtype.element_ty), mask=km)
    tl.store(DV + g_off, dv.to(DV.dtype.element_ty), mask=km)


def _classes(T: int, stride: int) -> int:
    """Key classes per residue, padded to a power of two (a Triton tile edge)."""
    return triton.next_power_of_2(-(-T // stride))


def supported(q: torch.Tensor, T: int, stride: int) -> bool:
    """Shapes these kernels serve: half precision, a power-of-two head dim up to 128, and few enough key
    classes (``T / stride``, padded to a power of two) that one residue's ``M x D`` values fit in a tile."""
    D = q.size(-1)
    return (q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and D in (16, 32, 64, 128)
            and _classes(T, stride) * D <= TILE_VALUES)


def _bth(x: torch.Tensor) -> tuple[int, int, int]:
    return x.stride(0), x.stride(1), x.stride(2)


def _grid(B: int, H: int, stride: int):
    return lambda meta: (B * H, triton.cdiv(stride, meta["R"]))


def _launch(kernel, B: int, H: int, stride: int, *args, **kwargs) -> None:
    """Launch an autotuned kernel; under Triton's CPU interpreter (``TRITON_INTERPRET=1``, the tests) the
    autotuner cannot time configurations, so the plain kernel runs with a fixed one."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        r = max(1, min(triton.next_power_of_2(stride), TILE_VALUES // (kwargs["M"] * kwargs["D"]), 8))
        kernel.fn[(B * H, triton.cdiv(stride, r))](*args, **kwargs, R=r)
        return
    kernel[_grid(B, H, stride)](*args, **kwargs)


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
        M=_classes(T, stride), D=D, M_MIN=m_min, HAS_NEAR=has_near)
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
    delta = torch.empty((H, B, T), dtype=torch.float32, device=q.device)
    M = _classes(T, stride)
    _launch(
        _far_bwd_dq_kernel, B, H, stride, q, k, v, out, dout, lse, delta, dq, *_bth(q), *_bth(k), *_bth(v),
        *_bth(out), *_bth(dout), *_bth(dq), B, T, H, stride, float(scale), M=M, D=D, M_MIN=m_min,
        HAS_NEAR=accumulate)
    _launch(
        _far_bwd_dkdv_kernel, B, H, stride, q, k, v, dout, lse, delta, dk, dv, *_bth(q), *_bth(k), *_bth(v),
        *_bth(dout), *_bth(dk), B, T, H, stride, float(scale), M=M, D=D, M_MIN=m_min, HAS_NEAR=accumulate)


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
