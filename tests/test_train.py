"""The trainer: log columns, exact resume (bitwise on CPU, across processes), the finite-loss guard, DDP
against one process with the same global batch, and loading a trained model.

Runs use a tiny GPT (2 x 32, context 32, vocabulary 512) on a synthetic token file made here, so the whole
file takes seconds on two CPU cores.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mstlib import data as corpus
from mstlib import commands, presets
from mstlib.errors import CheckpointError, ConfigError, TrainingError
from mstlib.results import RunStore
from mstlib import train as T

REPO = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------------ helpers


def make_corpus(root: Path, name: str = "tiny", n_train: int = 20_000, n_val: int = 4_000) -> Path:
    """A prepared corpus in mstlib's format: a noisy repeating sequence over 500 token ids (learnable)."""
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    splits = {}
    for split, n in (("train", n_train), ("val", n_val)):
        base = np.tile(np.arange(97), n // 97 + 1)[:n]
        toks = np.where(rng.random(n) < 0.1, rng.integers(0, 500, n), base).astype(np.uint16)
        f = d / f"{split}.bin"
        toks.tofile(f)
        splits[split] = {"file": f.name, "tokens": n, "sha256": hashlib.sha256(f.read_bytes()).hexdigest()}
    (d / "meta.json").write_text(json.dumps({"format": corpus.FORMAT, "splits": splits}))
    return root


def tiny_run(data_dir: Path, method: str = "dense", **overrides):
    """A smoke-preset run shrunk further: 12 steps of 2 micro-batches of 2 x 32 tokens; MST updates at steps
    4 and 8, hybrid sparse attention (window 8) during the ultra phase [3, 9)."""
    o = {
        "model.vocab_size": 512, "model.n_layer": 2, "model.n_head": 2, "model.n_embd": 32, "model.block_size": 32,
        "train.max_iters": 12, "train.batch_size": 2, "train.grad_accum": 2, "train.warmup_iters": 2,
        "train.eval_interval": 4, "train.eval_iters": 2, "train.log_interval": 3, "train.checkpoint_interval": 0,
        "topology.update_interval": 4, "attention.window": 8, "attention.stride": 8,
        "data.data_dir": str(data_dir), "data.corpus": "tiny",
    }
    o.update(overrides)
    return presets.make("smoke", method, overrides=o)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def mst_straight(data_dir, tmp_path_factory):
    """The tiny MST run trained straight through once (shared by the tests that compare against it)."""
    run = tiny_run(data_dir, "mst")
    store = RunStore(tmp_path_factory.mktemp("straight") / "results")
    T.train(run, store, device="cpu", progress=False)
    return run, store


def deterministic_log(path: Path) -> pd.DataFrame:
    return pd.read_csv(path).drop(columns=list(T.TIMING_COLUMNS))


def assert_same_state(a: dict, b: dict, where: str = "") -> None:
    """Recursive bitwise equality of checkpoint pieces (tensors by torch.equal)."""
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"tensors differ at {where}"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same_state(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b)), f"{where}: {a!r} != {b!r}"


def assert_same_checkpoint(pa: Path, pb: Path) -> None:
    a, b = T.load_checkpoint(pa), T.load_checkpoint(pb)
    assert a["step"] == b["step"]
    for key in ("model", "optimizer", "sparsifier", "config", "attention_active"):
        assert_same_state(a[key], b[key], key)


# ---------------------------------------------------------------------------------------------- tests


