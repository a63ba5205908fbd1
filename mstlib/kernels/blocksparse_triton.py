"""Triton kernels of the ``"triton"`` block-sparse backend (see :mod:`mstlib.experimental.blocksparse`).

Two kernels serve the three products of a training step of ``y = x @ (W*M)^T``, ``W*M`` stored as
``values`` ``(nnzb, b, b)`` at a :class:`~mstlib.experimental.blocksparse.BlockPattern`:

* :func:`bsr_mm` -- a dense ``(N, K)`` matrix times a block-sparse one, one program per (token tile of
  ``BM`` rows, output block): it walks the stored tiles of its compressed row (CSR ``crow``/``col``), loads
  the ``[BM, b]`` slice of the input that each one multiplies and the ``[b, b]`` tile, and accumulates
  ``tl.dot`` in float32; an output block with no stored tile is written as zeros. The forward pass uses
  the pattern's rows and the tiles transposed (``y[:, r] = sum x[:, c] @ V^T``); ``grad_x`` uses the
  transposed pattern (``t_crow``/``t_col``, and ``t_perm`` to find each tile in CSR order, all precomputed
  by the pattern) and the tiles as they are (``gx[:, c] = sum gy[:, r] @ V``), so nothing is re-ordered or
  copied per step.
* :func:`sddmm` -- ``grad_values[k] = gy[:, r_k]^T @ x[:, c_k]``: one program per (stored tile, chunk of
  tokens), reducing its chunk in float32. Few tiles (low density, big blocks) would leave most of the GPU
  idle with one program per tile, so the tokens are split into chunks until there are a few programs per
  SM; each chunk writes its own float32 partial tile and torch sums them (a fixed order: deterministic,
  unlike atomics, and the partials are small: about four programs per SM of ``b x b`` floats).

Programs are numbered with the output block (or the stored tile) varying fastest, so the programs that
run at the same time read the same rows of the activations, which then come from L2.

Tile shapes and pipelining are autotuned (``BM``/``BN`` of 64 or 128 rows, 4 or 8 warps, 2 or 3 stages)
per shape. Under Triton's CPU interpreter (``TRITON_INTERPRET=1`` set before Triton is imported; the tests)
the autotuner cannot time anything, so the plain kernels run with one small fixed tile. Every ``tl.dot``
dimension is at least 16 (Triton's minimum), hence block sizes 16 to 128 and tiles of 16 rows or more.
Half-precision inputs are multiplied on tensor cores with float32 accumulation; float32 inputs use exact
IEEE products (``input_precision="ieee"``), not TF32, so that they match the ``gather`` reference.

Only imported where Triton is; :mod:`mstlib.experimental.blocksparse` works without it.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable

import torch
import triton
import triton.language as tl

#: Whether the kernels run in Triton's CPU interpreter. Read once, at import, because ``triton.jit`` makes
#: interpreted functions only when the variable is set before the decoration.
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
#: Block sizes the kernels serve (a ``tl.dot`` needs every dimension >= 16; 128 keeps a ``b x b`` float32
#: accumulator in registers).
BLOCKS = (16, 32, 64, 128)
#: Token chunks of the SDDMM are multiples of this many rows: the largest ``BN``, so that no chunk ends
#: inside a ``BN`` step (except the last, masked).
CHUNK_ALIGN = 128
#: Fewest tokens a chunk of the SDDMM keeps (a shorter one spends more on its partial tile than it saves).
MIN_CHUNK = 256
#: The tile of rows used under the interpreter: small, so that the tests' few dozen tokens span several
#: tiles, a ragged one included.
INTERPRET_ROWS = 32


def _bench(kernel_call: Callable[[], Any], quantiles: tuple[float, ...]) -> Any:
    """Short timings for the autotuner. Its defaults (25 ms of warm-up and 100 ms per configuration) add
    about three seconds per shape and density for the three kernels' eight configurations; a 10 ms median
    still tells apart configurations whose difference matters, and keeps the benchmark's grid near two
    minutes."""
    return triton.testing.do_bench(kernel_call, warmup=2, rep=10, quantiles=quantiles)


_MM_CONFIGS = [triton.Config({"BM": bm}, num_warps=w, num_stages=s) for bm in (64, 128) for w in (4, 8)
               for s in (2, 3)]
_SDDMM_CONFIGS = [triton.Config({"BN": bn}, num_warps=w, num_stages=s) for bn in (64, 128) for w in (4, 8)
                  for s in (2, 3)]


@triton.jit
def _mm(a, b, IEEE: tl.constexpr):
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    return tl.dot(a, b)


@triton.autotune(configs=_MM_CONFIGS, key=["N", "N_BLOCKS", "NNZB", "B", "TRANS_V"], do_bench=_bench)
@triton.jit
def _bsr_mm_kernel(A, V, C, PTR, IDX, PERM, N, N_BLOCKS, NNZB, sa_n, sa_f, sc_n, sc_f,
                   B: tl.constexpr, TRANS_V: tl.constexpr, HAS_PERM: tl.constexpr, IEEE: tl.constexpr,
                   BM: tl.constexpr):
    """``C[:, i*B:(i+1)*B] = sum_t A[:, IDX[t]*B:(IDX[t]+1)*B] @ op(V[k_t])`` over ``t`` in
    ``PTR[i]:PTR[i+1]``, with ``k_t = PERM[t]`` (or ``t``) and ``op`` the transpose when ``TRANS_V``."""
    pid = tl.program_id(0)
    i = pid % N_BLOCKS  # output block, fastest: concurrent programs share A's rows
    m = pid // N_BLOCKS  # token tile
    rows = m * BM + tl.arange(0, BM)
    rmask = rows < N
    rows64 = rows.to(tl.int64)
    e = tl.arange(0, B)
    start = tl.load(PTR + i)  # int64, as are t and k: k * B * B may pass 2**31 for large weights
    end = tl.load(PTR + i + 1)
    acc = tl.zeros((BM, B), dtype=tl.float32)
    for t in range(start, end):
        j = tl.load(IDX + t)
        if HAS_PERM:
            k = tl.load(PERM + t)
        else:
            k = t
        a = tl.load(A + rows64[:, None] * sa_n + (j * B + e)[None, :] * sa_f, mask=rmask[:, None], other=0.0)
        v = tl.load(V + k * (B * B) + e[:, None] * B + e[None, :])
        if TRANS_V:
            v = tl.trans(v)
        acc += _mm(a, v, IEEE)
    tl.store(C + rows64[:, None] * sc_n + (i * B + e)[None, :] * sc_f, acc.to(C.dtype.element_ty),
             mask=rmask[:, None])


@triton.autotune(configs=_SDDMM_CONFIGS, key=["N", "NNZB", "CHUNK", "B"], do_bench=_bench)
@triton.jit
def _sddmm_kernel(G, X, P, ROWS, COLS, N, NNZB, CHUNK, sg_n, sg_f, sx_n, sx_f,
                  B: tl.constexpr, IEEE: tl.constexpr, BN: tl.constexpr):
    """``P[s, k] = G[chunk s, ROWS[k]*B:+B]^T @ X[chunk s, COLS[k]*B:+B]`` (a ``[B, B]`` tile), chunk ``s``
    being tokens ``s*CHUNK`` to ``min((s+1)*CHUNK, N)``."""
    pid = tl.program_id(0)
    k = pid % NNZB  # stored tile, fastest: concurrent programs share the chunk's rows
    s = pid // NNZB  # token chunk
    r = tl.load(ROWS + k)
    c = tl.load(COLS + k)
    e = tl.arange(0, B)
    start = s * CHUNK
    end = tl.minimum(start + CHUNK, N)
    acc = tl.zeros((B, B), dtype=tl.float32)
    for n0 in range(start, end, BN):
        n = n0 + tl.arange(0, BN)
        nmask = (n < end)[:, None]
        n64 = n.to(tl.int64)
        g = tl.load(G + n64[:, None] * sg_n + (r * B + e)[None, :] * sg_f, mask=nmask, other=0.0)
        x = tl.load(X + n64[:, None] * sx_n + (c * B + e)[None, :] * sx_f, mask=nmask, other=0.0)
        acc += _mm(tl.trans(g), x, IEEE)
    out = (s * NNZB + k).to(tl.int64) * (B * B)
    tl.store(P + out + e[:, None] * B + e[None, :], acc.to(P.dtype.element_ty))


#: The configuration the autotuner chose, per kernel and shape (its own key, our dtypes and constants).
_CHOSEN: dict[tuple, dict[str, Any]] = {}


def _launch(kernel: Any, grid: Callable[[dict[str, Any]], tuple[int]], key: tuple, args: tuple,
            consts: dict[str, Any], interpret_meta: dict[str, int]) -> None:
    """Launch an autotuned kernel. Under the interpreter the plain kernel runs with ``interpret_meta``
    (the autotuner cannot time on CPU). On the GPU the autotuner runs the first launch of each ``key``
    (timing its configurations); later launches call the plain kernel with the configuration it chose,
    skipping the autotuner's per-call bookkeeping (a few tens of microseconds of Python per launch, which
    adds up to a large share of a sparse layer's step when its kernels take tens of microseconds)."""
    if INTERPRET:
        kernel.fn[grid(interpret_meta)](*args, **consts, **interpret_meta)
        return
    config = _CHOSEN.get(key)
    if config is None:
        kernel[grid](*args, **consts)
        _CHOSEN[key] = kernel.best_config.all_kwargs()
    else:
        kernel.fn[grid(config)](*args, **consts, **config)


