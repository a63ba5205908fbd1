import json

import pytest

from mstlib import benchmark, benchstore
from mstlib.errors import ConfigError


def test_cpu_benchmark_rows_and_ratios(tmp_path):
    rows = benchmark.run_benchmark(["smoke"], [64], ["dense", "mst_warmup", "hsa_sdpa:local", "hsa_flex:local"],
                                   device="cpu", repeats=2, warmup=0, tokens_per_step=128, progress=False)
    # FlexAttention has no CPU backward: its variants are left out on a CPU, not failed
    assert [r["variant"] for r in rows] == ["dense", "mst_warmup", "hsa_sdpa:local"]
    by = {r["variant"]: r for r in rows}
    assert by["dense"]["ratio_to_dense"] == 1.0
    assert 0 < by["mst_warmup"]["density"] < 1  # masks at the warm-up phase's mid-point density
    for r in rows:
        assert r["ms_p10"] <= r["ms_per_step_median"] <= r["ms_p90"] + r["update_ms"]
        assert r["tokens_per_s"] > 0 and r["flops_per_step"] > 0 and r["device_name"]
    # the step's counted FLOPs follow the density
    assert by["mst_warmup"]["flops_per_step"] < by["dense"]["flops_per_step"]
    # masked SDPA computes every score: no saving predicted
    assert by["hsa_sdpa:local"]["attn_block_density"] == 1.0 == by["hsa_sdpa:local"]["predicted_ratio"]


def test_ultra_phase_through_flash_split_on_cpu():
    """``mst_ultra_flash`` is the ultra phase with its attention through the flash_split backend (masked near
    part on CPU): it runs, at the ultra phase's density, and counts the pattern's attention FLOPs."""
    rows = benchmark.run_benchmark(["smoke"], [64], ["dense", "mst_ultra", "mst_ultra_flash", "hsa_flash:local_strided"],
                                   device="cpu", repeats=1, warmup=0, tokens_per_step=128, progress=False)
    by = {r["variant"]: r for r in rows}
    assert set(by) == {"dense", "mst_ultra", "mst_ultra_flash", "hsa_flash:local_strided"}
    assert by["mst_ultra_flash"]["density"] == by["mst_ultra"]["density"] < 1
    assert by["mst_ultra_flash"]["flops_per_step"] == by["mst_ultra"]["flops_per_step"]
    # the ultra phase's prediction counts its attention pattern's skipped tiles, like the HSA variants'
    assert by["mst_ultra_flash"]["predicted_ratio"] == by["hsa_flash:local_strided"]["predicted_ratio"]
    assert by["mst_ultra_flash"]["predicted_ratio"] == benchmark.predicted_ratio(
        by["mst_ultra_flash"]["attn_share_flops"], by["mst_ultra_flash"]["attn_block_density"])
    assert benchmark.predicted_ratio(0.2, None) == 1.0 and benchmark.predicted_ratio(0.2, 0.5) == 1 / 0.9
    assert by["hsa_flash:local_strided"]["flops_per_step"] < by["dense"]["flops_per_step"]


def test_rounds_interleave_and_pair_ratios_with_dense():
    """``rounds=2`` times the list twice; each row keeps its per-round times and its ratio to dense is the
    median of the per-round paired ratios (so dense's own ratio is exactly 1)."""
    rows = benchmark.run_benchmark(["smoke"], [64], ["dense", "mst_restoration"], device="cpu", repeats=2, warmup=0,
                                   tokens_per_step=128, progress=False, rounds=2)
    by = {r["variant"]: r for r in rows}
    assert by["dense"]["round_ratios"] == [1.0, 1.0] and by["dense"]["ratio_to_dense"] == 1.0
    mst = by["mst_restoration"]
    assert mst["rounds"] == 2 and len(mst["round_ms"]) == 2
    assert mst["round_ratios"] == [d / m for d, m in zip(by["dense"]["round_ms"], mst["round_ms"])]
    assert mst["ratio_to_dense"] == pytest.approx(sum(mst["round_ratios"]) / 2)
    assert min(mst["round_ms"]) <= mst["ms_per_step_median"] <= max(mst["round_ms"])
    with pytest.raises(ConfigError, match="rounds must be at least 1"):
        benchmark.run_benchmark(["smoke"], [64], ["dense"], device="cpu", rounds=0)
    with pytest.raises(ConfigError, match="include 'dense'"):
        benchmark.run_benchmark(["smoke"], [64], ["mst_warmup"], device="cpu", rounds=2)


