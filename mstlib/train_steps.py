"""The named steps of a training session, in the order :func:`mstlib.train._train` takes them: ``begin``
(model, optimizer, masks, the checkpoint resumed, results folder and log, compile and DDP, data, FLOPs),
then per step ``set_attention``, ``forward_backward``, ``optimizer_step``, at log points ``log_window`` and
``save`` (a checkpoint), and ``finish``. They share a :class:`Session`, passed along explicitly."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from . import provenance, schedule
from .attention.backends import build_attention, resolve_backend
from .checkpoint import load_checkpoint, retrain_advice, rng_state, save_checkpoint, set_rng_state
from .config import RunConfig
from .errors import CheckpointError, ConfigError, TrainingError
from .model import GPT, load_state_dict_checked
from .results import LOG, RunResult, RunStore
from .training import (SPEED_WARMUP_WINDOWS, TRAIN_EVAL_STREAM, TRAIN_STREAM, VAL_STREAM, Batches, Dist, RunLog,
                       attention_density, autocast_dtype, build_model, build_optimizer, build_sparsifier,
                       check_every_step, estimate_loss, flops_per_step, mean_over_ranks, nonfinite_msg,
                       nonfinite_state, open_split, peak_memory)


@dataclass
class Session:
    """What the steps of one training session share (passed along, where closures once shared ``nonlocal``
    state). Built by :func:`_begin`; ``start`` is the first step this session trains."""

    run: RunConfig
    store: RunStore
    dd: Dist
    dev: torch.device
    model: GPT
    optimizer: torch.optim.AdamW
    sparsifier: Any
    start: int
    saved: dict[str, Any]  # the checkpoint's bookkeeping (empty for a fresh run)
    prov: dict[str, Any] = field(default_factory=dict)
    log: RunLog | None = None
    ctx: Any = None  # autocast, or no context
    amp: torch.dtype | None = None
    compiled: bool = False
    graphs: bool = False  # CUDA graphs (train.compile="reduce-overhead")
    fwd: nn.Module | None = None  # the (compiled) model that evaluates
    ddp_model: nn.Module | None = None  # the (DDP-wrapped) model that trains
    check_each_step: bool = True
    train_batches: Batches | None = None
    val_batches: Batches | None = None
    train_eval_batches: Batches | None = None
    cum_flops: np.ndarray | None = None
    flop_totals: dict[str, Any] = field(default_factory=dict)
    attn_density_on: float = 1.0
    attn_fn: Any = None  # built on first use
    attn_on: bool = False
    density: float = 1.0
    speed_windows: list[float] = field(default_factory=list)  # after warm-up
    all_windows: list[float] = field(default_factory=list)  # the fallback for very short runs
    train_time: float = 0.0
    wall_before: float = 0.0
    t_session: float = 0.0
    windows_this_session: int = 0
    last_good: Path | None = None
    t_window: float = 0.0


def begin(run: RunConfig, store: RunStore, dd: Dist, dev: torch.device, resume: bool) -> Session:
    """Model, optimizer and masks (seeded: the same on every rank), the checkpoint resumed, the results
    folder and log opened, the model compiled and wrapped, data and FLOP schedules ready."""
    model = build_model(run, dev)
    optimizer = build_optimizer(model, run, dev)
    sparsifier = build_sparsifier(model, run, optimizer)
    start, saved = resume_checkpoint(run, store, model, optimizer, sparsifier, resume)
    s = Session(run, store, dd, dev, model, optimizer, sparsifier, start, saved)
    open_results(s)
    compile_model(s)
    # On CPU every check is free. On CUDA a check is a sync that stalls the GPU queue, so losses and norms
    # are checked once per log window, before anything is written: a NaN stops the run there, and the
    # checkpoint (written only after the check) stays the last good one.
    s.check_each_step = check_every_step(dev)

    T, B = run.model.block_size, run.train.batch_size
    s.train_batches = Batches(open_split(run, "train"), T, B, run.seed, TRAIN_STREAM, dev)
    s.val_batches = Batches(open_split(run, "val"), T, B, run.seed, VAL_STREAM, dev)
    s.train_eval_batches = Batches(s.train_batches.tokens, T, B, run.seed, TRAIN_EVAL_STREAM, dev)

    step_flops, s.flop_totals = flops_per_step(run, dd.world_size)
    s.cum_flops = np.cumsum(step_flops)
    s.attn_density_on = attention_density(run, True)
    s.density = sparsifier.density() if sparsifier is not None else 1.0
    set_attention(s, schedule.attention_active(start, run))

    s.speed_windows = list(saved.get("speed_windows", []))
    s.all_windows = list(saved.get("all_windows", []))
    s.train_time = float(saved.get("train_time_s", 0.0))
    s.wall_before = float(saved.get("wall_time_s", 0.0))
    s.t_session = time.perf_counter()
    s.last_good = store.checkpoint_path(run) if start > 0 else None
    return s


def resume_checkpoint(run: RunConfig, store: RunStore, model: GPT, optimizer: torch.optim.Optimizer, sparsifier: Any,
            resume: bool) -> tuple[int, dict[str, Any]]:
    """Continue from the run's checkpoint, if any: weights, optimizer, masks and RNG streams restored.
    Returns the step to start from and the checkpoint's bookkeeping (``{}`` for a fresh run)."""
    ckpt_path, run_dir = store.checkpoint_path(run), store.run_dir(run)
    if not (resume and ckpt_path.is_file()):
        return 0, {}
    # load_state_dict copies to the device (RNG states stay on CPU)
    ckpt = load_checkpoint(ckpt_path, "cpu", retrain_advice(store, run_dir))
    if ckpt.get("config") != run.to_dict():
        raise CheckpointError(
            f"{ckpt_path} belongs to another config (run {ckpt.get('run_id')}); delete it or "
            + retrain_advice(store, run_dir)
        )
    load_state_dict_checked(model, ckpt["model"], str(ckpt_path))
    optimizer.load_state_dict(ckpt["optimizer"])
    if sparsifier is not None:
        sparsifier.load_state_dict(ckpt["sparsifier"])
    set_rng_state(ckpt["rng"])
    return int(ckpt["step"]), ckpt.get("state", {})  # the optimizer holds its own copy of the loaded tensors


