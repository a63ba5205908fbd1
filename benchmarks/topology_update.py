"""Where the time of one MST topology update goes, on the device it runs on.

Builds the model of a preset's size (``mini`` or ``paper``, at the ``mst`` preset's sparsity settings),
computes dense gradients for one batch (bf16 autocast on CUDA), then times ``Sparsifier.update`` at a step in
each MST phase (median over ``--repeats`` calls, CUDA events around the call: the time the GPU stream is
occupied, launches included) and, with ``--profile``, prints the operators that take the most device and
host time in one update. An update runs every ``topology.update_interval`` steps, so its cost per step is
``update_ms / update_interval``; issue 9 wants MST's whole overhead under 3% of a dense step.

Example::

    python benchmarks/topology_update.py --models mini paper --profile --json /tmp/update.json
    python benchmarks/topology_update.py --models smoke --device cpu
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere in the checkout

from mstlib import provenance  # noqa: E402
from mstlib.config import MODEL_SIZES  # noqa: E402
from mstlib.presets import make  # noqa: E402
from mstlib.results import atomic_write_json  # noqa: E402
from mstlib.training import autocast_dtype, build_model, build_optimizer, resolve_device  # noqa: E402


def time_updates(model_size: str, device: torch.device, repeats: int, profile: bool, batch: int) -> list[dict[str, Any]]:
    from mstlib import schedule as sched
    from mstlib.topology import Sparsifier

    mc = MODEL_SIZES[model_size]
    run = make("mini", "mst").replace(**{"model.n_layer": mc.n_layer, "model.n_head": mc.n_head,
                                          "model.n_embd": mc.n_embd})
    model = build_model(run, device)
    opt = build_optimizer(model, run, device)
    sp = Sparsifier(model, run, opt)
    T = run.model.block_size
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, run.model.vocab_size, (batch, T), generator=g).to(device)
    dtype = autocast_dtype(run, device)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        _, loss = model(x, x)
    loss.backward()
    opt.step()  # AdamW state exists, as in training, so the moments are zeroed too
    rows = []
    interval = run.topology.update_interval
    for ph in sched.phases(run.schedule):
        step = int((ph.start + ph.end) / 2 * run.train.max_iters) // interval * interval
        step = max(interval, min(step, run.train.max_iters - interval))
        sp.masks.init(sched.target_sparsity(step / run.train.max_iters, run.schedule), run.seed, "random")
        times, host = [], []
        for _ in range(repeats + 1):
            if device.type == "cuda":
                torch.cuda.synchronize()
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
            t0 = time.perf_counter()
            sp.update(step)
            host.append((time.perf_counter() - t0) * 1e3)
            if device.type == "cuda":
                b.record()
                torch.cuda.synchronize()
                times.append(a.elapsed_time(b))
            else:
                times.append(host[-1])
        times, host = times[1:], host[1:]  # the first call warms caches
        row = {"model": model_size, "phase": ph.name, "step": step, "density": sp.density(),
               "matrices": len(sp.masks.names), "update_ms_median": statistics.median(times),
               "host_ms_median": statistics.median(host), "update_interval": interval,
               "amortised_ms_per_step": statistics.median(times) / interval}
        if profile:
            from torch.profiler import ProfilerActivity, profile as prof

            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
            with prof(activities=acts) as p:
                sp.update(step)
                if device.type == "cuda":
                    torch.cuda.synchronize()
            ka = p.key_averages()
            key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
            top = sorted(ka, key=lambda e: getattr(e, key, 0) or 0, reverse=True)[:12]
            row["top_ops"] = [{"op": e.key, "calls": e.count, "self_device_us": getattr(e, "self_device_time_total", 0),
                               "self_cpu_us": e.self_cpu_time_total} for e in top]
            row["op_calls"] = sum(e.count for e in ka if e.key.startswith("aten::"))
        print(f"{model_size:6} {ph.name:12} step {step:5d} density {row['density']:.3f}: update "
              f"{row['update_ms_median']:7.2f} ms (host {row['host_ms_median']:7.2f} ms), "
              f"{row['amortised_ms_per_step']:.3f} ms/step", flush=True)
        for t in row.get("top_ops", []):
            print(f"    {t['op']:40} x{t['calls']:<5} device {t['self_device_us'] / 1e3:8.2f} ms  "
                  f"host {t['self_cpu_us'] / 1e3:8.2f} ms")
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["mini", "paper"])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8, help="sequences in the gradient batch")
    ap.add_argument("--profile", action="store_true", help="print the top operators of one update")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    dev = resolve_device(args.device)
    rows = [r for m in args.models for r in time_updates(m, dev, args.repeats, args.profile, args.batch)]
    if args.json:
        atomic_write_json(args.json, {"rows": rows, "device_name": provenance.device_name(dev),
                                      "packages": provenance.package_versions(), "git": provenance.git_state(),
                                      "utc": provenance.utc_now()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
