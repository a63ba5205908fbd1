"""GPU probe 2 for the cuDNN band: host time per call (does a call synchronise? how much Python does it
cost?) by way of execution, and the kernel time of every cuDNN plan for the band's forward and backward
(is the heuristic's first plan the fastest?). Paper shapes: B=32, H=12, T=1024, D=64, window 128.

Usage on the GPU machine (nvidia-cudnn-frontend importable): python tools/gpu/cudnn_probe2.py [out.json]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mstlib import _cudnn_band as CB  # noqa: E402

B, H, T, D, W = 32, 12, 1024, 64, 128


def host_us(fn, n: int = 40) -> float:
    """Host microseconds per call while the GPU is busy (a synchronising call waits for the busy GPU,
    which shows as milliseconds)."""
    fn()
    torch.cuda.synchronize()
    torch.cuda._sleep(300_000_000)  # ~0.15 s of GPU time
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    dt = (time.perf_counter() - t0) / n
    torch.cuda.synchronize()
    return dt * 1e6


def gpu_ms(fn, n: int = 20) -> float:
    fn()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(n):
        fn()
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) / n


def build(backward: bool, q, k, v, o, do, stats):
    """A band graph of our own with every plan built: ``(graph, uids, workspace bytes, plan count)``."""
    import cudnn

    handle = cudnn.create_handle()
    cudnn.set_stream(handle=handle, stream=torch.cuda.current_stream().cuda_stream)
    g = cudnn.pygraph(handle=handle, io_data_type=cudnn.data_type.BFLOAT16,
                      intermediate_data_type=cudnn.data_type.FLOAT, compute_data_type=cudnn.data_type.FLOAT)

    def t(name, x, uid, dt=cudnn.data_type.BFLOAT16):
        return g.tensor(name=name, dim=list(x.shape), stride=list(x.stride()), data_type=dt, uid=uid)

    tq, tk, tv = t("q", q, 1), t("k", k, 2), t("v", v, 3)
    if not backward:
        o_t, s_t = g.sdpa(name="band", q=tq, k=tk, v=tv, generate_stats=True, attn_scale=D ** -0.5,
                          diagonal_alignment=cudnn.diagonal_alignment.TOP_LEFT, diagonal_band_left_bound=W,
                          diagonal_band_right_bound=0)
        o_t.set_uid(100).set_output(True).set_dim(list(o.shape)).set_stride(list(o.stride()))
        s_t.set_uid(101).set_output(True).set_dim(list(stats.shape)).set_stride(list(stats.stride())).set_data_type(
            cudnn.data_type.FLOAT)
        uids, bufs = (1, 2, 3, 100, 101), (q, k, v, o, stats)
    else:
        to, tdo = t("o", o, 4), t("do", do, 5)
        ts = t("stats", stats, 6, cudnn.data_type.FLOAT)
        dq_t, dk_t, dv_t = g.sdpa_backward(name="band_bwd", q=tq, k=tk, v=tv, o=to, dO=tdo, stats=ts,
                                           attn_scale=D ** -0.5, diagonal_alignment=cudnn.diagonal_alignment.TOP_LEFT,
                                           diagonal_band_left_bound=W, diagonal_band_right_bound=0)
        for x, uid in ((dq_t, 201), (dk_t, 202), (dv_t, 203)):
            x.set_uid(uid).set_output(True).set_dim(list(q.shape)).set_stride(list(o.stride()))
        dq, dk, dv = (torch.empty_strided(q.shape, o.stride(), dtype=q.dtype, device="cuda") for _ in range(3))
        uids, bufs = (1, 2, 3, 4, 5, 6, 201, 202, 203), (q, k, v, o, do, stats, dq, dk, dv)
    g.validate()
    g.build_operation_graph()
    g.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
    g.check_support()
    g.build_plans(cudnn.build_plan_policy.ALL)
    return g, handle, uids, bufs


def plan_times(g, handle, uids, bufs) -> list:
    rows = []
    for i in range(g.get_execution_plan_count()):
        try:
            ws = torch.empty(max(g.get_workspace_size_plan_at_index(i), 1), dtype=torch.uint8, device="cuda")
            fn = lambda: g.execute_plan_at_index(list(bufs), ws, index=i, handle=handle,  # noqa: E731
                                                  tensor_uids=list(uids))
            rows.append({"plan": i, "name": str(g.get_plan_name_at_index(i))[:120], "ms": gpu_ms(fn)})
        except Exception as e:  # noqa: BLE001 - a plan that does not run is reported, not fatal
            rows.append({"plan": i, "error": repr(e)[:200]})
    return rows


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    rep: dict = {"version": CB.version()}
    torch.manual_seed(0)
    qkv = torch.randn(B, T, 3 * H * D, device="cuda", dtype=torch.bfloat16)
    q, k, v = (x.view(B, T, H, D) for x in qkv.split(H * D, dim=2))
    scale = D ** -0.5
    o, lse = CB.forward(q, k, v, W, scale)
    do = torch.randn_like(o)
    import cudnn.sdpa.fwd.torch_op  # noqa: F401  (the package's own torch operators, for comparison)

    fwd_op, bwd_op = torch.ops.cudnn.sdpa_fwd, torch.ops.cudnn.sdpa_bwd
    bh = lambda x: x.transpose(1, 2)  # noqa: E731
    lse_bht = lse.transpose(0, 1).contiguous()
    cu = torch.arange(0, (B + 1) * T, T, device="cuda", dtype=torch.int32)
    paths = {
        "band_forward (mstlib)": lambda: CB.forward(q, k, v, W, scale),
        "sdpa_fwd op": lambda: fwd_op(bh(q), bh(k), bh(v), scale, is_causal=True, window_left=W, return_lse=True),
        "band_backward (mstlib)": lambda: CB.backward(do, q, k, v, o, lse, W, scale),
        "sdpa_bwd op": lambda: bwd_op(bh(do), bh(q), bh(k), bh(v), bh(o), lse_bht, scale, is_causal=True,
                                      window_left=W),
        "FlashAttention fwd": lambda: torch.ops.aten._flash_attention_forward(
            q.reshape(B * T, H, D), k.reshape(B * T, H, D), v.reshape(B * T, H, D), cu, cu, T, T, 0.0, True, False,
            scale=scale, window_size_left=W - 1, window_size_right=0),
        "SDPA causal fwd": lambda: torch.nn.functional.scaled_dot_product_attention(bh(q), bh(k), bh(v),
                                                                                    is_causal=True),
    }
    rep["host_us"] = {}
    for name, fn in paths.items():
        try:
            rep["host_us"][name] = host_us(fn)
        except Exception as e:  # noqa: BLE001
            rep["host_us"][name] = repr(e)[:200]
    stats = lse.transpose(0, 1).contiguous().view(B, H, T, 1)
    for label, backward in (("fwd", False), ("bwd", True)):
        try:
            g, handle, uids, bufs = build(backward, bh(q), bh(k), bh(v), bh(o.clone()), bh(do), stats)
            rep[f"plans_{label}"] = plan_times(g, handle, uids, bufs)
            ws = torch.empty(max(g.get_workspace_size(), 1), dtype=torch.uint8, device="cuda")
            rep["host_us"][f"own graph {label}: execute"] = host_us(
                lambda: g.execute(list(bufs), ws, handle=handle, tensor_uids=list(uids)))
            lowered = g._lowered_graph
            raw = handle.backend_handle
            ptrs = {u: b.data_ptr() for u, b in zip(uids, bufs)}
            rep["host_us"][f"own graph {label}: _lowered_graph._execute"] = host_us(
                lambda: lowered._execute(ptrs, ws.data_ptr(), raw))
        except Exception as e:  # noqa: BLE001
            rep[f"plans_{label}"] = repr(e)[:400]
    text = json.dumps(rep, indent=1)
    print(text)
    if out:
        out.write_text(text)


if __name__ == "__main__":
    main()
