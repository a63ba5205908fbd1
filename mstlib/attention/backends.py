"""The attention backends and the one entry the model uses, :func:`build_attention`: ``sdpa_mask`` (the
official dense mask), ``flex`` (FlexAttention with a block mask), ``split`` and ``flash_split`` /
``cudnn_split`` (:mod:`.split`, :mod:`.flash_split`), chosen by :func:`resolve_backend`."""

from __future__ import annotations

import functools
import warnings
from typing import Optional

import torch
import torch.nn.functional as F

from ..config import AttentionConfig
from ..errors import ConfigError
from ..kernels import cudnn_band
from .common import (
    AttentionFn,
    check_length,
    compiled_flex,
    device_key,
    eager_flex,
    flex_available,
)
from .patterns import (
    FIXED_SUMMARY,
    FLEX_BLOCK,
    check_pattern,
    pattern_allows,
    pattern_mask,
)
from .split import split_pattern_attention

#: Patterns ``"auto"`` runs through ``flash_split`` on CUDA: those whose far part has the Triton kernels
#: (``fixed``'s summary columns are compiled torch there, slower than one FlexAttention call).
FLASH_SPLIT_AUTO = ("local", "local_strided", "strided")


#: Patterns ``"auto"`` runs through ``cudnn_split`` instead, where ``nvidia-cudnn-frontend`` is installed:
#: those with a band (:mod:`mstlib.cudnn_band`).
CUDNN_SPLIT_AUTO = ("local", "local_strided")


def resolve_backend(backend: str, device: torch.device | str, pattern: Optional[str] = None) -> str:
    """The backend that runs: ``"auto"`` on CUDA -> ``"cudnn_split"`` for the patterns in
    :data:`CUDNN_SPLIT_AUTO` when ``nvidia-cudnn-frontend`` imports, else ``"flash_split"`` for those in
    :data:`FLASH_SPLIT_AUTO` (when this torch has windowed FlashAttention), else ``"flex"`` when
    FlexAttention imports; off CUDA ``"sdpa_mask"``. The choice is measured (``notebooks/09_training_speed``,
    on an H200, paper model, speed relative to dense at contexts 1024 / 4096): MST's ultra phase ran at
    1.00 / 1.19 through ``cudnn_split``, 0.99 / 1.17 through ``flash_split`` and 0.95 / 0.85 through
    FlexAttention. Without ``pattern`` (the backend for any pattern), ``"auto"`` means ``"flex"`` on CUDA.
    Other names are checked (``"split"``, ``"flash_split"`` run anywhere: without their GPU kernels they use
    masked dense math; ``"cudnn_split"`` says what it needs when the attention is built)."""
    dev = torch.device(device)
    if backend == "auto":
        if dev.type != "cuda":
            return "sdpa_mask"
        if pattern in CUDNN_SPLIT_AUTO:
            if cudnn_band.available():
                return "cudnn_split"
        if pattern in FLASH_SPLIT_AUTO:
            # flash_split imports Triton where it is installed (seconds): only these backends need it
            from .flash_split import flash_window_available

            if flash_window_available():
                return "flash_split"
        return "flex" if flex_available() else "sdpa_mask"
    if backend == "flex":
        if not flex_available():
            raise ConfigError(
                f"attention.backend='flex' needs torch.nn.attention.flex_attention (torch >= 2.5), "
                f"not in torch {torch.__version__}; use backend='sdpa_mask' or 'auto'"
            )
        return backend
    if backend in ("sdpa_mask", "split", "flash_split", "cudnn_split"):
        return backend
    raise ConfigError(
        f"unknown attention backend {backend!r}; choose 'auto', 'flex', 'flash_split', 'cudnn_split', 'split' "
        "or 'sdpa_mask'"
    )


@functools.lru_cache(maxsize=64)
def _dense_mask(name: str, T: int, window: int, stride: int, summary: int, device: str) -> torch.Tensor:
    return pattern_mask(name, T, window, stride, summary=summary, device=device)


def _mask_mod(name: str, window: int, stride: int, summary: int):
    def mask_mod(b, h, q_idx, kv_idx):  # FlexAttention's signature; b, h unused (same pattern everywhere)
        return pattern_allows(name, q_idx, kv_idx, window, stride, summary)

    return mask_mod


@functools.lru_cache(maxsize=64)
def _block_mask(name: str, T: int, window: int, stride: int, summary: int, device: str, block: int = FLEX_BLOCK):
    """FlexAttention ``BlockMask`` for (pattern, T, device, tile size), built once and shared by all layers
    and steps."""
    from torch.nn.attention.flex_attention import create_block_mask

    return create_block_mask(
        _mask_mod(name, window, stride, summary), None, None, T, T, device=device, BLOCK_SIZE=block
    )


def sdpa_mask_attention(name: str, T: int, window: int, stride: int, device, *, summary: int = FIXED_SUMMARY) -> AttentionFn:
    """The official way: SDPA with a dense boolean mask (True = attend). Sequences shorter than ``T`` use
    the top-left corner of the mask (patterns are prefix consistent)."""
    check_pattern(name, window, stride, summary)
    dev = device_key(device)
    full = _dense_mask(name, T, window, stride, summary, dev)

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        t = q.size(-2)
        check_length(t, T)
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
    check_pattern(name, window, stride, summary)
    resolve_backend("flex", device)
    dev = device_key(device)
    use_compile = torch.device(dev).type == "cuda" if compile is None else compile
    fn = compiled_flex() if use_compile else eager_flex()
    full = _block_mask(name, T, window, stride, summary, dev, block)
    # the Triton kernel's tiles must divide the block mask's (it picks 128 by default on Hopper)
    opts = {"kernel_options": {"BLOCK_M": block, "BLOCK_N": block}} if block < FLEX_BLOCK and use_compile else {}

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        t = q.size(-2)
        check_length(t, T)
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
    backend = resolve_backend(cfg.backend, device, cfg.pattern)
    if backend == "flex":
        return flex_pattern_attention(cfg.pattern, T, cfg.window, cfg.stride, device)
    if backend == "split":
        return split_pattern_attention(cfg.pattern, T, cfg.window, cfg.stride, device)
    if backend in ("flash_split", "cudnn_split"):
        # flash_split imports Triton where it is installed (seconds): only these backends need it
        from .flash_split import flash_split_attention

        return flash_split_attention(cfg.pattern, T, cfg.window, cfg.stride, device,
                                     near_kernel="cudnn" if backend == "cudnn_split" else "flash")
    return sdpa_mask_attention(cfg.pattern, T, cfg.window, cfg.stride, device)