def open_results(s: Session) -> None:
    """Provenance with this session appended, the results folder begun and the log opened (rank 0)."""
    run, dev, dd = s.run, s.dev, s.dd
    s.prov = dict(s.saved.get("provenance") or provenance.collect(run.seed, dev, dd.world_size))
    sessions = list(s.prov.get("sessions", []))
    session = {"start_step": s.start, "start_utc": provenance.utc_now(), "device": str(dev),
               "device_name": provenance.device_name(dev), "world_size": dd.world_size}
    if run.attention.pattern != "dense":  # what "auto" became on this device (it depends on it)
        session["attention_backend"] = resolve_backend(run.attention.backend, dev, run.attention.pattern)
    sessions.append(session)
    s.prov["sessions"] = sessions
    if dd.is_main:
        s.store.begin(run, s.prov, fresh=s.start == 0)
        s.log = RunLog(s.store.run_dir(run) / LOG, s.saved.get("log_bytes") if s.start > 0 else None)
    else:
        s.log = RunLog(None, None)


def compile_model(s: Session) -> None:
    """Speed: TF32, autocast, ``torch.compile`` (and CUDA graphs), DDP."""
    tc, dev = s.run.train, s.dev
    if dev.type == "cuda":  # TF32 for any float32 matmul left outside autocast (nanoGPT does the same)
        torch.set_float32_matmul_precision("high")
    s.amp = autocast_dtype(s.run, dev)
    s.ctx = torch.autocast(device_type=dev.type, dtype=s.amp) if s.amp is not None else contextlib.nullcontext()
    s.compiled = bool(tc.compile and dev.type == "cuda")
    s.graphs = s.compiled and tc.compile == "reduce-overhead"
    if s.graphs and s.dd.enabled:
        raise ConfigError("train.compile='reduce-overhead' (CUDA graphs) runs on one GPU; use train.compile=true "
                          "with DDP")
    s.fwd = torch.compile(s.model, mode="reduce-overhead" if s.graphs else None) if s.compiled else s.model
    if s.graphs:  # gradients in memory of their own, never the graphs' (module docstring)
        for p in s.model.parameters():
            if p.requires_grad and p.grad is None:
                p.grad = torch.zeros_like(p)
    s.ddp_model = s.fwd
    if s.dd.enabled:
        s.ddp_model = nn.parallel.DistributedDataParallel(s.fwd, device_ids=[dev.index] if dev.type == "cuda" else None)


