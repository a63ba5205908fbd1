"""Time one attention layer, forward and backward, for every hybrid-sparse-attention backend against dense.

Question: how much of causal attention's time does each way of running a sparse pattern save, at the
shapes of our models (12 heads of 64 for ``paper``, 6 of 64 for ``mini``; 32,768 tokens per step)? The
whole-step benchmark (``python -m mstlib bench``) dilutes attention with the rest of the model; this one
isolates it, so the parts of the ``flash_split`` backend (its band alone is the ``local`` pattern, its far
part alone the ``strided`` pattern) can be read off separately.

For each (model, context T, variant) one step is timed: ``y = attn(q, k, v)`` on bf16 ``[B, H, T, D]``
inputs (``B = tokens / T``), then ``y.backward(g)``; the forward alone is timed too. Variants:
``dense`` (causal SDPA: FlashAttention, what the model runs without a pattern) and
``<backend>:<pattern>`` for the backends ``flex``, ``flash_split``, ``split`` and ``sdpa_mask``.
Timing: CUDA events, ``--warmup`` untimed steps first (compilation happens there), then the median over
``--repeats``. Per row: ``fwd_ms``, ``fwd_bwd_ms``, ``ratio_to_dense`` (dense fwd+bwd ms / variant's; above
1 is faster), ``tile_fraction`` (the 128 x 128 tiles the variant's kernels visit, relative to causal:
the prediction if time followed tiles) and ``max_abs_err`` of the forward against float32 masked math.

Examples::

    python benchmarks/attention_speed.py --out results/bench/attention_speed.json         # on the GPU
    python benchmarks/attention_speed.py --models paper --contexts 1024 --variants dense flash_split:local_strided
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere in the checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

from block_sparse import percentile, time_step  # noqa: E402

from mstlib import attention as A  # noqa: E402
from mstlib import provenance  # noqa: E402
from mstlib.benchmark import kernel_profile  # noqa: E402
from mstlib.config import MODEL_SIZES, AttentionConfig  # noqa: E402
from mstlib.results import atomic_write_json  # noqa: E402

PATTERNS = ("local", "local_strided", "fixed", "strided")
BACKENDS = ("flex", "flash_split", "cudnn_split", "split", "sdpa_mask")
DEFAULT_VARIANTS = ("dense",) + tuple(f"{b}:{p}" for b in ("flex", "flash_split") for p in PATTERNS) + (
    "split:local_strided", "sdpa_mask:local_strided")


def tile_fraction(variant: str, T: int, window: int, stride: int) -> float:
    """Tiles visited relative to causal attention (:func:`mstlib.attention.tile_fraction`)."""
    if variant == "dense":
        return 1.0
    backend, pattern = variant.split(":")
    return A.tile_fraction(backend.partition("@")[0], pattern, T, window, stride)


def attention_fn(variant: str, T: int, window: int, stride: int, device: torch.device):
    if variant == "dense":
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)
    backend, pattern = variant.split(":")
    if backend == "flash_split@torch":  # the far part as compiled torch code instead of the Triton kernels
        from mstlib.attention.flash_split import flash_split_attention

        return flash_split_attention(pattern, T, window, stride, device, far_kernel="torch")
    if backend not in BACKENDS + ("flash_split@torch",) or pattern not in PATTERNS:
        raise SystemExit(f"unknown variant {variant!r}: use dense or <backend>:<pattern> with backend in "
                         f"{BACKENDS} and pattern in {PATTERNS}")
    return A.build_attention(AttentionConfig(pattern=pattern, window=window, stride=stride, backend=backend),
                             T, device)


def measure(variant: str, model: str, T: int, tokens: int, window: int, stride: int, device: torch.device,
            warmup: int, repeats: int) -> dict[str, Any]:
    cfg = MODEL_SIZES[model]
    H, D = cfg.n_head, cfg.n_embd // cfg.n_head
    B = max(1, tokens // T)
    g = torch.Generator(device=device).manual_seed(0)
    # leaves in the model's layout: [B, H, T, D] views of [B, T, H, D] buffers
    leaves = [torch.randn(B, T, H, D, device=device, generator=g, dtype=torch.bfloat16).requires_grad_()
              for _ in range(3)]
    q, k, v = (t.transpose(1, 2) for t in leaves)
    # the output gradient in the model's layout too: attention's output is read back as [B, T, H * D], so
    # the gradient arriving at it is a [B, H, T, D] view of a contiguous [B, T, H, D] buffer (a contiguous
    # [B, H, T, D] one would cost the split backends a copy the model never makes)
    gy = torch.randn(B, T, H, D, device=device, generator=g, dtype=torch.bfloat16).transpose(1, 2)
    fn = attention_fn(variant, T, window, stride, device)

    def fwd() -> None:
        with torch.no_grad():
            fn(q, k, v)

    def step() -> None:
        for t in leaves:
            t.grad = None
        fn(q, k, v).backward(gy)

    row: dict[str, Any] = {"model": model, "context": T, "variant": variant, "batch": B, "heads": H,
                           "head_dim": D, "window": window, "stride": stride,
                           "tile_fraction": tile_fraction(variant, T, window, stride)}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fb = time_step(step, device, warmup, repeats)
            f = time_step(fwd, device, 2, repeats)
            # correctness of the timed function on a slice of the batch, against float32 masked math
            pattern = "dense" if variant == "dense" else variant.split(":")[1]
            with torch.no_grad():
                y = fn(q, k, v)[:2].float()
                mask = A.pattern_mask(pattern, T, window, stride, device=device)
                ref = A.reference_attention(q[:2].float(), k[:2].float(), v[:2].float(), mask)
            row["max_abs_err"] = float((y - ref).abs().max())
    except Exception as e:  # recorded, the run goes on
        row["error"] = f"{type(e).__name__}: {e}"[:500]
        return row
    row.update(fwd_ms=percentile(f, 50), fwd_bwd_ms=percentile(fb, 50), fwd_bwd_p10=percentile(fb, 10),
               fwd_bwd_p90=percentile(fb, 90), repeats=repeats)
    if device.type == "cuda":
        row["gpu_ms"], row["kernels"] = kernel_profile(step, 10)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["paper", "mini"], choices=sorted(MODEL_SIZES))
    ap.add_argument("--contexts", nargs="+", type=int, default=[1024, 4096])
    ap.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS))
    ap.add_argument("--tokens", type=int, default=32768, help="tokens per step (batch = tokens / context)")
    ap.add_argument("--window", type=int, default=128)
    ap.add_argument("--stride", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, help="JSON file for the rows (written after every row)")
    a = ap.parse_args(argv)
    device = torch.device(a.device)
    if device.type != "cuda":
        print("note: on CPU only flash_split/split/sdpa_mask have a backward; flex variants will error")
    rows: list[dict[str, Any]] = []
    meta = {"provenance": provenance.collect(0, device, 1), "args": {k: str(v) for k, v in vars(a).items()}}
    for model in a.models:
        for T in a.contexts:
            dense_ms = None
            for variant in a.variants:
                torch._dynamo.reset()  # every variant starts from a clean compile cache (recompile limit)
                row = measure(variant, model, T, a.tokens, a.window, a.stride, device, a.warmup, a.repeats)
                if variant == "dense" and "fwd_bwd_ms" in row:
                    dense_ms = row["fwd_bwd_ms"]
                if dense_ms and "fwd_bwd_ms" in row:
                    row["ratio_to_dense"] = dense_ms / row["fwd_bwd_ms"]
                rows.append(row)
                if a.out:
                    atomic_write_json(a.out, {**meta, "rows": rows})
                if "error" in row:
                    print(f"{model:6s} {T:5d} {variant:28s} ERROR {row['error'][:150]}", flush=True)
                else:
                    print(f"{model:6s} {T:5d} {variant:28s} fwd {row['fwd_ms']:7.3f} ms  fwd+bwd "
                          f"{row['fwd_bwd_ms']:7.3f} ms  kernels {row.get('gpu_ms') or float('nan'):7.3f} ms  "
                          f"vs dense {row.get('ratio_to_dense', float('nan')):5.3f}  "
                          f"tiles {row['tile_fraction']:.3f}  err {row['max_abs_err']:.1e}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
