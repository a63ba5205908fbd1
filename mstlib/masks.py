"""Sparse weights over dense storage: which matrices are sparse, how many nonzeros each gets, and the masks.

* :func:`sparse_parameter_names` / :func:`sparse_shapes`: the sparse set, pure (no model needed).
  ``"all"`` (official): every Linear weight of every block (``attn.c_attn``, ``attn.c_proj``, ``mlp.c_fc``,
  ``mlp.c_proj``) and ``lm_head.weight``, which *is* the token embedding (tied: one tensor, so the embedding
  is sparse too). ``"blocks"``: only the blocks' Linear weights. The order is the official code's module
  traversal (block 0 .. L-1, then lm_head); the position in this list is the "layer index" that seeds a
  layer's random numbers, so it is the same for both sparse sets.
* :func:`layer_nnz`: exact integer nonzeros per matrix for a global sparsity. Their sum is exactly
  ``round((1 - s) * total)`` (Python's round, half to even). ER (official): density proportional to
  ``(n_in + n_out) / (n_in * n_out)``; a layer whose density would exceed 1 is made dense and the rest are
  rescaled, repeated until none exceeds (the official ``sparse_set`` loop). Uniform: the same density
  everywhere. Real-valued shares are turned into integers by largest remainder (ties: lower layer index),
  computed in exact rational arithmetic so every machine gets the same counts.
* :class:`MaskSet`: the masks of one model. Masks are stored as **0/1 tensors in the parameter's dtype** on the
  parameter's device, so masking weights and gradients is one fused ``torch._foreach_mul_`` over all matrices
  per call (no bool-to-float conversion per step). Booleans are made on demand (rare: updates, statistics,
  checkpoints; checkpoints store bool, 1 byte per weight).
* CLI ``python -m mstlib masks --preset paper --sparsity 0.9 --json``.
"""

from __future__ import annotations

import hashlib
import itertools
from fractions import Fraction
from typing import Any, Mapping, Optional, Sequence

import torch
from torch import nn

from .config import (
    Distribution,
    MaskInit,
    ModelConfig,
    RunConfig,
    SparseSet,
    SparsityConfig,
)
from .errors import CheckpointError, ConfigError

__all__ = [
    "sparse_parameter_names",
    "sparse_shapes",
    "layer_nnz",
    "layer_table",
    "derive_seed",
    "make_generator",
    "unwrap_model",
    "MaskSet",
]

#: Linear weights of one block, in module order (qkv, attention projection, MLP up, MLP down).
BLOCK_MATRICES = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


# ----------------------------------------------------------------------------- the sparse set (pure)


def sparse_parameter_names(model_cfg: ModelConfig, sparse_set: SparseSet = "all") -> list[str]:
    """Names (as in ``model.named_parameters()`` / ``get_parameter``) of the sparse matrices, in layer-index
    order; the tied embedding/output matrix is named ``"lm_head.weight"``."""
    if sparse_set not in ("all", "blocks"):
        raise ConfigError(f"sparsity.sparse_set={sparse_set!r} is not one of ['all', 'blocks']")
    names = [f"transformer.h.{i}.{m}.weight" for i in range(model_cfg.n_layer) for m in BLOCK_MATRICES]
    if sparse_set == "all":
        names.append("lm_head.weight")
    return names


def sparse_shapes(model_cfg: ModelConfig, sparse_set: SparseSet = "all") -> dict[str, tuple[int, int]]:
    """``{name: (out_features, in_features)}`` (the weight's shape) for every sparse matrix, in order."""
    d, v = model_cfg.n_embd, model_cfg.vocab_size
    by_suffix = {
        "attn.c_attn.weight": (3 * d, d),
        "attn.c_proj.weight": (d, d),
        "mlp.c_fc.weight": (4 * d, d),
        "mlp.c_proj.weight": (d, 4 * d),
    }
    out: dict[str, tuple[int, int]] = {}
    for name in sparse_parameter_names(model_cfg, sparse_set):
        if name == "lm_head.weight":
            out[name] = (v, d)
        else:
            out[name] = by_suffix[name.split(".", 3)[3]]
    return out


def _largest_remainder(shares: list[Fraction], total: int, caps: list[int]) -> list[int]:
    """Integers ``n_i`` with ``sum n_i == total``, ``floor(share_i) <= n_i <= ceil(share_i)``, ``n_i <= cap_i``:
    floors first, then +1 to the largest fractional parts (ties to the lower index)."""
    floors = [int(s) for s in shares]  # shares are >= 0, so int() is floor
    left = total - sum(floors)
    order = sorted(range(len(shares)), key=lambda i: (-(shares[i] - floors[i]), i))
    for i in order:
        if left <= 0:
            break
        if floors[i] < caps[i] and shares[i] != floors[i]:
            floors[i] += 1
            left -= 1
    if left != 0:  # only possible through a bug: the shares must sum to ``total``
        raise AssertionError(f"largest-remainder rounding left {left} nonzeros unassigned")
    return floors


