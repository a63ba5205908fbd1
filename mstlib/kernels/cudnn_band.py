"""The sliding-window band of the split backends through cuDNN's fused attention (the ``"cudnn_split"`` backend).

Why: on an H200, PyTorch runs dense causal attention on cuDNN's Hopper kernels, while the only windowed
kernels PyTorch exposes (FlashAttention 2's, FlexAttention's Triton kernel) cost 2-3x as much per tile of
scores. cuDNN's SDPA has a diagonal band (``diagonal_band_left_bound``) that PyTorch does not expose; NVIDIA's
``nvidia-cudnn-frontend`` package builds cuDNN graphs from Python, on the cuDNN library PyTorch already
loads. We build one forward and one backward graph per shape and layout (cached) and execute them
ourselves, on the model's ``q, k, v`` views as they are (measured on an H200 by ``tools/gpu/cudnn_probe2.py``:
the band's forward costs 0.11-0.12 ms of host time per call this way, the package's own torch operator
``torch.ops.cudnn.sdpa_fwd`` 0.09-0.16 ms, and executing a cached graph on the *same* buffers 0.02 ms: most
of the host time is the frontend binding fresh buffers. A step of the paper model hides it; the mini
model's shorter steps leave gaps for it: a compiled mini step with the split backends kept the GPU busy
84% of the time against dense's 92%, results/bench/archive/step_times_mini_session6e_compiled.json).

Contract (the same as FlashAttention's in :mod:`mstlib.attention.flash_split`): ``q, k, v`` are ``[B, T, H, D]``
(last dim contiguous, any other strides); the band is ``0 <= i - j < window``; the forward returns the band's
output ``[B, T, H, D]`` (contiguous) and natural-log log-sum-exp ``[H, B, T]`` (float32, contiguous); the
backward takes the *merged* output and log-sum-exp (ring-attention style) and returns the band keys'
``dq, dk, dv``, ``[B, T, H, D]`` contiguous. Both are custom operators, so a model compiled as a whole calls
each as one opaque op.

Optional: ``pip install nvidia-cudnn-frontend`` (GPU machines only; :func:`available` says whether it
imports and a CUDA device is present).
"""

from __future__ import annotations

import functools
import threading
from typing import Callable

import torch

#: cuDNN's ``diagonal_band_left_bound`` for a band of ``window`` keys (``i - j < window``): ``window + LEFT``.
#: Checked on an H200 against float64 math (``tools/gpu/cudnn_probe.py``: ``LEFT = -1`` and ``+1`` are off by
#: 0.7-0.8 in the output, ``0`` matches to bf16 rounding); the GPU tests check it for every band.
LEFT = 0

#: Per direction (``"fwd"``, ``"bwd"``), whether this cuDNN takes the band's statistics (log-sum-exp) in the
#: far kernel's ``[H, B, T]`` layout, described to cuDNN as a ``[B, H, T, 1]`` tensor with strides
#: ``(T, B * T, 1, 1)``: then the forward writes them where the merge reads them, and the backward reads the
#: merged ones in place (no transposing copy). ``None`` until the first graph build tries; ``False`` falls
#: back to cuDNN's packed ``[B, H, T, 1]`` and one copy. Measured on an H200 with cuDNN 9.19: the forward
#: takes the strides; the backward does not ("for cuDNN version below 9.26.0, a non-ragged Stats input of
#: sdpa_backward must be a packed BHSD tensor").
_stats_hbt: dict[str, bool | None] = {"fwd": None, "bwd": None}
_lock = threading.Lock()
_graphs: dict[tuple, tuple] = {}
_handles: dict[tuple, object] = {}


@functools.lru_cache(maxsize=1)
def _cudnn():
    import cudnn  # loads the cuDNN library torch already has

    return cudnn


@functools.lru_cache(maxsize=1)
def available() -> bool:
    """Whether the cuDNN band can run here: a CUDA device and an importable ``nvidia-cudnn-frontend`` (asked
    once per process: ``"auto"`` asks on every attention build, and a failed import is not cached by Python)."""
    if not torch.cuda.is_available():
        return False
    try:
        _cudnn()
    except Exception:  # not installed, or a frontend that does not load against this cuDNN
        return False
    return True


def version() -> str | None:
    """``"<frontend version> / cuDNN <backend version>"`` for provenance, or ``None`` when unavailable."""
    if not available():
        return None
    cudnn = _cudnn()
    return f"{getattr(cudnn, '__version__', '?')} / cuDNN {cudnn.backend_version()}"


