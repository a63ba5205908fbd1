"""The attention patterns as geometry: which key each query may attend to, how many pairs and score
tiles that leaves, and how the split backends cut each pattern (:data:`SPLITS`). Units: ``T`` tokens;
densities are fractions of pairs (or of tiles). The package docstring (:mod:`mstlib.attention`) describes
the patterns."""

from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.nn.functional as F

from ..errors import ConfigError

PATTERNS: tuple[str, ...] = ("dense", "local", "strided", "local_strided", "fixed")


#: Child et al.'s ``c`` for the "fixed" pattern: summary positions at the end of each block (official: 1).
FIXED_SUMMARY: int = 1


#: FlexAttention's default tile edge (tokens); :func:`block_density` counts tiles of this size.
FLEX_BLOCK: int = 128


def check_pattern(name: str, window: int, stride: int, summary: int = FIXED_SUMMARY) -> None:
    if name not in PATTERNS:
        raise ConfigError(f"unknown attention pattern {name!r}; choose one of {list(PATTERNS)}")
    if window < 1 or stride < 1:
        raise ConfigError(f"attention window and stride must be >= 1, got window={window}, stride={stride}")
    if not 1 <= summary <= stride:
        raise ConfigError(f"fixed-pattern summary must be in [1, stride={stride}], got {summary}")


