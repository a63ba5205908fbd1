"""The ``split`` backend: a pattern cut into a near part (FlexAttention over the band or block) and a far
part (the strided keys regrouped by residue class, or ``fixed``'s summary columns), merged exactly by
log-sum-exp. On CPU both parts run as masked dense math."""

from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .common import (
    AttentionFn,
    check_length,
    compiled_flex,
    device_key,
    flex_available,
    masked_attention_lse,
)
from .patterns import (
    FIXED_SUMMARY,
    FLEX_BLOCK,
    SPLITS,
    check_pattern,
    far_m_min,
    n_summary,
    near_allowed,
    summary_columns,
)


@functools.lru_cache(maxsize=64)
def _near_block_mask(near: str, T: int, window: int, stride: int, device: str):
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q_idx, kv_idx):
        return near_allowed(near, q_idx, kv_idx, window, stride)

    return create_block_mask(mask_mod, None, None, T, T, device=device, BLOCK_SIZE=FLEX_BLOCK)


def _to_classes(x: torch.Tensor, stride: int) -> torch.Tensor:
    """``[B, H, T, D]`` -> ``[B, H, stride, n, D]``, ``n = ceil(T / stride)``: residue class ``r``, index
    ``a`` is position ``a * stride + r`` (zero padding at the end). In a class the strided keys of a query
    are the members before it, so the far part is causal attention within each class. Padding is never
    attended: a padded key comes after every real query of its class."""
    B, H, T, D = x.shape
    n = -(-T // stride)
    if n * stride > T:
        x = F.pad(x, (0, 0, 0, n * stride - T))
    return x.view(B, H, n, stride, D).transpose(2, 3)


def _from_classes(x: torch.Tensor, T: int) -> torch.Tensor:
    """Inverse of :func:`_to_classes` for ``[B, H, stride, n, *rest]`` (``rest``: ``(D,)`` or ``()``)."""
    B, H, stride, n = x.shape[:4]
    return x.transpose(2, 3).reshape(B, H, n * stride, *x.shape[4:])[:, :, :T]


def _far_strided(q, k, v, stride: int, m_min: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked dense math for the strided far part (CPU, tests): keys ``i - m * stride``, ``m >= m_min``,
    computed inside the residue classes. Cost ``O(T * n * D)``, ``n = T / stride``."""
    T = q.size(-2)
    a = torch.arange(-(-T // stride), device=q.device)
    allowed = (a[:, None] - a[None, :]) >= m_min
    out, lse = masked_attention_lse(_to_classes(q, stride), _to_classes(k, stride), _to_classes(v, stride),
                                     allowed, scale)
    return _from_classes(out, T), _from_classes(lse, T)


def _far_summary(q, k, v, stride: int, summary: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked dense math for ``fixed``'s far part (CPU, tests): every query attends to the summary columns
    of the blocks before its own; ``T * summary / stride`` keys in all, gathered once."""
    T = q.size(-2)
    pos = torch.arange(T, device=q.device)
    cols = summary_columns(T, stride, summary, q.device)
    allowed = (cols[None, :] // stride) < (pos[:, None] // stride)
    return masked_attention_lse(q, k.index_select(-2, cols), v.index_select(-2, cols), allowed, scale)


@functools.lru_cache(maxsize=64)
def _far_block_mask(far: str, T: int, stride: int, m_min: int, summary: int, device: str):
    """FlexAttention BlockMask of the far part. ``strided``: over the class-major sequence of
    ``n * stride`` positions (index ``r * n + a``), causal within each class from distance ``m_min`` on;
    its tiles lie on the diagonal only. ``summary``: ``T`` queries against the gathered summary columns
    (column ``c`` belongs to block ``c // summary``), allowed when that block precedes the query's."""
    from torch.nn.attention.flex_attention import create_block_mask

    if far == "strided":
        n = -(-T // stride)

        def mask_mod(b, h, q_idx, kv_idx):
            return (q_idx // n == kv_idx // n) & (q_idx % n - kv_idx % n >= m_min)

        return create_block_mask(mask_mod, None, None, n * stride, n * stride, device=device, BLOCK_SIZE=FLEX_BLOCK)

    def mask_mod(b, h, q_idx, kv_idx):
        return kv_idx // summary < q_idx // stride

    return create_block_mask(mask_mod, None, None, T, n_summary(T, stride, summary), device=device,
                             BLOCK_SIZE=FLEX_BLOCK)


def _merge(parts: list[tuple[torch.Tensor, torch.Tensor]], dtype: torch.dtype) -> torch.Tensor:
    """Exact softmax over the union of disjoint key sets from per-part ``(out, lse)``: ``sum_p out_p *
    exp(lse_p - lse)`` with ``lse = logsumexp_p lse_p``; differentiable in every part and its ``lse``. A
    part's ``lse`` of ``-inf`` (a query without keys there) gives it weight 0."""
    if len(parts) == 1:
        return parts[0][0].to(dtype)
    dt = torch.float64 if dtype == torch.float64 else torch.float32
    lse = torch.logsumexp(torch.stack([p[1].to(dt) for p in parts]), dim=0)
    out = sum(o.to(dt) * torch.exp(l.to(dt) - lse).unsqueeze(-1) for o, l in parts)
    return out.to(dtype)


def _merge2(o1, l1, o2, l2):
    """:func:`_merge` of two parts as one compilable function of tensors (fused into one kernel on CUDA)."""
    return _merge([(o1, l1), (o2, l2)], o1.dtype)


@functools.lru_cache(maxsize=1)
def _compiled_merge2():
    return torch.compile(_merge2, dynamic=False)


def _flex_with_lse(flex, q, k, v, block_mask, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``flex`` (FlexAttention, compiled or not): output and natural log-sum-exp (differentiable), through
    ``return_aux`` where this torch has it (``return_lse`` is deprecated there) and ``return_lse`` before."""
    from torch.nn.attention import flex_attention as fa

    if hasattr(fa, "AuxRequest"):
        out, aux = flex(q, k, v, block_mask=block_mask, scale=scale, return_aux=fa.AuxRequest(lse=True))
        return out, aux.lse
    return flex(q, k, v, block_mask=block_mask, scale=scale, return_lse=True)


def _far_flex(flex, q, k, v, far: str, stride: int, summary: int, block_mask, scale: float):
    """The far part through FlexAttention (``block_mask`` from :func:`_far_block_mask`): the strided part on
    the class-major sequence (then put back in order), the summary part against the gathered columns."""
    T = q.size(-2)
    if far == "strided":
        B, H, _, D = q.shape

        def flat(x):
            return _to_classes(x, stride).reshape(B, H, -1, D)

        out, lse = _flex_with_lse(flex, flat(q), flat(k), flat(v), block_mask, scale)
        n = -(-T // stride)
        return (_from_classes(out.view(B, H, stride, n, D), T), _from_classes(lse.view(B, H, stride, n), T))
    cols = summary_columns(T, stride, summary, q.device)
    return _flex_with_lse(flex, q, k.index_select(-2, cols), v.index_select(-2, cols), block_mask, scale)


def _split_attend(q, k, v, name: str, window: int, stride: int, summary: int, masks, flex, merge2=_merge2):
    """The split computation (see :data:`SPLITS`). With ``flex`` (FlexAttention) both parts go through it,
    ``masks = (near BlockMask, far BlockMask)``, and ``merge2`` combines them; without, masked dense math."""
    near, far = SPLITS[name]
    scale = q.size(-1) ** -0.5
    T = q.size(-2)
    if flex is None:
        parts = []
        if near is not None:
            pos = torch.arange(T, device=q.device)
            allowed = near_allowed(near, pos[:, None], pos[None, :], window, stride)
            parts.append(masked_attention_lse(q, k, v, allowed, scale))
        if far == "strided":
            parts.append(_far_strided(q, k, v, stride, far_m_min(name, window, stride), scale))
        elif far == "summary":
            parts.append(_far_summary(q, k, v, stride, summary, scale))
        return _merge(parts, q.dtype)
    near_mask, far_mask = masks
    parts = []
    if near is not None:
        parts.append(_flex_with_lse(flex, q, k, v, near_mask, scale))
    if far is not None:
        parts.append(_far_flex(flex, q, k, v, far, stride, summary, far_mask, scale))
    if len(parts) == 1:
        return parts[0][0]
    return merge2(parts[0][0], parts[0][1], parts[1][0], parts[1][1])


def _split_masks(name: str, T: int, window: int, stride: int, summary: int, device: str):
    near, far = SPLITS[name]
    return (None if near is None else _near_block_mask(near, T, window, stride, device),
            None if far is None else _far_block_mask(far, T, stride, far_m_min(name, window, stride), summary, device))


def split_pattern_attention(
    name: str, T: int, window: int, stride: int, device, *, summary: int = FIXED_SUMMARY, compile: Optional[bool] = None,
) -> AttentionFn:
    """The ``"split"`` backend (module docstring): the same function as the pattern's mask, computed as a
    FlexAttention band plus the far part, also through FlexAttention (the strided keys on the sequence
    regrouped by residue class, where they form diagonal tiles only; ``fixed``'s summary columns gathered),
    merged by log-sum-exp. ``compile``: default True on CUDA (the process's compiled FlexAttention, a
    compiled merge); on CPU both parts are masked dense math, forward and backward."""
    check_pattern(name, window, stride, summary)
    if name == "dense":
        raise ConfigError("the split backend is for sparse patterns; dense attention needs no split")
    dev = device_key(device)
    use_flex = (torch.device(dev).type == "cuda" and flex_available()) if compile is None else compile
    flex = compiled_flex() if use_flex else None
    merge2 = _compiled_merge2() if use_flex else _merge2
    # built here, not inside attend: a cached call traced inside a compiled model breaks its graph
    full = _split_masks(name, T, window, stride, summary, dev) if use_flex else None

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        t = q.size(-2)
        check_length(t, T)
        masks = full if t == T or not use_flex else _split_masks(name, t, window, stride, summary, dev)
        return _split_attend(q, k, v, name, window, stride, summary, masks, flex, merge2)

    return attend
