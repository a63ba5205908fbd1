"""Sweeps: done runs skipped, a failing run survived and reported, results packed into one archive and
merged back safely."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from mstlib import cli, presets, sweep
from mstlib.results import RunStore
from test_results import _fake_train
from test_train import make_corpus, tiny_run


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("data"))


def test_sweep_skips_done_runs_survives_a_failing_run_and_packs(data_dir, tmp_path, capsys):
    store = RunStore(tmp_path / "results")
    good = tiny_run(data_dir, "dense", **{"train.max_iters": 2, "train.eval_interval": 0})
    done = tiny_run(data_dir, "dense", **{"train.max_iters": 2, "seed": 1})
    bad = tiny_run(data_dir, "dense", **{"train.max_iters": 2, "data.corpus": "no-such-corpus"})
    _fake_train(done, store)
    runs_file = tmp_path / "runs.json"
    sweep.write_runs_file([good, done, bad, good], runs_file)  # a duplicate is run once
    pack = tmp_path / "out.tar.gz"

    rc = cli.main(["sweep", "--runs", str(runs_file), "--device", "cpu", "--workers", "2",
                   "--results", str(store.root), "--pack", str(pack)])
    out, err = capsys.readouterr()
    assert rc == 1  # one run failed
    assert "3 runs, 1 already done, 2 to train" in out
    assert store.is_done(good) and not store.is_done(bad)
    assert bad.run_id() in err and "failed" in out
    assert "no-such-corpus" in out  # the failing run's log tail is shown
    assert (store.run_dir(bad) / sweep.RUN_LOG).is_file() and (store.run_dir(good) / sweep.RUN_LOG).is_file()

    with tarfile.open(pack) as tar:
        names = tar.getnames()
        manifest = json.loads(tar.extractfile(sweep.MANIFEST).read())
    assert f"smoke/dense/{good.run_id()}/metrics.json" in names
    assert f"smoke/dense/{good.run_id()}/log.csv" in names
    assert not [n for n in names if n.endswith(".pt")]  # never checkpoints
    assert {r["run_id"]: r["done"] for r in manifest["runs"]} == {
        good.run_id(): True, done.run_id(): True, bad.run_id(): False}
    assert {o["run_id"]: o["status"] for o in manifest["outcomes"]} == {
        good.run_id(): "ok", done.run_id(): "skipped", bad.run_id(): "failed"}

    # and again: everything that succeeded is skipped, nothing is retrained
    mtime = (store.run_dir(good) / "metrics.json").stat().st_mtime_ns
    outcomes = sweep.run_sweep([good, done], store, device="cpu", echo=lambda s: None)
    assert [o.status for o in outcomes] == ["skipped", "skipped"]
    assert (store.run_dir(good) / "metrics.json").stat().st_mtime_ns == mtime


def _store_with_runs(root: Path, seeds=(0, 1)) -> tuple[RunStore, list]:
    store = RunStore(root)
    runs = [presets.make("smoke", "dense", seed=s) for s in seeds]
    for r in runs:
        _fake_train(r, store)
    return store, runs


def test_unpack_merges_and_keeps_local_results(tmp_path):
    src, runs = _store_with_runs(tmp_path / "gpu" / "results")
    pack = tmp_path / "p.tar.gz"
    sweep.pack(runs, src, pack)
    dst = RunStore(tmp_path / "home" / "results")
    assert sweep.unpack(pack, dst)["added"] == [r.run_id() for r in sorted(runs, key=lambda r: r.run_id())]
    assert all(dst.is_done(r) for r in runs)
    assert dst.load(runs[0]).metrics == src.load(runs[0]).metrics
    assert sweep.unpack(pack, dst)["same"] and not sweep.unpack(pack, dst)["added"]
    # a local eval.json added after the trip does not make the run different
    dst.write_eval(runs[0], {"ppl": 1.0})
    assert runs[0].run_id() in sweep.unpack(pack, dst)["same"]
    # a run done here with other contents is kept unless --overwrite
    (dst.run_dir(runs[1]) / "metrics.json").write_text('{"final_val_loss": 0}')
    assert sweep.unpack(pack, dst)["conflict"] == [runs[1].run_id()]
    assert json.loads((dst.run_dir(runs[1]) / "metrics.json").read_text()) == {"final_val_loss": 0}
    assert sweep.unpack(pack, dst, overwrite=True)["replaced"] == [runs[1].run_id()]
    assert dst.load(runs[1]).metrics == src.load(runs[1]).metrics
    assert not [p for p in dst.run_dir(runs[1]).parent.iterdir() if p.name.startswith(".")]


def _add(tar: tarfile.TarFile, name: str, data: bytes = b"x", kind: bytes = tarfile.REGTYPE, link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.type = kind
    info.linkname = link
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def test_unpack_rejects_unsafe_members_and_forged_runs(tmp_path):
    src, runs = _store_with_runs(tmp_path / "src", seeds=(0,))
    run = runs[0]
    cfg = (src.run_dir(run) / "config.json").read_bytes()
    forged = json.loads(cfg)
    forged["train"]["lr"] = 0.5  # config no longer hashes to the folder name
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        _add(tar, "../outside.txt")
        _add(tar, "/abs/smoke/dense/x/config.json")
        _add(tar, f"smoke/dense/{run.run_id()}/ckpt.pt")
        _add(tar, f"smoke/dense/{run.run_id()}/link.csv", kind=tarfile.SYMTYPE, link="/etc/passwd")
        _add(tar, f"smoke/dense/{run.run_id()}/log.csv", kind=tarfile.SYMTYPE, link="/etc/passwd")
        _add(tar, f"smoke/dense/{run.run_id()}/config.json", json.dumps(forged).encode())
        _add(tar, f"smoke/dense/{run.run_id()}/done", b"{}")
    dst = RunStore(tmp_path / "dst" / "results")
    res = sweep.unpack(evil, dst)
    assert not res["added"] and not res["replaced"]
    assert len(res["rejected"]) == 6
    assert not (tmp_path / "dst" / "outside.txt").exists() and not (tmp_path / "outside.txt").exists()
    assert not dst.is_done(run)


def test_run_lists_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "runs.json"
    assert cli.main(["sweep", "--preset", "smoke", "--methods", "dense", "mst", "--seeds", "0", "1",
                     "--set", "train.max_iters=20", "--write-runs", str(out)]) == 0
    runs = sweep.load_runs_file(out)
    assert [(r.method, r.seed) for r in runs] == [("dense", 0), ("dense", 1), ("mst", 0), ("mst", 1)]
    assert all(r.train.max_iters == 20 for r in runs)
    assert cli.main(["sweep", "--runs", str(out), "--dry-run", "--results", str(tmp_path / "r")]) == 0
    assert capsys.readouterr().out.count("todo") == 4


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert sweep.visible_gpus() == ["2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert sweep.visible_gpus() == []


class _FakePopen:
    """Stands in for a training process: finishes on its second poll, writing the run's results."""

    running = 0
    peak = 0
    devices: list[str] = []

    def __init__(self, cmd, env, **kw):
        from mstlib.config import RunConfig

        self.run = RunConfig.from_dict(json.loads(Path(cmd[cmd.index("--config") + 1]).read_text()))
        self.store = RunStore(cmd[cmd.index("--results") + 1])
        self.polls = 0
        _FakePopen.devices.append(env["CUDA_VISIBLE_DEVICES"])
        _FakePopen.running += 1
        _FakePopen.peak = max(_FakePopen.peak, _FakePopen.running)

    def poll(self):
        self.polls += 1
        if self.polls < 2:
            return None
        _fake_train(self.run, self.store)
        _FakePopen.running -= 1
        return 0


def test_one_process_per_gpu_with_its_own_cuda_visible_devices(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "visible_gpus", lambda: ["4", "7"])
    monkeypatch.setattr(sweep.subprocess, "Popen", _FakePopen)
    store = RunStore(tmp_path / "results")
    runs = [presets.make("smoke", "dense", seed=s) for s in range(5)]
    outcomes = sweep.run_sweep(runs, store, device="auto", poll_s=0.0, echo=lambda s: None)
    assert [o.status for o in outcomes] == ["ok"] * 5
    assert _FakePopen.peak == 2 and sorted(set(_FakePopen.devices)) == ["4", "7"]
    _FakePopen.devices, _FakePopen.peak = [], 0
    more = [presets.make("smoke", "dense", seed=s) for s in range(5, 9)]
    sweep.run_sweep(more, store, device="auto", per_gpu=2, poll_s=0.0, echo=lambda s: None)
    assert _FakePopen.peak == 4 and sorted(_FakePopen.devices) == ["4", "4", "7", "7"]
    with pytest.raises(Exception, match="only 2 GPU"):
        sweep.run_sweep(runs, store, gpus=3, echo=lambda s: None)
