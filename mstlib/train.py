"""Train one run: nanoGPT's loop plus masks, sparsity variation, hybrid sparse attention, exact resume.

One optimizer step, in order (``step`` counts optimizer steps from 0 to ``train.max_iters - 1``)::

    lr <- schedule.lr_at(step)                   warm-up + cosine (nanoGPT)
    attention pattern on/off                     schedule.attention_active(step) (HSA window)
    grad_accum micro-steps: forward, loss / grad_accum, backward
    finite-loss check                            a NaN/inf loss stops the run before the optimizer step
    topology update (update steps only)          Sparsifier.update(step), with the DENSE gradients
    mask gradients, clip to train.grad_clip
    optimizer step                               skipped on update steps when topology.skip_step_on_update
    re-apply masks                               masked weights stay exactly zero

Data: nanoGPT's random windows, drawn from a numpy generator seeded by ``(seed, split, step, micro-step)``
where the micro-step index is global over the DDP ranks. So the data position *is* the step (resume needs
no sampler state), and a DDP run sees exactly the sequences a one-process run with the same global batch
sees (each rank takes its own share of the micro-steps). Other random streams are separate: model init
(``torch.manual_seed(seed)`` right before building the model), mask initialisation and growth (owned by
:mod:`mstlib.topology`, seeded from ``(seed, step, layer)``).

Precision: bf16 autocast on CUDA, float32 on CPU (``train.dtype="auto"``). ``torch.compile`` on CUDA when
``train.compile`` (never on CPU, where it costs minutes for a seconds-long run). AdamW is fused on CUDA,
with weight decay on matrices and embeddings (dim >= 2) only.

CUDA graphs (``train.compile="reduce-overhead"``, one GPU): each micro-step starts a new CUDA-graph
iteration, whose replay reuses the previous iteration's output memory. Two things must then not alias that
memory. First, the logged loss is copied out of it. Second, the gradients: autograd would adopt the first
micro-step's gradient tensors (graph memory) as ``.grad``, and the next replay would overwrite them. This is
PyTorch's silent gradient-accumulation hazard with CUDA-graph trees (pytorch/pytorch#169545). So the
gradients are allocated once, before the first step, and are zeroed rather than freed after each step.
Autograd then adds every micro-step's gradient into memory of its own.

Output: the run folder of :class:`mstlib.results.RunStore` (config, provenance, ``log.csv`` with one row
per step, ``metrics.json``, ``done``) and ``checkpoints/<results>/<run_id>/ckpt.pt`` (written atomically every
``train.checkpoint_interval`` steps, at ``stop_after`` and at the end, with its sha256 inside: see
:mod:`mstlib.checkpoint`). A checkpoint holds model, optimizer, Sparsifier, step, every RNG stream, attention
state and the log position, so N steps straight equal N/2 steps + checkpoint + a fresh process + N/2 steps,
bitwise on CPU.

One writer per run: training holds the run's lock (:meth:`mstlib.results.RunStore.lock`), so a second
trainer of the same run id refuses at once, naming the first one's PID. Retraining a done run from scratch
(``resume=False``) trains beside it (:meth:`~mstlib.results.RunStore.retrain_store`) and swaps the new
result in only when it is done: stopped or killed before, the finished result is as it was.

Finite-loss guard: on CPU the summed micro-step loss and the gradient norm are checked before every
optimizer step, so a NaN or inf never reaches the weights. On CUDA a per-step check would synchronise the
GPU every step (as would the fused AdamW's ``found_inf`` skip, an extra kernel per step that a plain
nanoGPT loop does not pay), so there losses and norms are checked once per log window (every
``train.log_interval`` steps, the window's one sync), on topology-update steps, and always before a
checkpoint is written. Either way a NaN or inf never reaches a checkpoint or the stored results, and the run
stops with :class:`~mstlib.errors.TrainingError` naming the step and the last good checkpoint. The weights
and optimizer state are checked finite before every checkpoint, validation losses where they are measured,
and both final losses before the run is marked done (a finite loss does not prove finite weights: an
absurd learning rate can overflow the weights in the step after the last loss was measured).

DDP: launch with ``torchrun --standalone --nproc_per_node=N -m mstlib train ...``. ``train.grad_accum`` is
the global number of micro-steps (nanoGPT's convention), divided among the ranks; the global batch is the
one-GPU run's. Rank 0 writes results and checkpoints.
"""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

