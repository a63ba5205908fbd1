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

import argparse
import contextlib
import dataclasses
import json
import math
import os
import random
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from . import checkpoint as ckpt_file
from . import provenance, schedule
from .config import RunConfig, parse_override
from .errors import CheckpointError, ConfigError, DataError, RunLockedError, TrainingError
from .model import GPT, load_state_dict_checked
from .results import CHECKPOINT, CONFIG, LOG, RunResult, RunStore, read_json, retrain_command
from .runlock import RunLock

#: Columns of ``log.csv``, one row per optimizer step. ``loss``: mean training loss of the step's global
#: batch (nats/token); ``lr``; ``grad_norm``: before clipping; ``density``: fraction of the sparse set's
#: weights that are active during the step (1 for dense runs); ``phase``: the sparsity schedule's phase;
#: ``attn_density``: allowed/causal query-key pairs averaged over layers; ``update``: 1 on topology-update
#: steps; ``tokens``/``flops``: totals through this step (training FLOPs from :mod:`mstlib.flops`);
#: ``tokens_per_s``: throughput of the log window holding the step (evaluation and checkpoints excluded);
#: ``time_s``: wall time since the run started; ``val_loss``: only on evaluation steps.
LOG_COLUMNS = (
    "step", "loss", "lr", "grad_norm", "density", "phase", "attn_density", "update",
    "tokens", "flops", "tokens_per_s", "time_s", "val_loss",
)

#: Columns that depend on timing, not on the computation (left out when two runs are compared).
TIMING_COLUMNS = ("tokens_per_s", "time_s")

#: Log windows dropped before the median tokens/s (compilation, allocator warm-up), per process start.
SPEED_WARMUP_WINDOWS = 2

# numpy SeedSequence tags that keep the data streams apart
_TRAIN, _VAL, _TRAIN_EVAL = 0, 1, 2


# ------------------------------------------------------------------------------------------- devices


@dataclass(frozen=True)
class Dist:
    """This process's place in a (possibly one-process) DDP job."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    owns_group: bool = False  # whether train() created the process group (and so destroys it)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(device: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    """``"auto"``: ``cuda:<local_rank>`` when CUDA is available, else CPU."""
    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device 'cuda' requested but CUDA is not available; use --device cpu")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
    return dev


def setup_distributed(device: str | torch.device) -> tuple[Dist, torch.device]:
    """Join the torchrun job described by RANK/WORLD_SIZE/LOCAL_RANK (one process without them)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), resolve_device(device)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world)
        owns = True
    return Dist(rank, local_rank, world, owns), dev


