"""The sliding-window band of the split backends through cuDNN's fused attention (the ``"cudnn_split"`` backend).

Why: on an H200, PyTorch runs dense causal attention on cuDNN's Hopper kernels, while the only windowed
kernels PyTorch exposes (FlashAttention 2's, FlexAttention's Triton kernel) cost 2-3x as much per tile of
scores. cuDNN's SDPA has a diagonal band (``diagonal_band_left_bound``) that PyTorch does not expose; NVIDIA's
``nvidia-cudnn-frontend`` package does, as the torch operators ``torch.ops.cudnn.sdpa_fwd`` /
``sdpa_bwd`` (``cudnn.sdpa.fwd.torch_op``). They run on the cuDNN library PyTorch already loads.

Contract (the same as FlashAttention's in :mod:`mstlib.flash_split`): ``q, k, v`` are ``[B, T, H, D]``
(last dim contiguous, any other strides); the band is ``0 <= i - j < window``; the forward returns the band's
output ``[B, T, H, D]`` (contiguous) and natural-log log-sum-exp ``[H, B, T]`` (float32, contiguous); the
backward takes the *merged* output and log-sum-exp (ring-attention style) and returns the band keys'
``dq, dk, dv``, ``[B, T, H, D]`` contiguous.

Optional: ``pip install nvidia-cudnn-frontend`` (GPU machines only; :func:`available` says whether it
imports and a CUDA device is present).
"""

from __future__ import annotations

import functools

import torch

#: cuDNN's ``diagonal_band_left_bound`` for a band of ``window`` keys (``i - j < window``): ``window + LEFT``.
#: Checked on an H200 against the masked reference (``tools/gpu/cudnn_probe.py``).
LEFT = 0


@functools.lru_cache(maxsize=1)
def _ops():
    import cudnn  # noqa: F401  (loads the cuDNN library torch already has)
    import cudnn.sdpa.fwd.torch_op  # noqa: F401  (registers torch.ops.cudnn.sdpa_fwd / sdpa_bwd)

    return torch.ops.cudnn.sdpa_fwd, torch.ops.cudnn.sdpa_bwd


def available() -> bool:
    """Whether the cuDNN band can run here: a CUDA device and an importable ``nvidia-cudnn-frontend``."""
    if not torch.cuda.is_available():
        return False
    try:
        _ops()
    except Exception:  # not installed, or a frontend that does not match this cuDNN
        return False
    return True


def version() -> str | None:
    """``"<frontend version> / cuDNN <backend version>"`` for provenance, or ``None`` when unavailable."""
    if not available():
        return None
    import cudnn

    return f"{getattr(cudnn, '__version__', '?')} / cuDNN {cudnn.backend_version()}"


def _bhsd(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2)


def forward(q, k, v, window: int, scale: float, left: int = LEFT) -> tuple[torch.Tensor, torch.Tensor]:
    """The band's ``(out [B, T, H, D], lse [H, B, T] float32)`` (module docstring)."""
    B, T, H, _ = q.shape
    fwd, _ = _ops()
    o, stats = fwd(_bhsd(q), _bhsd(k), _bhsd(v), float(scale), is_causal=True, window_left=window + left,
                   return_lse=True)
    out = _bhsd(o)  # the operator lays O out like q: [B, T, H, D] compact
    return out.contiguous(), stats.view(B, H, T).transpose(0, 1).contiguous()


def backward(dout, q, k, v, out, lse, window: int, scale: float, left: int = LEFT):
    """The band keys' ``(dq, dk, dv)`` given the merged ``out`` ``[B, T, H, D]`` and ``lse`` ``[H, B, T]``."""
    _, bwd = _ops()
    dq, dk, dv = bwd(_bhsd(dout), _bhsd(q), _bhsd(k), _bhsd(v), _bhsd(out), lse.transpose(0, 1).contiguous(),
                     float(scale), is_causal=True, window_left=window + left,
                     is_deterministic=torch.are_deterministic_algorithms_enabled())
    return _bhsd(dq).contiguous(), _bhsd(dk).contiguous(), _bhsd(dv).contiguous()
