"""GPU probe: which attention path does torch.compile trace for the split backends? Compiles the mini model
(bf16 autocast, context 1024) with a backend that keeps Dynamo's graphs, then prints the attention calls in
them (FlashAttention, cuDNN band, Triton far part, or the masked math fallback), for eager comparison too.

Usage on the GPU machine: python tools/gpu/trace_probe.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mstlib import flash_split as FS  # noqa: E402
from mstlib.attention import build_attention  # noqa: E402
from mstlib.config import AttentionConfig  # noqa: E402
from mstlib.presets import make  # noqa: E402
from mstlib.train import build_model  # noqa: E402

KEYS = ("flash_attention", "far_strided", "cudnn_band", "masked_fill", "logsumexp", "logaddexp")


def main() -> None:
    run = make("mini", "mst")
    dev = torch.device("cuda")
    for backend in ("flash_split", "cudnn_split"):
        model = build_model(run, dev)
        T = run.model.block_size
        cfg = AttentionConfig(pattern="local_strided", window=128, stride=128, backend=backend)
        fn = build_attention(cfg, T, dev)
        seen = []
        orig = FS._FlashSplit.apply

        def spy(q, k, v, spec, scale):
            seen.append((str(q.dtype), spec))
            return orig(q, k, v, spec, scale)

        FS._FlashSplit.apply = spy
        model.set_attention(fn, cfg.layers)
        x = torch.randint(0, run.model.vocab_size, (4, T), device=dev)
        graphs = []

        def keep(gm, example_inputs):
            graphs.append(gm)
            return gm.forward

        torch._dynamo.reset()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            model(x, x)
            print(backend, "eager:", seen[:1], flush=True)
            seen.clear()
            torch.compile(model, backend=keep)(x, x)[1].backward()
        print(backend, "compiled spy:", seen[:1], flush=True)
        FS._FlashSplit.apply = orig
        for g in graphs:
            for name, sub in g.named_modules():
                hits = [ln.strip()[:170] for ln in getattr(sub, "code", "").splitlines() if any(k in ln for k in KEYS)]
                if hits:
                    print("  ", name or "<top>", hits[:5], flush=True)


if __name__ == "__main__":
    main()