def test_log_columns_metrics_and_reuse(mst_straight):
    run, store = mst_straight
    res = store.load(run)
    assert res.done and store.is_done(run)
    log = pd.read_csv(res.path / "log.csv")
    assert tuple(log.columns) == T.LOG_COLUMNS
    assert log["step"].tolist() == list(range(12))
    assert log["tokens"].iloc[-1] == 12 * run.tokens_per_step() == res.metrics["tokens"]
    # passes over the unique train tokens: trained tokens / the train split's length
    n_train = len(T.open_split(run, "train"))
    assert res.metrics["unique_train_tokens"] == n_train
    assert res.metrics["passes"] == pytest.approx(res.metrics["tokens"] / n_train, rel=1e-12)
    # FLOPs so far: increasing, ending at the FLOP count's total
    assert (np.diff(log["flops"]) > 0).all()
    assert log["flops"].iloc[-1] == pytest.approx(res.metrics["flops_total"], rel=1e-12)
    assert res.metrics["flops_ratio_to_dense"] < 1.0
    # validation loss exactly on evaluation steps (every 4 steps and the last)
    assert log.loc[log["val_loss"].notna(), "step"].tolist() == [3, 7, 11]
    assert res.metrics["final_val_loss"] == log["val_loss"].iloc[-1]
    # updates at 4 and 8, attention pattern during the ultra phase [3, 9), phases in order
    assert log.loc[log["update"] == 1, "step"].tolist() == [4, 8]
    assert log.loc[log["attn_density"] < 1, "step"].tolist() == list(range(3, 9))
    assert log["phase"].drop_duplicates().tolist() == ["warmup", "ultra", "restoration"]
    assert log["density"].iloc[0] == 1.0 and log["density"].min() < 0.2
    assert np.isfinite(log["loss"]).all() and (log["tokens_per_s"] > 0).all()
    for key in ("final_train_loss", "tokens_per_s_median", "wall_time_s", "peak_memory_bytes"):
        assert res.metrics[key] is not None
    prov = json.loads((res.path / "provenance.json").read_text())
    assert prov["seed"] == run.seed and prov["world_size"] == 1 and prov["packages"]["torch"]
    assert "end_utc" in prov and prov["wall_time_s"] > 0
    assert prov["sessions"][0]["attention_backend"] == "sdpa_mask"  # what "auto" became on the CPU
    assert os.uname().nodename not in json.dumps(prov)  # hostname-free
    # a done run is reused, not retrained
    before = (res.path / "log.csv").stat().st_mtime_ns
    again = T.train(run, store, device="cpu", progress=False)
    assert again.metrics == res.metrics and (res.path / "log.csv").stat().st_mtime_ns == before


def test_resume_is_bitwise_in_process(data_dir, tmp_path):
    """Dense: 12 steps straight == 6 + checkpoint + 6 in a fresh train() call (global RNGs scrambled)."""
    run = tiny_run(data_dir, "dense")
    a, b = RunStore(tmp_path / "a"), RunStore(tmp_path / "b")
    T.train(run, a, device="cpu", progress=False)
    half = T.train(run, b, device="cpu", progress=False, stop_after=6)
    assert not half.done and T.load_checkpoint(b.checkpoint_path(run))["step"] == 6
    torch.manual_seed(1234), np.random.seed(99)  # a resume must restore, not rely on, the global streams
    T.train(run, b, device="cpu", progress=False)
    assert_same_checkpoint(a.checkpoint_path(run), b.checkpoint_path(run))
    pd.testing.assert_frame_equal(deterministic_log(a.run_dir(run) / "log.csv"),
                                  deterministic_log(b.run_dir(run) / "log.csv"))