import torch
import torch.distributed as dist

from . import schedule
from . import train_steps as steps
from .checkpoint import load_checkpoint, load_model
from .config import RunConfig
from .errors import ConfigError, RunLockedError, TrainingError
from .results import RunResult, RunStore
from .runlock import RunLock
from .training import (LOG_COLUMNS, SPEED_WARMUP_WINDOWS, TIMING_COLUMNS, Batches, Dist, build_model,
                       build_optimizer, mean_over_ranks, nonfinite_msg, open_split, progress_bar,
                       resolve_device, setup_distributed)

#: what other modules and the notebooks read from here (the parts themselves live in :mod:`mstlib.training`)
__all__ = ["train", "ensure", "load_model", "load_checkpoint", "resolve_device", "Batches", "Dist", "LOG_COLUMNS",
           "TIMING_COLUMNS", "SPEED_WARMUP_WINDOWS", "build_model", "build_optimizer", "open_split"]


def train(
    run: RunConfig,
    store: RunStore | None = None,
    device: str | torch.device = "auto",
    resume: bool = True,
    stop_after: int | None = None,
    progress: bool = True,
) -> RunResult:
    """Train ``run`` into ``store`` (default ``RunStore("results")``) and return its result.

    A done run is returned as stored, without training. With ``resume`` an existing checkpoint is
    continued; without, training starts from scratch (a done run keeps its stored result until the new one
    is done, then the new one replaces it). ``stop_after``: stop after this many steps in total (>= 1; a
    checkpoint is written there; the result has ``done=False``), used to test resumption.

    Raises RunLockedError at once when another process is training the same run.

    Training on CUDA allows TF32 for float32 matrix products (as nanoGPT); the process's setting is restored
    on return, so code run after training (a test, a notebook's float32 check) computes as before.
    """
    run = run.validate()
    if stop_after is not None and (isinstance(stop_after, bool) or not isinstance(stop_after, int) or stop_after < 1):
        raise ConfigError(f"stop_after (--stop-after) must be a number of steps >= 1, got {stop_after!r}")
    store = store or RunStore()
    if store.is_done(run) and resume:
        return store.load(run)
    dd, dev = setup_distributed(device)
    precision = torch.get_float32_matmul_precision()
    lock = store.lock(run)
    try:
        _lock_run(lock, dd, dev)
        if store.is_done(run) and resume:  # finished by the holder we would have refused a moment ago
            return store.load(run)
        if store.is_done(run):
            return _retrain(run, store, dd, dev, stop_after, progress)
        return _train(run, store, dd, dev, resume, stop_after, progress)
    finally:
        lock.release()
        torch.set_float32_matmul_precision(precision)
        if dd.owns_group:
            dist.destroy_process_group()


def _lock_run(lock: RunLock, dd: Dist, dev: torch.device) -> None:
    """Rank 0 takes the run's lock; under DDP every rank learns whether it did, so all stop together."""
    refused: RunLockedError | None = None
    if dd.is_main:
        try:
            lock.acquire()
        except RunLockedError as e:
            refused = e
    if dd.enabled:
        flag = torch.tensor([float(refused is not None)], device=dev if dev.type == "cuda" else "cpu")
        dist.all_reduce(flag)
        if flag.item() and refused is None:
            raise RunLockedError(f"{lock.what}: rank 0 found it being trained by another process (see rank 0)")
    if refused is not None:
        raise refused


