"""Hybrid sparse attention (HSA): the Sparse-Transformer patterns of the official MST code, as masks, as
densities for the FLOP count, and as fast attention functions for the model.

Patterns (Child et al. 2019, "Generating Long Sequences with Sparse Transformers"), exactly as the official
code's ``get_causal_attn_mask`` builds them; query ``i`` may attend to key ``j`` when ``j <= i`` and:

* ``"local"``: ``i - j < window`` (a band of ``window`` keys including the query itself);
* ``"strided"``: ``(i - j) % stride == 0``;
* ``"local_strided"``: either of the two (the official code calls it ``"sparse"``; it is what the Sparse
  Transformer paper calls "strided attention": a local head plus a strided head, here merged in one mask);
* ``"fixed"``: ``j`` in the same block of ``stride`` tokens as ``i`` (``i // stride == j // stride``), or
  ``j`` is one of the last ``summary`` positions of an earlier block (``j % stride >= stride - summary``).
  ``summary`` (Child et al.'s ``c``) is 1 by default: the official code marks only the last column of
  every block (``a_d[:, i*L-1] = 1``), so ``c = 1`` reproduces it exactly. (The official code also asserts
  ``T % stride == 0``; we do not need that.)
* ``"dense"``: plain causal attention (``j <= i``).

Each pattern is *prefix consistent*: the mask for ``T`` tokens is the top-left ``T' x T'`` corner of the mask
for any longer context, so one mask serves shorter sequences by slicing.

Backends for :func:`build_attention` (``AttentionConfig.backend``):

* ``"sdpa_mask"``: the official way. A dense boolean ``[T, T]`` mask is handed to
  ``F.scaled_dot_product_attention``; it computes every score and then discards the masked ones, so it
  saves no time (measured 1.9x *slower* than causal attention on an H200, see ``docs/gpu.md``). Runs on any
  device, forward and backward.
* ``"flex"``: FlexAttention (``torch.nn.attention.flex_attention``, torch >= 2.5) with a ``BlockMask``
  built once per (pattern, T, device): tiles of ``128 x 128`` scores with no allowed pair are skipped, so the
  cost follows :func:`block_density`. On CUDA ``flex_attention`` is wrapped in ``torch.compile`` (eager
  FlexAttention is a slow reference implementation). **On CPU (checked with torch 2.13)** the forward runs
  eagerly (with a warning, through the same math as the reference) but the backward raises
  ``NotImplementedError: FlexAttention does not support backward on CPU``; compiling it on CPU takes ~20 s
  and does not add a backward. So use ``"flex"`` on CPU only for evaluation.
* ``"auto"``: ``"flex"`` on CUDA when FlexAttention imports, else ``"sdpa_mask"``.

Units: ``T`` tokens; ``q, k, v`` of shape ``(batch, heads, T, head_dim)``; densities are fractions of pairs.
"""

from __future__ import annotations

import functools
import warnings
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .config import AttentionConfig
from .errors import ConfigError

#: ``(q, k, v) -> y``, all of shape ``(batch, heads, T, head_dim)``.
AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

PATTERNS: tuple[str, ...] = ("dense", "local", "strided", "local_strided", "fixed")

#: Child et al.'s ``c`` for the "fixed" pattern: summary positions at the end of each block (official: 1).
FIXED_SUMMARY: int = 1

#: FlexAttention's default tile edge (tokens); :func:`block_density` counts tiles of this size.
FLEX_BLOCK: int = 128


def _check(name: str, window: int, stride: int, summary: int = FIXED_SUMMARY) -> None:
    if name not in PATTERNS:
        raise ConfigError(f"unknown attention pattern {name!r}; choose one of {list(PATTERNS)}")
    if window < 1 or stride < 1:
        raise ConfigError(f"attention window and stride must be >= 1, got window={window}, stride={stride}")
    if not 1 <= summary <= stride:
        raise ConfigError(f"fixed-pattern summary must be in [1, stride={stride}], got {summary}")


