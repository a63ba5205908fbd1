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
  autograd function whose backward uses the merged output and log-sum-exp (:mod:`mstlib.attention.flash_split`).
  **Measured on an H200** (training-speed chapter, paper model, ``local_strided``, step speed relative to
  dense): 1.16 at context 4096 against FlexAttention's 0.84; 0.97 at 1024 (FlexAttention 0.94), because
  there FlashAttention 2's 128-token band alone costs almost as much as cuDNN's causal attention.
* ``"cudnn_split"``: ``flash_split`` with the band through cuDNN's sliding-window kernels (Hopper's, the ones
  PyTorch runs dense causal attention on), via ``nvidia-cudnn-frontend`` (:mod:`mstlib.kernels.cudnn_band`);
  ``local`` and ``local_strided``.
* ``"auto"``: on CUDA ``cudnn_split`` for ``local`` and ``local_strided`` where ``nvidia-cudnn-frontend`` is
  installed, ``flash_split`` for them and ``strided`` otherwise, ``flex`` for ``fixed``; off CUDA
  ``"sdpa_mask"`` (:func:`resolve_backend`, which gives the measured reasons).

Rooms: :mod:`.patterns` (the geometry), :mod:`.common` (what the backends share), :mod:`.backends`
(``build_attention``), :mod:`.split`, :mod:`.flash_split`; the GPU kernels live in :mod:`mstlib.kernels`.

Units: ``T`` tokens; ``q, k, v`` of shape ``(batch, heads, T, head_dim)``; densities are fractions of pairs.
"""

from __future__ import annotations

from .backends import (
                       CUDNN_SPLIT_AUTO,
                       FLASH_SPLIT_AUTO,
                       build_attention,
                       flex_pattern_attention,
                       resolve_backend,
                       sdpa_mask_attention,
)
from .common import AttentionFn, flex_available, reference_attention
from .patterns import (
                       FIXED_SUMMARY,
                       FLEX_BLOCK,
                       PATTERNS,
                       SPLITS,
                       block_density,
                       pattern_density,
                       pattern_mask,
                       pattern_pairs,
                       split_block_density,
                       tile_fraction,
)
from .split import split_pattern_attention

__all__ = [
    "AttentionFn", "CUDNN_SPLIT_AUTO", "FIXED_SUMMARY", "FLASH_SPLIT_AUTO", "FLEX_BLOCK", "PATTERNS", "SPLITS",
    "block_density", "build_attention", "flex_available", "flex_pattern_attention", "pattern_density",
    "pattern_mask", "pattern_pairs", "reference_attention", "resolve_backend", "sdpa_mask_attention",
    "split_block_density", "split_pattern_attention", "tile_fraction",
]
