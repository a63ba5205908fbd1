"""A plain nanoGPT-style training loop, the yardstick for mstlib.train's speed.

The same GPT (mstlib.model.GPT), the same batch (``batch_size`` sequences x ``grad_accum`` micro-steps of
``block_size`` tokens), fused AdamW with nanoGPT's decay/no-decay groups, bf16 autocast, torch.compile and
TF32, and nanoGPT's habits that matter for speed: random windows from a uint16 memmap copied through pinned
memory with ``non_blocking=True``, the next micro-batch fetched while the GPU runs the current one, and a
``loss.item()`` (a GPU sync) only every ``log_interval`` steps. Nothing else: no masks, no schedules, no
logging to disk, no checkpoints, no evaluation. Written for this project; not copied from nanoGPT.

It keeps nanoGPT's ``logits, loss = model(X, Y)``: the compiled backward then takes a zero gradient of the
unused logits (a fill of the step's largest tensor). ``mstlib.train`` calls the model loss-only since
session 7 (``return_logits=False``, :meth:`mstlib.model.GPT.forward`), so runs from then on measure that
saving against this yardstick as well; the stored comparisons predate it.

Tokens/s: the wall time of each ``log_interval``-step window ends at that synchronising ``loss.item()``;
the first ``warmup_windows`` windows (compilation, allocator warm-up) are dropped and the median of the
rest is reported, as mstlib.train does.

Run alone::

    python benchmarks/nanogpt_loop.py --preset mini --steps 200            # CUDA
    python benchmarks/nanogpt_loop.py --preset smoke --steps 20 --device cpu
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere in the checkout

from mstlib.config import ModelConfig  # noqa: E402
from mstlib.model import GPT  # noqa: E402


def synthetic_tokens(n: int, vocab_size: int, seed: int = 0) -> np.ndarray:
    """``n`` random GPT-2 token ids (uint16) below ``min(vocab_size, 50257)``, for speed runs without a
    prepared corpus (speed does not depend on which tokens are read)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, min(vocab_size, 50257), size=n, dtype=np.uint16)


def plain_loop(
    model_cfg: ModelConfig,
    tokens: np.ndarray,
    *,
    batch_size: int,
    grad_accum: int,
    steps: int,
    device: str = "cuda",
    lr: float = 1e-3,
    weight_decay: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.95),
    grad_clip: float = 1.0,
    warmup_iters: int = 10,
    dtype: str = "auto",
    compile: bool = True,
    log_interval: int = 10,
    warmup_windows: int = 2,
    seed: int = 0,
) -> dict[str, Any]:
    """Train ``steps`` optimizer steps and return ``tokens_per_s_median`` (after warm-up windows),
    ``tokens_per_s_mean`` (all tokens over all window time), the window speeds and the final loss."""
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    if cuda:
        torch.set_float32_matmul_precision("high")
    use_bf16 = dtype == "bfloat16" or (dtype == "auto" and cuda)
    ctx = torch.autocast(device_type=dev.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()

    torch.manual_seed(seed)
    model = GPT(model_cfg).to(dev)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=betas, **({"fused": True} if cuda else {}))
    fwd = torch.compile(model) if (compile and cuda) else model

    T = model_cfg.block_size

    def get_batch() -> tuple[torch.Tensor, torch.Tensor]:
        ix = torch.randint(len(tokens) - T, (batch_size,))
        x = torch.stack([torch.from_numpy(tokens[i : i + T].astype(np.int64)) for i in ix.tolist()])
        y = torch.stack([torch.from_numpy(tokens[i + 1 : i + 1 + T].astype(np.int64)) for i in ix.tolist()])
        if cuda:
            return x.pin_memory().to(dev, non_blocking=True), y.pin_memory().to(dev, non_blocking=True)
        return x, y

    def lr_at(it: int) -> float:  # linear warm-up, then cosine to lr/10 at the last step
        if it < warmup_iters:
            return lr * (it + 1) / (warmup_iters + 1)
        ratio = (it - warmup_iters) / max(1, steps - warmup_iters)
        return lr / 10 + 0.5 * (1 + math.cos(math.pi * ratio)) * (lr - lr / 10)

    tokens_per_step = batch_size * grad_accum * T
    windows: list[float] = []
    window_time = 0.0
    x, y = get_batch()
    t0 = time.perf_counter()
    loss_value = float("nan")
    for it in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(it)
        for _ in range(grad_accum):
            with ctx:
                _, loss = fwd(x, y)
                loss = loss / grad_accum
            x, y = get_batch()  # fetch the next batch while the GPU works on this one
            loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if (it + 1) % log_interval == 0 or it == steps - 1:
            loss_value = loss.item() * grad_accum  # the only sync: ends the timing window
            t1 = time.perf_counter()
            n = log_interval if (it + 1) % log_interval == 0 else (it + 1) % log_interval
            window_time += t1 - t0
            windows.append(n * tokens_per_step / (t1 - t0))
            t0 = time.perf_counter()
    steady = windows[warmup_windows:] or windows
    return {
        "variant": "plain nanoGPT loop",
        "tokens_per_s_median": statistics.median(steady),
        "tokens_per_s_mean": steps * tokens_per_step / window_time,
        "windows": windows,
        "final_loss": loss_value,
        "steps": steps,
        "tokens_per_step": tokens_per_step,
        "peak_memory_bytes": int(torch.cuda.max_memory_allocated(dev)) if cuda else None,
        "compiled": bool(compile and cuda),
        "autocast_dtype": "bfloat16" if use_bf16 else "float32",
    }


def main(argv: list[str] | None = None) -> int:
    from mstlib.presets import make

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="mini", help="model and batch from this preset (default: mini)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--vocab-size", type=int, default=None, help="override the vocabulary (CPU quick checks)")
    args = ap.parse_args(argv)
    run = make(args.preset, "dense")
    cfg = run.model if args.vocab_size is None else ModelConfig(**{**run.model.__dict__, "vocab_size": args.vocab_size})
    tc = run.train
    res = plain_loop(cfg, synthetic_tokens(2_000_000, cfg.vocab_size), batch_size=tc.batch_size,
                     grad_accum=tc.grad_accum, steps=args.steps, device=args.device, lr=tc.lr,
                     weight_decay=tc.weight_decay, betas=(tc.beta1, tc.beta2), grad_clip=tc.grad_clip,
                     compile=not args.no_compile, log_interval=tc.log_interval)
    res.pop("windows")
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
