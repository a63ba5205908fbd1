"""Triton kernels for the strided far part of the ``flash_split`` backend (see :mod:`mstlib.flash_split`).

The far part of ``local_strided`` / ``strided`` gives query ``t = a * stride + r`` the keys
``n * stride + r`` with ``n <= a - m_min``: within residue class ``r``, a causal attention over
``M = ceil(T / stride)`` members (8 at T = 1024, stride = 128). Tensor cores need 16 x 16 tiles, so a
tile-based kernel would waste most of its work on these 8 x 8 problems; instead one program takes
``(batch, head, R residues)``, keeps the ``M x R x D`` queries in registers and streams the ``M`` key
classes once, doing the dot products on CUDA cores. Every input is read once from its place in the
``[B, T, H, D]`` tensors (no regrouping copies), and the merge with the band's output is fused in:

* forward: far softmax (online over key classes), then ``L = logaddexp(lse_band, lse_far)`` and
  ``O = O_band * exp(lse_band - L) + O_far * exp(lse_far - L)``, written as the output;
* backward (given the merged ``O``, ``L`` and ``dO``, ring-attention style): ``P = exp(S - L)``,
  ``dS = P * (dO V^T - rowsum(dO * O))``; the far part's ``dq``, ``dk``, ``dv`` are added to the band's
  (FlashAttention's) gradients in place. Each key belongs to exactly one program, so there are no races.

Only imported where Triton is (the GPU machine); the CPU path of the backend is plain torch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _far_fwd_kernel(Q, K, V, OB, LB, O, L,
                    sq_b, sq_t, sq_h, sk_b, sk_t, sk_h, sv_b, sv_t, sv_h, so_b, so_t, so_h,
                    B, T, H, STRIDE, scale,
                    M: tl.constexpr, R: tl.constexpr, D: tl.constexpr, M_MIN: tl.constexpr,
                    HAS_NEAR: tl.constexpr):
    pid_bh = tl.program_id(0)
    b = pid_bh // H
    h = pid_bh % H
    a = tl.arange(0, M)
    r = tl.program_id(1) * R + tl.arange(0, R)
    d = tl.arange(0, D)
    t = a[:, None] * STRIDE + r[None, :]  # [M, R] query positions
    valid = (t < T) & (r[None, :] < STRIDE)
    q = tl.load(Q + b * sq_b + h * sq_h + t[:, :, None] * sq_t + d[None, None, :],
                mask=valid[:, :, None], other=0.0).to(tl.float32)
    mx = tl.full([M, R], float("-inf"), tl.float32)
    den = tl.zeros([M, R], tl.float32)
    acc = tl.zeros([M, R, D], tl.float32)
    for n in range(0, M):
        tk = n * STRIDE + r
        kvalid = (tk < T) & (r < STRIDE)
        kn = tl.load(K + b * sk_b + h * sk_h + tk[:, None] * sk_t + d[None, :], mask=kvalid[:, None],
                     other=0.0).to(tl.float32)
        vn = tl.load(V + b * sv_b + h * sv_h + tk[:, None] * sv_t + d[None, :], mask=kvalid[:, None],
                     other=0.0).to(tl.float32)
        s = tl.sum(q * kn[None, :, :], axis=2) * scale
        allowed = ((a[:, None] - n) >= M_MIN) & kvalid[None, :] & valid
        s = tl.where(allowed, s, float("-inf"))
        m_new = tl.maximum(mx, s)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(mx - m_safe)
        p = tl.exp(s - m_safe)
        den = den * alpha + p
        acc = acc * alpha[:, :, None] + p[:, :, None] * vn[None, :, :]
        mx = m_new
    has = den > 0
    lse_far = tl.where(has, mx + tl.log(tl.where(has, den, 1.0)), float("-inf"))
    out = acc / tl.where(has, den, 1.0)[:, :, None]
    l_off = h * B * T + b * T + t
    o_off = b * so_b + h * so_h + t[:, :, None] * so_t + d[None, None, :]
    lse = lse_far
    if HAS_NEAR:
        ob = tl.load(OB + o_off, mask=valid[:, :, None], other=0.0).to(tl.float32)
        lb = tl.load(LB + l_off, mask=valid, other=0.0)
        lse = tl.maximum(lb, lse_far) + tl.log(1.0 + tl.exp(-tl.abs(lb - lse_far)))
        out = ob * tl.exp(lb - lse)[:, :, None] + out * tl.exp(lse_far - lse)[:, :, None]
    tl.store(O + o_off, out.to(O.dtype.element_ty), mask=valid[:, :, None])
    tl.store(L + l_off, lse, mask=valid)


@triton.jit
def _far_bwd_kernel(Q, K, V, O, DO, L, DQ, DK, DV,
                    sq_b, sq_t, sq_h, sk_b, sk_t, sk_h, sv_b, sv_t, sv_h, so_b, so_t, so_h,
                    sdo_b, sdo_t, sdo_h, sg_b, sg_t, sg_h,
                    B, T, H, STRIDE, scale,
                    M: tl.constexpr, R: tl.constexpr, D: tl.constexpr, M_MIN: tl.constexpr,
                    HAS_NEAR: tl.constexpr):
    pid_bh = tl.program_id(0)
    b = pid_bh // H
    h = pid_bh % H
    a = tl.arange(0, M)
    r = tl.program_id(1) * R + tl.arange(0, R)
    d = tl.arange(0, D)
    t = a[:, None] * STRIDE + r[None, :]
    valid = (t < T) & (r[None, :] < STRIDE)
    vm = valid[:, :, None]
    q = tl.load(Q + b * sq_b + h * sq_h + t[:, :, None] * sq_t + d[None, None, :], mask=vm, other=0.0).to(tl.float32)
    do = tl.load(DO + b * sdo_b + h * sdo_h + t[:, :, None] * sdo_t + d[None, None, :], mask=vm,
                 other=0.0).to(tl.float32)
    o = tl.load(O + b * so_b + h * so_h + t[:, :, None] * so_t + d[None, None, :], mask=vm, other=0.0).to(tl.float32)
    delta = tl.sum(do * o, axis=2)
    lse = tl.load(L + h * B * T + b * T + t, mask=valid, other=0.0)
    dq = tl.zeros([M, R, D], tl.float32)
    for n in range(0, M):
        tk = n * STRIDE + r
        kvalid = (tk < T) & (r < STRIDE)
        kn = tl.load(K + b * sk_b + h * sk_h + tk[:, None] * sk_t + d[None, :], mask=kvalid[:, None],
                     other=0.0).to(tl.float32)
        vn = tl.load(V + b * sv_b + h * sv_h + tk[:, None] * sv_t + d[None, :], mask=kvalid[:, None],
                     other=0.0).to(tl.float32)
        s = tl.sum(q * kn[None, :, :], axis=2) * scale
        allowed = ((a[:, None] - n) >= M_MIN) & kvalid[None, :] & valid
        p = tl.where(allowed, tl.exp(s - lse), 0.0)
        dv_n = tl.sum(p[:, :, None] * do, axis=0)
        dp = tl.sum(do * vn[None, :, :], axis=2)
        ds = p * (dp - delta) * scale
        dk_n = tl.sum(ds[:, :, None] * q, axis=0)
        dq += ds[:, :, None] * kn[None, :, :]
        g_off = b * sg_b + h * sg_h + tk[:, None] * sg_t + d[None, :]
        if HAS_NEAR:
            dk_n += tl.load(DK + g_off, mask=kvalid[:, None], other=0.0).to(tl.float32)
            dv_n += tl.load(DV + g_off, mask=kvalid[:, None], other=0.0).to(tl.float32)
        tl.store(DK + g_off, dk_n.to(DK.dtype.element_ty), mask=kvalid[:, None])
        tl.store(DV + g_off, dv_n.to(DV.dtype.element_ty), mask=kvalid[:, None])
    q_off = b * sg_b + h * sg_h + t[:, :, None] * sg_t + d[None, None, :]
    if HAS_NEAR:
        dq += tl.load(DQ + q_off, mask=vm, other=0.0).to(tl.float32)
    tl.store(DQ + q_off, dq.to(DQ.dtype.element_ty), mask=vm)


def _tiles(T: int, stride: int) -> tuple[int, int, int]:
    """``(M, R, warps)``: key classes padded to a power of two, residues per program (``M * R = 64`` rows of
    ``D`` per program, at most the stride rounded up), warps per program."""
    M = triton.next_power_of_2(-(-T // stride))
    R = max(1, min(triton.next_power_of_2(stride), 64 // M if M <= 64 else 1))
    return M, R, 4


def supported(q: torch.Tensor, T: int, stride: int) -> bool:
    """Shapes these kernels serve: half precision, a power-of-two head dim up to 128, at most 256 key
    classes (T / stride)."""
    D = q.size(-1)
    return (q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and D in (16, 32, 64, 128)
            and -(-T // stride) <= 256)


def _bth(x: torch.Tensor) -> tuple[int, int, int]:
    return x.stride(0), x.stride(1), x.stride(2)


def far_forward(q, k, v, o_near, lse_near, stride: int, m_min: int, scale: float):
    """Strided far part fused with the merge. ``q, k, v``: ``[B, T, H, D]`` (last dim contiguous);
    ``o_near`` ``[B, T, H, D]`` contiguous and ``lse_near`` ``[H, B, T]`` contiguous, or both ``None``.
    Returns ``(out [B, T, H, D] contiguous, q's dtype; lse [H, B, T] float32)``."""
    B, T, H, D = q.shape
    out = torch.empty((B, T, H, D), dtype=q.dtype, device=q.device)
    lse = torch.empty((H, B, T), dtype=torch.float32, device=q.device)
    M, R, warps = _tiles(T, stride)
    has_near = o_near is not None
    ob = o_near if has_near else out
    lb = lse_near if has_near else lse
    grid = (B * H, triton.cdiv(stride, R))
    _far_fwd_kernel[grid](q, k, v, ob, lb, out, lse, *_bth(q), *_bth(k), *_bth(v), *_bth(out),
                          B, T, H, stride, scale, M=M, R=R, D=D, M_MIN=m_min, HAS_NEAR=has_near,
                          num_warps=warps)
    return out, lse


def far_backward(q, k, v, out, lse, dout, dq, dk, dv, stride: int, m_min: int, scale: float):
    """Adds the far part's gradients to ``dq, dk, dv`` (``[B, T, H, D]`` contiguous, the band's gradients,
    updated in place) or, when they are ``None``, returns new ones. ``out``/``lse``: the merged forward."""
    B, T, H, D = q.shape
    has_near = dq is not None
    if not has_near:
        dq, dk, dv = (torch.empty((B, T, H, D), dtype=x.dtype, device=x.device) for x in (q, k, v))
    M, R, warps = _tiles(T, stride)
    grid = (B * H, triton.cdiv(stride, R))
    _far_bwd_kernel[grid](q, k, v, out, dout, lse, dq, dk, dv, *_bth(q), *_bth(k), *_bth(v), *_bth(out),
                          *_bth(dout), *_bth(dq), B, T, H, stride, scale, M=M, R=R, D=D, M_MIN=m_min,
                          HAS_NEAR=has_near, num_warps=warps)
    return dq, dk, dv