def set_attention(s: Session, on: bool) -> None:
    """The hybrid attention's pattern on or off (built once, on first use)."""
    if on and s.attn_fn is None:
        s.attn_fn = build_attention(s.run.attention, s.run.model.block_size, s.dev)
    s.model.set_attention(s.attn_fn if on else None, s.run.attention.layers)
    s.attn_on = on


def forward_backward(s: Session, step: int, accum: int, end: int,
                      nxt: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, Any]:
    """Forward and backward over this rank's micro-steps; DDP averages gradients on the last one only. The
    next micro-batch is read while the device runs this forward (as nanoGPT does); batches are a pure
    function of (step, micro-step), so reading ahead changes no number. Returns this rank's summed loss of
    the step (checked at the log point, in one go per window) and the batch read ahead."""
    dd, batches = s.dd, s.train_batches
    micro_losses = []
    for j in range(accum):
        x, y = nxt if nxt is not None else batches.get(step, dd.rank * accum + j)
        sync = j == accum - 1
        with (s.ddp_model.no_sync() if dd.enabled and not sync else contextlib.nullcontext()):
            if s.graphs:
                torch.compiler.cudagraph_mark_stepbegin()
            with s.ctx:
                _, loss = s.ddp_model(x, y, return_logits=False)
                loss = loss / accum
            if j + 1 < accum:
                nxt = batches.get(step, dd.rank * accum + j + 1)
            elif step + 1 < end:
                nxt = batches.get(step + 1, dd.rank * accum)
            else:
                nxt = None
            loss.backward()
        micro_losses.append(loss.detach().clone() if s.graphs else loss.detach())  # graphs: out of graph memory
    return (micro_losses[0] if accum == 1 else torch.stack(micro_losses).sum()), nxt


def optimizer_step(s: Session, step: int, is_update: bool) -> torch.Tensor:
    """Topology update (with the dense gradients), masked and clipped gradients, the optimizer step, masks
    re-applied. Returns the gradient norm before clipping."""
    tc, sp = s.run.train, s.sparsifier
    if is_update:  # the topology update sees the dense gradients
        sp.update(step)
        s.density = sp.density()
    if sp is not None:
        sp.mask_grads_()
    grad_norm = torch.nn.utils.clip_grad_norm_(s.model.parameters(), tc.grad_clip if tc.grad_clip > 0 else math.inf)
    if s.check_each_step and not math.isfinite(grad_norm.item()):
        raise TrainingError(nonfinite_msg(step, "the gradient norm", grad_norm.item(), s.last_good, s.run))
    if not (is_update and s.run.topology.skip_step_on_update):
        s.optimizer.step()
    if sp is not None:
        sp.after_step_()
    s.optimizer.zero_grad(set_to_none=not s.graphs)
    return grad_norm


def log_window(s: Session, pending: list[dict[str, Any]], step: int, do_eval: bool, bar: Any,
                final_val: float | None) -> float | None:
    """The window's one sync: losses and norms checked finite, speed measured, validation loss on
    evaluation steps, rows written. Returns the final validation loss once measured."""
    tc, run = s.run.train, s.run
    window_vals = torch.stack([torch.stack([r["loss"].float(), r["grad_norm"].float()]) for r in pending])
    vals = mean_over_ranks(window_vals, s.dd).tolist()  # the one sync (and collective) of the window
    now = time.perf_counter()
    window = now - s.t_window
    s.train_time += window
    tok_s = len(pending) * run.tokens_per_step() / window if window > 0 else float("nan")
    s.windows_this_session += 1
    s.all_windows.append(tok_s)
    if s.windows_this_session > SPEED_WARMUP_WINDOWS:
        s.speed_windows.append(tok_s)
    for r, (lv, gv) in zip(pending, vals):
        if not math.isfinite(lv):
            raise TrainingError(nonfinite_msg(r["step"], "the training loss", lv, s.last_good, run, "window"))
        if not math.isfinite(gv):
            raise TrainingError(nonfinite_msg(r["step"], "the gradient norm", gv, s.last_good, run, "window"))
        r["loss"], r["grad_norm"], r["tokens_per_s"] = lv, gv, tok_s
        r["time_s"] = round(s.wall_before + now - s.t_session, 3)
    if do_eval:
        pending[-1]["val_loss"] = estimate_loss(s.fwd, s.val_batches, tc.eval_iters, s.ctx, s.dd, s.graphs)
        if not math.isfinite(pending[-1]["val_loss"]):
            raise TrainingError(nonfinite_msg(step, "the validation loss", pending[-1]["val_loss"],
                                              s.last_good, run, "saving"))
        if step == tc.max_iters - 1:
            final_val = pending[-1]["val_loss"]
    s.log.write(pending)
    if bar is not None:
        bar.update(len(pending))
        bar.set_postfix(loss=f"{pending[-1]['loss']:.3f}", tok_s=f"{tok_s:,.0f}", density=f"{s.density:.3f}",
                        refresh=False)
    return final_val