def _handle(device: torch.device):
    """This thread's cuDNN handle for ``device``, bound to torch's current stream."""
    cudnn = _cudnn()
    key = (threading.get_ident(), device)
    h = _handles.get(key)
    if h is None:
        with torch.cuda.device(device):
            h = _handles[key] = cudnn.create_handle()
    cudnn.set_stream(handle=h, stream=torch.cuda.current_stream(device).cuda_stream)
    return h


def _graph(key: tuple, build: Callable[[], tuple]) -> tuple:
    hit = _graphs.get(key)
    if hit is None:
        with _lock:
            hit = _graphs.get(key) or _graphs.setdefault(key, build())
    return hit


def _operand(x: torch.Tensor) -> torch.Tensor:
    """cuDNN's descriptors need a dense last dim and a 16-byte aligned base."""
    return x if x.stride(-1) == 1 and x.data_ptr() % 16 == 0 else x.contiguous()


def _bhsd(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2)


def _new_graph(handle, dtype: torch.dtype):
    cudnn = _cudnn()
    io = {torch.bfloat16: cudnn.data_type.BFLOAT16, torch.float16: cudnn.data_type.HALF}[dtype]
    g = cudnn.pygraph(handle=handle, io_data_type=io, intermediate_data_type=cudnn.data_type.FLOAT,
                      compute_data_type=cudnn.data_type.FLOAT)

    def tensor(name: str, x: torch.Tensor, uid: int, float32: bool = False):
        return g.tensor(name=name, dim=list(x.shape), stride=list(x.stride()), uid=uid,
                        data_type=cudnn.data_type.FLOAT if float32 else io)

    return g, tensor


def _finish(g, handle, uids: tuple) -> tuple:
    cudnn = _cudnn()
    g.validate()
    g.build_operation_graph()
    g.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
    g.check_support()
    g.build_plans()  # the heuristic's first plan: on an H200 within 1% of the fastest (tools/gpu/cudnn_probe2.py)
    return g, uids, max(int(g.get_workspace_size()), 1)


def _band_bounds(left_bound: int) -> dict:
    cudnn = _cudnn()
    return dict(diagonal_alignment=cudnn.diagonal_alignment.TOP_LEFT, diagonal_band_left_bound=left_bound,
                diagonal_band_right_bound=0)


def _stats_layout(direction: str, attempt: Callable[[bool], object]) -> tuple[bool, object]:
    """``(hbt, attempt(hbt))`` with the statistics layout this cuDNN takes in ``direction``
    (:data:`_stats_hbt`), found out on the first call: a graph build that rejects the ``[H, B, T]`` strides
    falls back to the packed layout, for good (a failure of the packed layout too is raised)."""
    hbt = _stats_hbt[direction]
    if hbt is None:
        try:
            result = attempt(True)
        except Exception:  # cuDNN's frontend raises its own error types; any failure here means "not this layout"
            _stats_hbt[direction] = False
        else:
            _stats_hbt[direction] = True
            return True, result
    return _stats_hbt[direction], attempt(_stats_hbt[direction])


def _stats_view(lse: torch.Tensor) -> torch.Tensor:
    """``[H, B, T]`` contiguous float32 -> the ``[B, H, T, 1]`` view cuDNN's statistics are declared as."""
    return lse.permute(1, 0, 2).unsqueeze(-1)


def _execute(entry: tuple, buffers: list, handle, device) -> None:
    g, uids, ws_bytes = entry
    ws = torch.empty(ws_bytes, dtype=torch.uint8, device=device)
    g.execute(buffers, ws, handle=handle, tensor_uids=list(uids))