def layer_nnz(
    shapes: Mapping[str, tuple[int, int]], sparsity: float, distribution: Distribution = "er"
) -> dict[str, int]:
    """Exact nonzeros per matrix at global ``sparsity`` over the matrices in ``shapes`` (pure Python).

    The counts sum to ``round((1 - sparsity) * total)`` exactly and never exceed a matrix's size.
    ``distribution="er"``: density of layer l is ``eps * (n_in + n_out) / (n_in * n_out)``, with layers whose
    density would exceed 1 made dense and ``eps`` recomputed for the rest until none exceeds.
    ``"uniform"``: density ``1 - sparsity`` everywhere (up to rounding).
    """
    if not 0.0 <= sparsity < 1.0:
        raise ConfigError(f"sparsity must be in [0, 1), got {sparsity}")
    names = list(shapes)
    if not names:
        return {}
    sizes = [shapes[n][0] * shapes[n][1] for n in names]
    total = sum(sizes)
    target = round((1 - Fraction(sparsity)) * total)
    if distribution == "uniform":
        density = Fraction(target, total)
        shares = [density * n for n in sizes]
    elif distribution == "er":
        raw = [Fraction(shapes[n][0] + shapes[n][1], sizes[i]) for i, n in enumerate(names)]
        dense: set[int] = set()
        while True:
            rest = [i for i in range(len(names)) if i not in dense]
            if not rest:
                break
            budget = target - sum(sizes[i] for i in dense)
            eps = Fraction(budget) / sum(raw[i] * sizes[i] for i in rest)
            # capping one layer frees nonzeros for the others, so eps only grows: capping every layer
            # that exceeds 1 at once reaches the same fixed point as the official one-at-a-time loop
            over = {i for i in rest if eps * raw[i] > 1}
            if not over:
                break
            dense |= over
        shares = [Fraction(sizes[i]) if i in dense else eps * raw[i] * sizes[i] for i in range(len(names))]
    else:
        raise ConfigError(f"sparsity.distribution={distribution!r} is not one of ['er', 'uniform']")
    counts = _largest_remainder(shares, target, sizes)
    return dict(zip(names, counts))


def layer_table(model_cfg: ModelConfig, sparsity: float, sparse_cfg: SparsityConfig) -> list[dict[str, Any]]:
    """One row per sparse matrix: name, shape, nnz, density (what ``python -m mstlib masks`` prints)."""
    shapes = sparse_shapes(model_cfg, sparse_cfg.sparse_set)
    nnz = layer_nnz(shapes, sparsity, sparse_cfg.distribution)
    return [
        {"name": n, "shape": list(shapes[n]), "nnz": nnz[n], "density": nnz[n] / (shapes[n][0] * shapes[n][1])}
        for n in shapes
    ]


# ------------------------------------------------------------------------------------ randomness


def derive_seed(seed: int, tag: str, step: int, layer: int) -> int:
    """A 63-bit seed that depends only on ``(seed, tag, step, layer)`` (sha256, so stable across Python
    versions and processes, unlike ``hash``). ``tag`` separates streams ("init", "grow")."""
    digest = hashlib.sha256(f"mstlib|{seed}|{tag}|{step}|{layer}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def make_generator(seed: int, tag: str, step: int, layer: int, device: torch.device) -> torch.Generator:
    """A fresh ``torch.Generator`` on ``device`` seeded by :func:`derive_seed`: every DDP rank that calls this
    with the same arguments draws the same numbers, with no communication and without touching the global
    RNG (so an ablation with random growth does not shift the data stream)."""
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(seed, tag, step, layer))
    return g


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain GPT inside DDP (``.module``) and/or ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod  # type: ignore[assignment]
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def random_topk_(mask_flat: torch.Tensor, candidates: torch.Tensor, k: int, g: torch.Generator) -> None:
    """Switch on ``k`` positions chosen uniformly at random among ``candidates`` (bool, flat), in place in the
    bool ``mask_flat``: uniform scores, non-candidates scored -1, top k."""
    if k <= 0:
        return
    scores = torch.rand(candidates.shape, generator=g, device=candidates.device)
    scores.masked_fill_(~candidates, -1.0)
    idx = torch.topk(scores, k, sorted=False).indices
    mask_flat[idx] = True