def save(s: Session, next_step: int) -> None:
    """A checkpoint of everything resume needs, after checking the state is finite (rank 0 writes it)."""
    run, model, optimizer, sp = s.run, s.model, s.optimizer, s.sparsifier
    spoiled = nonfinite_state(model, optimizer)
    if spoiled:
        raise TrainingError(nonfinite_msg(next_step - 1, "the state after the optimizer step",
                                          f"not finite in {', '.join(spoiled[:4])}"
                                          + (" ..." if len(spoiled) > 4 else ""), s.last_good, run, "saving"))
    state = {
        "log_bytes": s.log.position(),
        "speed_windows": s.speed_windows,
        "all_windows": s.all_windows,
        "train_time_s": s.train_time,
        "wall_time_s": s.wall_before + time.perf_counter() - s.t_session,
        "provenance": s.prov,
    }
    ckpt_path = s.store.checkpoint_path(run)
    if s.dd.is_main:
        save_checkpoint(ckpt_path, {
            "run_id": run.run_id(),
            "config": run.to_dict(),
            "model_config": dataclasses.asdict(run.model),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "sparsifier": sp.state_dict() if sp is not None else None,
            "step": next_step,
            "attention_active": s.attn_on,
            "rng": rng_state(),
            "state": state,
        })
    if s.dd.enabled:
        dist.barrier()
    s.last_good = ckpt_path


def finish(s: Session, final_val: float | None) -> RunResult:
    """The end: final losses on fixed batches, metrics, the done marker."""
    run, tc, dd = s.run, s.run.train, s.dd
    tokens_per_step = run.tokens_per_step()
    if final_val is None:  # resumed from the final checkpoint: the loop did not run
        final_val = estimate_loss(s.fwd, s.val_batches, tc.eval_iters, s.ctx, dd, s.graphs)
    final_train = estimate_loss(s.fwd, s.train_eval_batches, tc.eval_iters, s.ctx, dd, s.graphs)
    for what, value in (("the final validation loss", final_val), ("the final training loss", final_train)):
        if not math.isfinite(value):
            raise TrainingError(nonfinite_msg(tc.max_iters - 1, what, value, s.last_good, run, "final"))
    peak, peak_kind = peak_memory(s.dev)
    wall = s.wall_before + time.perf_counter() - s.t_session
    n_train = len(s.train_batches.tokens)
    metrics = {
        "steps": tc.max_iters,
        "tokens": tc.max_iters * tokens_per_step,
        # how often the run saw its corpus: tokens trained on over the unique tokens of the train split
        "unique_train_tokens": n_train,
        "passes": tc.max_iters * tokens_per_step / n_train,
        "final_train_loss": final_train,
        "final_val_loss": final_val,
        # a run too short to leave windows after warm-up reports the median of all its windows
        "tokens_per_s_median": statistics.median(s.speed_windows or s.all_windows) if s.all_windows else None,
        "tokens_per_s_mean": tc.max_iters * tokens_per_step / s.train_time if s.train_time > 0 else None,
        "train_time_s": s.train_time,
        "wall_time_s": wall,
        "peak_memory_bytes": peak,
        "peak_memory_kind": peak_kind,
        "final_density": s.density,
        "world_size": dd.world_size,
        "autocast_dtype": str(s.amp).removeprefix("torch.") if s.amp is not None else "float32",
        "compiled": s.compiled,
        **s.flop_totals,
    }
    s.prov["end_utc"] = provenance.utc_now()
    s.prov["wall_time_s"] = wall
    s.prov["sessions"][-1]["end_utc"] = s.prov["end_utc"]
    if dd.is_main:  # the final checkpoint was written at the last step; the done marker comes last
        s.store.finish(run, metrics, s.prov)
    if dd.enabled:
        dist.barrier()  # rank 0 has written the results
    return s.store.load(run)
