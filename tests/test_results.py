"""The run store: atomic writes, run-id stability, the folder layout, tables, reuse of stored results, and
provenance."""

from __future__ import annotations

import json
import os
import shutil
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
        changed = C.from_dict(RunConfig, _set(base, path, _perturbed(value, _leaf_type(path))), "")
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


def test_done_logs_are_stored_compressed_and_read_the_same(tmp_path):
    store = RunStore(tmp_path / "results")
    done, training = presets.make("smoke", "dense", seed=0), presets.make("smoke", "dense", seed=1)
    _fake_train(done, store)
    store.begin(training, {}, fresh=True)
    (store.run_dir(training) / results.LOG).write_text("step,loss\n0,2.0\n")
    before = store.load(done).log()
    assert store.compress_logs() == 1 and store.compress_logs() == 0
    d = store.run_dir(done)
    assert not (d / results.LOG).exists() and (d / results.LOG_GZ).is_file()
    assert (store.run_dir(training) / results.LOG).is_file()  # its trainer appends to it on resume
    assert store.load(done).log().equals(before)
    # the same text compresses to the same bytes (no time stamp): a stored run does not change in git
    assert results.gzip_log(b"step,loss\n0,1.0\n") == (d / results.LOG_GZ).read_bytes()
    assert results.same_files(d, {results.LOG: b"step,loss\n0,1.0\n"})
    assert not results.same_files(d, {results.LOG: b"step,loss\n0,1.5\n"})
    # a fresh start removes the compressed log too
    store.begin(done, {}, fresh=True)
    assert not (d / results.LOG_GZ).exists()


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
    out = mstlib.train.ensure(store, runs, device="cpu")
    assert calls == [runs[0].run_id(), runs[2].run_id()]
    assert [r.run for r in out] == runs and all(r.done for r in out)
    mstlib.train.ensure(store, runs, device="cpu")
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


# ------------------------------------------------------------------------------------ corrupt runs


def _truncate(path: Path) -> None:
    path.write_text(path.read_text()[:10])


def test_a_corrupt_run_is_named_and_skipped_by_listings(tmp_path):
    """A truncated metrics.json used to make find() and table() raise: one damaged folder hid every run."""
    from mstlib.errors import CorruptRunError, CorruptRunWarning

    store = RunStore(tmp_path / "results")
    runs = [presets.make("smoke", "dense", seed=s) for s in (0, 1, 2)]
    for r in runs:
        _fake_train(r, store)
    _truncate(store.run_dir(runs[1]) / "metrics.json")
    with pytest.warns(CorruptRunWarning, match=rf"corrupt run: run {runs[1].run_id()} at .*metrics.json is not valid JSON"):
        found = store.find()
    assert [r.run_id for r in found] == [runs[0].run_id(), runs[2].run_id()]
    with pytest.warns(CorruptRunWarning, match=runs[1].run_id()):
        df = store.table(runs)
    assert df["run_id"].tolist() == [runs[0].run_id(), runs[2].run_id()]
    with pytest.raises(CorruptRunError, match=r"train it again .*--no-resume"):
        store.load(runs[1])
    with pytest.raises(MstError, match="not a run folder"):  # a run that is not stored at all stays an error
        store.table([presets.make("smoke", "dense", seed=9)])
    # an unreadable config: nothing says which run it is
    _truncate(store.run_dir(runs[2]) / "config.json")
    with pytest.warns(CorruptRunWarning, match=r"config.json cannot be read .*\(rm -r .*--no-resume"):
        assert [r.run_id for r in store.find()] == [runs[0].run_id()]
    # a retrain in progress (a hidden folder) is not a run of the store
    hidden = store.run_dir(runs[0]).with_name(f".{runs[0].run_id()}.retrain")
    hidden.mkdir()
    (hidden / "config.json").write_text(json.dumps(runs[0].to_dict()))
    with pytest.warns(CorruptRunWarning):
        assert [r.path for r in store.find(done_only=False)] == [store.run_dir(runs[0])]


