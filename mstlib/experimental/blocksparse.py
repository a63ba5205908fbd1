"""Block-sparse linear layers that store and compute only the nonzero blocks of a weight.

Elsewhere in ``mstlib`` a sparse weight is a dense ``(out, in)`` tensor times a 0/1 mask: the matmuls cost
as much as dense ones and nothing is saved. Here the weight is cut into ``block x block`` tiles and only the
nonzero tiles are stored, as a compact ``values`` tensor of shape ``(nnzb, block, block)`` next to a
:class:`BlockPattern` (which tiles they are). :func:`block_sparse_linear` computes

    y = x @ (W * M)^T          x: (N, in), W * M: (out, in), y: (N, out)

and its backward returns ``grad_x`` and the gradient of the stored tiles only: the dense ``(out, in)``
gradient of ``W`` is never formed. Forward, ``grad_x`` and ``grad_values`` each cost
``density * 2 * N * in * out`` FLOPs, so a pure FLOP count predicts a speed-up of ``1 / density`` over
dense; whether a backend gets near that is what ``benchmarks/block_sparse.py`` measures.

Backends (same interface, same results up to rounding):

``"dense_masked"``
    The way the rest of the project works: scatter the tiles into a dense ``(out, in)`` weight (zeros
    elsewhere) and call ``F.linear``. Costs a dense matmul; the baseline to beat.
``"gather"``
    Pure torch (``index_select`` -> ``bmm`` -> ``index_add_``), CPU and GPU. Does exactly the sparse FLOPs,
    but copies one ``(N, block)`` slice of the activations per stored tile (``nnzb * N * block`` elements,
    ``density * N * out * in / block``), so it is bound by memory traffic for small blocks, and holds about
    two such buffers at a time (4.8 GB each in bf16 for N=32768, a 3072x768 weight, 32-blocks, density 1).
    Sums over tiles (``index_add_``) accumulate in the input dtype, so bf16 results carry a little more
    rounding than a dense matmul's float32 accumulation. The correctness reference for the other backends.
``"triton_bsr"``
    CUDA only: PyTorch's own Triton block-sparse (BSR) kernels in ``torch.sparse._triton_ops``.
    Forward and ``grad_x`` are ``bsr_dense_mm`` (a BSR matrix times a dense one; ``grad_x`` uses the
    transposed pattern, precomputed once per pattern), ``grad_values`` is ``sampled_addmm`` (an SDDMM: the
    dense product ``grad_y^T @ x`` evaluated only at the stored tiles), split along the token dimension
    so that enough thread blocks run (that kernel has one program per block row).
``"triton"``
    CUDA only (or Triton's CPU interpreter, ``TRITON_INTERPRET=1``, for the tests): our own Triton kernels,
    written for these shapes (:mod:`mstlib.kernels.blocksparse_triton`). Forward and ``grad_x`` are one kernel: a
    program per (tile of ``BM`` tokens, output block) walks the stored tiles of its block row (forward,
    CSR order) or block column (``grad_x``, the pattern's precomputed transposed order, tiles used as
    stored: no re-ordered copy of the values), multiplies the ``[BM, b]`` input slice by the tile and
    accumulates in float32. ``grad_values`` is an SDDMM with one program per (stored tile, chunk of
    tokens) reducing its chunk in float32; the chunks' partial tiles are summed by torch (deterministic).
    Why faster than ``"triton_bsr"``: ``bsr_dense_mm`` runs few, long programs and ``sampled_addmm`` one
    per block row, looping over all ``N`` tokens (12 programs for a 768-row weight with 64-blocks), so
    most of a 132-SM GPU idles at low density; here there are ``N / BM`` times as many programs for the
    products (thousands at ``N = 32768``) and the SDDMM is split over tokens until there are about four
    programs per SM, whatever the density. Nothing is copied per tile (unlike ``"gather"``): each program
    reads the activations in place, and programs running together share the same rows through L2.
    Blocks of 16 to 128 (powers of two), any ``N``; float16/bfloat16 on tensor cores, float32 exact.
    Status: correct on an H200 (the GPU tests), but not yet measured in a stored run. In a first,
    unstored try with the torch profiler the three kernels of a sparse GPT-2-small matrix took less GPU
    time than the dense matmuls at low density, while the host side of a step (Python, three launches,
    the autograd engine; 0.3 to 0.8 ms) was longer than those kernels: a layer timed alone with CUDA
    events, as ``benchmarks/block_sparse.py`` does, then runs at the host's pace, not the GPU's, which is
    why that benchmark also records the profiler's kernel time.

Layout: ``values[k]`` is the tile ``W[r*b:(r+1)*b, c*b:(c+1)*b]`` for the ``k``-th stored block ``(r, c)``
in row-major (CSR) order, i.e. the ``values()`` of ``W.to_sparse_bsr(b)``. Weights are ``(out, in)`` like
``nn.Linear.weight`` (what :mod:`mstlib.model` uses). :func:`dense_to_blocks` and
:func:`blocks_to_dense` convert between the two representations, e.g. at a topology update.
"""