def bsr_mm(a: torch.Tensor, values: torch.Tensor, ptr: torch.Tensor, idx: torch.Tensor,
           perm: torch.Tensor | None, n_blocks: int, transpose_values: bool) -> torch.Tensor:
    """``C`` ``(N, n_blocks * b)``, block ``i`` of which is ``sum_t A[:, idx[t]] @ op(values[k_t])`` over the
    ``t`` in ``ptr[i]:ptr[i+1]`` (``k_t = perm[t]``, or ``t`` when ``perm`` is None; ``op`` transposes when
    ``transpose_values``). ``a`` ``(N, K)`` may have any strides; ``values`` must be contiguous; ``ptr``,
    ``idx``, ``perm`` are the pattern's index tensors on ``a``'s device."""
    n, b = a.shape[0], values.shape[-1]
    c = a.new_empty(n, n_blocks * b)
    if n == 0:
        return c
    args = (a, values, c, ptr, idx, perm if perm is not None else idx, n, n_blocks, values.shape[0],
            a.stride(0), a.stride(1), c.stride(0), c.stride(1))
    consts = dict(B=b, TRANS_V=transpose_values, HAS_PERM=perm is not None, IEEE=a.dtype == torch.float32)
    key = ("bsr_mm", n, n_blocks, values.shape[0], a.dtype, values.dtype, *consts.values())
    _launch(_bsr_mm_kernel, lambda meta: (n_blocks * triton.cdiv(n, meta["BM"]),), key, args, consts,
            {"BM": INTERPRET_ROWS})
    return c


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sddmm_chunk(n: int, nnzb: int, device: torch.device, split_k: int | None = None) -> int:
    """Tokens per chunk of :func:`sddmm` (a multiple of :data:`CHUNK_ALIGN`; ``ceil(n / chunk)`` chunks).

    Without ``split_k``: enough chunks for about four programs per SM (``nnzb`` tiles times chunks), each
    at least :data:`MIN_CHUNK` tokens long; one chunk when the tiles alone fill the GPU. ``split_k`` asks
    for that many chunks instead (fewer when rounding the chunk up to the alignment leaves fewer)."""
    if split_k is None:
        sms = _sm_count(device.index if device.index is not None else torch.cuda.current_device()) \
            if device.type == "cuda" else 1
        split_k = max(1, min(triton.cdiv(4 * sms, nnzb), n // MIN_CHUNK))
    chunk = triton.cdiv(triton.cdiv(max(n, 1), split_k), CHUNK_ALIGN) * CHUNK_ALIGN
    return chunk


def sddmm(g: torch.Tensor, x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, block: int,
          out_dtype: torch.dtype, split_k: int | None = None) -> torch.Tensor:
    """``out[k] = g[:, rows[k]*b:+b]^T @ x[:, cols[k]*b:+b]`` ``(nnzb, b, b)`` in ``out_dtype``, reduced in
    float32 (chunks of tokens summed by torch, in order; see :func:`sddmm_chunk`). ``g`` ``(N, out)`` and
    ``x`` ``(N, in)`` may have any strides."""
    n, nnzb = x.shape[0], rows.shape[0]
    if n == 0:
        return torch.zeros(nnzb, block, block, dtype=out_dtype, device=x.device)
    chunk = sddmm_chunk(n, nnzb, x.device, split_k)
    splits = triton.cdiv(n, chunk)
    # one chunk: write the result in its dtype directly; several: float32 partials, summed below
    p = torch.empty(splits, nnzb, block, block, dtype=out_dtype if splits == 1 else torch.float32,
                    device=x.device)
    args = (g, x, p, rows, cols, n, nnzb, chunk, g.stride(0), g.stride(1), x.stride(0), x.stride(1))
    consts = dict(B=block, IEEE=x.dtype == torch.float32)
    key = ("sddmm", n, nnzb, chunk, g.dtype, x.dtype, p.dtype, *consts.values())
    _launch(_sddmm_kernel, lambda meta: (nnzb * splits,), key, args, consts, {"BN": INTERPRET_ROWS})
    if splits == 1:
        return p[0]
    return p.sum(0).to(out_dtype)