def topk_rows(scores: torch.Tensor, ks: Sequence[int]) -> torch.Tensor:
    """Exact top-k per row with a different ``k`` per row, as a bool mask.

    ``scores``: ``[G, N]`` floating; ``ks``: ``G`` host ints in ``[0, N]``. Returns a ``[G, N]`` bool tensor
    whose row ``i`` is true at the ``ks[i]`` largest entries of ``scores[i]`` (exactly ``ks[i]`` of them).

    One ``topk`` per maximal run of consecutive rows with the same ``k`` (a view of those rows, no copy),
    instead of one per row. The topology update's counts for the matrices of one shape come in a few such
    runs whatever the number of layers (largest-remainder rounding gives its extra nonzeros to the lowest
    layer indices, so the counts change value only a couple of times along the layers: at most three runs
    over the whole MST schedules of the mini and paper presets); any ``ks`` is still exact, in at worst one
    call per row. A row's result is what ``topk`` of that row alone
    gives, on the CPU even where scores tie at the cut-off (its kernel treats the rows one by one), and it
    is deterministic: same inputs, same kind of device, same mask.
    """
    if scores.dim() != 2 or len(ks) != scores.shape[0]:
        raise ValueError(f"topk_rows: scores {tuple(scores.shape)} need one k per row, got {len(ks)}")
    n = scores.shape[1]
    if any(not 0 <= k <= n for k in ks):
        raise ValueError(f"topk_rows: every k must be in [0, {n}], got {list(ks)}")
    out = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    start = 0
    for k, run in itertools.groupby(ks):
        stop = start + len(list(run))
        if k > 0:
            idx = torch.topk(scores[start:stop], k, dim=1, sorted=False).indices  # [stop - start, k]
            out[start:stop].scatter_(1, idx, True)
        start = stop
    return out


# ------------------------------------------------------------------------------------------ masks