from __future__ import annotations

import warnings
from types import ModuleType
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .blockpattern import (  # noqa: F401 (the patterns' names are read from here too)
    BlockPattern, block_mask, blocks_to_dense, check_block, check_values, dense_to_blocks, expand,
)

try:  # the "triton" backend's kernels; Triton comes with CUDA builds of torch
    from ..kernels import blocksparse_triton as _blocksparse_triton
except Exception:  # no Triton (CPU-only installs): that backend reports a ConfigError when asked for
    _blocksparse_triton = None


#: The backends :func:`block_sparse_linear` accepts.
BACKENDS = ("gather", "triton_bsr", "triton", "dense_masked")


class _GatherFn(torch.autograd.Function):
    """``y = x @ (W*M)^T`` with plain torch ops on the stored tiles only.

    With ``xs = x.view(N, nb_in, b)`` split into column blocks and ``V_k`` the ``k``-th tile at ``(r_k, c_k)``:

        y[:, r]  = sum_{k: r_k = r} xs[:, c_k] @ V_k^T       (forward)
        gx[:, c] = sum_{k: c_k = c} gy[:, r_k] @ V_k          (grad_x)
        gV_k     = gy[:, r_k]^T @ xs[:, c_k]                  (grad of the tile, (b, b))

    Each line is one batched matmul over the ``nnzb`` tiles (``bmm``), fed by an ``index_select`` of the
    needed column blocks and, for sums, followed by an ``index_add_`` into the output blocks.
    """

    @staticmethod
    def forward(ctx, x: Tensor, values: Tensor, pattern: BlockPattern) -> Tensor:  # type: ignore[override]
        n, b = x.shape[0], pattern.block
        # (nb_in, N, b) view, then one copy of the needed column block per tile: (nnzb, N, b)
        x_tiles = x.reshape(n, pattern.nb_in, b).transpose(0, 1).index_select(0, pattern.cols)
        prod = torch.bmm(x_tiles, values.transpose(1, 2))  # (nnzb, N, b_out)
        y_t = prod.new_zeros(pattern.nb_out, n, b).index_add_(0, pattern.rows, prod)
        ctx.save_for_backward(x, values)
        ctx.pattern = pattern
        return y_t.transpose(0, 1).reshape(n, pattern.out_features)

    @staticmethod
    def backward(ctx, grad_y: Tensor) -> tuple[Tensor | None, Tensor | None, None]:  # type: ignore[override]
        x, values = ctx.saved_tensors
        pattern: BlockPattern = ctx.pattern
        n, b = x.shape[0], pattern.block
        gy_tiles = grad_y.reshape(n, pattern.nb_out, b).transpose(0, 1).index_select(0, pattern.rows)
        grad_x = grad_values = None
        if ctx.needs_input_grad[0]:
            prod = torch.bmm(gy_tiles, values)  # (nnzb, N, b_in)
            gx_t = prod.new_zeros(pattern.nb_in, n, b).index_add_(0, pattern.cols, prod)
            grad_x = gx_t.transpose(0, 1).reshape(n, pattern.in_features)
        if ctx.needs_input_grad[1]:
            x_tiles = x.reshape(n, pattern.nb_in, b).transpose(0, 1).index_select(0, pattern.cols)
            grad_values = torch.bmm(gy_tiles.transpose(1, 2), x_tiles)  # (nnzb, b_out, b_in)
        return grad_x, grad_values, None


