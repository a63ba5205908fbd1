"""The GPU benchmark scripts (``benchmarks/attention_speed.py``, ``benchmarks/block_sparse.py``) run end to end
on a CPU at toy sizes and write the rows the training-speed chapter reads: every backend that can run on a CPU
gives numbers and a small error against its float32 reference, the ones that cannot record why."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("TRITON_INTERPRET", None)
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_attention_speed_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "attn.json"
    res = _run("attention_speed.py", "--device", "cpu", "--models", "smoke", "--contexts", "64", "--tokens", "128",
               "--window", "16", "--stride", "16", "--warmup", "1", "--repeats", "2", "--out", str(out),
               "--variants", "dense", "flash_split:local_strided", "sdpa_mask:local")
    assert res.returncode == 0, res.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["provenance"]["device"] == "cpu"
    rows = {r["variant"]: r for r in data["rows"]}
    assert set(rows) == {"dense", "flash_split:local_strided", "sdpa_mask:local"}
    for r in rows.values():
        assert "error" not in r, r
        assert r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0 and r["max_abs_err"] < 2e-2  # bf16 against float32
    assert rows["dense"]["ratio_to_dense"] == 1.0 and rows["sdpa_mask:local"]["tile_fraction"] == 1.0
    assert "gpu_ms" not in rows["dense"]  # the profiler's kernel time is a CUDA measurement


def test_block_sparse_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "bs.json"
    res = _run("block_sparse.py", "--device", "cpu", "--shapes", "128x64", "--tokens", "96", "--densities", "1.0",
               "0.25", "--blocks", "32", "--repeats", "2", "--warmup", "1", "--out", str(out))
    assert res.returncode == 0, res.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["complete"]
    by = {(r["backend"], r["density"]): r for r in data["rows"]}
    assert by[("dense", 1.0)]["ratio_to_dense"] == 1.0
    for backend in ("dense_masked", "gather"):
        for d in (1.0, 0.25):
            r = by[(backend, d)]
            assert "error" not in r and max(r["rel_err"].values()) < 1e-4, r  # float32 on CPU
            assert r["predicted_ratio"] == 1 / r["density_actual"]
    # the Triton backends cannot run on a CPU (without the interpreter): a recorded ConfigError, not a crash
    for backend in ("triton_bsr", "triton"):
        assert "ConfigError" in by[(backend, 0.25)]["error"]
    assert {s["backend"] for s in data["summary"]} == {"dense_masked", "gather"}
