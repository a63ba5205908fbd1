"""Time one block-sparse linear layer, forward and backward, against the dense matmul.

Question: does storing only the nonzero ``block x block`` tiles of a weight (``mstlib.experimental.blocksparse``) make a
training step of one linear layer faster than the dense matmul, and by how much compared with the
``1 / density`` a pure FLOP count predicts?

For each (weight shape, tokens N, block density, block size, backend) one step is timed: the forward
``y = x @ (W*M)^T`` with ``x`` of shape ``(N, in)``, then ``y.backward(grad_y)`` with a random ``grad_y``,
which computes ``grad_x`` and the weight gradient (of the stored tiles only, for the sparse backends).
Timing: CUDA events around each step (a host clock on CPU), ``--warmup`` untimed steps first (Triton
compiles there), then the median, 10th and 90th percentile over ``--repeats`` steps. Gradients are reset
to ``None`` before each step, so no accumulation is timed.

Backends: ``dense`` (plain ``F.linear`` with a dense weight: the reference timing), ``dense_masked`` (the
project's current way: tiles scattered into a dense masked weight, then ``F.linear``), ``gather`` (pure
torch on the tiles), ``triton_bsr`` (PyTorch's Triton BSR kernels) and ``triton`` (the project's own Triton
kernels, autotuned per shape during the warm-up steps); see ``mstlib/experimental/blocksparse.py``. The Triton backends
run on CUDA only; elsewhere their rows record the ConfigError. A step whose kernels take less GPU time than
its host code (Python, launches, the autograd engine) is timed at the host's pace: CUDA events cannot tell
the two apart, so a small ratio for a fast sparse kernel can mean a host-bound step.

Per row: ``ms_median``/``ms_p10``/``ms_p90``; ``ratio_to_dense`` = dense ms / variant ms (above 1 is
faster); on CUDA also ``gpu_ms`` (the profiler's kernel time of one step, which leaves the host out),
``kernel_ratio_to_dense`` (the same ratio on kernel time) and ``kernels`` (the longest kernels); ``predicted_ratio`` = 1 / density (FLOPs only); ``tflops`` counting ``3 * 2*N*in*out*density``;
``rel_err`` (‖out − ref‖ / ‖ref‖ of ``y``, ``grad_x`` and the weight gradient against a float32 dense
reference: a fast wrong kernel shows up here); ``peak_mem_gib`` (CUDA); ``error`` instead of numbers
for a variant that fails (it is recorded, the run goes on). A per-shape table is printed at the end.

Examples::

    python benchmarks/block_sparse.py --out results/bench/block_sparse_h200.json        # default grid, GPU
    python benchmarks/block_sparse.py --device cpu --shapes 256x128 --tokens 256 --repeats 2 --out /tmp/bs.json
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere in the checkout

from mstlib.experimental import blocksparse as bs  # noqa: E402
from mstlib.benchmark import kernel_profile  # noqa: E402
from mstlib import provenance  # noqa: E402
from mstlib.results import atomic_write_json  # noqa: E402

#: GPT-2 small's four weight matrices, (out, in) as nn.Linear stores them.
GPT2_SMALL = {(2304, 768): "attn.c_attn", (768, 768): "attn.c_proj", (3072, 768): "mlp.c_fc", (768, 3072): "mlp.c_proj"}
BACKENDS = ("dense", "dense_masked", "gather", "triton_bsr", "triton")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def parse_shape(text: str) -> tuple[int, int]:
    """``"2304x768"`` -> ``(2304, 768)`` (out, in)."""
    try:
        out_f, in_f = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape must be OUTxIN, e.g. 2304x768, got {text!r}") from None
    return out_f, in_f


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation (numpy's default)."""
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def time_step(step: Callable[[], None], device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Milliseconds of each of ``repeats`` calls of ``step`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
        for start, end in events:
            start.record()
            step()
            end.record()
        torch.cuda.synchronize(device)
        return [start.elapsed_time(end) for start, end in events]
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        times.append((time.perf_counter() - t) * 1e3)
    return times


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.float() - ref).norm() / ref.norm().clamp_min(1e-30))


class Case:
    """The inputs of one (shape, tokens) group: a dense weight, x, grad_y, and the float32 references."""

    def __init__(self, out_f: int, in_f: int, n: int, dtype: torch.dtype, device: torch.device, seed: int) -> None:
        g = torch.Generator(device=device).manual_seed(seed)
        self.out_f, self.in_f, self.n = out_f, in_f, n
        self.w = (torch.randn(out_f, in_f, device=device, generator=g) * 0.02).to(dtype)
        self.x = torch.randn(n, in_f, device=device, generator=g).to(dtype)
        self.gy = torch.randn(n, out_f, device=device, generator=g).to(dtype)

    def reference(self, w_masked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """float32 y, grad_x and dense grad_W of ``x @ w_masked^T`` with this case's grad_y."""
        x, gy, w = self.x.float(), self.gy.float(), w_masked.float()
        return x @ w.t(), gy @ w, gy.t() @ x


def measure(
    run: Callable[[torch.Tensor], torch.Tensor],
    param: torch.Tensor,
    case: Case,
    ref: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    ref_param_grad: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
    warmup: int,
    repeats: int,
) -> dict[str, Any]:
    """Time forward + backward of ``run(x)`` (``param`` is the weight leaf), then check one step's outputs."""
    x = case.x.detach().clone().requires_grad_()

    def step() -> None:
        x.grad = None
        param.grad = None
        run(x).backward(case.gy)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = time_step(step, device, warmup, repeats)
    out: dict[str, Any] = {
        "ms_median": percentile(times, 50),
        "ms_p10": percentile(times, 10),
        "ms_p90": percentile(times, 90),
        "repeats": len(times),
    }
    if device.type == "cuda":
        out["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        out["gpu_ms"], kernels = kernel_profile(step, 5)
        out["kernels"] = kernels[:8]
    # one more step, kept, against the float32 reference
    x.grad = param.grad = None
    y = run(x)
    y.backward(case.gy)
    y_ref, gx_ref, gw_ref = ref
    out["rel_err"] = {
        "y": rel_err(y.detach(), y_ref),
        "grad_x": rel_err(x.grad, gx_ref),
        "grad_w": rel_err(param.grad, ref_param_grad(gw_ref)),
    }
    return out


def run_variant(row: dict[str, Any], body: Callable[[], dict[str, Any]], device: torch.device) -> dict[str, Any]:
    """``row`` updated with ``body()``'s numbers, or with ``error`` if it raised; warnings are recorded."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            row.update(body())
        except Exception as e:  # noqa: BLE001 - a failing variant is a result, not a crash
            row["error"] = f"{type(e).__name__}: {str(e)[:500]}"
    msgs = sorted({str(w.message)[:300] for w in caught})
    if msgs:
        row["warnings"] = msgs
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def describe(row: dict[str, Any]) -> str:
    head = f"{row['shape']:>9} N={row['tokens']:<6} d={row['density']:<5} b={row['block']!s:<4} {row['backend']:<13}"
    if "error" in row:
        return f"{head} ERROR {row['error'][:120]}"
    ratio = row.get("ratio_to_dense")
    ratio_s = f"x{ratio:.2f} (pred x{row['predicted_ratio']:.2f})" if ratio else ""
    err = max(row["rel_err"].values())
    return f"{head} {row['ms_median']:8.3f} ms  {row['tflops']:6.1f} TFLOP/s  {ratio_s}  err {err:.1e}"


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (shape, tokens, density, backend): the fastest block size and its ratio to dense."""
    best: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        if r["backend"] == "dense" or "error" in r or r.get("ratio_to_dense") is None:
            continue
        key = (r["shape"], r["tokens"], r["density"], r["backend"])
        if key not in best or r["ratio_to_dense"] > best[key]["ratio_to_dense"]:
            best[key] = {
                "shape": r["shape"], "name": r["name"], "tokens": r["tokens"], "density": r["density"],
                "backend": r["backend"], "best_block": r["block"], "ratio_to_dense": r["ratio_to_dense"],
                "predicted_ratio": r["predicted_ratio"], "ms_median": r["ms_median"],
                "kernel_ratio_to_dense": r.get("kernel_ratio_to_dense"),
            }
    return list(best.values())


def print_tables(rows: list[dict[str, Any]], summary: list[dict[str, Any]], backends: list[str]) -> None:
    """One short table per (shape, tokens): rows are densities, columns backends, cells the best ratio to
    dense over block sizes and the FLOP prediction for that block size's actual density (``x1.80/4.0
    b128`` = 1.8 times faster than dense, 4 times predicted, with 128-blocks)."""
    sparse_backends = [b for b in backends if b != "dense"]
    groups = sorted({(r["shape"], r["name"], r["tokens"]) for r in rows}, key=lambda g: (g[2], g[0]))
    for shape, name, n in groups:
        dense = [r for r in rows if r["backend"] == "dense" and r["shape"] == shape and r["tokens"] == n]
        dense_s = f"{dense[0]['ms_median']:.3f} ms" if dense and "error" not in dense[0] else "failed"
        print(f"\n{name} {shape}, N={n}: dense {dense_s}; cells: measured/predicted ratio to dense (above 1 = "
              "faster) of the fastest block size")
        print(f"  {'density':>7} " + " ".join(f"{b:>18}" for b in sparse_backends))
        for d in sorted({r["density"] for r in rows if r["shape"] == shape and r["backend"] != "dense"}, reverse=True):
            cells = []
            for b in sparse_backends:
                s = [x for x in summary if (x["shape"], x["tokens"], x["density"], x["backend"]) == (shape, n, d, b)]
                cells.append(
                    f"x{s[0]['ratio_to_dense']:.2f}/{s[0]['predicted_ratio']:.1f} b{s[0]['best_block']}" if s else "-"
                )
            print(f"  {d:>7} " + " ".join(f"{c:>18}" for c in cells))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=sorted(DTYPES), help="default: bf16 on CUDA, fp32 on CPU")
    ap.add_argument("--shapes", nargs="+", type=parse_shape, default=list(GPT2_SMALL), metavar="OUTxIN",
                    help="weight shapes (out x in); default: GPT-2 small's four matrices")
    ap.add_argument("--tokens", nargs="+", type=int, default=[8192, 32768], help="rows N of x")
    ap.add_argument("--densities", nargs="+", type=float, default=[1.0, 0.5, 0.25, 0.1, 0.05],
                    help="fraction of blocks kept (1.0 = dense pattern, a sanity check)")
    ap.add_argument("--blocks", nargs="+", type=int, default=[32, 64, 128])
    ap.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    ap.add_argument("--repeats", type=int, default=20, help="timed steps per variant (median reported)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (Triton compiles here)")
    ap.add_argument("--max-seconds", type=float, default=240.0,
                    help="stop starting new variants after this long and write what was measured")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="JSON file to write (atomically, also after each shape)")
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        ap.error("--repeats must be >= 1 and --warmup >= 0")

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but torch sees no CUDA device (use --device cpu for a quick check)")
    dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)

    t0 = time.monotonic()
    rows: list[dict[str, Any]] = []
    prov = {
        "git": provenance.git_state(),
        "packages": provenance.package_versions(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else provenance.cpu_model(),
        "platform": f"{platform.system()} {platform.machine()}",
        "argv": [Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)],
        "start_utc": provenance.utc_now(),
    }
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    config["shapes"] = [f"{o}x{i}" for o, i in args.shapes]
    config["dtype"] = str(dtype).removeprefix("torch.")

    def write(complete: bool, stopped: bool) -> None:
        if args.out is None:
            return
        summary = summarise(rows)
        atomic_write_json(args.out, {
            "what": "forward + backward of one linear layer y = x @ (W*M)^T, per shape/tokens/density/block/backend",
            "timing": "CUDA events per step (host clock on CPU), warm-up steps untimed, median/p10/p90 over repeats",
            "flops_counted": "3 * 2 * N * in * out * density (forward, grad_x, grad_w)",
            "provenance": prov, "config": config, "rows": rows, "summary": summary,
            "complete": complete, "stopped_for_time": stopped, "elapsed_s": round(time.monotonic() - t0, 1),
        })

    sparse_backends = [b for b in args.backends if b != "dense"]
    n_variants = len(args.tokens) * len(args.shapes) * (
        ("dense" in args.backends) + len(args.blocks) * len(args.densities) * len(sparse_backends))
    stopped = False
    print(f"{n_variants} variants on {prov['device_name']} ({config['dtype']}), budget {args.max_seconds:.0f} s",
          flush=True)

    def out_of_time() -> bool:
        nonlocal stopped
        stopped = stopped or time.monotonic() - t0 > args.max_seconds
        return stopped

    for n in args.tokens:
        for out_f, in_f in args.shapes:
            if out_of_time():
                break
            name = GPT2_SMALL.get((out_f, in_f), "custom")
            base = {"shape": f"{out_f}x{in_f}", "name": name, "out": out_f, "in": in_f, "tokens": n}
            dense_flops = 3 * 2 * n * in_f * out_f
            case = Case(out_f, in_f, n, dtype, device, args.seed)
            dense_ms: float | None = None
            dense_gpu_ms: float | None = None

            if "dense" in args.backends:
                def dense_body() -> dict[str, Any]:
                    w = case.w.detach().clone().requires_grad_()
                    return measure(lambda x: F.linear(x, w), w, case, case.reference(case.w), lambda g: g,
                                   device, args.warmup, args.repeats)

                row = run_variant({**base, "density": 1.0, "block": None, "backend": "dense", "nnzb": None,
                                   "density_actual": 1.0, "predicted_ratio": 1.0}, dense_body, device)
                if "error" not in row:
                    dense_ms, dense_gpu_ms = row["ms_median"], row.get("gpu_ms")
                    row["ratio_to_dense"] = 1.0
                    row["kernel_ratio_to_dense"] = 1.0 if dense_gpu_ms else None
                    row["tflops"] = dense_flops / (row["ms_median"] * 1e-3) / 1e12
                rows.append(row)
                print(describe(row), flush=True)

            for block in args.blocks:
                for density in args.densities:
                    if out_of_time():
                        break
                    try:  # the pattern and its reference, shared by the backends
                        g = torch.Generator().manual_seed(args.seed * 1_000_003 + block * 1009 + round(density * 1e6))
                        bm = bs.block_mask(out_f, in_f, block, density, g)
                        pattern = bs.BlockPattern.from_block_mask(bm, block).to(device)
                        values0 = bs.dense_to_blocks(case.w, pattern)
                        ref = case.reference(bs.blocks_to_dense(values0, pattern))
                        setup_error = None
                    except Exception as e:  # noqa: BLE001 - e.g. a block that does not divide the shape
                        setup_error = f"{type(e).__name__}: {str(e)[:500]}"
                    for backend in sparse_backends:
                        if out_of_time():
                            break
                        row = {**base, "density": density, "block": block, "backend": backend}
                        if setup_error is not None:
                            row["error"] = setup_error
                            rows.append(row)
                            print(describe(row), flush=True)
                            continue
                        d = pattern.density
                        row.update(nnzb=pattern.nnzb, density_actual=d, predicted_ratio=1 / d)

                        def body(backend: str = backend) -> dict[str, Any]:
                            v = values0.detach().clone().requires_grad_()
                            return measure(lambda x: bs.block_sparse_linear(x, v, pattern, backend), v, case, ref,
                                           lambda gw: bs.dense_to_blocks(gw, pattern), device,
                                           args.warmup, args.repeats)

                        run_variant(row, body, device)
                        if "error" not in row:
                            row["tflops"] = dense_flops * d / (row["ms_median"] * 1e-3) / 1e12
                            row["ratio_to_dense"] = dense_ms / row["ms_median"] if dense_ms else None
                            row["kernel_ratio_to_dense"] = (dense_gpu_ms / row["gpu_ms"]
                                                            if dense_gpu_ms and row.get("gpu_ms") else None)
                        rows.append(row)
                        print(describe(row), flush=True)
            if device.type == "cuda":  # (case is replaced by the next group's)
                torch.cuda.empty_cache()
            write(complete=False, stopped=stopped)

    done = len(rows)
    if stopped:
        print(f"\nstopped after {args.max_seconds:.0f} s: {done} of {n_variants} variants measured", flush=True)
    summary = summarise(rows)
    print_tables(rows, summary, args.backends)
    write(complete=not stopped and done == n_variants, stopped=stopped)
    print(f"\n{done} variants in {time.monotonic() - t0:.0f} s" + (f"; wrote {args.out}" if args.out else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