class TritonKernels(NamedTuple):
    """The two kernels the ``"triton_bsr"`` backend calls (from ``torch.sparse._triton_ops``)."""

    bsr_dense_mm: Callable[..., Tensor]
    sampled_addmm: Callable[..., Tensor]


def triton_kernels(device: torch.device) -> TritonKernels:
    """PyTorch's Triton BSR kernels, or :class:`ConfigError` saying why they cannot run on ``device``.

    ``torch.sparse._triton_ops`` defines ``bsr_dense_mm`` and ``sampled_addmm`` (since torch 2.1, the same
    signatures through 2.13) only when Triton is importable, and sets them to ``None`` otherwise."""
    if device.type != "cuda":
        raise ConfigError(f"the triton_bsr backend needs a CUDA device, got {device}")
    try:
        from torch.sparse import _triton_ops as ops
    except Exception as e:  # noqa: BLE001 - any import failure means the backend is unavailable
        raise ConfigError(f"the triton_bsr backend cannot import torch.sparse._triton_ops: {e!r}") from e
    kernels = {name: getattr(ops, name, None) for name in TritonKernels._fields}
    missing = [name for name, fn in kernels.items() if not callable(fn)]
    if missing:
        raise ConfigError(
            f"the triton_bsr backend needs torch.sparse._triton_ops.{' and '.join(missing)}, which this "
            f"torch ({torch.__version__}) does not provide; is Triton installed?"
        )
    return TritonKernels(**kernels)  # type: ignore[arg-type]


def _bsr(crow: Tensor, col: Tensor, values: Tensor, size: tuple[int, ...]) -> Tensor:
    """A BSR tensor over existing index/value tensors (no copy, no invariant check: the pattern is valid
    by construction)."""
    with warnings.catch_warnings():  # "Sparse BSR tensor support is in beta state", once per process
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_bsr_tensor(crow, col, values, size=size, check_invariants=False)