def autocast_dtype(run: RunConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: bf16 on CUDA for ``"auto"``, None (plain float32) on CPU."""
    choice = run.train.dtype
    if choice == "auto":
        choice = "bfloat16" if device.type == "cuda" else "float32"
    return torch.bfloat16 if choice == "bfloat16" else None


# ----------------------------------------------------------------------------------------------- data


class Batches:
    """nanoGPT's random windows from a token array, reproducible from a key: ``get(step, micro)`` returns
    ``(x, y)``, LongTensors ``[batch_size, block_size]`` with ``y`` the next tokens of ``x``."""

    def __init__(self, tokens: np.ndarray, block_size: int, batch_size: int, seed: int, tag: int,
                 device: torch.device) -> None:
        if len(tokens) <= block_size + 1:
            raise DataError(
                f"token file has {len(tokens)} tokens, fewer than one window of block_size+1="
                f"{block_size + 1}; prepare a larger corpus or lower model.block_size"
            )
        self.tokens, self.T, self.B = tokens, block_size, batch_size
        self.seed, self.tag, self.device = seed, tag, device

    def get(self, *key: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.tag, *key])
        starts = rng.integers(0, len(self.tokens) - self.T, size=self.B)
        buf = np.stack([self.tokens[i : i + self.T + 1] for i in starts]).astype(np.int64)
        x = torch.from_numpy(np.ascontiguousarray(buf[:, :-1]))
        y = torch.from_numpy(np.ascontiguousarray(buf[:, 1:]))
        if self.device.type == "cuda":  # pinned memory makes the copy asynchronous
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return x, y


def open_split(run: RunConfig, split: str) -> np.ndarray:
    """The tokens of ``split`` of the run's corpus (a uint16 memmap), checked: size, sha256 and every id inside
    the model's vocabulary (an id outside it would end in an IndexError deep in the embedding)."""
    from .corpus import open_tokens

    return open_tokens(run.data.data_dir, run.data.corpus, split, vocab_size=run.model.vocab_size)


# ------------------------------------------------------------------------------ model and optimizer


def build_model(run: RunConfig, device: torch.device) -> GPT:
    """The GPT of ``run``, initialised from ``torch.manual_seed(run.seed)`` (on the CPU, so every device
    starts from the same weights), moved to ``device``."""
    torch.manual_seed(run.seed)
    return GPT(run.model).to(device)


def build_optimizer(model: nn.Module, run: RunConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on parameters of dim >= 2 (matrices, embeddings) and none on LayerNorm
    weights (nanoGPT); fused kernels on CUDA."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": run.train.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    extra = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(groups, lr=run.train.lr, betas=(run.train.beta1, run.train.beta2), **extra)


def build_sparsifier(model: GPT, run: RunConfig, optimizer: torch.optim.Optimizer) -> Any:
    """The run's :class:`mstlib.topology.Sparsifier` (None for dense runs)."""
    if not run.is_sparse:
        return None
    from .topology import Sparsifier

    return Sparsifier(model, run, optimizer)  # reads topology.mask_optimizer_moments itself


def attention_density(run: RunConfig, active: bool) -> float:
    """Allowed / causal query-key pairs, averaged over layers (1.0 when the pattern is off)."""
    if not active:
        return 1.0
    from .flops import attention_layer_equivalents

    return attention_layer_equivalents(run) / run.model.n_layer


def flops_per_step(run: RunConfig, world_size: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Training FLOPs of each step (array ``[max_iters]``) and the run's totals, from :mod:`mstlib.flops`.
    """
    from .flops import training_flops

    rep = training_flops(run, world_size=world_size)
    totals = {
        "flops_total": float(rep.total_flops),
        "flops_dense_total": float(rep.dense_total_flops),
        "flops_ratio_to_dense": float(rep.ratio_to_dense),
        "flops_per_token_dense": float(rep.flops_per_token_dense),
    }
    # the report's series has one row per segment of constant cost: spread it over the steps
    per_step = np.zeros(run.train.max_iters, dtype=np.float64)
    tps = run.tokens_per_step()
    for a, z, fpt in zip(rep.series["start_step"], rep.series["end_step"], rep.series["flops_per_token"]):
        per_step[a:z] = float(fpt) * tps
    return per_step, totals


# --------------------------------------------------------------------------------------- checkpoints


def rng_state() -> dict[str, Any]:
    """Every global RNG stream (the loop itself draws from none of them; they are saved so that any code
    that does, a library included, continues exactly after a resume)."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        # this process's GPU only: get_rng_state_all() would create a context on every visible GPU
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if torch.is_tensor(state.get("cuda")) and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write a checkpoint atomically, with its sha256 (:func:`mstlib.checkpoint.save`)."""
    ckpt_file.save(path, state)


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu",
                    advice: str = "") -> dict[str, Any]:
    """A checkpoint's state after checking its sha256 (:func:`mstlib.checkpoint.load`); ``advice`` ends the
    message of a CheckpointError (by default: how to train the checkpoint's run again)."""
    return ckpt_file.load(path, map_location, advice or "train its run again from scratch with --no-resume")


def _retrain_advice(store: RunStore, run_dir: Path) -> str:
    """What to do about a checkpoint of ``run_dir`` that cannot be used: the command that trains it again."""
    return f"train the run again from scratch: {retrain_command(run_dir, store.checkpoints_option())}"


def _nonfinite_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Names of the weights and optimizer-state tensors that hold a NaN or inf (one device sync)."""
    named = [(f"model.{k}", t) for k, t in model.state_dict().items() if t.is_floating_point()]
    for i, st in enumerate(optimizer.state.values()):
        named += [(f"optimizer.state[{i}].{k}", t) for k, t in st.items()
                  if torch.is_tensor(t) and t.is_floating_point() and t.dim() > 0]
    finite = torch.stack([torch.isfinite(t).all() for _, t in named]).cpu()
    return [name for (name, _), ok in zip(named, finite.tolist()) if not ok]


def load_model(source: str | os.PathLike[str] | RunResult, map_location: str | torch.device = "cpu",
               store: RunStore | None = None) -> GPT:
    """The trained GPT of a run, in eval mode: ``source`` is a checkpoint file, a run folder
    (``results/<preset>/<method>/<run_id>``; its checkpoint is looked up in ``store`` or, by default, in
    ``checkpoints/<results root's name>/`` beside the results root) or a :class:`RunResult`. Raises CheckpointError when the
    checkpoint is missing or belongs to another config."""
    expected: RunConfig | None = None
    if isinstance(source, RunResult):
        run_dir = source.path
    else:
        run_dir = Path(source)
    if run_dir.is_dir():
        if not (run_dir / CONFIG).is_file():
            raise CheckpointError(f"{run_dir} is neither a checkpoint file nor a run folder (no {CONFIG})")
        expected = RunConfig.from_dict(read_json(run_dir / CONFIG))
        if store is None:  # run folders are <root>/<preset>/<method>/<run_id>
            store = RunStore(run_dir.parents[2])
        path = store.checkpoints / run_dir.name / CHECKPOINT
        advice = _retrain_advice(store, run_dir)
    else:
        path = run_dir
        advice = ""
    ckpt = load_checkpoint(path, map_location, advice)
    if expected is not None and ckpt.get("config") != expected.to_dict():
        raise CheckpointError(
            f"checkpoint {path} was written for a different config than {run_dir / CONFIG}; {advice}"
        )
    try:
        from .config import ModelConfig

        model = GPT(ModelConfig(**ckpt["model_config"]))
        load_state_dict_checked(model, ckpt["model"], str(path))
    except KeyError as e:
        raise CheckpointError(f"checkpoint {path} lacks {e}; is it an mstlib checkpoint?") from None
    return model.to(map_location).eval()


# ------------------------------------------------------------------------------------------- the loop


class _Log:
    """The per-step CSV log. Rows are buffered as device tensors and written at log points, so the GPU
    is synchronised once per log window, not once per step."""

    def __init__(self, path: Path | None, resume_bytes: int | None) -> None:
        self.path = path
        if path is None:
            return
        if resume_bytes is None:
            path.write_text(",".join(LOG_COLUMNS) + "\n")
        else:
            size = path.stat().st_size if path.exists() else -1
            if size < resume_bytes:
                raise CheckpointError(
                    f"{path} is shorter ({size} bytes) than the checkpoint expects ({resume_bytes}); the log was "
                    "lost or replaced. Train from scratch with --no-resume"
                )
            with open(path, "r+b") as f:  # drop rows written after the checkpoint
                f.truncate(resume_bytes)

    def position(self) -> int:
        return self.path.stat().st_size if self.path is not None else 0

    def write(self, rows: list[dict[str, Any]]) -> None:
        if self.path is None or not rows:
            return
        lines = [",".join(_fmt(r.get(c)) for c in LOG_COLUMNS) for r in rows]
        with open(self.path, "a") as f:
            f.write("\n".join(lines) + "\n")


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)  # shortest exact round-trip form
    return str(v)


@torch.no_grad()
def estimate_loss(model: nn.Module, batches: Batches, n_batches: int, ctx: Any, dd: Dist,
                  graphs: bool = False) -> float:
    """Mean loss over the fixed batches ``0 .. n_batches-1`` of ``batches`` (split among DDP ranks);
    ``graphs``: the model replays CUDA graphs (each batch a new graph iteration)."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=batches.device)
    for i in range(dd.rank, n_batches, dd.world_size):
        x, y = batches.get(i)
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with ctx:
            _, loss = model(x, y, return_logits=False)
        total += loss.double()
    if dd.enabled:
        dist.all_reduce(total)
    model.train(was_training)
    return total.item() / n_batches


def _check_every_step(device: torch.device) -> bool:
    """Whether losses and gradient norms are checked before every optimizer step (CPU: free) or once per
    log window (CUDA: a check is a sync that stalls the GPU queue); see the module docstring."""
    return device.type != "cuda"


def _mean_over_ranks(t: torch.Tensor, dd: Dist) -> torch.Tensor:
    """``t`` averaged over the DDP ranks (itself without DDP); each rank holds its own micro-batches' loss."""
    if not dd.enabled:
        return t
    t = t.float().clone()
    dist.all_reduce(t)
    return t / dd.world_size


def _peak_memory(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_memory_allocated"
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "cpu_max_rss"


def _nonfinite_msg(step: int, what: str, value: Any, ckpt: Path | None, run: RunConfig,
                   when: str = "before") -> str:
    good = f"the last good checkpoint is {ckpt}" if ckpt else (
        "no checkpoint was written yet (set train.checkpoint_interval to keep one)")
    if when == "final":
        good = f"its final checkpoint {ckpt} holds these weights" if ckpt else "no checkpoint was written"
    when = {
        "before": "training stopped before the optimizer step, so no weights were updated with it",
        "window": "training stopped at the end of that log window; the weights in memory are spoiled but "
                  "nothing after the last good checkpoint was saved",
        "saving": "training stopped before writing the checkpoint or the results of that step",
        "final": "the run was not marked done",
    }[when]
    tc = run.train
    # a changed setting is another config, so another run id: resuming this run would take the same steps
    return (
        f"{what} is {value} at step {step}: {when}; {good}. This config diverges, and resuming it would "
        f"most likely repeat the same steps. Train a changed config instead, a new run with its own run id: "
        f"a lower learning rate (--set train.lr={tc.lr / 10:g} --set train.min_lr={tc.min_lr / 10:g})"
        + ("" if 0 < tc.grad_clip <= 1 else " or gradient clipping (--set train.grad_clip=1.0)")
    )


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
    tc = run.train
    if tc.grad_accum % dd.world_size:
        raise ConfigError(
            f"train.grad_accum={tc.grad_accum} (global micro-steps per step) is not divisible by the "
            f"{dd.world_size} DDP processes; choose a multiple of {dd.world_size}"
        )
    accum = tc.grad_accum // dd.world_size
    end = tc.max_iters if stop_after is None else min(stop_after, tc.max_iters)
    run_id = run.run_id()
    ckpt_path = store.checkpoint_path(run)
    run_dir = store.run_dir(run)

    # -- model, optimizer, masks (seeded: same weights and masks on every rank) --------------------
    model = build_model(run, dev)
    optimizer = build_optimizer(model, run, dev)
    sparsifier = build_sparsifier(model, run, optimizer)

    # -- resume ------------------------------------------------------------------------------------
    ckpt: dict[str, Any] | None = None
    if resume and ckpt_path.is_file():
        # load_state_dict copies to the device (RNG states stay on CPU)
        ckpt = load_checkpoint(ckpt_path, "cpu", _retrain_advice(store, run_dir))
        if ckpt.get("config") != run.to_dict():
            raise CheckpointError(
                f"{ckpt_path} belongs to another config (run {ckpt.get('run_id')}); delete it or "
                + _retrain_advice(store, run_dir)
            )
        load_state_dict_checked(model, ckpt["model"], str(ckpt_path))
        optimizer.load_state_dict(ckpt["optimizer"])
        if sparsifier is not None:
            sparsifier.load_state_dict(ckpt["sparsifier"])
        set_rng_state(ckpt["rng"])
    start = int(ckpt["step"]) if ckpt else 0
    saved: dict[str, Any] = ckpt.get("state", {}) if ckpt else {}
    if ckpt is not None:
        del ckpt  # the optimizer holds its own copy; free the loaded tensors

    # -- results folder and log (rank 0) -----------------------------------------------------------
    prov = dict(saved.get("provenance") or provenance.collect(run.seed, dev, dd.world_size))
    sessions = list(prov.get("sessions", []))
    session = {"start_step": start, "start_utc": provenance.utc_now(), "device": str(dev),
               "device_name": provenance.device_name(dev), "world_size": dd.world_size}
    if run.attention.pattern != "dense":  # what "auto" became on this device (it depends on it)
        from .attention import resolve_backend

        session["attention_backend"] = resolve_backend(run.attention.backend, dev, run.attention.pattern)
    sessions.append(session)
    prov["sessions"] = sessions
    if dd.is_main:
        store.begin(run, prov, fresh=start == 0)
        log = _Log(run_dir / LOG, saved.get("log_bytes") if start > 0 else None)
    else:
        log = _Log(None, None)

    # -- speed: compile, DDP, precision --------------------------------------------------------------
    if dev.type == "cuda":  # TF32 for any float32 matmul left outside autocast (nanoGPT does the same)
        torch.set_float32_matmul_precision("high")
    amp = autocast_dtype(run, dev)
    ctx = torch.autocast(device_type=dev.type, dtype=amp) if amp is not None else contextlib.nullcontext()
    compiled = bool(tc.compile and dev.type == "cuda")
    graphs = compiled and tc.compile == "reduce-overhead"
    if graphs and dd.enabled:
        raise ConfigError("train.compile='reduce-overhead' (CUDA graphs) runs on one GPU; use train.compile=true "
                          "with DDP")
    fwd: nn.Module = torch.compile(model, mode="reduce-overhead" if graphs else None) if compiled else model
    if graphs:  # gradients in memory of their own, never the graphs' (module docstring)
        for p in model.parameters():
            if p.requires_grad and p.grad is None:
                p.grad = torch.zeros_like(p)
    ddp_model: nn.Module = fwd
    if dd.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ddp_model = DDP(fwd, device_ids=[dev.index] if dev.type == "cuda" else None)
    # On CPU every check is free. On CUDA a check is a sync that stalls the GPU queue, so losses and norms
    # are checked once per log window, before anything is written: a NaN stops the run there, and the
    # checkpoint (written only after the check) stays the last good one.
    check_every_step = _check_every_step(dev)

    # -- data ----------------------------------------------------------------------------------------
    T, B = run.model.block_size, tc.batch_size
    train_batches = Batches(open_split(run, "train"), T, B, run.seed, _TRAIN, dev)
    val_batches = Batches(open_split(run, "val"), T, B, run.seed, _VAL, dev)
    train_eval_batches = Batches(train_batches.tokens, T, B, run.seed, _TRAIN_EVAL, dev)

    # -- schedules -----------------------------------------------------------------------------------
    step_flops, flop_totals = flops_per_step(run, dd.world_size)
    cum_flops = np.cumsum(step_flops)
    tokens_per_step = run.tokens_per_step()
    attn_density_on = attention_density(run, True)
    attn_fn = None  # built on first use
    attn_on = False
    density = sparsifier.density() if sparsifier is not None else 1.0

    def set_attention(on: bool) -> None:
        nonlocal attn_fn, attn_on
        if on and attn_fn is None:
            from .attention import build_attention

            attn_fn = build_attention(run.attention, T, dev)
        model.set_attention(attn_fn if on else None, run.attention.layers)
        attn_on = on

    set_attention(schedule.attention_active(start, run))

    # -- bookkeeping ---------------------------------------------------------------------------------
    speed_windows: list[float] = list(saved.get("speed_windows", []))  # after warm-up
    all_windows: list[float] = list(saved.get("all_windows", []))  # the fallback for very short runs
    train_time = float(saved.get("train_time_s", 0.0))
    wall_before = float(saved.get("wall_time_s", 0.0))
    t_session = time.perf_counter()
    windows_this_session = 0
    last_good: Path | None = ckpt_path if start > 0 else None

    bar = _progress_bar(run, start, progress and dd.is_main)

    def checkpoint(next_step: int) -> None:
        nonlocal last_good
        spoiled = _nonfinite_state(model, optimizer)
        if spoiled:
            raise TrainingError(_nonfinite_msg(next_step - 1, "the state after the optimizer step",
                                               f"not finite in {', '.join(spoiled[:4])}"
                                               + (" ..." if len(spoiled) > 4 else ""), last_good, run, "saving"))
        state = {
            "log_bytes": log.position(),
            "speed_windows": speed_windows,
            "all_windows": all_windows,
            "train_time_s": train_time,
            "wall_time_s": wall_before + time.perf_counter() - t_session,
            "provenance": prov,
        }
        if dd.is_main:
            save_checkpoint(ckpt_path, {
                "run_id": run_id,
                "config": run.to_dict(),
                "model_config": dataclasses.asdict(run.model),
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "sparsifier": sparsifier.state_dict() if sparsifier is not None else None,
                "step": next_step,
                "attention_active": attn_on,
                "rng": rng_state(),
                "state": state,
            })
        if dd.enabled:
            dist.barrier()
        last_good = ckpt_path

    # -- training --------------------------------------------------------------------------------------
    model.train()
    pending: list[dict[str, Any]] = []
    final_val: float | None = None
    t_window = time.perf_counter()
    step = start
    nxt: tuple[torch.Tensor, torch.Tensor] | None = None  # the micro-batch read ahead
    for step in range(start, end):
        lr = schedule.lr_at(step, tc)
        for group in optimizer.param_groups:
            group["lr"] = lr
        want_attn = schedule.attention_active(step, run)
        if want_attn != attn_on:
            set_attention(want_attn)

        # forward/backward over this rank's micro-steps; DDP averages gradients on the last one only.
        # The next micro-batch is read while the device runs this forward (as nanoGPT does); batches are a
        # pure function of (step, micro-step), so reading ahead changes no number.
        micro_losses = []
        for j in range(accum):
            x, y = nxt if nxt is not None else train_batches.get(step, dd.rank * accum + j)
            sync = j == accum - 1
            with (ddp_model.no_sync() if dd.enabled and not sync else contextlib.nullcontext()):
                if graphs:
                    torch.compiler.cudagraph_mark_step_begin()
                with ctx:
                    _, loss = ddp_model(x, y, return_logits=False)
                    loss = loss / accum
                if j + 1 < accum:
                    nxt = train_batches.get(step, dd.rank * accum + j + 1)
                elif step + 1 < end:
                    nxt = train_batches.get(step + 1, dd.rank * accum)
                else:
                    nxt = None
                loss.backward()
            micro_losses.append(loss.detach().clone() if graphs else loss.detach())  # graphs: out of graph memory
        # this rank's loss of the step; summed (and averaged over ranks) at the log point, in one go per window
        loss_sum = micro_losses[0] if accum == 1 else torch.stack(micro_losses).sum()

        is_update = sparsifier is not None and sparsifier.is_update_step(step)
        if check_every_step or is_update:
            value = _mean_over_ranks(loss_sum, dd).item()
            if not math.isfinite(value):
                raise TrainingError(_nonfinite_msg(step, "the training loss", value, last_good, run))

        if is_update:  # the topology update sees the dense gradients
            sparsifier.update(step)
            density = sparsifier.density()
        if sparsifier is not None:
            sparsifier.mask_grads_()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip if tc.grad_clip > 0 else math.inf)
        if check_every_step and not math.isfinite(grad_norm.item()):
            raise TrainingError(_nonfinite_msg(step, "the gradient norm", grad_norm.item(), last_good, run))
        if not (is_update and run.topology.skip_step_on_update):
            optimizer.step()
        if sparsifier is not None:
            sparsifier.after_step_()
        optimizer.zero_grad(set_to_none=not graphs)

        pending.append({
            "step": step, "loss": loss_sum, "lr": lr, "grad_norm": grad_norm, "density": density,
            "phase": schedule.phase_at(schedule.progress(step, tc.max_iters), run.schedule).name,
            "attn_density": attn_density_on if attn_on else 1.0, "update": int(is_update),
            "tokens": (step + 1) * tokens_per_step,
            "flops": float(cum_flops[step]),
        })

        # -- log point: one GPU sync per window ----------------------------------------------------
        last = step == end - 1
        do_eval = (tc.eval_interval > 0 and (step + 1) % tc.eval_interval == 0) or step == tc.max_iters - 1
        do_ckpt = (tc.checkpoint_interval > 0 and (step + 1) % tc.checkpoint_interval == 0) or last
        if (step + 1) % tc.log_interval == 0 or last or do_eval or do_ckpt:
            window_vals = torch.stack([torch.stack([r["loss"].float(), r["grad_norm"].float()]) for r in pending])
            vals = _mean_over_ranks(window_vals, dd).tolist()  # the one sync (and collective) of the window
            now = time.perf_counter()
            window = now - t_window
            train_time += window
            tok_s = len(pending) * tokens_per_step / window if window > 0 else float("nan")
            windows_this_session += 1
            all_windows.append(tok_s)
            if windows_this_session > SPEED_WARMUP_WINDOWS:
                speed_windows.append(tok_s)
            for r, (lv, gv) in zip(pending, vals):
                if not math.isfinite(lv):
                    raise TrainingError(_nonfinite_msg(r["step"], "the training loss", lv, last_good, run, "window"))
                if not math.isfinite(gv):
                    raise TrainingError(_nonfinite_msg(r["step"], "the gradient norm", gv, last_good, run, "window"))
                r["loss"], r["grad_norm"], r["tokens_per_s"] = lv, gv, tok_s
                r["time_s"] = round(wall_before + now - t_session, 3)
            if do_eval:
                pending[-1]["val_loss"] = estimate_loss(fwd, val_batches, tc.eval_iters, ctx, dd, graphs)
                if not math.isfinite(pending[-1]["val_loss"]):
                    raise TrainingError(_nonfinite_msg(step, "the validation loss", pending[-1]["val_loss"],
                                                       last_good, run, "saving"))
                if step == tc.max_iters - 1:
                    final_val = pending[-1]["val_loss"]
            log.write(pending)
            if bar is not None:
                bar.update(len(pending))
                bar.set_postfix(loss=f"{pending[-1]['loss']:.3f}", tok_s=f"{tok_s:,.0f}", density=f"{density:.3f}",
                                refresh=False)
            pending = []
            if do_ckpt:
                checkpoint(step + 1)
            t_window = time.perf_counter()  # evaluation and checkpoints are not training time
    if bar is not None:
        bar.close()

    if end < tc.max_iters:  # interrupted on purpose (stop_after)
        if dd.enabled:
            dist.barrier()
        return store.load(run)

    # -- the end: final losses on fixed batches, metrics, done marker -----------------------------------
    if final_val is None:  # resumed from the final checkpoint: the loop did not run
        final_val = estimate_loss(fwd, val_batches, tc.eval_iters, ctx, dd, graphs)
    final_train = estimate_loss(fwd, train_eval_batches, tc.eval_iters, ctx, dd, graphs)
    for what, value in (("the final validation loss", final_val), ("the final training loss", final_train)):
        if not math.isfinite(value):
            raise TrainingError(_nonfinite_msg(tc.max_iters - 1, what, value, last_good, run, "final"))
    peak, peak_kind = _peak_memory(dev)
    wall = wall_before + time.perf_counter() - t_session
    metrics = {
        "steps": tc.max_iters,
        "tokens": tc.max_iters * tokens_per_step,
        # how often the run saw its corpus: tokens trained on over the unique tokens of the train split
        "unique_train_tokens": len(train_batches.tokens),
        "passes": tc.max_iters * tokens_per_step / len(train_batches.tokens),
        "final_train_loss": final_train,
        "final_val_loss": final_val,
        # a run too short to leave windows after warm-up reports the median of all its windows
        "tokens_per_s_median": statistics.median(speed_windows or all_windows) if all_windows else None,
        "tokens_per_s_mean": tc.max_iters * tokens_per_step / train_time if train_time > 0 else None,
        "train_time_s": train_time,
        "wall_time_s": wall,
        "peak_memory_bytes": peak,
        "peak_memory_kind": peak_kind,
        "final_density": density,
        "world_size": dd.world_size,
        "autocast_dtype": str(amp).removeprefix("torch.") if amp is not None else "float32",
        "compiled": compiled,
        **flop_totals,
    }
    prov["end_utc"] = provenance.utc_now()
    prov["wall_time_s"] = wall
    prov["sessions"][-1]["end_utc"] = prov["end_utc"]
    if dd.is_main:  # the final checkpoint was written at the last step; the done marker comes last
        store.finish(run, metrics, prov)
    if dd.enabled:
        dist.barrier()  # rank 0 has written the results
    return store.load(run)


def _progress_bar(run: RunConfig, start: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    # in a log file (a sweep's worker) a bar redrawn 10 times a second would grow the file by megabytes
    return tqdm(total=run.train.max_iters, initial=start, desc=f"{run.preset}/{run.method} {run.run_id()}",
                unit="step", dynamic_ncols=True, mininterval=1.0 if sys.stderr.isatty() else 60.0)


# ---------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``python -m mstlib train``: one run (from a preset and method, or a full config JSON)."""
    parser.add_argument("--preset", default="smoke", help="smoke | mini | paper (default: smoke)")
    parser.add_argument("--method", default="mst", help="dense | mst | rigl | ss | tiny | set (default: mst)")
    parser.add_argument("--seed", type=int, default=None, help="run seed (default: 0, or the --config file's)")
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="a JSON RunConfig (as in a run folder's config.json) instead of --preset/--method")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set train.max_iters=100 (repeatable)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    parser.add_argument("--results", default="results", help="run store root (default: results)")
    parser.add_argument("--checkpoints", default=None, help="checkpoint root (default: checkpoints/<results folder name> beside it)")
    parser.add_argument("--no-resume", action="store_true",
                        help="ignore an existing checkpoint; start over (a done run's result stays until the new one is done)")
    parser.add_argument("--stop-after", type=_steps, default=None, metavar="STEPS",
                        help="stop (with a checkpoint) after this many steps in total (>= 1)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--evaluate", action="store_true",
                        help="then evaluate the trained model (mstlib.pipeline.train_and_evaluate) into eval.json")


def _steps(text: str) -> int:
    """``--stop-after``: a whole number of steps >= 1 (0 would stop before the first step)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of steps >= 1, got {text!r}")
    return value


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The RunConfig the command line describes."""
    overrides = dict(parse_override(s) for s in args.set)
    if args.config:
        try:
            base = json.loads(Path(args.config).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"cannot read the run config {args.config}: {e}") from e
        run = RunConfig.from_dict(base)
        if args.seed is not None:
            overrides["seed"] = args.seed
        return run.replace(**overrides) if overrides else run
    from .presets import make

    return make(args.preset, args.method, seed=args.seed or 0, overrides=overrides or None)


def main(args: argparse.Namespace) -> int:
    from .workers import die_with_parent

    die_with_parent()  # started by a sweep: do not outlive it
    run = config_from_args(args)
    store = RunStore(args.results, args.checkpoints)
    if int(os.environ.get("RANK", "0")) == 0:  # as the notebooks do; one process writes the corpus
        from .pipeline import ensure_smoke_corpus

        ensure_smoke_corpus(run, progress=not args.no_progress)
    res = train(run, store, device=args.device, resume=not args.no_resume, stop_after=args.stop_after,
                progress=not args.no_progress)
    if args.evaluate and res.done and int(os.environ.get("RANK", "0")) == 0:
        from .pipeline import train_and_evaluate

        res = train_and_evaluate(run, store, device=args.device, evaluate=True, progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) == 0:
        if res.done:
            m = res.metrics
            print(f"final val loss {_metric(m, 'final_val_loss', '.4f')}, median "
                  f"{_metric(m, 'tokens_per_s_median', ',.0f')} tokens/s, wall {_metric(m, 'wall_time_s', '.1f')} s",
                  file=sys.stderr)
        print(res.path)
    return 0


def _metric(metrics: dict[str, Any], key: str, spec: str) -> str:
    """A metric for the summary line; "?" where a run stored without it (older, or made by hand)."""
    value = metrics.get(key)
    return format(value, spec) if isinstance(value, (int, float)) else "?"