def test_resume_is_bitwise_across_processes_with_topology_updates(mst_straight, tmp_path):
    """MST with an update, a sparsity change and an attention switch in each half: the second half runs in
    a fresh process through the command line; model, AdamW state, masks and log are bitwise equal."""
    run, a = mst_straight
    b = RunStore(tmp_path / "b")
    # the first half also stops after a crash-like extra step whose log rows must be discarded on resume
    T.train(run, b, device="cpu", progress=False, stop_after=6)
    with open(b.run_dir(run) / "log.csv", "a") as f:
        f.write("6,garbage\n")
    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps(run.to_dict()))
    out = subprocess.run(
        [sys.executable, "-m", "mstlib", "train", "--config", str(cfg), "--results", str(b.root),
         "--checkpoints", str(b.checkpoints), "--device", "cpu", "--no-progress"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        # same thread count as this process: CPU kernels may sum in another order with other counts
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(torch.get_num_threads())},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == str(b.run_dir(run))  # the CLI prints the run folder
    assert_same_checkpoint(a.checkpoint_path(run), b.checkpoint_path(run))
    la, lb = deterministic_log(a.run_dir(run) / "log.csv"), deterministic_log(b.run_dir(run) / "log.csv")
    pd.testing.assert_frame_equal(la, lb)
    assert la["update"].sum() == 2
    prov = json.loads((b.run_dir(run) / "provenance.json").read_text())
    assert [s["start_step"] for s in prov["sessions"]] == [0, 6]


def _poisoning_builder(at_forward: int):
    """build_model that sets a weight to NaN right before the ``at_forward``-th training forward."""
    original = T.build_model

    def build(run, device):
        model = original(run, device)
        calls = {"n": 0}

        def hook(module, args):
            if module.training:
                calls["n"] += 1
                if calls["n"] == at_forward:
                    with torch.no_grad():
                        module.transformer.h[0].mlp.c_fc.weight.fill_(float("nan"))

        model.register_forward_pre_hook(hook)
        return model

    return build


def test_nan_loss_stops_before_the_step_and_keeps_last_good_checkpoint(data_dir, tmp_path, monkeypatch):
    run = tiny_run(data_dir, "mst", **{"train.checkpoint_interval": 3})
    store = RunStore(tmp_path / "r")
    # step 7's first micro-step (2 micro-steps per step): checkpoints were written after steps 3 and 6
    monkeypatch.setattr(T.steps, "build_model", _poisoning_builder(at_forward=2 * 7 + 1))
    with pytest.raises(TrainingError) as err:
        T.train(run, store, device="cpu", progress=False)
    msg = str(err.value)
    assert "step 7" in msg and str(store.checkpoint_path(run)) in msg and "nan" in msg.lower()
    assert not store.is_done(run)
    ck = T.load_checkpoint(store.checkpoint_path(run))
    assert ck["step"] == 6
    assert all(torch.isfinite(v).all() for v in ck["model"].values())
    # and it is exactly the state a clean run has after 6 steps
    monkeypatch.undo()
    clean = RunStore(tmp_path / "clean")
    T.train(run, clean, device="cpu", progress=False, stop_after=6)
    assert_same_checkpoint(clean.checkpoint_path(run), store.checkpoint_path(run))


def test_nan_checked_per_log_window_keeps_last_good_checkpoint(data_dir, tmp_path, monkeypatch):
    """The GPU path (checks once per log window, no per-step sync), forced on CPU: a NaN at step 7 is found
    at the end of its window, before the checkpoint of that window is written, so the stored checkpoint is
    still the last good one and the message says the weights in memory are spoiled."""
    run = tiny_run(data_dir, "mst", **{"train.checkpoint_interval": 3, "train.log_interval": 3})
    store = RunStore(tmp_path / "r")
    monkeypatch.setattr(T.steps, "check_every_step", lambda device: False)
    monkeypatch.setattr(T.steps, "build_model", _poisoning_builder(at_forward=2 * 7 + 1))
    with pytest.raises(TrainingError) as err:
        T.train(run, store, device="cpu", progress=False)
    msg = str(err.value)
    assert "step 7" in msg and "end of that log window" in msg and str(store.checkpoint_path(run)) in msg
    ck = T.load_checkpoint(store.checkpoint_path(run))
    assert ck["step"] == 6 and all(torch.isfinite(v).all() for v in ck["model"].values())
    assert not store.is_done(run)


def test_nan_without_checkpoint_says_so(data_dir, tmp_path, monkeypatch):
    run = tiny_run(data_dir, "dense", **{"train.max_iters": 4})
    monkeypatch.setattr(T.steps, "build_model", _poisoning_builder(at_forward=3))
    with pytest.raises(TrainingError, match="step 1.*no checkpoint was written"):
        T.train(run, RunStore(tmp_path / "r"), device="cpu", progress=False)


def test_load_model_and_mismatch(data_dir, tmp_path):
    run = tiny_run(data_dir, "mst", **{"train.max_iters": 4})
    store = RunStore(tmp_path / "results")
    res = T.train(run, store, device="cpu", progress=False)
    model = T.load_model(res.path)  # run folder -> its checkpoint in the default place
    ck = T.load_checkpoint(store.checkpoint_path(run))
    for k, v in model.state_dict().items():
        assert torch.equal(v, ck["model"][k])
    assert not model.training
    assert T.load_model(store.checkpoint_path(run)).config == run.model
    # a run folder whose config does not match the checkpoint
    cfg = json.loads((res.path / "config.json").read_text())
    cfg["train"]["lr"] = 0.5
    (res.path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="different config"):
        T.load_model(res.path)
    with pytest.raises(CheckpointError, match="does not exist"):
        T.load_model(tmp_path / "nope.pt")
    # a checkpoint of another config is not resumed silently
    other = store.checkpoint_path(run.replace(seed=5))
    other.parent.mkdir(parents=True)
    other.write_bytes(store.checkpoint_path(run).read_bytes())
    with pytest.raises(CheckpointError, match="another config"):
        T.train(run.replace(seed=5), store, device="cpu", progress=False)


def test_batches_are_a_function_of_the_key(data_dir):
    toks = corpus.open_tokens(data_dir, "tiny", "train")
    b = T.Batches(toks, 32, 2, seed=0, tag=0, device=torch.device("cpu"))
    x1, y1 = b.get(5, 1)
    x2, y2 = b.get(5, 1)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and x1.dtype == torch.int64
    assert torch.equal(x1[:, 1:], y1[:, :-1])  # y is x shifted by one token
    assert not torch.equal(b.get(5, 0)[0], x1) and not torch.equal(b.get(6, 1)[0], x1)


# ------------------------------------------------------------------------------------------------ DDP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, run_json: str, root: str) -> None:
    from mstlib.config import RunConfig

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    run = RunConfig.from_dict(json.loads(run_json))
    T.train(run, RunStore(root), device="cpu", progress=False)


def test_ddp_two_processes_match_one_process(mst_straight, tmp_path):
    """2 gloo processes x 1 micro-step == 1 process x 2 micro-steps: same global batch (the same sequences),
    same loss curve up to float32 summation order, same final masks."""
    import torch.multiprocessing as mp

    run, one = mst_straight
    two = RunStore(tmp_path / "two")
    mp.start_processes(_ddp_worker, args=(2, _free_port(), json.dumps(run.to_dict()), str(two.root)),
                       nprocs=2, join=True, start_method="spawn")
    assert two.is_done(run)
    l1, l2 = pd.read_csv(one.run_dir(run) / "log.csv"), pd.read_csv(two.run_dir(run) / "log.csv")
    np.testing.assert_allclose(l2["loss"], l1["loss"], rtol=1e-5)
    np.testing.assert_allclose(l2["val_loss"].dropna(), l1["val_loss"].dropna(), rtol=1e-5)
    assert json.loads((two.run_dir(run) / "provenance.json").read_text())["world_size"] == 2
    m1 = T.load_checkpoint(one.checkpoint_path(run))["sparsifier"]["masks"]["masks"]
    m2 = T.load_checkpoint(two.checkpoint_path(run))["sparsifier"]["masks"]["masks"]
    assert all(torch.equal(m1[k], m2[k]) for k in m1)


def test_grad_accum_must_divide_among_ranks(data_dir, tmp_path):
    run = tiny_run(data_dir, "dense", **{"train.grad_accum": 3})
    with pytest.raises(ConfigError, match="not divisible"):
        T._train(run, RunStore(tmp_path), T.Dist(rank=0, world_size=2), torch.device("cpu"), True, None, False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graphs_train_like_the_default_compile_cuda(data_dir, tmp_path):
    """``train.compile="reduce-overhead"`` (CUDA graphs) against ``true``: the tiny MST run in bf16, with two
    micro-steps per step (the accumulation that CUDA-graph trees silently break when autograd adopts a
    replay's gradient memory), topology updates, an attention switch, evaluations, and a resume in the
    middle. The same kernels run, so the logs and the final checkpoint must agree."""
    runs = {m: tiny_run(data_dir, "mst", **{"train.compile": m, "train.dtype": "bfloat16"})
            for m in (True, "reduce-overhead")}
    stores = {m: RunStore(tmp_path / str(m)) for m in runs}
    precision = torch.get_float32_matmul_precision()  # training allows TF32 and must restore the setting
    for mode, run in runs.items():
        store = stores[mode]
        T.train(run, store, device="cuda", progress=False, stop_after=6)
        torch._dynamo.reset()
        T.train(run, store, device="cuda", progress=False)
        torch._dynamo.reset()
        # left at "high", it made later float32 GPU tests in the same process compare TF32 products
        assert torch.get_float32_matmul_precision() == precision
    logs = {m: deterministic_log(stores[m].run_dir(runs[m]) / "log.csv") for m in stores}
    a, b = logs[True], logs["reduce-overhead"]
    assert len(a) == len(b) == 12 and a["update"].sum() >= 2
    for col in ("loss", "grad_norm", "density", "attn_density"):
        np.testing.assert_allclose(b[col], a[col], rtol=1e-5, err_msg=col)
    np.testing.assert_allclose(b["val_loss"].dropna(), a["val_loss"].dropna(), rtol=1e-5)
    ca, cb = (T.load_checkpoint(stores[m].checkpoint_path(runs[m])) for m in stores)
    for k in ca["model"]:
        torch.testing.assert_close(cb["model"][k], ca["model"][k], rtol=1e-4, atol=1e-6, msg=k)


def test_train_restores_the_float32_matmul_precision(data_dir, tmp_path, monkeypatch):
    """Training on CUDA allows TF32 (``_train`` sets it); ``train`` puts the caller's setting back, also when
    training fails, so float32 work after it (tests, notebooks) is not silently TF32."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        def fake(*args, **kwargs):
            torch.set_float32_matmul_precision("high")
            raise TrainingError("stopped")

        monkeypatch.setattr(T, "_train", fake)
        with pytest.raises(TrainingError, match="stopped"):
            T.train(tiny_run(data_dir), RunStore(tmp_path / "results"), device="cpu", progress=False)
        assert torch.get_float32_matmul_precision() == "highest"
    finally:
        torch.set_float32_matmul_precision(previous)


# ------------------------------------------------------------------------------------------ command line


def _cli(*argv: str):
    import argparse

    parser = argparse.ArgumentParser()
    commands.train_add_arguments(parser)
    return parser.parse_args(list(argv))


def test_train_smoke_prepares_its_corpus_on_first_use(tmp_path, with_shared_data, capsys):
    """`python -m mstlib train --preset smoke` on a fresh clone: offline-smoke is made as the notebooks make it."""
    data = tmp_path / "data"
    args = _cli("--preset", "smoke", "--method", "dense", "--device", "cpu", "--no-progress",
                "--results", str(tmp_path / "results"), "--set", f"data.data_dir={data}",
                "--set", "train.max_iters=2", "--set", "train.eval_interval=2", "--set", "train.eval_iters=1")
    assert commands.train_main(args) == 0
    assert corpus.verify_corpus(data, "offline-smoke")["recipe"]["max_docs"] == 40
    assert RunStore(tmp_path / "results").load(commands.config_from_args(args)).done


def _corrupt_copy(data_dir: Path, tmp_path: Path, ids: np.ndarray | None = None) -> Path:
    """A copy of the tiny corpus whose train.bin has one byte flipped (meta.json unchanged), or holds ``ids``
    (meta.json updated to match, so only the ids are wrong)."""
    import shutil

    d = tmp_path / "data"
    shutil.copytree(data_dir / "tiny", d / "tiny")
    f = d / "tiny" / "train.bin"
    if ids is None:
        raw = bytearray(f.read_bytes())
        raw[100] ^= 0x01
        f.write_bytes(bytes(raw))
    else:
        ids.astype(np.uint16).tofile(f)
        meta = json.loads((d / "tiny" / "meta.json").read_text())
        meta["splits"]["train"]["sha256"] = hashlib.sha256(f.read_bytes()).hexdigest()
        (d / "tiny" / "meta.json").write_text(json.dumps(meta))
    return d


def test_a_byte_flipped_token_file_is_refused_when_a_run_opens_it(data_dir, tmp_path):
    from mstlib.errors import DataError

    bad = _corrupt_copy(data_dir, tmp_path)
    with pytest.raises(DataError, match="Checksum mismatch.*train.bin"):
        T.train(tiny_run(bad), RunStore(tmp_path / "results"), device="cpu", progress=False)


def test_token_ids_beyond_the_vocabulary_are_a_data_error_not_an_index_error(data_dir, tmp_path):
    from mstlib.errors import DataError

    bad = _corrupt_copy(data_dir, tmp_path, ids=np.full(20_000, 0xFFFF))
    with pytest.raises(DataError, match="token id 65535, outside the vocabulary"):
        T.train(tiny_run(bad), RunStore(tmp_path / "results"), device="cpu", progress=False)
    ok_for_gpt2 = _corrupt_copy(data_dir, tmp_path / "b", ids=np.full(20_000, 600))  # < 50257, >= 512
    with pytest.raises(DataError, match="model's vocab_size is 512"):
        T.train(tiny_run(ok_for_gpt2), RunStore(tmp_path / "results"), device="cpu", progress=False)


# ------------------------------------------------------------------------ one writer, safe retrains


_HOLD_SITECUSTOMIZE = '''
import os
_spec = os.environ.get("MSTLIB_TEST_HOLD")
if _spec:  # "<step>:<release file>": training waits before reading the batch of <step> until the file exists
    import time
    from pathlib import Path
    import mstlib.train as _T

    _step, _release = _spec.split(":", 1)
    _get = _T.Batches.get

    def _held_get(self, *key):
        if key == (int(_step), 0):
            Path(_release + ".reached").write_text(str(os.getpid()))
            deadline = time.monotonic() + 300  # a test that failed to release or stop us: never linger
            while not os.path.exists(_release):
                if time.monotonic() > deadline:
                    os._exit(3)
                time.sleep(0.05)
        return _get(self, *key)

    _T.Batches.get = _held_get
'''


class Hold:
    """Makes trainers started in other processes (``python -m mstlib ...``) wait at a step until released,
    through a ``sitecustomize`` on their PYTHONPATH: a run caught in the middle, deterministically."""

    def __init__(self, tmp: Path, step: int) -> None:
        self.dir = tmp / "hold"
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "sitecustomize.py").write_text(_HOLD_SITECUSTOMIZE)
        self.release_file = self.dir / "release"
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(self.dir), str(REPO)]),
                    "MSTLIB_TEST_HOLD": f"{step}:{self.release_file}", "OMP_NUM_THREADS": "1"}

    def wait_reached(self, proc: subprocess.Popen | None = None, timeout_s: float = 120) -> int:
        """The PID of the first process that reached the step."""
        reached = Path(f"{self.release_file}.reached")
        deadline = time.monotonic() + timeout_s
        while not reached.is_file() or not reached.read_text():
            assert proc is None or proc.poll() is None, f"exited with {proc.returncode} before the hold"
            assert time.monotonic() < deadline, "never reached the hold"
            time.sleep(0.05)
        return int(reached.read_text())

    def release(self) -> None:
        self.release_file.write_text("go")


def train_command(run, store: RunStore, cfg: Path, *extra: str) -> list[str]:
    cfg.write_text(json.dumps(run.to_dict()))
    return [sys.executable, "-m", "mstlib", "train", "--config", str(cfg), "--results", str(store.root),
            "--checkpoints", str(store.checkpoints), "--device", "cpu", "--no-progress", *extra]


def logged_steps(store: RunStore, run) -> list[int]:
    return pd.read_csv(store.run_dir(run) / "log.csv")["step"].tolist()


def test_a_second_trainer_of_the_same_run_refuses_at_once_naming_the_first(data_dir, tmp_path):
    """Both used to exit 0 and mark the run done, with every step twice in its log."""
    run = tiny_run(data_dir, "dense", **{"train.checkpoint_interval": 3})
    store = RunStore(tmp_path / "results")
    hold = Hold(tmp_path, step=7)
    first = subprocess.Popen(train_command(run, store, tmp_path / "run.json"), env=hold.env, cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert hold.wait_reached(first) == first.pid
        second = subprocess.run(train_command(run, store, tmp_path / "run.json"), cwd=REPO, capture_output=True,
                                text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"being trained by process {first.pid}" in second.stderr and f"kill {first.pid}" in second.stderr
        hold.release()
        out, err = first.communicate(timeout=300)
        assert first.returncode == 0, err[-2000:]
    finally:
        if first.poll() is None:
            first.kill()
    assert store.is_done(run) and logged_steps(store, run) == list(range(12))


def test_a_lock_left_by_a_dead_trainer_is_taken_over(data_dir, tmp_path):
    run = tiny_run(data_dir, "dense", **{"train.max_iters": 2})
    store = RunStore(tmp_path / "results")
    lock = store.lock(run).path
    lock.parent.mkdir(parents=True)
    lock.write_text("999999\n")  # the PID of a trainer that died, its flock gone with it
    assert T.train(run, store, device="cpu", progress=False).done


def test_no_resume_keeps_the_done_result_until_the_new_one_is_done(data_dir, tmp_path):
    """Retraining a done run from scratch used to delete done, metrics.json and eval.json first: stopped
    or killed mid-run, the finished result was gone, and a plain train then refused the stale checkpoint."""
    run = tiny_run(data_dir, "dense", **{"train.checkpoint_interval": 3})
    store = RunStore(tmp_path / "results")
    T.train(run, store, device="cpu", progress=False)
    store.write_eval(run, {"tasks": {"x": 1}})
    d, ckpt = store.run_dir(run), store.checkpoint_path(run)
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    ckpt_before = ckpt.read_bytes()

    stopped = T.train(run, store, device="cpu", progress=False, resume=False, stop_after=6)  # a retrain cut short
    assert not stopped.done and stopped.path != d
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before and ckpt.read_bytes() == ckpt_before
    assert [r.run_id for r in store.find(done_only=False)] == [run.run_id()]  # the retrain is not listed
    assert store.load(run).eval == {"tasks": {"x": 1}} and T.load_model(d) is not None
    assert T.train(run, store, device="cpu", progress=False).metrics == store.load(run).metrics  # plain train: as stored

    # and killed mid-run in another process: the same
    hold = Hold(tmp_path, step=4)
    proc = subprocess.Popen(train_command(run, store, tmp_path / "run.json", "--no-resume"), env=hold.env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        hold.wait_reached(proc)
    finally:
        proc.kill()
        proc.wait()
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before and ckpt.read_bytes() == ckpt_before

    # run to the end, the new result replaces the old one whole: no eval (a new model), no leftovers
    new = T.train(run, store, device="cpu", progress=False, resume=False)
    assert new.done and new.path == d and new.eval is None and not (d / "eval.json").exists()
    assert logged_steps(store, run) == list(range(12))
    assert new.metrics["final_val_loss"] == json.loads(before["metrics.json"])["final_val_loss"]  # deterministic
    assert T.load_checkpoint(ckpt)["step"] == 12
    leftovers = [p.name for p in d.parent.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock")]
    leftovers += [p.name for p in ckpt.parent.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_a_damaged_checkpoint_is_refused_and_the_advised_command_works(data_dir, tmp_path, capsys):
    """A flipped byte used to resume silently (torch.load does not check tensor data)."""
    from mstlib import cli
    import shlex

    run = tiny_run(data_dir, "dense", **{"train.max_iters": 6})
    store = RunStore(tmp_path / "results")
    T.train(run, store, device="cpu", progress=False, stop_after=3)
    path = store.checkpoint_path(run)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="is corrupt: its sha256") as err:
        T.train(run, store, device="cpu", progress=False)
    command = str(err.value).split("train the run again from scratch: ", 1)[1]
    argv = shlex.split(command)
    assert argv[:4] == ["python", "-m", "mstlib", "train"] and "--no-resume" in argv
    assert cli.main(argv[3:] + ["--device", "cpu", "--no-progress"]) == 0
    assert store.is_done(run) and T.load_model(store.run_dir(run)) is not None
    # a done run's damaged checkpoint is refused by evaluation's loader too, with the same advice
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="is corrupt.*--no-resume"):
        T.load_model(store.run_dir(run))


def test_stop_after_must_be_a_positive_number_of_steps(data_dir, tmp_path, capsys):
    from mstlib import cli

    run = tiny_run(data_dir, "dense")
    for bad in (-1, 0):
        with pytest.raises(ConfigError, match="stop_after .* >= 1"):
            T.train(run, RunStore(tmp_path / "r"), device="cpu", progress=False, stop_after=bad)
        with pytest.raises(SystemExit) as ex:
            cli.main(["train", "--stop-after", str(bad)])
        assert ex.value.code == 2
        assert f"--stop-after: must be a whole number of steps >= 1, got '{bad}'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------- non-finite weights


def _poisoning_optimizer(at_step_call: int):
    """build_optimizer whose ``at_step_call``-th step leaves a NaN in the weights (as an absurd learning
    rate does after a finite loss and gradient)."""
    original = T.build_optimizer

    def build(model, run, device):
        opt = original(model, run, device)
        step, calls = opt.step, {"n": 0}

        def poisoned_step(*a, **k):
            out = step(*a, **k)
            calls["n"] += 1
            if calls["n"] == at_step_call:
                with torch.no_grad():
                    next(model.parameters()).view(-1)[0] = float("nan")
            return out

        opt.step = poisoned_step
        return opt

    return build


@pytest.mark.parametrize("per_window", [False, True])
def test_nan_weights_are_never_checkpointed(data_dir, tmp_path, monkeypatch, per_window):
    """Step 4's update spoils the weights after its loss was measured; the checkpoint after step 5 used to
    save them and name them the last good one. Both the CPU check and the GPU's per-window check."""
    run = tiny_run(data_dir, "dense", **{"train.checkpoint_interval": 3, "train.eval_interval": 0,
                                         "train.log_interval": 6})
    store = RunStore(tmp_path / "r")
    monkeypatch.setattr(T.steps, "build_optimizer", _poisoning_optimizer(at_step_call=6))  # step 5, the last before the checkpoint
    if per_window:
        monkeypatch.setattr(T.steps, "check_every_step", lambda device: False)
    with pytest.raises(TrainingError, match=r"the state after the optimizer step is not finite in model\.transformer") as err:
        T.train(run, store, device="cpu", progress=False)
    assert str(store.checkpoint_path(run)) in str(err.value)
    ck = T.load_checkpoint(store.checkpoint_path(run))
    assert ck["step"] == 3 and all(torch.isfinite(v).all() for v in ck["model"].values())
    assert not store.is_done(run)


def test_a_nan_validation_loss_is_never_stored_as_done(data_dir, tmp_path, monkeypatch):
    """The last step's update spoils the weights: its validation loss is NaN. That used to be stored as a
    done run with a NaN final_val_loss (the issue's lr=Infinity, max_iters=1), beside a checkpoint of those
    weights."""
    run = tiny_run(data_dir, "dense", **{"train.checkpoint_interval": 6})
    store = RunStore(tmp_path / "r")
    monkeypatch.setattr(T.steps, "build_optimizer", _poisoning_optimizer(at_step_call=12))
    with pytest.raises(TrainingError, match="the validation loss is nan at step 11"):
        T.train(run, store, device="cpu", progress=False)
    assert not store.is_done(run) and not (store.run_dir(run) / "metrics.json").exists()
    assert T.load_checkpoint(store.checkpoint_path(run))["step"] == 6


def test_the_nan_message_advises_a_new_run_and_that_advice_works(data_dir, tmp_path, monkeypatch):
    """The message used to say to resume "with another setting": another setting is another run id, so no
    checkpoint of this run is ever resumed with it. It now names settings that make a valid new run."""
    run = tiny_run(data_dir, "dense", **{"train.max_iters": 4})
    monkeypatch.setattr(T.steps, "build_model", _poisoning_builder(at_forward=3))
    with pytest.raises(TrainingError) as err:
        T.train(run, RunStore(tmp_path / "r"), device="cpu", progress=False)
    monkeypatch.undo()
    msg = str(err.value)
    assert "another setting" not in msg and "new run with its own run id" in msg
    from mstlib.config import parse_override
    import re

    changes = dict(parse_override(s) for s in re.findall(r"--set (\S+?=[^\s)]+)", msg))
    assert set(changes) >= {"train.lr", "train.min_lr"} and changes["train.lr"] < run.train.lr
    new = run.replace(**changes)
    assert new.run_id() != run.run_id()
    assert T.train(new, RunStore(tmp_path / "r"), device="cpu", progress=False).done
