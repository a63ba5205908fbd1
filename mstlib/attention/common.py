"""The torch pieces every attention backend shares: the function type, device keys for the caches,
FlexAttention handles, the masked log-sum-exp attention that is every backend's reference math, and the
textbook reference attention the tests compare against."""

from __future__ import annotations

import contextlib
import functools
from typing import Callable

import torch

from ..errors import ConfigError

#: ``(q, k, v) -> y``, all of shape ``(batch, heads, T, head_dim)``.
AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def flex_available() -> bool:
    """Whether ``torch.nn.attention.flex_attention`` imports (torch >= 2.5)."""
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention  # noqa: F401
    except Exception:  # ImportError, or a broken triton on some installs
        return False
    return True


@functools.lru_cache(maxsize=1)
def compiled_flex():
    """``torch.compile(flex_attention)``: the fused Triton kernel on CUDA. One compiled callable for the
    process, as the PyTorch docs recommend (compiling per call would recompile)."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def eager_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return flex_attention


def device_key(device: torch.device | str) -> str:
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return str(dev)


def check_length(t: int, T: int) -> None:
    if t > T:
        raise ConfigError(f"attention built for T={T} tokens got a sequence of {t}; rebuild it for {t}")


def no_autocast(device_type: str):
    """Autocast off where it is on, and no context at all where it is off. Code that runs inside an autograd
    function enters none: torch 2.11's tracing of an autograd function leaks an autocast context entered in
    its forward to the rest of the model, so every later layer of a compiled model traced in float32
    (measured on the GPU in session 6: a compiled mini model's step 2.6x dense's; reproduced on the CPU with
    torch 2.11). The split backends enter it around their autograd function instead."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def masked_attention_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor,
                          scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention over the keys ``allowed`` (bool, broadcastable to the scores ``[..., Tq, Tk]``),
    returning ``(out, lse)``: ``out [..., Tq, D]`` in float32 (float64 for float64 inputs), ``lse [..., Tq]``
    the natural log-sum-exp of the allowed scaled scores, ``-inf`` for a query with no allowed key (its
    ``out`` is then meaningless and gets weight 0 when merged). Computed in float32 with autocast off, so
    the scores keep full precision (bf16 inputs are exact in TF32). Gradients are finite everywhere: empty
    rows are given harmless finite scores instead of a softmax over nothing."""
    dt = torch.float64 if q.dtype == torch.float64 else torch.float32
    with no_autocast(q.device.type):
        s = torch.matmul(q.to(dt), k.to(dt).transpose(-2, -1)) * scale
        allowed = allowed.expand_as(s) if allowed.shape != s.shape else allowed
        has = allowed.any(-1, keepdim=True)
        s = s.masked_fill(~allowed, float("-inf")).masked_fill(~has, 0.0)
        lse = torch.logsumexp(s, dim=-1, keepdim=True)
        out = torch.matmul(torch.exp(s - lse), v.to(dt))
        return out, lse.squeeze(-1).masked_fill(~has.squeeze(-1), float("-inf"))


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Textbook masked softmax attention in the inputs' dtype (tests use float64): ``softmax(q k^T /
    sqrt(d) + (-inf where not mask)) v``. Every row has its diagonal allowed, so no row is all -inf."""
    scores = (q @ k.transpose(-2, -1)) / (q.size(-1) ** 0.5)
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v