class MaskSet:
    """The masks of the sparse matrices of one GPT (see the module docstring for the storage choice).

    ``masks[name]`` is a 0/1 tensor shaped and typed like the parameter, on its device. ``nnz_host[name]`` is
    the exact nonzero count kept on the host, so the hot path never synchronises with the GPU.
    """

    def __init__(
        self,
        model: nn.Module,
        sparse_set: SparseSet | SparsityConfig | RunConfig = "all",
        distribution: Distribution = "er",
    ) -> None:
        """``MaskSet(model, "all", "er")``, or ``MaskSet(model, run_cfg)`` / ``MaskSet(model, run_cfg.sparsity)``.
        Masks start all ones (dense); :meth:`init` draws sparse ones."""
        if isinstance(sparse_set, RunConfig):
            sparse_set = sparse_set.sparsity
        if isinstance(sparse_set, SparsityConfig):
            sparse_set, distribution = sparse_set.sparse_set, sparse_set.distribution
        self.model = unwrap_model(model)
        cfg: ModelConfig = self.model.config  # type: ignore[assignment]
        self.sparse_set = sparse_set
        self.distribution = distribution
        self.names = sparse_parameter_names(cfg, sparse_set)
        self.shapes = sparse_shapes(cfg, sparse_set)
        self.params: list[torch.nn.Parameter] = [self.model.get_parameter(n) for n in self.names]
        for n, p in zip(self.names, self.params):
            if tuple(p.shape) != self.shapes[n]:
                raise ConfigError(f"{n} has shape {tuple(p.shape)}, expected {self.shapes[n]}: not an mstlib GPT?")
        self.masks: dict[str, torch.Tensor] = {
            n: torch.ones_like(p, memory_format=torch.contiguous_format) for n, p in zip(self.names, self.params)
        }
        self.nnz_host: dict[str, int] = {n: p.numel() for n, p in zip(self.names, self.params)}
        self._mask_list = [self.masks[n] for n in self.names]

    @classmethod
    def from_config(cls, model: nn.Module, sparse_cfg: SparsityConfig) -> "MaskSet":
        return cls(model, sparse_cfg.sparse_set, sparse_cfg.distribution)

    # -- setting masks ---------------------------------------------------------------------------
    def set_mask(self, name: str, mask: torch.Tensor) -> None:
        """Replace one mask from a bool (or 0/1) tensor; updates the host nonzero count (one sync)."""
        m = self.masks[name]
        m.copy_(mask.reshape(m.shape).to(device=m.device, dtype=m.dtype))
        self.nnz_host[name] = int(torch.count_nonzero(m).item())

    @torch.no_grad()
    def init(self, sparsity: float, seed: int = 0, method: MaskInit = "random") -> dict[str, int]:
        """Draw the initial masks at global ``sparsity`` with exact per-layer counts (:func:`layer_nnz`) and
        zero the masked weights. ``random``: a uniformly random subset per layer from the generator
        ``(seed, "init", step -1, layer)``; ``magnitude``: the largest |w|. Returns the counts."""
        targets = layer_nnz(self.shapes, sparsity, self.distribution)
        for layer, (name, p) in enumerate(zip(self.names, self.params)):
            k = targets[name]
            flat = torch.zeros(p.numel(), dtype=torch.bool, device=p.device)
            if k == p.numel():
                flat.fill_(True)
            elif method == "random":
                g = make_generator(seed, "init", -1, layer, p.device)
                random_topk_(flat, torch.ones_like(flat), k, g)
            elif method == "magnitude":
                if k > 0:
                    flat[torch.topk(p.detach().abs().flatten(), k, sorted=False).indices] = True
            else:
                raise ConfigError(f"sparsity.init={method!r} is not one of ['random', 'magnitude']")
            self.masks[name].copy_(flat.view(p.shape))
            self.nnz_host[name] = k
        self.apply_()
        return targets

    # -- the hot path ----------------------------------------------------------------------------
    @torch.no_grad()
    def apply_(self) -> None:
        """Zero the masked weights: one fused ``_foreach_mul_`` over all sparse matrices."""
        torch._foreach_mul_(self.params, self._mask_list)

    @torch.no_grad()
    def mask_grads_(self) -> None:
        """Zero the gradients of masked weights (one fused call); matrices without a gradient are skipped."""
        pairs = [(p.grad, m) for p, m in zip(self.params, self._mask_list) if p.grad is not None]
        if pairs:
            grads, masks = zip(*pairs)
            torch._foreach_mul_(list(grads), list(masks))

    @torch.no_grad()
    def zero_optimizer_state_(
        self,
        optimizer: torch.optim.Optimizer,
        where: Optional[Mapping[str, torch.Tensor]] = None,
        *,
        keep: Optional[Mapping[str, torch.Tensor]] = None,
    ) -> None:
        """Zero every per-weight optimizer slot (AdamW ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``; SGD
        ``momentum_buffer``) at the positions ``where[name]`` (bool, parameter-shaped) is true.

        ``keep`` is the fast form for the topology update: ``keep[name]`` is 0/1 in the parameter's dtype,
        parameter-shaped, 0 where the slots are zeroed; every slot of every listed matrix is multiplied by
        it in one fused ``_foreach_mul_`` (a non-finite moment times 0 stays NaN, where ``where`` writes 0;
        AdamW moments of a trained model are finite)."""
        by_name = dict(zip(self.names, self.params))

        def slots(name: str, like: torch.Tensor) -> list[torch.Tensor]:
            """The state tensors of matrix ``name`` shaped like ``like`` (not e.g. AdamW's scalar ``step``)."""
            param = by_name[name] if name in by_name else self.model.get_parameter(name)
            state = optimizer.state.get(param)
            if not state:
                return []
            return [buf for buf in state.values() if torch.is_tensor(buf) and buf.shape == like.shape]

        for name, sel in (where or {}).items():
            for buf in slots(name, sel):
                buf.masked_fill_(sel, 0)
        pairs = [(buf, factor) for name, factor in (keep or {}).items() for buf in slots(name, factor)]
        if pairs:
            bufs, factors = zip(*pairs)
            torch._foreach_mul_(list(bufs), list(factors))

    # -- statistics --------------------------------------------------------------------------------
    def bool_mask(self, name: str) -> torch.Tensor:
        return self.masks[name] != 0

    def nnz(self) -> int:
        """Total active weights over the sparse set (host count, no sync)."""
        return sum(self.nnz_host.values())

    def numel(self) -> int:
        return sum(p.numel() for p in self.params)

    def density(self) -> float:
        return self.nnz() / self.numel()

    def per_layer(self) -> list[dict[str, Any]]:
        """One row per matrix: name, shape, nnz, density (host counts)."""
        return [
            {
                "name": n,
                "shape": list(self.shapes[n]),
                "nnz": self.nnz_host[n],
                "density": self.nnz_host[n] / (self.shapes[n][0] * self.shapes[n][1]),
            }
            for n in self.names
        ]

    # -- checkpointing -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Bool masks on the CPU (1 byte per weight) plus the sparse-set description."""
        return {
            "sparse_set": self.sparse_set,
            "distribution": self.distribution,
            "names": list(self.names),
            "masks": {n: self.bool_mask(n).cpu() for n in self.names},
        }

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore masks exactly (and re-apply them to the weights); a mismatch is a CheckpointError."""
        if list(state.get("names", [])) != self.names:
            raise CheckpointError(
                f"mask checkpoint is for sparse set {state.get('sparse_set')!r} with {len(state.get('names', []))} "
                f"matrices; this run has {self.sparse_set!r} with {len(self.names)}: check sparsity.sparse_set"
            )
        for n in self.names:
            m = state["masks"][n]
            if tuple(m.shape) != self.shapes[n]:
                raise CheckpointError(f"mask {n} has shape {tuple(m.shape)}, the model's is {self.shapes[n]}")
            self.set_mask(n, m)
        self.apply_()
