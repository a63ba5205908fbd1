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
* ``"split"``: the pattern cut in two parts that are each tile-sparse, merged exactly by log-sum-exp
  (:func:`split_pattern_attention`). The *near* part (``local``'s band, or ``fixed``'s own block) goes to
  FlexAttention, whose tiles then cover only the band; the *far* part (the strided keys ``i - m * stride``,
  or ``fixed``'s summary columns) has only ``T / stride`` keys per query: for ``strided`` the sequence is
  regrouped by residue class (positions ``r, r + stride, r + 2 stride, ...``), where the strided keys are
  contiguous and the far part's tiles lie on the diagonal. Why try it: with ``stride = 128`` (the official
  value) every 128 x 128 tile holds a strided pair, so one FlexAttention call over the whole pattern skips no
  tile. **Measured on an H200 it is slower than that one call** at context 1024 and only at 4096 catches up
  with it for ``local_strided`` (and beats dense for ``fixed`` and ``strided``); the regrouping copies, the
  second kernel and the merge cost more than the skipped tiles save at these sizes (the training-speed
  chapter has the table). So ``"auto"`` does not pick it. On CPU both parts fall back to masked dense math
  (forward and backward), which the tests use.
* ``"flash_split"``: the same cut, with the near part through FlashAttention's own sliding-window kernel
  and the strided part through Triton kernels that read ``q, k, v`` in place and fuse the merge; one
  autograd function whose backward uses the merged output and log-sum-exp (:mod:`mstlib.flash_split`).
  **Measured on an H200** (training-speed chapter, paper model, ``local_strided``, step speed relative to
  dense): 1.16 at context 4096 against FlexAttention's 0.84; 0.97 at 1024 (FlexAttention 0.94), because
  there FlashAttention 2's 128-token band alone costs almost as much as cuDNN's causal attention.
* ``"cudnn_split"``: ``flash_split`` with the band through cuDNN's sliding-window kernels (Hopper's, the ones
  PyTorch runs dense causal attention on), via ``nvidia-cudnn-frontend`` (:mod:`mstlib._cudnn_band`);
  ``local`` and ``local_strided``.
* ``"auto"``: on CUDA ``cudnn_split`` for ``local`` and ``local_strided`` where ``nvidia-cudnn-frontend`` is
  installed, ``flash_split`` for them and ``strided`` otherwise, ``flex`` for ``fixed``; off CUDA
  ``"sdpa_mask"`` (:func:`resolve_backend`, which gives the measured reasons).