def choose_split_k(n_tokens: int, nb_out: int, device: torch.device, min_chunk: int = 512) -> int:
    """How many token chunks the SDDMM for ``grad_values`` is split into.

    ``sampled_addmm`` runs one program per block row (``nb_out`` of them: 12 for a 768-row weight with
    64-blocks), each looping over all ``N`` tokens; on a GPU with ~132 SMs that leaves most of it idle.
    Splitting the tokens into ``S`` batches gives ``S * nb_out`` programs, at the cost of summing ``S``
    partial ``(nnzb, b, b)`` results. ``S`` is the smallest power of two giving at least two programs per
    SM, limited so that ``S`` divides ``N`` and chunks keep at least ``min_chunk`` tokens."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
    s = 1
    while s * nb_out < 2 * sms and n_tokens % (2 * s) == 0 and n_tokens // (2 * s) >= min_chunk:
        s *= 2
    return s


class _TritonBSRFn(torch.autograd.Function):
    """``y = x @ (W*M)^T`` with Triton BSR kernels; see the module docstring for the calls."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, x: Tensor, values: Tensor, pattern: BlockPattern, kernels: TritonKernels, split_k: int | None
    ) -> Tensor:
        n = x.shape[0]
        w = _bsr(pattern.crow, pattern.cols, values, (pattern.out_features, pattern.in_features))
        # y^T = W @ x^T; writing into y.t() (column-major (out, N)) leaves y row-major, with no copy
        y = x.new_empty(n, pattern.out_features)
        kernels.bsr_dense_mm(w, x.t(), out=y.t())
        ctx.save_for_backward(x, values)
        ctx.pattern, ctx.kernels, ctx.split_k = pattern, kernels, split_k
        return y

    @staticmethod
    def backward(  # type: ignore[override]
        ctx, grad_y: Tensor
    ) -> tuple[Tensor | None, Tensor | None, None, None, None]:
        x, values = ctx.saved_tensors
        pattern: BlockPattern = ctx.pattern
        kernels: TritonKernels = ctx.kernels
        n, b = x.shape[0], pattern.block
        grad_y = grad_y.contiguous()  # e.g. the expanded ones of y.sum(): stride 0 everywhere
        grad_x = grad_values = None
        if ctx.needs_input_grad[0]:
            # gx^T = W^T @ gy^T, W^T as a BSR matrix (in, out) of the transposed, re-ordered tiles
            wt_values = values.index_select(0, pattern.t_perm).transpose(1, 2).contiguous()
            wt = _bsr(pattern.t_crow, pattern.t_col, wt_values, (pattern.in_features, pattern.out_features))
            grad_x = x.new_empty(n, pattern.in_features)
            kernels.bsr_dense_mm(wt, grad_y.t(), out=grad_x.t())
        if ctx.needs_input_grad[1]:
            # SDDMM: gV = (gy^T @ x) at the stored tiles, over s token chunks run as a batch of s
            s = ctx.split_k or choose_split_k(n, pattern.nb_out, x.device)
            if n % s:
                raise ConfigError(f"split_k={s} does not divide the number of tokens {n}")
            k = n // s
            mat1 = grad_y.view(s, k, pattern.out_features).transpose(1, 2)  # (s, out, k), a view
            mat2 = x.view(s, k, pattern.in_features)  # (s, k, in)
            batch = (s, -1)
            sampled = _bsr(
                pattern.crow.expand(batch).contiguous(),
                pattern.cols.expand(batch).contiguous(),
                values.new_zeros(s, pattern.nnzb, b, b),  # not read (beta=0), only its layout
                (s, pattern.out_features, pattern.in_features),
            )
            out = kernels.sampled_addmm(sampled, mat1, mat2, beta=0.0, alpha=1.0)
            # sum the s partial tiles in float32 (each partial is already rounded to values.dtype)
            grad_values = out.values().sum(0, dtype=torch.float32).to(values.dtype)
        return grad_x, grad_values, None, None, None


def _check_triton_shapes(n: int, pattern: BlockPattern, dtype: torch.dtype) -> None:
    b = pattern.block
    if b < 16 or b & (b - 1):
        raise ConfigError(f"the triton_bsr backend needs a block that is a power of two >= 16, got {b}")
    if n % b or n % 16:
        raise ConfigError(
            f"the triton_bsr backend needs the number of tokens ({n}) divisible by the block ({b}) and by 16"
        )
    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ConfigError(f"the triton_bsr backend supports float16, bfloat16 and float32, not {dtype}")


def own_triton_kernels(device: torch.device, block: int, dtype: torch.dtype) -> ModuleType:
    """The module of the ``"triton"`` backend's kernels (:mod:`mstlib.kernels.blocksparse_triton`), or
    :class:`ConfigError` saying why they cannot run for this device, block size and dtype.

    They run on CUDA, or on CPU when Triton's interpreter was switched on (``TRITON_INTERPRET=1`` set before
    Triton was first imported: ``triton.jit`` decides at decoration time, so setting it later does not
    help)."""
    ok_device = device.type == "cuda" or (
        device.type == "cpu" and _blocksparse_triton is not None and _blocksparse_triton.INTERPRET
    )
    if not ok_device:
        raise ConfigError(
            f"the triton backend needs a CUDA device, got {device} (on CPU it runs only under Triton's "
            f"interpreter: TRITON_INTERPRET=1 set before Triton is imported)"
        )
    if _blocksparse_triton is None:
        raise ConfigError("the triton backend needs Triton, which cannot be imported here")
    if block not in _blocksparse_triton.BLOCKS:
        raise ConfigError(f"the triton backend supports blocks of {_blocksparse_triton.BLOCKS}, got {block}")
    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ConfigError(f"the triton backend supports float16, bfloat16 and float32, not {dtype}")
    return _blocksparse_triton


