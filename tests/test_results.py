"""The run store: atomic writes, run-id stability, the folder layout, tables, reuse of stored results, and
provenance."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import pytest

from mstlib import config as C
from mstlib import presets, provenance, results
from mstlib.config import RunConfig
from mstlib.errors import MstError
from mstlib.results import RunStore, atomic_write_json, flatten

REPO = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------- atomic writes


def _no_temporaries(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_atomic_write_keeps_old_file_when_serialising_fails(tmp_path):
    path = tmp_path / "metrics.json"
    atomic_write_json(path, {"loss": 1.0})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"loss": object()})
    assert json.loads(path.read_text()) == {"loss": 1.0}
    assert _no_temporaries(tmp_path)


@pytest.mark.parametrize("crash_in", ["fsync", "replace"])
def test_atomic_write_keeps_old_file_on_a_crash_mid_write(tmp_path, monkeypatch, crash_in):
    """A crash after part of the new file is on disk (in fsync) or just before the rename leaves the old
    file whole and no temporary behind."""
    path = tmp_path / "metrics.json"
    atomic_write_json(path, {"loss": 1.0, "steps": 10})

    def crash(*a, **k):
        raise OSError("disk gone")

    monkeypatch.setattr(os, crash_in, crash)
    with pytest.raises(OSError, match="disk gone"):
        atomic_write_json(path, {"loss": 2.0, "steps": 20, "pad": "x" * 100_000})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"loss": 1.0, "steps": 10}
    assert _no_temporaries(tmp_path)


# ----------------------------------------------------------------------------------------- run ids


def _leaf_type(path: str) -> Any:
    typ: Any = RunConfig
    for part in path.split("."):
        typ = get_type_hints(typ)[part]
    return typ


def _perturbed(value: Any, typ: Any) -> Any:
    """Another value of the same type (validation is not the point here: only the hash is)."""
    if get_origin(typ) is Literal:
        return next(v for v in get_args(typ) if v != value)
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value + 0.125
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, list):
        return value + [0]
    raise AssertionError(f"unexpected leaf {value!r}")


def _set(d: dict, path: str, value: Any) -> dict:
    d = json.loads(json.dumps(d))
    node = d
    *head, last = path.split(".")
    for p in head:
        node = node[p]
    node[last] = value
    return d


def test_run_id_changes_when_any_single_leaf_changes():
    run = presets.make("mini", "mst")
    base = run.to_dict()
    leaves = flatten(base)
    assert len(leaves) > 40
    ids = {run.run_id()}
    for path, value in leaves.items():
        value = list(value) if isinstance(value, tuple) else value
        changed = C._from_dict(RunConfig, _set(base, path, _perturbed(value, _leaf_type(path))), "")
        rid = changed.run_id()
        assert rid not in ids, f"changing {path} did not change the run id"
        ids.add(rid)


def _reversed_keys(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _reversed_keys(x[k]) for k in reversed(list(x))}
    return x


def test_run_id_does_not_depend_on_key_order():
    run = presets.make("smoke", "mst", seed=3)
    d = _reversed_keys(run.to_dict())
    assert list(d) != list(run.to_dict())
    assert RunConfig.from_dict(d).run_id() == run.run_id()


def test_run_id_is_equal_across_processes():
    runs = [presets.make("smoke", m, seed=s) for m in ("dense", "mst") for s in (0, 1)]
    code = ("import json, sys; from mstlib.config import RunConfig; "
            "print(json.dumps([RunConfig.from_dict(d).run_id() for d in json.load(sys.stdin)]))")
    ids = []
    for hashseed in ("1", "2"):  # Python's str hash differs between these processes
        out = subprocess.run([sys.executable, "-c", code], input=json.dumps([r.to_dict() for r in runs]),
                             capture_output=True, text=True, cwd=REPO, timeout=120,
                             env={**os.environ, "PYTHONHASHSEED": hashseed, "PYTHONPATH": str(REPO)})
        assert out.returncode == 0, out.stderr
        ids.append(json.loads(out.stdout))
    assert ids[0] == ids[1] == [r.run_id() for r in runs]
    assert len(set(ids[0])) == 4


# ------------------------------------------------------------------------------------------ the store


def _fake_train(run: RunConfig, store: RunStore, **_: Any) -> results.RunResult:
    """What mstlib.train writes, without training."""
    store.begin(run, {"seed": run.seed, "start_utc": provenance.utc_now()}, fresh=True)
    (store.run_dir(run) / results.LOG).write_text("step,loss\n0,1.0\n")
    store.finish(run, {"final_val_loss": 3.0 + run.seed, "tokens": 10}, {"seed": run.seed})
    return store.load(run)


def test_store_layout_load_find_and_table(tmp_path):
    store = RunStore(tmp_path / "results")
    assert store.checkpoints == tmp_path / "checkpoints" / "results"
    runs = [presets.make("smoke", m, seed=s) for m in ("dense", "mst") for s in (0, 1)]
    for r in runs[:3]:
        _fake_train(r, store)
    assert store.run_dir(runs[0]) == tmp_path / "results" / "smoke" / "dense" / runs[0].run_id()
    assert [store.is_done(r) for r in runs] == [True, True, True, False]
    # a started, unfinished run is not done and not found by default
    store.begin(runs[3], {}, fresh=True)
    assert not store.is_done(runs[3])
    assert len(store.find()) == 3 and len(store.find(done_only=False)) == 4
    assert [r.run.seed for r in store.find(method="dense")] == [0, 1]
    assert store.find(preset="mini") == []
    res = store.load(runs[0])
    assert res.done and res.metrics["final_val_loss"] == 3.0 and res.run == runs[0]
    assert res.log()["loss"].tolist() == [1.0]
    # eval results only for done runs; then they show in the table
    with pytest.raises(MstError, match="not done"):
        store.write_eval(runs[3], {"lambada": {"acc": 0.1}})
    store.write_eval(runs[0], {"lambada": {"acc": 0.5}})
    df = store.table(runs[:3])
    assert len(df) == 3
    assert {"run_id", "method", "seed", "train.lr", "schedule.s_max", "final_val_loss"} <= set(df.columns)
    assert df.loc[0, "eval.lambada.acc"] == 0.5
    assert df["final_val_loss"].tolist() == [3.0, 4.0, 3.0]
    assert results.table(store.find()).shape[0] == 3


def test_begin_fresh_clears_an_abandoned_attempt(tmp_path):
    store = RunStore(tmp_path / "results")
    run = presets.make("smoke", "dense")
    _fake_train(run, store)
    store.begin(run, {}, fresh=True)
    d = store.run_dir(run)
    assert not (d / "done").exists() and not (d / "metrics.json").exists() and not (d / "log.csv").exists()


def test_ensure_trains_missing_runs_and_reuses_stored_ones(tmp_path, monkeypatch):
    import mstlib.train

    calls: list[str] = []

    def fake(run, store, **kw):
        calls.append(run.run_id())
        return _fake_train(run, store)

    monkeypatch.setattr(mstlib.train, "train", fake)
    store = RunStore(tmp_path / "results")
    runs = [presets.make("smoke", "dense", seed=s) for s in (0, 1, 2)]
    _fake_train(runs[1], store)
    out = store.ensure(runs, device="cpu")
    assert calls == [runs[0].run_id(), runs[2].run_id()]
    assert [r.run for r in out] == runs and all(r.done for r in out)
    store.ensure(runs, device="cpu")
    assert len(calls) == 2  # nothing retrained


def test_load_rejects_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(MstError, match="not a run folder"):
        RunStore(tmp_path).load(tmp_path)
    d = tmp_path / "x"
    d.mkdir()
    (d / "config.json").write_text("{not json")
    with pytest.raises(MstError, match="not valid JSON"):
        results.load_run_dir(d)


# ----------------------------------------------------------------------------------------- provenance


def test_provenance_has_versions_device_and_no_hostname(monkeypatch):
    p = provenance.collect(seed=7, device="cpu", world_size=1)
    assert p["seed"] == 7 and p["world_size"] == 1 and p["device"] == "cpu"
    assert p["device_name"] and p["start_utc"].endswith("+00:00")
    for pkg in ("python", "torch", "numpy", "tiktoken"):
        assert p["packages"][pkg]
    assert p["git"]["source"] in ("git", "unavailable")
    assert os.uname().nodename not in json.dumps(p)
    # a copy of the tree without .git (the GPU machine) records the commit it is told
    monkeypatch.setenv("MSTLIB_GIT_COMMIT", "abc123")
    monkeypatch.setenv("MSTLIB_GIT_DIRTY", "0")
    assert provenance.git_state() == {"commit": "abc123", "dirty": False, "source": "env"}