@torch.library.custom_op("mstlib::cudnn_band_fwd", mutates_args=())
def _fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, left_bound: int, scale: float
            ) -> tuple[torch.Tensor, torch.Tensor]:
    B, T, H, D = q.shape
    q, k, v = _operand(q), _operand(k), _operand(v)
    out = torch.empty((B, T, H, D), dtype=q.dtype, device=q.device)
    lse = torch.empty((H, B, T), dtype=torch.float32, device=q.device)
    handle = _handle(q.device)
    key = ("fwd", q.dtype, q.device, tuple(q.shape), q.stride(), k.stride(), v.stride(), left_bound, scale)

    def attempt(hbt: bool) -> torch.Tensor:
        stats = _stats_view(lse) if hbt else torch.empty((B, H, T, 1), dtype=torch.float32, device=q.device)
        bufs = [_bhsd(q), _bhsd(k), _bhsd(v), _bhsd(out), stats]

        def build():
            g, tensor = _new_graph(handle, q.dtype)
            o_t, s_t = g.sdpa(name="band", q=tensor("q", bufs[0], 1), k=tensor("k", bufs[1], 2),
                              v=tensor("v", bufs[2], 3), generate_stats=True, attn_scale=scale,
                              **_band_bounds(left_bound))
            o_t.set_uid(4).set_output(True).set_dim(list(bufs[3].shape)).set_stride(list(bufs[3].stride()))
            s_t.set_uid(5).set_output(True).set_dim(list(stats.shape)).set_stride(list(stats.stride())) \
                .set_data_type(_cudnn().data_type.FLOAT)
            return _finish(g, handle, (1, 2, 3, 4, 5))

        _execute(_graph(key + (hbt,), build), bufs, handle, q.device)
        return stats

    hbt, stats = _stats_layout("fwd", attempt)
    return out, lse if hbt else stats.view(B, H, T).transpose(0, 1).contiguous()


@_fwd_op.register_fake
def _(q, k, v, left_bound, scale):
    B, T, H, D = q.shape
    return q.new_empty((B, T, H, D)), q.new_empty((H, B, T), dtype=torch.float32)


@torch.library.custom_op("mstlib::cudnn_band_bwd", mutates_args=())
def _bwd_op(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
            lse: torch.Tensor, left_bound: int, scale: float, deterministic: bool
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q, k, v = _operand(q), _operand(k), _operand(v)
    out, dout, lse = out.contiguous(), dout.contiguous(), lse.contiguous()
    dq, dk, dv = (torch.empty(x.shape, dtype=x.dtype, device=x.device) for x in (q, k, v))
    handle = _handle(q.device)
    key = ("bwd", q.dtype, q.device, tuple(q.shape), q.stride(), k.stride(), v.stride(), left_bound, scale,
           deterministic)

    def attempt(hbt: bool) -> None:
        # the merged [H, B, T] statistics in place, or copied to cuDNN's packed [B, H, T, 1]
        stats = _stats_view(lse) if hbt else lse.transpose(0, 1).contiguous().unsqueeze(-1)
        bufs = [_bhsd(q), _bhsd(k), _bhsd(v), _bhsd(out), _bhsd(dout), stats, _bhsd(dq), _bhsd(dk), _bhsd(dv)]

        def build():
            g, tensor = _new_graph(handle, q.dtype)
            grads = g.sdpa_backward(
                name="band_bwd", q=tensor("q", bufs[0], 1), k=tensor("k", bufs[1], 2), v=tensor("v", bufs[2], 3),
                o=tensor("o", bufs[3], 4), dO=tensor("do", bufs[4], 5), stats=tensor("stats", stats, 6, True),
                attn_scale=scale, use_deterministic_algorithm=deterministic, **_band_bounds(left_bound))
            for t, uid, buf in zip(grads, (7, 8, 9), bufs[6:]):
                t.set_uid(uid).set_output(True).set_dim(list(buf.shape)).set_stride(list(buf.stride()))
            return _finish(g, handle, tuple(range(1, 10)))

        _execute(_graph(key + (hbt,), build), bufs, handle, q.device)

    _stats_layout("bwd", attempt)
    return dq, dk, dv


@_bwd_op.register_fake
def _(dout, q, k, v, out, lse, left_bound, scale, deterministic):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def forward(q, k, v, window: int, scale: float, left: int = LEFT) -> tuple[torch.Tensor, torch.Tensor]:
    """The band's ``(out [B, T, H, D], lse [H, B, T] float32)`` (module docstring)."""
    return _fwd_op(q, k, v, window + left, float(scale))


def backward(dout, q, k, v, out, lse, window: int, scale: float, left: int = LEFT):
    """The band keys' ``(dq, dk, dv)`` given the merged ``out`` ``[B, T, H, D]`` and ``lse`` ``[H, B, T]``;
    deterministic when torch's deterministic algorithms are on."""
    return _bwd_op(dout, q, k, v, out, lse, window + left, float(scale),
                   torch.are_deterministic_algorithms_enabled())