def _allowed(name: str, i: torch.Tensor, j: torch.Tensor, window: int, stride: int, summary: int) -> torch.Tensor:
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
    _check(name, window, stride, summary)
    if T < 1:
        raise ConfigError(f"attention needs T >= 1 tokens, got {T}")
    pos = torch.arange(T, device=device)
    return _allowed(name, pos[:, None], pos[None, :], window, stride, summary)


def pattern_pairs(name: str, T: int, window: int = 128, stride: int = 128, *, summary: int = FIXED_SUMMARY) -> int:
    """Number of allowed (query, key) pairs of the pattern over ``T`` tokens (exact integer)."""
    _check(name, window, stride, summary)
    if T < 1:
        raise ConfigError(f"attention needs T >= 1 tokens, got {T}")
    # row by row keeps memory O(T * chunk) so long contexts (T = 32k) stay cheap
    total = 0
    chunk = max(1, (1 << 22) // T)
    pos = torch.arange(T)
    for a in range(0, T, chunk):
        rows = pos[a : a + chunk]
        total += int(_allowed(name, rows[:, None], pos[None, :], window, stride, summary).sum())
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
    _check(name, window, stride, summary)
    n = -(-T // block)
    m = pattern_mask(name, T, window, stride, summary=summary).to(torch.uint8)  # padding bools varies by version
    pad = n * block - T
    m = F.pad(m, (0, pad, 0, pad))
    tiles = m.view(n, block, n, block).amax(dim=3).amax(dim=1)
    return float(tiles.sum()) / (n * n)


# ------------------------------------------------------------------------------------------ backends


def flex_available() -> bool:
    """Whether ``torch.nn.attention.flex_attention`` imports (torch >= 2.5)."""
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention  # noqa: F401
    except Exception:  # ImportError, or a broken triton on some installs
        return False
    return True


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """``"auto"`` -> ``"flex"`` on CUDA when available, else ``"sdpa_mask"``; other names are checked."""
    dev = torch.device(device)
    if backend == "auto":
        return "flex" if dev.type == "cuda" and flex_available() else "sdpa_mask"
    if backend == "flex":
        if not flex_available():
            raise ConfigError(
                f"attention.backend='flex' needs torch.nn.attention.flex_attention (torch >= 2.5), "
                f"not in torch {torch.__version__}; use backend='sdpa_mask' or 'auto'"
            )
        return backend
    if backend == "sdpa_mask":
        return backend
    raise ConfigError(f"unknown attention backend {backend!r}; choose 'auto', 'flex' or 'sdpa_mask'")


@functools.lru_cache(maxsize=64)
def _dense_mask(name: str, T: int, window: int, stride: int, summary: int, device: str) -> torch.Tensor:
    return pattern_mask(name, T, window, stride, summary=summary, device=device)


def _mask_mod(name: str, window: int, stride: int, summary: int):
    def mask_mod(b, h, q_idx, kv_idx):  # FlexAttention's signature; b, h unused (same pattern everywhere)
        return _allowed(name, q_idx, kv_idx, window, stride, summary)

    return mask_mod


@functools.lru_cache(maxsize=64)
def _block_mask(name: str, T: int, window: int, stride: int, summary: int, device: str, block: int = FLEX_BLOCK):
    """FlexAttention ``BlockMask`` for (pattern, T, device, tile size), built once and shared by all layers
    and steps."""
    from torch.nn.attention.flex_attention import create_block_mask

    return create_block_mask(
        _mask_mod(name, window, stride, summary), None, None, T, T, device=device, BLOCK_SIZE=block
    )


@functools.lru_cache(maxsize=1)
def _compiled_flex():
    """``torch.compile(flex_attention)``: the fused Triton kernel on CUDA. One compiled callable for the
    process, as the PyTorch docs recommend (compiling per call would recompile)."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _eager_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return flex_attention


def _device_key(device: torch.device | str) -> str:
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return str(dev)


def sdpa_mask_attention(name: str, T: int, window: int, stride: int, device, *, summary: int = FIXED_SUMMARY) -> AttentionFn:
    """The official way: SDPA with a dense boolean mask (True = attend). Sequences shorter than ``T`` use
    the top-left corner of the mask (patterns are prefix consistent)."""
    _check(name, window, stride, summary)
    dev = _device_key(device)
    full = _dense_mask(name, T, window, stride, summary, dev)

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        t = q.size(-2)
        if t > T:
            raise ConfigError(f"attention built for T={T} tokens got a sequence of {t}; rebuild it for {t}")
        mask = full if t == T else full[:t, :t]
        if mask.device != q.device:
            mask = mask.to(q.device)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    return attend


def flex_pattern_attention(
    name: str,
    T: int,
    window: int,
    stride: int,
    device,
    *,
    summary: int = FIXED_SUMMARY,
    compile: Optional[bool] = None,
    block: int = FLEX_BLOCK,
) -> AttentionFn:
    """FlexAttention with the pattern's ``BlockMask`` (built once per (pattern, T, device)). ``compile``:
    default True on CUDA, False elsewhere (CPU: forward only, see the module docstring). ``block``: the
    block mask's tile edge in tokens (128 default; with ``stride = 128`` only smaller tiles let the strided
    patterns skip work, see :func:`block_density`; for benchmarks, the kernel must support the size)."""
    _check(name, window, stride, summary)
    resolve_backend("flex", device)
    dev = _device_key(device)
    use_compile = torch.device(dev).type == "cuda" if compile is None else compile
    fn = _compiled_flex() if use_compile else _eager_flex()
    full = _block_mask(name, T, window, stride, summary, dev, block)
    # the Triton kernel's tiles must divide the block mask's (it picks 128 by default on Hopper)
    opts = {"kernel_options": {"BLOCK_M": block, "BLOCK_N": block}} if block < FLEX_BLOCK and use_compile else {}

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        t = q.size(-2)
        if t > T:
            raise ConfigError(f"attention built for T={T} tokens got a sequence of {t}; rebuild it for {t}")
        bm = full if t == T else _block_mask(name, t, window, stride, summary, dev, block)
        if not use_compile:
            with warnings.catch_warnings():
                # eager FlexAttention warns that it is slow; on CPU that is expected and documented above
                warnings.filterwarnings("ignore", message=".*flex_attention.*", category=UserWarning)
                return fn(q, k, v, block_mask=bm)
        return fn(q, k, v, block_mask=bm, **opts)

    return attend


def build_attention(cfg: AttentionConfig, T: int, device: torch.device | str) -> Optional[AttentionFn]:
    """The attention function for ``cfg`` at context ``T`` on ``device``, or ``None`` for ``"dense"``
    (the model then uses plain causal SDPA, nanoGPT's flash path). Install it with
    ``model.set_attention(fn, cfg.layers)`` while :func:`mstlib.schedule.attention_active` holds."""
    if cfg.pattern == "dense":
        return None
    if max(cfg.window, cfg.stride) > T:
        raise ConfigError(
            f"attention window/stride ({cfg.window}/{cfg.stride}) larger than the context T={T}; "
            "lower attention.window/stride"
        )
    backend = resolve_backend(cfg.backend, device)
    if backend == "flex":
        return flex_pattern_attention(cfg.pattern, T, cfg.window, cfg.stride, device)
    return sdpa_mask_attention(cfg.pattern, T, cfg.window, cfg.stride, device)


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Textbook masked softmax attention in the inputs' dtype (tests use float64): ``softmax(q k^T /
    sqrt(d) + (-inf where not mask)) v``. Every row has its diagonal allowed, so no row is all -inf."""
    scores = (q @ k.transpose(-2, -1)) / (q.size(-1) ** 0.5)
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v
