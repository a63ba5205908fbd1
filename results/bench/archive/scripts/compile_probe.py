"""GPU probe: does a model with hybrid sparse attention compile as one graph? ``torch._dynamo.explain`` on
the mini model (bf16 autocast, context 1024) with each attention backend for ``local_strided``; prints and
writes the graph count, the graph breaks and where they happen.

Usage on the GPU machine: python tools/gpu/compile_probe.py [out.json]
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mstlib.attention import build_attention  # noqa: E402
from mstlib.config import AttentionConfig  # noqa: E402
from mstlib.presets import make  # noqa: E402
from mstlib.train import build_model  # noqa: E402


def explain(backend: str | None) -> dict:
    run = make("mini", "mst")
    dev = torch.device("cuda")
    model = build_model(run, dev)
    T = run.model.block_size
    if backend is not None:
        cfg = AttentionConfig(pattern="local_strided", window=128, stride=128, backend=backend)
        model.set_attention(build_attention(cfg, T, dev), cfg.layers)
    x = torch.randint(0, run.model.vocab_size, (4, T), device=dev)
    torch._dynamo.reset()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        ex = torch._dynamo.explain(model)(x, x)
    return {"backend": backend or "dense", "graphs": ex.graph_count, "breaks": ex.graph_break_count,
            "reasons": [{"reason": b.reason[:800], "where": [str(f)[:300] for f in b.user_stack[-4:]]}
                        for b in ex.break_reasons]}


def main() -> None:
    rows = []
    for backend in (None, "flash_split", "cudnn_split", "flex"):
        try:
            rows.append(explain(backend))
        except Exception:
            rows.append({"backend": backend, "error": traceback.format_exc()[-1500:]})
        print(json.dumps(rows[-1], indent=1)[:3000], flush=True)
    if len(sys.argv) > 1:
        Path(sys.argv[1]).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