def test_unknown_variant_and_loading(tmp_path):
    with pytest.raises(ConfigError, match="unknown benchmark variant"):
        benchmark.run_benchmark(["smoke"], [64], ["dense", "sparse_magic"], device="cpu")
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "steps.json").write_text(json.dumps([{"variant": "dense", "model": "mini", "ms_per_step_median": 1.0}]))
    (bench / "train_speed_mini.json").write_text(json.dumps({"rows": [], "device_name": "X"}))
    df = benchstore.load_benchmarks(tmp_path)
    assert list(df["variant"]) == ["dense"] and list(df["file"]) == ["steps.json"]
    (bench / "history").mkdir()
    (bench / "history" / "old.json").write_text(json.dumps([{"variant": "mst_ultra", "model": "mini"}]))
    assert list(benchstore.load_benchmarks(tmp_path)["file"]) == ["steps.json"]  # history is not mixed in
    assert list(benchstore.load_benchmarks(tmp_path, "bench/history")["variant"]) == ["mst_ultra"]
    assert [d["file"] for d in benchstore.load_json_results(tmp_path, "train_speed_*.json")] == ["train_speed_mini.json"]


def test_compile_modes_and_profile_options():
    """``--compile`` alone is the presets' mode, ``--compile MODE`` names another; a mode without compiling or
    an unknown one is an error, not silently ignored. ``profile`` on a CPU records no kernel time (there is
    no GPU to be busy) instead of a made-up one."""
    import argparse

    p = argparse.ArgumentParser()
    benchmark.add_arguments(p)
    assert p.parse_args([]).compile is None and not p.parse_args([]).profile
    assert p.parse_args(["--compile"]).compile == []  # the presets' mode
    assert p.parse_args(["--compile", "reduce-overhead", "--profile"]).compile == ["reduce-overhead"]
    assert p.parse_args(["--compile", "default", "reduce-overhead"]).compile == ["default", "reduce-overhead"]
    with pytest.raises(SystemExit):
        p.parse_args(["--compile", "fastest"])
    with pytest.raises(ConfigError, match="without compiling"):
        benchmark.run_benchmark(["smoke"], [64], ["dense"], device="cpu", compile_mode="reduce-overhead")
    with pytest.raises(ConfigError, match="unknown compile mode"):
        benchmark.run_benchmark(["smoke"], [64], ["dense"], device="cpu", compile_=True, compile_mode="fastest")
    with pytest.raises(ConfigError, match="distinct modes"):
        benchmark.run_benchmark(["smoke"], [64], ["dense"], device="cpu", compile_=True,
                                compile_mode=["default", "default"])
    (row,) = benchmark.run_benchmark(["smoke"], [64], ["dense"], device="cpu", repeats=1, warmup=0,
                                     tokens_per_step=128, progress=False, profile=True)
    assert "gpu_ms" not in row and "gpu_busy" not in row and "compile_mode" not in row


def test_several_compile_modes_interleave_and_pair_with_dense(monkeypatch):
    """Several compile modes: every (variant, mode) is timed in every round, the order reversed on odd rounds;
    ``ratio_to_dense`` pairs with dense in the row's own mode and ``ratio_to_first_mode_dense`` with dense
    in the first mode (timings faked: this checks the bookkeeping, not a GPU)."""
    ms = {("dense", "default"): [20.0, 22.0], ("mst_ultra", "default"): [25.0, 24.0],
          ("dense", "reduce-overhead"): [21.0, 21.0], ("mst_ultra", "reduce-overhead"): [20.0, 23.0]}
    order = []

    def fake(run, variant, device, repeats, warmup, profile, compile_mode):
        order.append((variant, compile_mode))
        t = ms[(variant, compile_mode)][sum(1 for o in order if o == (variant, compile_mode)) - 1]
        return {"variant": variant, "density": 1.0, "ms_per_step_median": t, "ms_p10": t, "ms_p90": t,
                "update_ms": 0.0, "tokens_per_s": 1.0, "tokens_per_step": 128, "compile_mode": compile_mode}

    monkeypatch.setattr(benchmark, "time_variant", fake)
    rows = benchmark.run_benchmark(["smoke"], [64], ["dense", "mst_ultra"], device="cpu", rounds=2,
                                   tokens_per_step=128, progress=False, compile_=True,
                                   compile_mode=["default", "reduce-overhead"])
    cells = [("dense", "default"), ("mst_ultra", "default"), ("dense", "reduce-overhead"),
             ("mst_ultra", "reduce-overhead")]
    assert order == cells + cells[::-1]
    by = {(r["variant"], r["compile_mode"]): r for r in rows}
    assert list(by) == cells
    graphs = by[("mst_ultra", "reduce-overhead")]
    assert graphs["round_ratios"] == [21 / 20, 21 / 23]  # against dense in its own mode
    assert graphs["ratio_to_first_mode_dense"] == pytest.approx((20 / 20 + 22 / 23) / 2)  # against default dense
    assert by[("dense", "reduce-overhead")]["ratio_to_dense"] == 1.0
    assert by[("dense", "reduce-overhead")]["ratio_to_first_mode_dense"] == pytest.approx((20 / 21 + 22 / 21) / 2)
    assert by[("dense", "default")]["ratio_to_first_mode_dense"] == 1.0
