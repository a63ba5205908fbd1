"""Topology evolution and sparsity variation: the :class:`Sparsifier`, the one object the trainer talks to.

Per training step (the trainer's side)::

    loss.backward()                              # dense gradients in .grad (DDP-averaged)
    if sparsifier.is_update_step(step):
        stats = sparsifier.update(step)          # drop / grow / change density; uses the dense gradient
        # (optimizer step skipped here when topology.skip_step_on_update, as the official code)
    sparsifier.mask_grads_()                     # before clipping, so the norm is the sparse model's
    clip; optimizer.step(); sparsifier.after_step_()  # re-zeroes only without masked moments: see below

An update at step ``t`` (progress ``p = t / max_iters``), for each sparse matrix (layer index ``l``):

1. per-layer target nonzeros ``target = layer_nnz(shapes, target_sparsity(p), distribution)[name]``;
   ``surplus = n_active - target`` (positive when the global target rose, negative when it fell);
2. drop ``n_prune = max(floor(f * n_active), surplus)`` active weights with the smallest |w|, where
   ``f = drop_fraction(t)`` (cosine-annealed, 0 for ``growth="none"``);
3. grow ``n_grow = n_prune - surplus`` (so the layer ends with exactly ``target``) among the positions not
   kept in step 2: by largest |dense gradient| (``gradient``, RigL), uniformly at random (``random``, SET,
   and ``none``, where only a falling target grows), or ``floor(mix_gradient_fraction * n_grow)`` by gradient
   and the rest at random among the remaining candidates (``mixed``, our reading of the paper's "MG");
4. positions that switched on start at weight 0; positions that switched on *or* off get every optimizer
   slot (AdamW ``exp_avg``, ``exp_avg_sq``) zeroed. Gradients are re-masked with the new masks.

Choices (documented for the book's deviations page):

* **Just-dropped weights can be regrown** (RigL's and the official code's behaviour: growth candidates are
  the complement of the *kept* set). A weight dropped and regrown in the same update keeps its value and
  optimizer state (RigL's default ``reinit_when_same=False``): for it nothing changed. This is also what
  makes sparsity 0 exactly dense: everything dropped is regrown. ``stats["pruned"]``/``["grown"]`` are the
  nominal counts of steps 2-3; ``["switched_off"]``/``["switched_on"]`` the positions that really changed.
* **Optimizer moments are masked** (``topology.mask_optimizer_moments=True``; the constructor argument of
  the same name overrides the config). The official code only masks SGD momentum, so with AdamW a pruned weight's stale moments keep
  pushing it (the weight is re-zeroed after each step) and a regrown weight inherits them.
  ``mask_optimizer_moments=False`` reproduces that for the deviations ablation. With the moments zeroed and
  the gradients masked, AdamW leaves masked weights exactly 0 by itself (decoupled weight decay of 0 is 0),
  so :meth:`apply_` after the optimizer step changes nothing; it stays as a cheap guarantee.
* **Randomness** comes from ``torch.Generator`` objects on the parameter's device seeded by
  ``sha256(seed, tag, step, layer)`` (:func:`mstlib.masks.make_generator`), separate streams for the initial
  mask (``"init"``) and growth (``"grow"``). With identical (DDP-averaged) gradients every rank computes the
  same masks without communication. Drop and gradient growth use ``topk``, which is deterministic for equal
  inputs on the same kind of device.
* **Initial masks** are drawn at ``sparsity_in_force(0)`` (dense for MST, whose target starts at 0).

Implementation: an update handles the matrices in groups of the same shape (GPT-2's four block matrices,
each stacked over the blocks, and ``lm_head``) as the rows of ``[G, N]`` tensors, so its number of device
ops (and their host-side launch cost, most of a per-matrix loop's time on a GPU) does not grow with the
number of layers; only each layer's random numbers are drawn per layer, from that layer's generator, into
its row. The counts above stay per layer: layers of one shape may differ by a nonzero or two (largest
remainder rounding), which :func:`mstlib.masks.topk_rows` (a top-k with one ``k`` per row) handles exactly.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, NamedTuple, Optional

import torch
from torch import nn

from . import schedule as sched
from .config import RunConfig
from .errors import CheckpointError, MstError
from .masks import MaskSet, layer_nnz, make_generator, topk_rows

__all__ = ["Sparsifier"]


class _Plan(NamedTuple):
    """One matrix's counts for one update (host ints; see the module docstring's steps 1-3)."""

    n_active: int
    target: int
    n_prune: int
    n_grow: int
    n_keep: int  # n_active - n_prune: the active weights that survive the drop
    n_grad: int  # of n_grow, grown by |gradient|
    n_rand: int  # of n_grow, grown at random


def _same_shape_groups(masks: MaskSet) -> list[list[int]]:
    """Layer indices of the sparse matrices grouped by (shape, dtype, device), the groups in order of first
    appearance and each in layer order: GPT-2's four block matrices, each over all blocks, then lm_head
    (which joins ``mlp.c_fc`` if its shape happens to be the same, as in tiny test models)."""
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(masks.params):
        groups.setdefault((tuple(p.shape), p.dtype, p.device), []).append(i)
    return list(groups.values())


class Sparsifier:
    """Masks plus their evolution for one run. ``model`` may be wrapped in DDP and/or ``torch.compile``.

    Args:
        model: the GPT whose sparse matrices (``run_cfg.sparsity.sparse_set``) get masks; the initial masks
            are drawn and applied to the weights here.
        run_cfg: the validated run config (schedule, topology, sparsity, seed, max_iters).
        optimizer: the optimizer whose per-weight state is zeroed at changed positions; may be set later
            through the ``optimizer`` attribute (it must be set before the first update once it has state).
        mask_optimizer_moments: zero optimizer moments at pruned and grown positions (correct); False
            reproduces the official code's AdamW behaviour for the deviations ablation. None (default)
            reads ``run_cfg.topology.mask_optimizer_moments``.
    """

    def __init__(
        self,
        model: nn.Module,
        run_cfg: RunConfig,
        optimizer: Optional[torch.optim.Optimizer] = None,
        *,
        mask_optimizer_moments: Optional[bool] = None,
    ) -> None:
        self.run = run_cfg
        self.optimizer = optimizer
        if mask_optimizer_moments is None:
            mask_optimizer_moments = getattr(run_cfg.topology, "mask_optimizer_moments", True)
        self.mask_optimizer_moments = bool(mask_optimizer_moments)
        self.masks = MaskSet.from_config(model, run_cfg.sparsity)
        self.target = sched.sparsity_in_force(0, run_cfg)
        self.last_update_step: Optional[int] = None
        self.masks.init(self.target, run_cfg.seed, run_cfg.sparsity.init)
        self._groups = _same_shape_groups(self.masks)

    # -- the per-step interface ------------------------------------------------------------------------
    def is_update_step(self, step: int) -> bool:
        return sched.is_update_step(step, self.run)

    def apply_(self) -> None:
        """Zero the masked weights."""
        self.masks.apply_()

    def after_step_(self) -> None:
        """Call after every optimizer step: zero the masked weights where the optimizer may have moved them.
        With masked gradients and masked moments AdamW leaves them exactly 0 by itself (tested), so this is
        a no-op then and costs the hot path nothing; with the official behaviour (stale moments,
        ``mask_optimizer_moments=False``) it re-zeroes them."""
        if not self.mask_optimizer_moments:
            self.masks.apply_()

    def mask_grads_(self) -> None:
        """Zero the masked weights' gradients (call before clipping and the optimizer step)."""
        self.masks.mask_grads_()

    def density(self) -> float:
        """Current density over the sparse set (exact, from host counts)."""
        return self.masks.density()

    def nnz(self) -> int:
        return self.masks.nnz()

    # -- topology update ------------------------------------------------------------------------------
    @torch.no_grad()
    def update(self, step: int) -> dict[str, Any]:
        """Drop and grow in every sparse matrix at ``step`` (see the module docstring); needs the dense
        gradients in ``.grad`` when growth is ``gradient`` or ``mixed``. Returns statistics: ``step``,
        ``target_sparsity``, ``drop_fraction``, ``pruned``, ``grown``, ``switched_off``, ``switched_on``,
        ``nnz``, ``density`` and ``layers`` (the same per matrix plus ``target_nnz``).

        The matrices are processed in groups of the same shape (each block matrix stacked over the layers,
        ``lm_head`` alone), as rows of ``[G, N]`` tensors, so the number of device ops does not grow with
        the number of layers (only the random numbers are drawn per layer, from that layer's generator)."""
        run = self.run
        ms = self.masks
        p = sched.progress(step, run.train.max_iters)
        target_s = sched.target_sparsity(p, run.schedule)
        f = sched.drop_fraction(step, run)
        targets = layer_nnz(ms.shapes, target_s, ms.distribution)

        # 1. the per-matrix counts, on the host (layer order)
        plans: list[_Plan] = []
        for name, param in zip(ms.names, ms.params):
            n_active = ms.nnz_host[name]
            target = targets[name]
            surplus = n_active - target
            n_prune = min(max(math.floor(f * n_active), surplus), n_active)
            n_grow = n_prune - surplus
            n_grad, n_rand = self._split_growth(n_grow)
            if n_grad > 0 and param.grad is None:  # checked before anything changes
                raise MstError(
                    f"topology update at step {step} grows by gradient but {name} has no .grad: call "
                    "update() after backward() and before zero_grad()"
                )
            plans.append(_Plan(n_active, target, n_prune, n_grow, n_active - n_prune, n_grad, n_rand))

        # 2. drop and grow, one group of same-shape matrices at a time
        on_off: list[torch.Tensor] = []  # [G, 2] per group: switched on, switched on or off
        for layers in self._groups:
            on_off.append(self._update_group(step, layers, [plans[i] for i in layers]))
        for name, plan in zip(ms.names, plans):
            ms.nnz_host[name] = plan.target
        ms.mask_grads_()

        # 3. statistics, with one host sync for all layers
        rows: list[dict[str, Any]] = [
            {"name": name, "target_nnz": plan.target, "nnz": plan.target, "pruned": plan.n_prune,
             "grown": plan.n_grow}
            for name, plan in zip(ms.names, plans)
        ]
        counts = torch.cat(on_off).cpu().tolist() if on_off else []
        for i, (on, changed) in zip((i for layers in self._groups for i in layers), counts):
            rows[i]["switched_on"], rows[i]["switched_off"] = int(on), int(changed - on)
            rows[i]["density"] = rows[i]["nnz"] / math.prod(ms.shapes[rows[i]["name"]])
        self.target = target_s
        self.last_update_step = step
        return {
            "step": step,
            "target_sparsity": target_s,
            "drop_fraction": f,
            "pruned": sum(r["pruned"] for r in rows),
            "grown": sum(r["grown"] for r in rows),
            "switched_off": sum(r["switched_off"] for r in rows),
            "switched_on": sum(r["switched_on"] for r in rows),
            "nnz": ms.nnz(),
            "density": ms.density(),
            "layers": rows,
        }

    def _update_group(self, step: int, layers: list[int], plans: list[_Plan]) -> torch.Tensor:
        """Steps 2-4 of the module docstring for the same-shape matrices ``layers`` (layer indices, with
        their counts ``plans``), stacked as the rows of ``[G, N]`` tensors (``N`` weights per matrix): new
        masks written, born and switched-off weights zeroed, optimizer slots zeroed at born|died. Returns
        ``[G, 2]`` device counts: (switched on, switched on or off).
        """
        ms = self.masks
        params = [ms.params[i] for i in layers]
        masks = [ms.masks[ms.names[i]] for i in layers]
        shape, dev = params[0].shape, params[0].device
        G, N = len(layers), params[0].numel()
        old = torch.stack(masks).view(G, N) != 0

        # drop: keep the n_keep largest |w| among the active (inactive scored -1 < |w|)
        score = torch.stack(params).view(G, N).abs_().float()  # stack copies: abs_ leaves the weights alone
        new = topk_rows(score.masked_fill_(~old, -1.0), [pl.n_keep for pl in plans])
        del score

        # grow among the not-kept, i.e. ~new (just-dropped ones included, as RigL): by gradient first ...
        n_grad = [pl.n_grad for pl in plans]
        if max(n_grad) > 0:
            # a matrix without .grad grows nothing by gradient (checked in update), so its row is a dummy
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            gscore = torch.stack(grads).view(G, N).abs_().float().masked_fill_(new, -1.0)
            new |= topk_rows(gscore, n_grad)
            del gscore
        # ... then at random among what is left: row i draws exactly what random_topk_ draws for layer i
        n_rand = [pl.n_rand for pl in plans]
        if max(n_rand) > 0:
            rscore = torch.empty(G, N, device=dev)  # rows with k = 0 stay unset: topk_rows never reads them
            for row, (layer, k) in enumerate(zip(layers, n_rand)):
                if k > 0:
                    g = make_generator(self.run.seed, "grow", step, layer, dev)
                    torch.rand((N,), generator=g, device=dev, out=rscore[row])
            new |= topk_rows(rscore.masked_fill_(new, -1.0), n_rand)
            del rscore

        changed = new ^ old  # switched on or off
        on_off = torch.stack([(changed & new).sum(1), changed.sum(1)], dim=1)
        # one pass over the weights: only those active before and after keep their value; born ones start
        # at 0 (dense storage may hold stale values there), switched-off ones become 0
        torch._foreach_mul_(params, list((new & old).to(masks[0].dtype).view(G, *shape).unbind(0)))
        new_rows = new.to(masks[0].dtype).view(G, *shape).unbind(0)
        torch._foreach_copy_(masks, list(new_rows))
        if self.optimizer is not None and self.mask_optimizer_moments:
            keep = (~changed).to(params[0].dtype).view(G, *shape).unbind(0)  # 0 at born | died
            ms.zero_optimizer_state_(self.optimizer, keep={ms.names[i]: k for i, k in zip(layers, keep)})
        return on_off

    def _split_growth(self, n_grow: int) -> tuple[int, int]:
        """``(by gradient, at random)`` counts for ``n_grow`` new connections under the growth rule."""
        growth = self.run.topology.growth
        if n_grow <= 0:
            return 0, 0
        if growth == "gradient":
            return n_grow, 0
        if growth == "mixed":
            # the small epsilon keeps e.g. 0.7 * 10 (6.999...) from flooring to 6
            n_grad = min(n_grow, math.floor(n_grow * self.run.topology.mix_gradient_fraction + 1e-9))
            return n_grad, n_grow - n_grad
        return 0, n_grow  # "random" (SET) and "none" (only a falling target grows, at random)

    # -- checkpointing ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Masks (bool, CPU) and the schedule position; together with the model and optimizer this restores
        the run exactly (all randomness is derived from (seed, step, layer), so there is no RNG state)."""
        return {
            "version": 1,
            "masks": self.masks.state_dict(),
            "target_sparsity": self.target,
            "last_update_step": self.last_update_step,
            "mask_optimizer_moments": self.mask_optimizer_moments,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("version") != 1:
            raise CheckpointError(f"sparsifier state version {state.get('version')!r} is not 1: not an mstlib checkpoint?")
        self.masks.load_state_dict(state["masks"])
        self.target = float(state["target_sparsity"])
        self.last_update_step = state["last_update_step"]
