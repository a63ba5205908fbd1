import pytest

from mstlib import experiments, pipeline, presets
from mstlib.errors import MstError
from mstlib.results import RunStore


def _variants(preset="smoke", methods=("dense", "mst")):
    return [v for v in experiments.variants_for("main", preset, [0]) if v.run.method in methods]


def test_collect_trains_once_then_reads_the_store(tmp_path, monkeypatch, with_shared_data):
    vs = _variants()
    df = pipeline.collect(vs, preset="smoke", device="cpu", results_dir=str(tmp_path), evaluate=False)
    assert list(df["method"]) == ["dense", "mst"] and list(df["seed"]) == [0, 0]
    for col in ("run_id", "metrics.final_val_loss", "metrics.flops_total", "provenance.device_name", "config"):
        assert col in df.columns, col
    assert df.loc[df["method"] == "mst", "metrics.flops_total"].item() < df.loc[df["method"] == "dense", "metrics.flops_total"].item()

    def no_training(*a, **k):
        raise AssertionError("a stored run was trained again")

    monkeypatch.setattr("mstlib.train.train", no_training)
    again = pipeline.collect(vs, preset="smoke", device="cpu", results_dir=str(tmp_path), evaluate=False)
    assert list(again["run_id"]) == list(df["run_id"])
    logs = pipeline.logs(again, results_dir=str(tmp_path))
    assert set(logs["variant"]) == {"dense", "mst"} and {"step", "loss", "density"} <= set(logs.columns)
    s = pipeline.summary(again, ["metrics.final_val_loss"], by="method")
    assert list(s["n"]) == [1, 1] and s["metrics.final_val_loss_fmt"].str.contains("n=1").all()
    with pytest.raises(MstError, match="metric 'metrics.nope'"):
        pipeline.summary(again, ["metrics.nope"])


def test_train_and_evaluate_writes_eval(tmp_path, with_shared_data):
    run = presets.make("smoke", "dense")
    res = pipeline.train_and_evaluate(run, RunStore(tmp_path), device="cpu", progress=False, tasks="wikitext2,rte")
    assert res.done and set(res.eval["tasks"]) == {"wikitext2", "rte"}
    assert res.eval["protocol"]["max_tokens"] == pipeline.EVAL_SETTINGS["smoke"]["max_tokens"]


def test_gpu_preset_without_runs_names_the_sweep(tmp_path, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(MstError, match="python -m mstlib sweep --experiment all --preset mini"):
        pipeline.collect(_variants("mini"), preset="mini", results_dir=str(tmp_path))
    with pytest.raises(MstError, match="is preset 'mini', not 'smoke'"):
        pipeline.collect(_variants("mini"), preset="smoke", results_dir=str(tmp_path))


def test_allow_missing_reports_what_is_not_stored(tmp_path, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    vs = _variants("mini")
    df = pipeline.collect(vs, preset="mini", results_dir=str(tmp_path), allow_missing=True)
    assert df.empty and df.attrs["missing"] == [(v.variant, 0, v.run.run_id()) for v in vs]
    # a stored run is read, the others listed
    store = RunStore(tmp_path)
    done = vs[0].run
    store.begin(done, {"seed": 0}, fresh=True)
    store.finish(done, {"final_val_loss": 5.0}, {"seed": 0})
    df = pipeline.collect(vs, preset="mini", results_dir=str(tmp_path), allow_missing=True, evaluate=False)
    assert list(df["run_id"]) == [done.run_id()] and len(df.attrs["missing"]) == len(vs) - 1


def test_smoke_corpus_is_remade_when_its_sources_change_or_it_is_corrupt(tmp_path, monkeypatch):
    from mstlib import data as corpus

    data = tmp_path / "data"
    run = presets.make("smoke", "dense", overrides={"data.data_dir": str(data)})
    for seed in (0, 1):
        corpus.make_example_source(tmp_path / f"shared{seed}" / "data" / "corpus", seed=seed, docs_per_shard=3)
    monkeypatch.setenv("MST_SHARED_DIR", str(tmp_path / "shared0"))
    pipeline.ensure_smoke_corpus(run)
    first = corpus.read_meta(data, "offline-smoke")["splits"]["train"]["sha256"]
    monkeypatch.setenv("MST_SHARED_DIR", str(tmp_path / "shared1"))  # e.g. the real corpus after stand-ins
    pipeline.ensure_smoke_corpus(run)
    second = corpus.read_meta(data, "offline-smoke")["splits"]["train"]["sha256"]
    assert second != first
    train_bin = data / "offline-smoke" / "train.bin"
    raw = bytearray(train_bin.read_bytes())
    raw[10] ^= 0xFF
    train_bin.write_bytes(bytes(raw))
    pipeline.ensure_smoke_corpus(run)
    corpus.verify_corpus(data, "offline-smoke")  # made again, so it verifies
    monkeypatch.setenv("MST_SHARED_DIR", str(tmp_path / "nothing"))
    pipeline.ensure_smoke_corpus(run)  # no sources here: the prepared copy is kept, not an error
    assert corpus.read_meta(data, "offline-smoke")["splits"]["train"]["sha256"] == second
