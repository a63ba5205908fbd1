"""GPU probe for the cuDNN band (:mod:`mstlib._cudnn_band`): versions, which ``diagonal_band_left_bound``
gives a band of ``window`` keys, and the band's forward/backward error against float64 math.

Usage on the GPU machine (nvidia-cudnn-frontend importable): python tools/gpu/cudnn_probe.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mstlib import _cudnn_band as CB  # noqa: E402
from mstlib import attention as A  # noqa: E402


def main() -> None:
    report: dict = {"torch": torch.__version__, "cudnn_torch": torch.backends.cudnn.version(),
                    "available": CB.available()}
    if not report["available"]:
        try:
            CB._cudnn()
        except Exception as e:  # noqa: BLE001 - the probe reports whatever stops the import
            report["error"] = repr(e)
        print(json.dumps(report, indent=1))
        return
    report["version"] = CB.version()
    torch.manual_seed(0)
    B, H, T, D, W = 2, 4, 1024, 64, 96
    qkv = torch.randn(B, T, 3 * H * D, device="cuda", dtype=torch.bfloat16)
    q, k, v = (t.view(B, T, H, D) for t in qkv.split(H * D, dim=2))
    pos = torch.arange(T, device="cuda")
    band = (pos[:, None] - pos[None, :] >= 0) & (pos[:, None] - pos[None, :] < W)
    q64, k64, v64 = (t.double().transpose(1, 2) for t in (q, k, v))
    ref = A.reference_attention(q64, k64, v64, band).transpose(1, 2)
    for left in (-1, 0, 1):
        try:
            out, lse = CB.forward(q, k, v, W, D ** -0.5, left=left)
            report[f"fwd_err_left{left:+d}"] = (out.double() - ref).abs().max().item()
        except Exception as e:  # noqa: BLE001
            report[f"fwd_err_left{left:+d}"] = repr(e)[:300]
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
