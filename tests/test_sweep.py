"""Sweeps: done runs skipped, a failing run survived and reported, a corrupt stored run reported and skipped,
workers stopped with the sweep (signals, SIGKILL), results packed into one archive and merged back safely."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pandas as pd
import pytest

from mstlib import cli, presets, sweep
from mstlib.errors import MstError
from mstlib.results import RunStore
from mstlib.runlock import holder
from test_results import _fake_train
from test_train import REPO, Hold, make_corpus, tiny_run
from test_workers import alive, wait_until


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
    # no staging or old folder is left (the runs' lock files stay, as a trainer's do: mstlib.runlock)
    assert not [p for p in dst.run_dir(runs[1]).parent.iterdir() if p.name.startswith(".") and p.suffix != ".lock"]


def test_unpack_stores_done_logs_compressed_and_still_knows_them(tmp_path):
    src, runs = _store_with_runs(tmp_path / "gpu" / "results")
    pack = tmp_path / "p.tar.gz"
    sweep.pack(runs, src, pack)
    dst = RunStore(tmp_path / "home" / "results")
    sweep.unpack(pack, dst)
    d = dst.run_dir(runs[0])
    assert (d / "log.csv.gz").is_file() and not (d / "log.csv").exists()
    assert dst.load(runs[0]).log().equals(src.load(runs[0]).log())
    assert len(sweep.unpack(pack, dst)["same"]) == len(runs)  # compressed here, plain in the pack: the same
    src.compress_logs()  # and a pack of compressed logs (the book's store packed again) is the same too
    sweep.pack(runs, src, tmp_path / "q.tar.gz")
    assert len(sweep.unpack(tmp_path / "q.tar.gz", dst)["same"]) == len(runs)


def test_unpack_leaves_a_run_alone_while_a_trainer_holds_its_lock(tmp_path, capsys):
    src, runs = _store_with_runs(tmp_path / "gpu" / "results")
    pack = tmp_path / "p.tar.gz"
    sweep.pack(runs, src, pack)
    dst = RunStore(tmp_path / "home" / "results")
    with dst.lock(runs[0]):  # as a trainer of that run holds it
        res = sweep.unpack(pack, dst)
        assert res["busy"] == [runs[0].run_id()] and res["added"] == [runs[1].run_id()]
        assert not dst.run_dir(runs[0]).exists()
        assert cli.main(["sweep", "--unpack", str(pack), "--results", str(dst.root)]) == 0
        assert "busy" in capsys.readouterr().err
    assert sweep.unpack(pack, dst)["added"] == [runs[0].run_id()]  # the advice: unpack again once it stopped


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
    pid = 0  # never a process to signal

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


# ------------------------------------------------------------------------------ stopping a sweep


def _sweep_process(runs_file: Path, store: RunStore, hold, tmp: Path) -> subprocess.Popen:
    """``python -m mstlib sweep`` on CPU, in a TMPDIR of its own (where it used to leave its temp folder)."""
    tmpdir = tmp / "tmpdir"
    tmpdir.mkdir(exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", "mstlib", "sweep", "--runs", str(runs_file), "--device", "cpu",
         "--results", str(store.root)],
        cwd=REPO, env={**hold.env, "TMPDIR": str(tmpdir)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=_default_stop_signals)


def _default_stop_signals() -> None:
    """The sweep keeps a signal that was ignored when it started (this test may run as a background job,
    whose SIGINT is ignored): start it with the default dispositions."""
    for s in sweep.STOP_SIGNALS:
        signal.signal(s, signal.SIG_DFL)


def _assert_holds_the_lock(store: RunStore, run, pid: int) -> None:
    assert holder(store.lock(run).path) == pid


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_stopped_sweep_stops_its_trainer_cleans_up_and_reruns_cleanly(data_dir, tmp_path, sig):
    """A SIGTERM (as `timeout` sends) used to kill the sweep alone: its trainer ran on as an orphan, a
    rerun started a second trainer on the same run, and /tmp/mstlib-sweep-* stayed."""
    store = RunStore(tmp_path / "results")
    run = tiny_run(data_dir, "dense", **{"train.checkpoint_interval": 3})
    runs_file = tmp_path / "runs.json"
    sweep.write_runs_file([run], runs_file)
    hold = Hold(tmp_path, step=7)
    proc = _sweep_process(runs_file, store, hold, tmp_path)
    trainer = None
    try:
        trainer = hold.wait_reached(proc)  # first: the finally below must know whom to clean up
        _assert_holds_the_lock(store, run, trainer)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 128 + sig, err[-2000:]
        assert f"sweep stopped by {signal.Signals(sig).name}" in err and "run the same command again" in err
        assert not alive(trainer), "the trainer outlived its sweep"
        assert not list((tmp_path / "tmpdir").glob("mstlib-sweep-*"))  # no temporary folder left
        assert not store.is_done(run)
    finally:
        if proc.poll() is None:
            proc.kill()
        if trainer and alive(trainer):
            os.kill(trainer, signal.SIGKILL)
    if sig != signal.SIGTERM:
        return
    # the rerun resumes from the checkpoint at step 6: every step logged once
    hold.release()
    rerun = _sweep_process(runs_file, store, hold, tmp_path)
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err[-2000:] + out[-2000:]
    assert store.is_done(run)
    assert pd.read_csv(store.run_dir(run) / "log.csv")["step"].tolist() == list(range(12))


def test_a_sweep_killed_with_sigkill_takes_its_trainer_with_it(data_dir, tmp_path):
    store = RunStore(tmp_path / "results")
    run = tiny_run(data_dir, "dense")
    runs_file = tmp_path / "runs.json"
    sweep.write_runs_file([run], runs_file)
    hold = Hold(tmp_path, step=2)
    proc = _sweep_process(runs_file, store, hold, tmp_path)
    trainer = None
    try:
        trainer = hold.wait_reached(proc)
        _assert_holds_the_lock(store, run, trainer)
        proc.kill()
        proc.wait(timeout=60)
        wait_until(lambda: not alive(trainer), 30, "the orphaned trainer to die")
    finally:
        if proc.poll() is None:
            proc.kill()
        if trainer and alive(trainer):
            os.kill(trainer, signal.SIGKILL)


def test_a_signal_ignored_when_the_sweep_starts_stays_ignored():
    """Under nohup (SIGHUP ignored) or as a script's background job (SIGINT ignored) the sweep must not
    start stopping on those signals."""
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with sweep._StopSignals(sweep.STOP_SIGNALS):
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN)
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)


# ----------------------------------------------------------------------------- a corrupt store


def test_a_corrupt_done_run_is_reported_by_name_and_skipped_never_fatal(data_dir, tmp_path, capsys):
    """A truncated metrics.json of a done run used to make the sweep train the rest, then raise in its
    report: no report, no pack."""
    store = RunStore(tmp_path / "results")
    good = tiny_run(data_dir, "dense", **{"train.max_iters": 2})
    broken = tiny_run(data_dir, "dense", **{"train.max_iters": 2, "seed": 1})
    _fake_train(broken, store)
    metrics = store.run_dir(broken) / "metrics.json"
    metrics.write_text(metrics.read_text()[:7])
    runs_file = tmp_path / "runs.json"
    sweep.write_runs_file([good, broken], runs_file)
    pack = tmp_path / "out.tar.gz"
    rc = cli.main(["sweep", "--runs", str(runs_file), "--device", "cpu", "--results", str(store.root),
                   "--pack", str(pack)])
    out, err = capsys.readouterr()
    assert rc == 1
    assert store.is_done(good)  # the rest was trained
    line = next(line for line in out.splitlines() if broken.run_id() in line and "corrupt" in line)
    assert "corrupt" in line
    assert f"{broken.run_id()} is corrupt, skipped" in out and "metrics.json is not valid JSON" in out
    assert "--no-resume" in out  # what to do about it
    assert f"1 stored run(s) are corrupt and were skipped: {broken.run_id()}" in err
    with tarfile.open(pack) as tar:
        names = tar.getnames()
        manifest = json.loads(tar.extractfile(sweep.MANIFEST).read())
    assert f"smoke/dense/{good.run_id()}/metrics.json" in names
    assert not [n for n in names if broken.run_id() in n]
    entry = next(r for r in manifest["runs"] if r["run_id"] == broken.run_id())
    assert "metrics.json is not valid JSON" in entry["corrupt"] and not entry["done"]
    # --pack-only says what is wrong too
    assert cli.main(["sweep", "--runs", str(runs_file), "--results", str(store.root), "--pack-only",
                     "--pack", str(pack)]) == 1
    assert f"{broken.run_id()} is corrupt, left out" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--workers", "--per-gpu", "--gpus"])
def test_worker_counts_must_be_positive(tmp_path, flag):
    """--workers 0 silently became 1, --per-gpu 0 divided by zero on a GPU machine."""
    runs_file = tmp_path / "runs.json"
    sweep.write_runs_file([presets.make("smoke", "dense")], runs_file)
    assert cli.main(["sweep", "--runs", str(runs_file), "--device", "cpu", "--results", str(tmp_path / "r"),
                     flag, "0"]) == 2


def test_a_truncated_pack_changes_nothing_and_its_advice_works(tmp_path):
    src, runs = _store_with_runs(tmp_path / "gpu" / "results")
    runs_file = tmp_path / "runs.json"
    sweep.write_runs_file(runs, runs_file)
    pack = tmp_path / "p.tar.gz"
    sweep.pack(runs, src, pack)
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(pack.read_bytes()[: pack.stat().st_size // 2])  # a transfer that broke off
    dst = RunStore(tmp_path / "home" / "results")
    with pytest.raises(MstError, match="truncated or corrupt, and nothing was unpacked") as e:
        sweep.unpack(cut, dst)
    assert "--pack-only --pack" in str(e.value)
    assert not dst.root.exists() or not any(dst.root.rglob("config.json"))
    with pytest.raises(MstError, match="no results pack at"):
        sweep.unpack(tmp_path / "nowhere.tar.gz", dst)
    # the advice: the same sweep arguments where the runs are, plus --pack-only --pack NAME.tar.gz
    again = tmp_path / "again.tar.gz"
    assert cli.main(["sweep", "--runs", str(runs_file), "--results", str(src.root), "--pack-only",
                     "--pack", str(again)]) == 0
    assert sorted(sweep.unpack(again, dst)["added"]) == sorted(r.run_id() for r in runs)
