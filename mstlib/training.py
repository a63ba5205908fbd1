"""The parts a training run is built from (:mod:`mstlib.train` puts them together, step by step): the
DDP process group and the device, the data batches, model / optimizer / sparsifier, FLOPs per step, the
per-step CSV log, loss estimates, the finite-value checks and their messages, the progress bar."""

from __future__ import annotations

import os
import resource
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .checkpoint import (  # noqa: F401
    load_checkpoint,
    load_model,
    retrain_advice,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .config import RunConfig
from .data.tokens import open_tokens
from .errors import (
    CheckpointError,
    ConfigError,
    DataError,
)
from .presets import dense_reference_model
from .flops import attention_layer_equivalents, training_flops
from .model import GPT
from .topology import Sparsifier


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
TRAIN_STREAM, VAL_STREAM, TRAIN_EVAL_STREAM = 0, 1, 2


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
    return open_tokens(run.data.data_dir, run.data.corpus, split, vocab_size=run.model.vocab_size)


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

    return Sparsifier(model, run, optimizer)  # reads topology.mask_optimizer_moments itself


def attention_density(run: RunConfig, active: bool) -> float:
    """Allowed / causal query-key pairs, averaged over layers (1.0 when the pattern is off)."""
    if not active:
        return 1.0

    return attention_layer_equivalents(run) / run.model.n_layer


def flops_per_step(run: RunConfig, world_size: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Training FLOPs of each step (array ``[max_iters]``) and the run's totals, from :mod:`mstlib.flops`.
    """
    rep = training_flops(run, world_size=world_size, dense_model=dense_reference_model(run))
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


def nonfinite_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Names of the weights and optimizer-state tensors that hold a NaN or inf (one device sync)."""
    named = [(f"model.{k}", t) for k, t in model.state_dict().items() if t.is_floating_point()]
    for i, st in enumerate(optimizer.state.values()):
        named += [(f"optimizer.state[{i}].{k}", t) for k, t in st.items()
                  if torch.is_tensor(t) and t.is_floating_point() and t.dim() > 0]
    finite = torch.stack([torch.isfinite(t).all() for _, t in named]).cpu()
    return [name for (name, _), ok in zip(named, finite.tolist()) if not ok]


class RunLog:
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


def check_every_step(device: torch.device) -> bool:
    """Whether losses and gradient norms are checked before every optimizer step (CPU: free) or once per
    log window (CUDA: a check is a sync that stalls the GPU queue); see the module docstring."""
    return device.type != "cuda"


def mean_over_ranks(t: torch.Tensor, dd: Dist) -> torch.Tensor:
    """``t`` averaged over the DDP ranks (itself without DDP); each rank holds its own micro-batches' loss."""
    if not dd.enabled:
        return t
    t = t.float().clone()
    dist.all_reduce(t)
    return t / dd.world_size


def peak_memory(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_memory_allocated"
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "cpu_max_rss"


def nonfinite_msg(step: int, what: str, value: Any, ckpt: Path | None, run: RunConfig,
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


def progress_bar(run: RunConfig, start: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    # in a log file (a sweep's worker) a bar redrawn 10 times a second would grow the file by megabytes
    return tqdm(total=run.train.max_iters, initial=start, desc=f"{run.preset}/{run.method} {run.run_id()}",
                unit="step", dynamic_ncols=True, mininterval=1.0 if sys.stderr.isatty() else 60.0)