def pattern_allows(name: str, i: torch.Tensor, j: torch.Tensor, window: int, stride: int, summary: int) -> torch.Tensor:
    """Elementwise rule shared by the dense mask and FlexAttention's ``mask_mod`` (so both compute the same
    pattern by construction): ``i`` query positions, ``j`` key positions (broadcastable integer tensors)."""
    causal = i >= j
    d = i - j
    if name == "dense":
        return causal
    if name == "local":
        return causal & (d < window)
    if name == "strided":
        return causal & (d % stride == 0)
    if name == "local_strided":
        return causal & ((d < window) | (d % stride == 0))
    if name == "fixed":
        return causal & ((i // stride == j // stride) | (j % stride >= stride - summary))
    raise ConfigError(f"unknown attention pattern {name!r}; choose one of {list(PATTERNS)}")


def pattern_mask(
    name: str,
    T: int,
    window: int = 128,
    stride: int = 128,
    *,
    summary: int = FIXED_SUMMARY,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The reference mask: ``BoolTensor[T, T]``, ``mask[i, j]`` true when query ``i`` may attend to key
    ``j`` (causality included). ``window``/``stride`` in tokens; ``summary`` only for ``"fixed"``."""
    check_pattern(name, window, stride, summary)
    if T < 1:
        raise ConfigError(f"attention needs T >= 1 tokens, got {T}")
    pos = torch.arange(T, device=device)
    return pattern_allows(name, pos[:, None], pos[None, :], window, stride, summary)


def pattern_pairs(name: str, T: int, window: int = 128, stride: int = 128, *, summary: int = FIXED_SUMMARY) -> int:
    """Number of allowed (query, key) pairs of the pattern over ``T`` tokens (exact integer)."""
    check_pattern(name, window, stride, summary)
    if T < 1:
        raise ConfigError(f"attention needs T >= 1 tokens, got {T}")
    # row by row keeps memory O(T * chunk) so long contexts (T = 32k) stay cheap
    total = 0
    chunk = max(1, (1 << 22) // T)
    pos = torch.arange(T)
    for a in range(0, T, chunk):
        rows = pos[a : a + chunk]
        total += int(pattern_allows(name, rows[:, None], pos[None, :], window, stride, summary).sum())
    return total


@functools.lru_cache(maxsize=256)
def pattern_density(name: str, T: int, window: int = 128, stride: int = 128, *, summary: int = FIXED_SUMMARY) -> float:
    """Allowed pairs / causal pairs ``T (T + 1) / 2``: 1.0 for ``"dense"``. The FLOP count scales nanoGPT's
    attention term (which counts full ``T`` keys per query) by this ratio."""
    return pattern_pairs(name, T, window, stride, summary=summary) / (T * (T + 1) / 2)


@functools.lru_cache(maxsize=256)
def block_density(
    name: str, T: int, window: int = 128, stride: int = 128, block: int = FLEX_BLOCK, *, summary: int = FIXED_SUMMARY
) -> float:
    """Fraction of the ``ceil(T/block)^2`` score tiles (``block x block``) that hold at least one allowed
    pair: the tiles FlexAttention must compute, so a predictor of its speed. Causal attention is about
    ``(n + 1) / (2 n)`` with ``n = ceil(T / block)``.

    Note: with ``stride == block`` every tile on or below the diagonal holds a strided pair, so ``"strided"``
    and ``"local_strided"`` touch as many tiles as causal attention (they save only the mask-free tile work).
    """
    check_pattern(name, window, stride, summary)
    return _tile_fraction(pattern_mask(name, T, window, stride, summary=summary), block)


def _tile_fraction(mask: torch.Tensor, block: int) -> float:
    """Fraction of the ``block x block`` tiles of a square bool mask that hold at least one true entry."""
    T = mask.size(0)
    n = -(-T // block)
    pad = n * block - T
    m = F.pad(mask.to(torch.uint8), (0, pad, 0, pad))  # padding bools varies by torch version
    tiles = m.view(n, block, n, block).amax(dim=3).amax(dim=1)
    return float(tiles.sum()) / (n * n)


@functools.lru_cache(maxsize=256)
def split_block_density(name: str, T: int, window: int = 128, stride: int = 128, block: int = FLEX_BLOCK) -> float:
    """Like :func:`block_density` for the ``"split"`` backend: the tiles its FlexAttention band computes
    (0 when the pattern has no band, ``strided``). The far part's cost, ``O(T^2 / stride)``, is not in it."""
    check_pattern(name, window, stride)
    near = SPLITS[name][0] if name in SPLITS else None
    if near is None:
        return 0.0
    pos = torch.arange(T)
    return _tile_fraction(near_allowed(near, pos[:, None], pos[None, :], window, stride), block)


def tile_fraction(backend: str, name: str, T: int, window: int = 128, stride: int = 128,
                  block: int = FLEX_BLOCK) -> float:
    """Score tiles a resolved ``backend`` computes for pattern ``name``, relative to causal attention: the
    prediction if attention time followed tiles. ``flex`` computes the tiles holding an allowed pair
    (:func:`block_density`); ``split`` / ``flash_split`` their band's tiles (:func:`split_block_density`; the
    far part, ``O(T^2 / stride)``, counted as free); ``sdpa_mask`` every score, masked or not (1.0, like
    ``dense``)."""
    if name == "dense" or backend == "sdpa_mask":
        return 1.0
    causal = block_density("dense", T, block=block)
    if backend in ("split", "flash_split", "cudnn_split"):
        return split_block_density(name, T, window, stride, block) / causal
    if backend == "flex":
        return block_density(name, T, window, stride, block=block) / causal
    raise ConfigError(f"tile_fraction: unknown resolved backend {backend!r}")


#: How :func:`split_pattern_attention` cuts each pattern: ``(near, far)``. ``near``: the mask FlexAttention
#: computes (``None``: no near part); ``far``: ``"strided"`` (keys ``i - m * stride`` for ``m >= m_min``,
#: within residue classes), ``"summary"`` (``fixed``'s summary columns of earlier blocks) or ``None``.
SPLITS: dict[str, tuple[Optional[str], Optional[str]]] = {
    "local": ("local", None),
    "strided": (None, "strided"),
    "local_strided": ("local", "strided"),
    "fixed": ("block", "summary"),
}


def near_allowed(near: str, i: torch.Tensor, j: torch.Tensor, window: int, stride: int) -> torch.Tensor:
    """The near part's rule: ``local`` (``0 <= i - j < window``) or ``block`` (causal within the block of
    ``stride`` tokens)."""
    if near == "local":
        return pattern_allows("local", i, j, window, stride, FIXED_SUMMARY)
    return (i >= j) & (i // stride == j // stride)


def far_m_min(name: str, window: int, stride: int) -> int:
    """Smallest multiple ``m`` of the stride in the far part: ``local_strided``'s band already holds the
    distances below the window; ``strided`` alone starts at distance 0."""
    return 0 if SPLITS[name][0] is None else max(1, -(-window // stride))


def n_summary(T: int, stride: int, summary: int) -> int:
    """Number of ``fixed`` summary columns (``j % stride >= stride - summary``) among ``T`` positions."""
    return (T // stride) * summary + max(0, T % stride - (stride - summary))


def summary_columns(T: int, stride: int, summary: int, device) -> torch.Tensor:
    """``fixed``'s summary positions in ascending order, built without a data-dependent shape (so a compiled
    graph stays whole)."""
    n_blocks = -(-T // stride)
    cols = (torch.arange(n_blocks, device=device)[:, None] * stride
            + torch.arange(stride - summary, stride, device=device)[None, :]).flatten()
    return cols[: n_summary(T, stride, summary)]
