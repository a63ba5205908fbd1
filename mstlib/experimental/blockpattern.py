"""Block patterns of a weight matrix: which ``block x block`` tiles are stored (:class:`BlockPattern`), made
from a mask of blocks, and the conversions between a dense weight and its stored tiles."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import ConfigError


def check_block(out_features: int, in_features: int, block: int) -> None:
    if not isinstance(block, int) or block < 1:
        raise ConfigError(f"block size must be a positive integer, got {block!r}")
    if out_features % block or in_features % block:
        raise ConfigError(
            f"block size {block} does not divide the weight shape (out={out_features}, in={in_features}); "
            f"pick a block that divides both"
        )


def block_mask(
    out_features: int,
    in_features: int,
    block: int,
    density: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """A random block pattern: a bool tensor ``(out_features // block, in_features // block)`` with exactly
    ``max(1, round(density * nb_out * nb_in))`` True entries, chosen uniformly without replacement.

    ``density`` is the fraction of blocks kept, in (0, 1]. Raises :class:`ConfigError` when ``block`` does
    not divide the shape or ``density`` is out of range. ``generator`` (a CPU ``torch.Generator``) makes
    the pattern reproducible."""
    check_block(out_features, in_features, block)
    if not (isinstance(density, (int, float)) and math.isfinite(density) and 0.0 < density <= 1.0):
        raise ConfigError(f"block density must be in (0, 1], got {density!r}")
    nb_out, nb_in = out_features // block, in_features // block
    total = nb_out * nb_in
    nnzb = max(1, round(density * total))
    chosen = torch.randperm(total, generator=generator)[:nnzb]
    mask = torch.zeros(total, dtype=torch.bool)
    mask[chosen] = True
    return mask.view(nb_out, nb_in)


def expand(block_mask: Tensor, block: int) -> Tensor:
    """The element mask ``(nb_out * block, nb_in * block)`` of a block mask ``(nb_out, nb_in)``: every
    entry becomes a ``block x block`` tile of the same value."""
    if block_mask.dim() != 2:
        raise ConfigError(f"a block mask is 2-D (nb_out, nb_in), got shape {tuple(block_mask.shape)}")
    return block_mask.bool().repeat_interleave(block, dim=0).repeat_interleave(block, dim=1)


class BlockPattern:
    """Which ``block x block`` tiles of an ``(out_features, in_features)`` weight are stored, as index
    tensors on one device (all ``int64``):

    - ``rows``, ``cols`` ``(nnzb,)``: block row / column of each stored tile, in row-major (CSR) order;
    - ``crow`` ``(nb_out + 1,)``: CSR row pointers (tiles of block row ``r`` are ``crow[r]:crow[r+1]``);
    - ``t_perm`` ``(nnzb,)``, ``t_crow`` ``(nb_in + 1,)``, ``t_col`` ``(nnzb,)``: the same pattern
      transposed (an ``(in, out)`` BSR matrix): its ``k``-th tile is ``values[t_perm[k]].T``. Computed once
      here so that a backward pass never sorts.

    Build one with :meth:`from_block_mask` (or :meth:`from_element_mask`); move it with :meth:`to`.
    """

    def __init__(
        self,
        out_features: int,
        in_features: int,
        block: int,
        rows: Tensor,
        cols: Tensor,
        crow: Tensor,
        t_perm: Tensor,
        t_crow: Tensor,
        t_col: Tensor,
    ) -> None:
        self.out_features, self.in_features, self.block = out_features, in_features, block
        self.rows, self.cols, self.crow = rows, cols, crow
        self.t_perm, self.t_crow, self.t_col = t_perm, t_crow, t_col

    @classmethod
    def from_block_mask(cls, block_mask: Tensor, block: int) -> BlockPattern:
        """The pattern of a bool block mask ``(nb_out, nb_in)`` (see :func:`block_mask`), on its device."""
        if block_mask.dim() != 2:
            raise ConfigError(f"a block mask is 2-D (nb_out, nb_in), got shape {tuple(block_mask.shape)}")
        if not isinstance(block, int) or block < 1:
            raise ConfigError(f"block size must be a positive integer, got {block!r}")
        bm = block_mask.bool()
        nb_out, nb_in = bm.shape
        if not bool(bm.any()):
            raise ConfigError("a block pattern needs at least one nonzero block")
        rows, cols = bm.nonzero(as_tuple=True)  # row-major order, i.e. CSR order
        crow = torch.zeros(nb_out + 1, dtype=torch.long, device=bm.device)
        crow[1:] = torch.cumsum(bm.sum(1), 0)
        # transposed pattern: sort the tiles by (column, row); a stable sort keeps rows ascending per column
        t_perm = torch.argsort(cols * nb_out + rows, stable=True)
        t_crow = torch.zeros(nb_in + 1, dtype=torch.long, device=bm.device)
        t_crow[1:] = torch.cumsum(bm.sum(0), 0)
        return cls(nb_out * block, nb_in * block, block, rows, cols, crow, t_perm, t_crow, rows[t_perm])

    @classmethod
    def from_element_mask(cls, mask: Tensor, block: int) -> BlockPattern:
        """The pattern of an element mask ``(out, in)`` that is constant on every ``block x block`` tile
        (as :func:`expand` makes); raises :class:`ConfigError` when it is not block-structured."""
        out_features, in_features = mask.shape
        check_block(out_features, in_features, block)
        tiles = mask.bool().view(out_features // block, block, in_features // block, block)
        bm = tiles.any(dim=3).any(dim=1)
        if not torch.equal(expand(bm, block), mask.bool()):
            raise ConfigError(f"the element mask is not constant on {block}x{block} tiles")
        return cls.from_block_mask(bm, block)

    @property
    def nb_out(self) -> int:
        return self.out_features // self.block

    @property
    def nb_in(self) -> int:
        return self.in_features // self.block

    @property
    def nnzb(self) -> int:
        """Number of stored tiles."""
        return int(self.rows.numel())

    @property
    def density(self) -> float:
        """Fraction of the weight's entries that are stored (= fraction of tiles)."""
        return self.nnzb / (self.nb_out * self.nb_in)

    @property
    def device(self) -> torch.device:
        return self.rows.device

    def block_mask(self) -> Tensor:
        """The bool block mask ``(nb_out, nb_in)`` (on this pattern's device)."""
        bm = torch.zeros(self.nb_out, self.nb_in, dtype=torch.bool, device=self.device)
        bm[self.rows, self.cols] = True
        return bm

    def to(self, device: torch.device | str) -> BlockPattern:
        """The same pattern with its index tensors on ``device`` (``self`` when already there)."""
        device = torch.device(device)
        if self.device == device or (device.index is None and self.device.type == device.type):
            return self
        t = [x.to(device) for x in (self.rows, self.cols, self.crow, self.t_perm, self.t_crow, self.t_col)]
        return BlockPattern(self.out_features, self.in_features, self.block, *t)

    def __repr__(self) -> str:
        return (
            f"BlockPattern(out={self.out_features}, in={self.in_features}, block={self.block}, "
            f"nnzb={self.nnzb}, density={self.density:.4f}, device={self.device})"
        )


def dense_to_blocks(weight: Tensor, pattern: BlockPattern) -> Tensor:
    """The stored tiles ``(nnzb, block, block)`` of a dense weight ``(out, in)`` (entries outside the
    pattern are dropped). Differentiable; returns a new contiguous tensor."""
    b = pattern.block
    if tuple(weight.shape) != (pattern.out_features, pattern.in_features):
        raise ConfigError(
            f"weight shape {tuple(weight.shape)} does not match the pattern's "
            f"({pattern.out_features}, {pattern.in_features})"
        )
    p = pattern.to(weight.device)
    tiles = weight.reshape(p.nb_out, b, p.nb_in, b).transpose(1, 2)  # (nb_out, nb_in, b, b), a view
    return tiles[p.rows, p.cols].contiguous()


def blocks_to_dense(values: Tensor, pattern: BlockPattern) -> Tensor:
    """The dense weight ``(out, in)`` of stored tiles ``(nnzb, block, block)``: the tiles in place, zeros
    elsewhere (so it equals ``W * expand(mask)``). Differentiable: its gradient w.r.t. ``values`` is the
    dense gradient restricted to the stored tiles."""
    check_values(values, pattern)
    b = pattern.block
    p = pattern.to(values.device)
    tiles = values.new_zeros(p.nb_out, p.nb_in, b, b)
    tiles = tiles.index_put((p.rows, p.cols), values)  # out of place, so autograd sees it
    return tiles.transpose(1, 2).reshape(p.out_features, p.in_features)


def check_values(values: Tensor, pattern: BlockPattern) -> None:
    b = pattern.block
    if tuple(values.shape) != (pattern.nnzb, b, b):
        raise ConfigError(
            f"block values must have shape (nnzb, block, block) = ({pattern.nnzb}, {b}, {b}), "
            f"got {tuple(values.shape)}"
        )