def _retrain(run: RunConfig, store: RunStore, dd: Dist, dev: torch.device, stop_after: int | None,
             progress: bool) -> RunResult:
    """Train the done ``run`` again from scratch beside its stored result, which the new one replaces only
    once it is done; stopped before that (``stop_after``, a kill), the stored result is untouched."""
    staged = store.retrain_store(run)
    if dd.is_main:
        staged.discard()
    if dd.enabled:
        dist.barrier()
    result = _train(run, staged, dd, dev, False, stop_after, progress)
    if not result.done:
        return result
    if dd.is_main:
        store.adopt(run, staged)
    if dd.enabled:
        dist.barrier()
    return store.load(run)


def _train(run: RunConfig, store: RunStore, dd: Dist, dev: torch.device, resume: bool,
           stop_after: int | None, progress: bool) -> RunResult:
    """The loop, as nanoGPT has it: one optimizer step per iteration (the module docstring lists its order)."""
    tc = run.train
    if tc.grad_accum % dd.world_size:
        raise ConfigError(
            f"train.grad_accum={tc.grad_accum} (global micro-steps per step) is not divisible by the "
            f"{dd.world_size} DDP processes; choose a multiple of {dd.world_size}"
        )
    accum = tc.grad_accum // dd.world_size
    end = tc.max_iters if stop_after is None else min(stop_after, tc.max_iters)
    s = steps.begin(run, store, dd, dev, resume)
    bar = progress_bar(run, s.start, progress and dd.is_main)
    s.model.train()
    pending: list[dict[str, Any]] = []
    final_val: float | None = None
    s.t_window = time.perf_counter()
    nxt: tuple[torch.Tensor, torch.Tensor] | None = None  # the micro-batch read ahead
    for step in range(s.start, end):
        lr = schedule.lr_at(step, tc)
        for group in s.optimizer.param_groups:
            group["lr"] = lr
        want_attn = schedule.attention_active(step, run)
        if want_attn != s.attn_on:
            steps.set_attention(s, want_attn)

        loss_sum, nxt = steps.forward_backward(s, step, accum, end, nxt)
        is_update = s.sparsifier is not None and s.sparsifier.is_update_step(step)
        if s.check_each_step or is_update:
            value = mean_over_ranks(loss_sum, dd).item()
            if not math.isfinite(value):
                raise TrainingError(nonfinite_msg(step, "the training loss", value, s.last_good, run))
        grad_norm = steps.optimizer_step(s, step, is_update)
        pending.append({
            "step": step, "loss": loss_sum, "lr": lr, "grad_norm": grad_norm, "density": s.density,
            "phase": schedule.phase_at(schedule.progress(step, tc.max_iters), run.schedule).name,
            "attn_density": s.attn_density_on if s.attn_on else 1.0, "update": int(is_update),
            "tokens": (step + 1) * run.tokens_per_step(), "flops": float(s.cum_flops[step]),
        })

        # -- log point: one GPU sync per window ----------------------------------------------------
        last = step == end - 1
        do_eval = (tc.eval_interval > 0 and (step + 1) % tc.eval_interval == 0) or step == tc.max_iters - 1
        do_ckpt = (tc.checkpoint_interval > 0 and (step + 1) % tc.checkpoint_interval == 0) or last
        if (step + 1) % tc.log_interval == 0 or last or do_eval or do_ckpt:
            final_val = steps.log_window(s, pending, step, do_eval, bar, final_val)
            pending = []
            if do_ckpt:
                steps.save(s, step + 1)
            s.t_window = time.perf_counter()  # evaluation and checkpoints are not training time
    if bar is not None:
        bar.close()

    if end < tc.max_iters:  # interrupted on purpose (stop_after)
        if dd.enabled:
            dist.barrier()
        return store.load(run)
    return steps.finish(s, final_val)



# ---------------------------------------------------------------------------------------------------


def ensure(store: RunStore, runs: Sequence[RunConfig], device: str = "auto", progress: bool = True,
           **train_kwargs: Any) -> list[RunResult]:
    """Results of ``runs`` in order: stored ones are read from ``store``, missing ones trained here, one
    after the other, in this process (meant for the smoke preset in notebooks; use ``python -m mstlib sweep``
    for real runs on GPUs)."""
    return [store.load(run) if store.is_done(run) else
            train(run, store, device=device, progress=progress, **train_kwargs) for run in runs]