class _TritonFn(torch.autograd.Function):
    """``y = x @ (W*M)^T`` with the kernels of :mod:`mstlib.kernels.blocksparse_triton` (see the module docstring):
    forward over the pattern's rows, ``grad_x`` over its transposed order, ``grad_values`` an SDDMM split
    over tokens. ``x`` and ``grad_y`` are read in place with their strides; ``values`` must be contiguous."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, x: Tensor, values: Tensor, pattern: BlockPattern, kernels: ModuleType, split_k: int | None
    ) -> Tensor:
        y = kernels.bsr_mm(x, values, pattern.crow, pattern.cols, None, pattern.nb_out, transpose_values=True)
        ctx.save_for_backward(x, values)
        ctx.pattern, ctx.kernels, ctx.split_k = pattern, kernels, split_k
        return y

    @staticmethod
    def backward(  # type: ignore[override]
        ctx, grad_y: Tensor
    ) -> tuple[Tensor | None, Tensor | None, None, None, None]:
        x, values = ctx.saved_tensors
        pattern: BlockPattern = ctx.pattern
        kernels: ModuleType = ctx.kernels
        grad_x = grad_values = None
        if ctx.needs_input_grad[0]:
            grad_x = kernels.bsr_mm(
                grad_y, values, pattern.t_crow, pattern.t_col, pattern.t_perm, pattern.nb_in, transpose_values=False
            )
        if ctx.needs_input_grad[1]:
            grad_values = kernels.sddmm(grad_y, x, pattern.rows, pattern.cols, pattern.block, values.dtype,
                                        ctx.split_k)
        return grad_x, grad_values, None, None, None


def block_sparse_linear(
    x: Tensor,
    values: Tensor,
    pattern: BlockPattern,
    backend: str = "gather",
    *,
    split_k: int | None = None,
) -> Tensor:
    """``x @ (W * M)^T`` for ``x`` of shape ``(..., in)``, returning ``(..., out)``, where ``W * M`` is the
    weight whose stored tiles are ``values`` ``(nnzb, block, block)`` at ``pattern``.

    Differentiable in ``x`` and ``values``; the gradient of ``values`` has their shape. ``backend`` is one
    of :data:`BACKENDS`. ``split_k``, the number of token chunks of the ``grad_values`` SDDMM: for
    ``"triton_bsr"`` it overrides :func:`choose_split_k` and must divide the tokens; for ``"triton"`` it
    overrides :func:`mstlib.kernels.blocksparse_triton.sddmm_chunk` (any positive number; chunks are rounded up to
    128 tokens, so fewer may run); other backends ignore it. Under
    ``torch.autocast`` the inputs are cast to the autocast dtype, as ``F.linear`` would be."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown block-sparse backend {backend!r}; expected one of {BACKENDS}")
    check_values(values, pattern)
    if x.shape[-1] != pattern.in_features:
        raise ConfigError(f"input has {x.shape[-1]} features, the weight expects {pattern.in_features}")
    if values.device != x.device:
        raise ConfigError(f"input on {x.device} but block values on {values.device}")
    pattern = pattern.to(x.device)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, pattern.in_features)

    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        x2, values = x2.to(dtype), values.to(dtype)  # casts are differentiable: grads come back in fp32
    if x2.dtype != values.dtype:
        raise ConfigError(f"input dtype {x2.dtype} differs from block values dtype {values.dtype}")

    with torch.autocast(device_type, enabled=False):  # the custom Functions choose their own dtypes
        if backend == "dense_masked":
            y = F.linear(x2, blocks_to_dense(values, pattern))
        elif backend == "gather":
            y = _GatherFn.apply(x2, values, pattern)
        elif backend == "triton":
            own = own_triton_kernels(x.device, pattern.block, x2.dtype)
            if split_k is not None and not (isinstance(split_k, int) and split_k >= 1):
                raise ConfigError(f"split_k must be a positive integer, got {split_k!r}")
            y = _TritonFn.apply(x2, values.contiguous(), pattern, own, split_k)
        else:
            kernels = triton_kernels(x.device)
            _check_triton_shapes(x2.shape[0], pattern, x2.dtype)
            y = _TritonBSRFn.apply(x2.contiguous(), values.contiguous(), pattern, kernels, split_k)
    return y.reshape(*lead, pattern.out_features)