def test_the_repair_of_each_kind_of_corrupt_run_works(tmp_path, capsys):
    """Each message's command, run as given, repairs the run: "delete the run folder and train it again"
    used to fail on the stale checkpoint."""
    import shlex

    from mstlib import cli
    from mstlib.errors import CorruptRunError
    from test_train import make_corpus, tiny_run

    run = tiny_run(make_corpus(tmp_path / "data"), "dense", **{"train.max_iters": 2})
    store = RunStore(tmp_path / "results")
    assert cli.main(["train", "--config", _write(tmp_path, run), "--results", str(store.root), "--device", "cpu",
                     "--no-progress"]) == 0
    d = store.run_dir(run)
    good = store.load(run).metrics

    def repair(name: str, marker: str) -> None:
        _truncate(d / name)
        with pytest.raises(CorruptRunError) as err:
            store.load(run)
        command = str(err.value).split(marker, 1)[1].split(" (or, for a run", 1)[0]
        for part in command.split(" && "):
            argv = shlex.split(part)
            if argv[0] == "rm":
                for target in argv[1:]:
                    if target != "-r":
                        shutil.rmtree(target) if Path(target).is_dir() else Path(target).unlink()
            else:
                assert argv[:3] == ["python", "-m", "mstlib"]
                assert cli.main(argv[3:] + ["--device", "cpu", "--no-progress"]) == 0, capsys.readouterr().err
        assert store.load(run).metrics["final_val_loss"] == good["final_val_loss"]

    repair("metrics.json", "train it again (the old result stays until the new one is done): ")
    repair("provenance.json", "train it again (the old result stays until the new one is done): ")
    repair("done", "train it again (the old result stays until the new one is done): ")
    _truncate(d / "config.json")
    with pytest.raises(CorruptRunError, match="Delete the folder") as err:
        store.load(run)
    shutil.rmtree(shlex.split(str(err.value).split("(rm -r ", 1)[1].split(")", 1)[0])[0])
    assert cli.main(["train", "--config", _write(tmp_path, run), "--results", str(store.root), "--device", "cpu",
                     "--no-progress", "--no-resume"]) == 0
    assert store.load(run).metrics["final_val_loss"] == good["final_val_loss"]


def _write(tmp_path: Path, run: RunConfig) -> str:
    path = tmp_path / "run.json"
    path.write_text(json.dumps(run.to_dict()))
    return str(path)


def test_unreadable_eval_json_is_repaired_by_evaluating_again(tmp_path, monkeypatch):
    """The training result is intact: the advice deletes eval.json and evaluates again (no retraining)."""
    import shlex

    from mstlib import pipeline
    from mstlib.errors import CorruptRunError

    store = RunStore(tmp_path / "results")
    run = presets.make("smoke", "dense")
    _fake_train(run, store)
    store.write_eval(run, {"tasks": {"x": 1}})
    _truncate(store.run_dir(run) / "eval.json")
    with pytest.raises(CorruptRunError, match="delete it and evaluate again") as err:
        store.load(run)
    command = str(err.value).split("evaluate again: ", 1)[1].split(" (or, for a run", 1)[0]
    rm, train = command.split(" && ")
    Path(shlex.split(rm)[1]).unlink()
    argv = shlex.split(train)
    assert argv[3] == "train" and argv[-1] == "--evaluate"
    evaluated = []
    monkeypatch.setattr(pipeline, "train_and_evaluate",
                        lambda r, s, **kw: evaluated.append(r.run_id()) or s.load(r))
    from mstlib import cli

    assert cli.main(argv[3:]) == 0  # the done run is not retrained; its evaluation is redone
    assert evaluated == [run.run_id()] and store.load(run).metrics["final_val_loss"] == 3.0


@pytest.mark.parametrize("exchange", [True, False])
def test_a_retrained_folder_is_swapped_in_whole(tmp_path, monkeypatch, exchange):
    """With Linux's atomic exchange and with the two-rename fallback (other systems and file systems)."""
    if not exchange:
        monkeypatch.setattr(results, "_exchange", lambda a, b: False)
    dest, new = tmp_path / "abc", tmp_path / ".abc.retrain"
    for d, text in ((dest, "old"), (new, "new")):
        d.mkdir()
        (d / "metrics.json").write_text(text)
    (dest / "eval.json").write_text("of the old model")
    results._swap_in(new, dest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["abc"]
    assert [p.name for p in dest.iterdir()] == ["metrics.json"] and (dest / "metrics.json").read_text() == "new"
    results._swap_in(tmp_path / "missing", dest)  # nothing retrained (a checkpoint folder that is not there)
    assert (dest / "metrics.json").read_text() == "new"