Units: ``T`` tokens; ``q, k, v`` of shape ``(batch, heads, T, head_dim)``; densities are fractions of pairs.
"""

from __future__ import annotations

import contextlib
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
    _check(name, window, stride)
    near = SPLITS[name][0] if name in SPLITS else None
    if near is None:
        return 0.0
    pos = torch.arange(T)
    return _tile_fraction(_near_allowed(near, pos[:, None], pos[None, :], window, stride), block)


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


# ------------------------------------------------------------------------------------------ backends


def flex_available() -> bool:
    """Whether ``torch.nn.attention.flex_attention`` imports (torch >= 2.5)."""
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention  # noqa: F401
    except Exception:  # ImportError, or a broken triton on some installs
        return False
    return True


#: Patterns ``"auto"`` runs through ``flash_split`` on CUDA: those whose far part has the Triton kernels
#: (``fixed``'s summary columns are compiled torch there, slower than one FlexAttention call).
FLASH_SPLIT_AUTO = ("local", "local_strided", "strided")
#: Patterns ``"auto"`` runs through ``cudnn_split`` instead, where ``nvidia-cudnn-frontend`` is installed:
#: those with a band (:mod:`mstlib._cudnn_band`).
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
            from . import _cudnn_band

            if _cudnn_band.available():
                return "cudnn_split"
        if pattern in FLASH_SPLIT_AUTO:
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


def _check_length(t: int, T: int) -> None:
    if t > T:
        raise ConfigError(f"attention built for T={T} tokens got a sequence of {t}; rebuild it for {t}")


def sdpa_mask_attention(name: str, T: int, window: int, stride: int, device, *, summary: int = FIXED_SUMMARY) -> AttentionFn:
    """The official way: SDPA with a dense boolean mask (True = attend). Sequences shorter than ``T`` use
    the top-left corner of the mask (patterns are prefix consistent)."""
    _check(name, window, stride, summary)
    dev = _device_key(device)
    full = _dense_mask(name, T, window, stride, summary, dev)

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        t = q.size(-2)
        _check_length(t, T)
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
        _check_length(t, T)
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
        from .flash_split import flash_split_attention

        return flash_split_attention(cfg.pattern, T, cfg.window, cfg.stride, device,
                                     near_kernel="cudnn" if backend == "cudnn_split" else "flash")
    return sdpa_mask_attention(cfg.pattern, T, cfg.window, cfg.stride, device)


# ------------------------------------------------------------------------------ the split backend

#: How :func:`split_pattern_attention` cuts each pattern: ``(near, far)``. ``near``: the mask FlexAttention
#: computes (``None``: no near part); ``far``: ``"strided"`` (keys ``i - m * stride`` for ``m >= m_min``,
#: within residue classes), ``"summary"`` (``fixed``'s summary columns of earlier blocks) or ``None``.
SPLITS: dict[str, tuple[Optional[str], Optional[str]]] = {
    "local": ("local", None),
    "strided": (None, "strided"),
    "local_strided": ("local", "strided"),
    "fixed": ("block", "summary"),
}


def _near_allowed(near: str, i: torch.Tensor, j: torch.Tensor, window: int, stride: int) -> torch.Tensor:
    """The near part's rule: ``local`` (``0 <= i - j < window``) or ``block`` (causal within the block of
    ``stride`` tokens)."""
    if near == "local":
        return _allowed("local", i, j, window, stride, FIXED_SUMMARY)
    return (i >= j) & (i // stride == j // stride)


@functools.lru_cache(maxsize=64)
def _near_block_mask(near: str, T: int, window: int, stride: int, device: str):
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q_idx, kv_idx):
        return _near_allowed(near, q_idx, kv_idx, window, stride)

    return create_block_mask(mask_mod, None, None, T, T, device=device, BLOCK_SIZE=FLEX_BLOCK)


def _no_autocast(device_type: str):
    """Autocast off where it is on, and no context at all where it is off. Code that runs inside an autograd
    function enters none: torch 2.11's tracing of an autograd function leaks an autocast context entered in
    its forward to the rest of the model, so every later layer of a compiled model traced in float32
    (measured on the GPU in session 6: a compiled mini model's step 2.6x dense's; reproduced on the CPU with
    torch 2.11). The split backends enter it around their autograd function instead."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def _masked_attention_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor,
                          scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention over the keys ``allowed`` (bool, broadcastable to the scores ``[..., Tq, Tk]``),
    returning ``(out, lse)``: ``out [..., Tq, D]`` in float32 (float64 for float64 inputs), ``lse [..., Tq]``
    the natural log-sum-exp of the allowed scaled scores, ``-inf`` for a query with no allowed key (its
    ``out`` is then meaningless and gets weight 0 when merged). Computed in float32 with autocast off, so
    the scores keep full precision (bf16 inputs are exact in TF32). Gradients are finite everywhere: empty
    rows are given harmless finite scores instead of a softmax over nothing."""
    dt = torch.float64 if q.dtype == torch.float64 else torch.float32
    with _no_autocast(q.device.type):
        s = torch.matmul(q.to(dt), k.to(dt).transpose(-2, -1)) * scale
        allowed = allowed.expand_as(s) if allowed.shape != s.shape else allowed
        has = allowed.any(-1, keepdim=True)
        s = s.masked_fill(~allowed, float("-inf")).masked_fill(~has, 0.0)
        lse = torch.logsumexp(s, dim=-1, keepdim=True)
        out = torch.matmul(torch.exp(s - lse), v.to(dt))
        return out, lse.squeeze(-1).masked_fill(~has.squeeze(-1), float("-inf"))


def _m_min(name: str, window: int, stride: int) -> int:
    """Smallest multiple ``m`` of the stride in the far part: ``local_strided``'s band already holds the
    distances below the window; ``strided`` alone starts at distance 0."""
    return 0 if SPLITS[name][0] is None else max(1, -(-window // stride))


def _n_summary(T: int, stride: int, summary: int) -> int:
    """Number of ``fixed`` summary columns (``j % stride >= stride - summary``) among ``T`` positions."""
    return (T // stride) * summary + max(0, T % stride - (stride - summary))


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
    out, lse = _masked_attention_lse(_to_classes(q, stride), _to_classes(k, stride), _to_classes(v, stride),
                                     allowed, scale)
    return _from_classes(out, T), _from_classes(lse, T)


def _summary_columns(T: int, stride: int, summary: int, device) -> torch.Tensor:
    """``fixed``'s summary positions in ascending order, built without a data-dependent shape (so a compiled
    graph stays whole)."""
    n_blocks = -(-T // stride)
    cols = (torch.arange(n_blocks, device=device)[:, None] * stride
            + torch.arange(stride - summary, stride, device=device)[None, :]).flatten()
    return cols[: _n_summary(T, stride, summary)]


def _far_summary(q, k, v, stride: int, summary: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked dense math for ``fixed``'s far part (CPU, tests): every query attends to the summary columns
    of the blocks before its own; ``T * summary / stride`` keys in all, gathered once."""
    T = q.size(-2)
    pos = torch.arange(T, device=q.device)
    cols = _summary_columns(T, stride, summary, q.device)
    allowed = (cols[None, :] // stride) < (pos[:, None] // stride)
    return _masked_attention_lse(q, k.index_select(-2, cols), v.index_select(-2, cols), allowed, scale)


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

    return create_block_mask(mask_mod, None, None, T, _n_summary(T, stride, summary), device=device,
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
    cols = _summary_columns(T, stride, summary, q.device)
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
            allowed = _near_allowed(near, pos[:, None], pos[None, :], window, stride)
            parts.append(_masked_attention_lse(q, k, v, allowed, scale))
        if far == "strided":
            parts.append(_far_strided(q, k, v, stride, _m_min(name, window, stride), scale))
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
            None if far is None else _far_block_mask(far, T, stride, _m_min(name, window, stride), summary, device))


def split_pattern_attention(
    name: str, T: int, window: int, stride: int, device, *, summary: int = FIXED_SUMMARY, compile: Optional[bool] = None,
) -> AttentionFn:
    """The ``"split"`` backend (module docstring): the same function as the pattern's mask, computed as a
    FlexAttention band plus the far part, also through FlexAttention (the strided keys on the sequence
    regrouped by residue class, where they form diagonal tiles only; ``fixed``'s summary columns gathered),
    merged by log-sum-exp. ``compile``: default True on CUDA (the process's compiled FlexAttention, a
    compiled merge); on CPU both parts are masked dense math, forward and backward."""
    _check(name, window, stride, summary)
    if name == "dense":
        raise ConfigError("the split backend is for sparse patterns; dense attention needs no split")
    dev = _device_key(device)
    use_flex = (torch.device(dev).type == "cuda" and flex_available()) if compile is None else compile
    flex = _compiled_flex() if use_flex else None
    merge2 = _compiled_merge2() if use_flex else _merge2
    # built here, not inside attend: a cached call traced inside a compiled model breaks its graph
    full = _split_masks(name, T, window, stride, summary, dev) if use_flex else None

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        t = q.size(-2)
        _check_length(t, T)
        masks = full if t == T or not use_flex else _split_masks(name, t, window, stride, summary, dev)
        return _split_attend(q, k, v, name, window, stride, summary, masks, flex, merge2)

    return attend


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Textbook masked softmax attention in the inputs' dtype (tests use float64): ``softmax(q k^T /
    sqrt(d) + (-inf where not mask)) v``. Every row has its diagonal allowed, so no row is all -inf."""
    scores = (q @ k.transpose(-2, -1)) / (q.size(-1) ** 0.5)
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v