class BlockSparseLinear(nn.Module):
    """A bias-free linear layer ``(in_features -> out_features)`` that stores only the nonzero tiles of its
    weight: ``values`` is an ``nn.Parameter`` of shape ``(nnzb, block, block)``.

    Build it from a block mask (new GPT-2-style init, std 0.02) or with :meth:`from_dense`; get the dense
    weight back with :meth:`to_dense`; change the topology with :meth:`set_block_mask` (which replaces the
    parameter: an optimizer holding the old one must be rebuilt, and its state for the tiles moved)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        block_mask: Tensor,
        block: int,
        *,
        backend: str = "gather",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_block(out_features, in_features, block)
        if tuple(block_mask.shape) != (out_features // block, in_features // block):
            raise ConfigError(
                f"block mask shape {tuple(block_mask.shape)} does not match "
                f"({out_features // block}, {in_features // block}) for block {block}"
            )
        if backend not in BACKENDS:
            raise ConfigError(f"unknown block-sparse backend {backend!r}; expected one of {BACKENDS}")
        self.in_features, self.out_features, self.block, self.backend = in_features, out_features, block, backend
        self.pattern = BlockPattern.from_block_mask(block_mask.to(device or "cpu"), block)
        self.values = nn.Parameter(
            torch.randn(self.pattern.nnzb, block, block, device=device, dtype=dtype) * 0.02
        )

    @classmethod
    def from_dense(
        cls, weight: Tensor, block_mask: Tensor, block: int, *, backend: str = "gather"
    ) -> BlockSparseLinear:
        """The layer whose tiles are those of ``weight`` ``(out, in)`` at ``block_mask``."""
        out_features, in_features = weight.shape
        layer = cls(
            in_features, out_features, block_mask, block, backend=backend, device=weight.device, dtype=weight.dtype
        )
        with torch.no_grad():
            layer.values.copy_(dense_to_blocks(weight.detach(), layer.pattern))
        return layer

    def to_dense(self) -> Tensor:
        """The dense weight ``(out, in)``, zeros outside the pattern (differentiable)."""
        return blocks_to_dense(self.values, self.pattern)

    def set_block_mask(self, block_mask: Tensor) -> None:
        """Switch to a new block pattern: tiles kept by both patterns keep their values, new tiles start
        at zero (as grown weights do in the masked representation)."""
        with torch.no_grad():
            dense = self.to_dense()
            pattern = BlockPattern.from_block_mask(block_mask.to(dense.device), self.block)
            values = dense_to_blocks(dense, pattern)
        self.pattern = pattern
        self.values = nn.Parameter(values)

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        # .to()/.cuda() move parameters; keep the pattern on the same device as the values
        out = super()._apply(fn, recurse)
        self.pattern = self.pattern.to(self.values.device)
        return out

    def forward(self, x: Tensor) -> Tensor:
        return block_sparse_linear(x, self.values, self.pattern, self.backend)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, block={self.block}, "
            f"nnzb={self.pattern.nnzb}, density={self.pattern.density:.4f}, backend={self.backend!r}"
        )
