"""Train a list of runs, one process per visible GPU, skipping done ones; pack the results for the trip home.

A sweep is a list of :class:`~mstlib.config.RunConfig` (from ``--runs FILE``, a JSON list of configs; from
``--experiment NAME``, :func:`mstlib.experiments.runs_for`; or from ``--methods`` x ``--seeds`` of a preset).
Runs already done in the store are skipped. The others go through a simple queue to worker slots: one slot
per GPU (the child sees only its GPU through ``CUDA_VISIBLE_DEVICES``), or ``--workers`` CPU slots without
a GPU. Each run is its own ``python -m mstlib train --config <run folder>/config.json`` process, so one
failing run (a NaN, a bad config, a crash) costs only itself: the others go on, the failures are listed at
the end and the exit code is 1. Each run's output goes to ``<run folder>/train.log``. Interrupt and start the
same sweep again: done runs are skipped and unfinished ones resume from their checkpoints.

Stopping: the workers run in process groups of their own (:mod:`mstlib.workers`). SIGTERM, SIGINT or SIGHUP
to the sweep (``timeout``, Ctrl-C, a closed terminal) stops every worker's group before the sweep exits
(status 128 + the signal's number); a SIGKILL of the sweep takes its workers with it. A done run whose files
cannot be read is reported as ``corrupt`` by name, with the command that repairs it, and left out of the
report's numbers and of the pack; the sweep goes on and exits 1.

``--pack out.tar.gz`` writes everything the store holds for the sweep's runs (config, provenance, metrics,
log, eval, train.log; never checkpoints) into one archive, and ``--unpack out.tar.gz`` merges such an archive
into a store: only regular files at ``<preset>/<method>/<run_id>/<file>`` are accepted, each run is checked
(its config must hash to its folder name) and moved into place whole; a run that is already done here with
different contents is kept and reported as a conflict (``--overwrite`` replaces it).

Examples::

    python -m mstlib sweep --experiment main --preset mini --seeds 0 1 2 --pack results-main.tar.gz
    python -m mstlib sweep --preset mini --methods dense mst --seeds 0 1 --set train.max_iters=300
    python -m mstlib sweep --runs runs.json --workers 2 --device cpu
    python -m mstlib sweep --unpack results-main.tar.gz
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator, Sequence

from .config import RunConfig
from .errors import ConfigError, CorruptRunError, MstError, RunLockedError
from .provenance import REPO_ROOT, git_state, utc_now
from .results import (CONFIG, DONE, EVAL, LOG_GZ, RunStore, atomic_write_bytes, atomic_write_json, same_files,
                      stored_files)
from .workers import start_worker, stop_workers

#: The per-run output file a sweep writes into each run folder.
RUN_LOG = "train.log"
#: Files that may travel in a pack (checkpoints never do).
PACKABLE = ("config.json", "provenance.json", "metrics.json", "log.csv", LOG_GZ, "eval.json", "done", RUN_LOG)
MANIFEST = "MANIFEST.json"
#: The signals that stop a sweep and its workers.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class SweepStopped(BaseException):
    """A stop signal reached the sweep (a BaseException, like KeyboardInterrupt: no ``except Exception``
    on the way may swallow it). Its workers have been stopped when it leaves :func:`run_sweep`."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


# ------------------------------------------------------------------------------------------ the runs


def load_runs_file(path: str | os.PathLike[str]) -> list[RunConfig]:
    """A JSON list of RunConfig dicts (each validated; unknown keys are errors)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read the runs file {path}: {e}") from e
    if not isinstance(data, list):
        raise ConfigError(f"{path} must hold a JSON list of run configs, got {type(data).__name__}")
    return [RunConfig.from_dict(d) for d in data]


def write_runs_file(runs: Sequence[RunConfig], path: str | os.PathLike[str]) -> None:
    atomic_write_bytes(path, (json.dumps([r.to_dict() for r in runs], indent=1) + "\n").encode())


def unique(runs: Sequence[RunConfig]) -> list[RunConfig]:
    """Runs with duplicate ids removed (first kept), order preserved."""
    seen: dict[str, RunConfig] = {}
    for r in runs:
        seen.setdefault(r.run_id(), r)
    return list(seen.values())


# ------------------------------------------------------------------------------------------ the queue


@dataclass
class Outcome:
    """What happened to one run of a sweep."""

    run: RunConfig
    status: str  # "skipped" (already done), "ok", "failed", "corrupt" (done, but its files cannot be read)
    seconds: float = 0.0
    returncode: int | None = None
    log: Path | None = None
    tail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"run_id": self.run.run_id(), "preset": self.run.preset, "method": self.run.method,
                "seed": self.run.seed, "status": self.status, "seconds": round(self.seconds, 1),
                "returncode": self.returncode}


@dataclass
class _Job:
    run: RunConfig
    slot: str
    proc: subprocess.Popen
    log: Path
    logf: Any
    t0: float = field(default_factory=time.perf_counter)


def visible_gpus() -> list[str]:
    """The GPU ids this process may hand out (``CUDA_VISIBLE_DEVICES`` entries, else ``0..count-1``)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # no torch CUDA: no GPUs
        return []


def _tail(path: Path, n: int = 15) -> str:
    try:
        lines = path.read_text(errors="replace").replace("\r", "\n").splitlines()
    except OSError:
        return ""
    return "\n".join(line for line in lines[-n:] if line.strip())


def run_sweep(
    runs: Sequence[RunConfig],
    store: RunStore,
    *,
    device: str = "auto",
    gpus: int | None = None,
    workers: int = 1,
    evaluate: bool = False,
    per_gpu: int = 1,
    poll_s: float = 0.5,
    echo: Callable[[str], None] = print,
) -> list[Outcome]:
    """Train the missing ``runs`` in child processes and return one :class:`Outcome` per run (in order).

    ``device="auto"``: one slot per visible GPU (at most ``gpus``) when there are GPUs, else ``workers``
    CPU slots. ``device="cpu"``: ``workers`` CPU slots. Children get ``CUDA_VISIBLE_DEVICES`` set to their
    GPU (or empty on CPU) and ``OMP_NUM_THREADS`` = cores / slots, so they do not fight over the CPU.
    ``per_gpu``: concurrent runs per GPU (small models may not fill one). ``evaluate``: each child also
    evaluates its run (``train --evaluate``); a run then counts as done when its ``eval.json`` exists too."""
    if workers < 1 or per_gpu < 1 or (gpus is not None and gpus < 1):
        raise ConfigError(f"--workers, --per-gpu and --gpus must be >= 1, got {workers}, {per_gpu}, {gpus}")
    runs = unique(runs)
    gpu_ids = visible_gpus() if device != "cpu" else []
    if gpus is not None:
        if gpus > len(gpu_ids):
            raise ConfigError(f"--gpus {gpus} but only {len(gpu_ids)} GPU(s) are visible ({gpu_ids})")
        gpu_ids = gpu_ids[:gpus]
    if device.startswith("cuda") and not gpu_ids:
        raise ConfigError("device cuda requested but no GPU is visible; use --device cpu")
    if gpu_ids:  # "cuda:<id>" or, with per_gpu > 1, "cuda:<id>#<k>"
        slots = [f"cuda:{g}" + (f"#{k}" if per_gpu > 1 else "") for k in range(per_gpu) for g in gpu_ids]
    else:
        slots = [f"cpu{i}" for i in range(workers)]
    threads = max(1, (os.cpu_count() or 1) // len(slots))

    outcomes: dict[str, Outcome] = {}
    queue: deque[RunConfig] = deque()
    def complete(r: RunConfig) -> bool:
        return store.is_done(r) and (not evaluate or (store.run_dir(r) / EVAL).is_file())

    for r in runs:
        if complete(r):
            problem = corruption(r, store)
            outcomes[r.run_id()] = Outcome(r, "corrupt", tail=problem) if problem else Outcome(r, "skipped")
        else:
            queue.append(r)
    echo(f"sweep: {len(runs)} runs, {len(runs) - len(queue)} already done, {len(queue)} to train on "
         f"{len(slots)} slot(s): {', '.join(slots)}")

    free = list(slots)
    running: list[_Job] = []
    try:
        with _StopSignals(STOP_SIGNALS) as stop_signals:
            while queue or running:
                while queue and free:
                    run = queue.popleft()
                    slot = free.pop(0)
                    with stop_signals.deferred():  # a worker started is a worker we know of
                        running.append(_start(run, slot, store, threads, evaluate))
                    echo(f"  start {run.preset}/{run.method} seed {run.seed} {run.run_id()} on "
                         f"{slot} (pid {running[-1].proc.pid})")
                time.sleep(poll_s)
                for job in list(running):
                    rc = job.proc.poll()
                    if rc is None:
                        continue
                    job.logf.close()
                    running.remove(job)
                    free.append(job.slot)
                    dt = time.perf_counter() - job.t0
                    ok = rc == 0 and complete(job.run)
                    out = Outcome(job.run, "ok" if ok else "failed", dt, rc, job.log, "" if ok else _tail(job.log))
                    outcomes[job.run.run_id()] = out
                    echo(f"  {'done' if ok else 'FAILED'} {job.run.preset}/{job.run.method} seed {job.run.seed} "
                         f"{job.run.run_id()} in {dt / 60:.1f} min (exit {rc})")
    except BaseException:  # a stop signal, Ctrl-C or a bug here: never leave a trainer behind
        with _ignoring(STOP_SIGNALS):  # a second signal must not cut the stopping short
            stop_workers([job.proc for job in running])
        raise
    finally:
        for job in running:
            job.logf.close()
    return [outcomes[r.run_id()] for r in runs]


class _StopSignals:
    """While in use, ``signals`` raise :class:`SweepStopped` (in the main thread, where Python runs signal
    handlers; elsewhere the caller's handlers stay). Inside :meth:`deferred` a signal waits for its end."""

    def __init__(self, signals: Sequence[int]) -> None:
        self.signals = tuple(signals)
        self.previous: dict[int, Any] = {}
        self.deferring = False
        self.pending: int | None = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.deferring:
            self.pending = signum
        else:
            raise SweepStopped(signum)

    def __enter__(self) -> "_StopSignals":
        if threading.current_thread() is threading.main_thread():
            # a signal ignored on entry stays ignored: nohup's SIGHUP, SIGINT of a script's background job
            ours = [s for s in self.signals if signal.getsignal(s) is not signal.SIG_IGN]
            self.previous = {s: signal.signal(s, self._handle) for s in ours}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self.deferring = True
        try:
            yield
        finally:
            self.deferring = False
        if self.pending is not None:
            raise SweepStopped(self.pending)


@contextlib.contextmanager
def _ignoring(signals: Sequence[int]) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in signals}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def corruption(run: RunConfig, store: RunStore) -> str:
    """Why the stored run cannot be read, with what to do about it ("" when it can)."""
    try:
        store.load(run)
    except CorruptRunError as e:
        return str(e)
    return ""


def _start(run: RunConfig, slot: str, store: RunStore, threads: int, evaluate: bool) -> _Job:
    # the config the worker reads is the run folder's own (written again by the trainer, unchanged): no
    # temporary file that a killed sweep would leave behind, and a command line one can rerun by hand
    run_dir = store.run_dir(run)
    cfg = run_dir / CONFIG
    atomic_write_json(cfg, run.to_dict())
    log = run_dir / RUN_LOG
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads)
    env["PYTHONUNBUFFERED"] = "1"
    # the child must import this very mstlib, wherever the sweep was started from
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    if slot.startswith("cuda:"):
        env["CUDA_VISIBLE_DEVICES"] = slot.removeprefix("cuda:").split("#")[0]
        device = "cuda"
    else:
        env["CUDA_VISIBLE_DEVICES"] = ""
        device = "cpu"
    cmd = [sys.executable, "-m", "mstlib", "train", "--config", str(cfg), "--results", str(store.root),
           "--checkpoints", str(store.checkpoints), "--device", device] + (["--evaluate"] if evaluate else [])
    logf = open(log, "a")
    logf.write(f"# {utc_now()} {' '.join(cmd[1:])} (slot {slot})\n")
    logf.flush()
    try:
        proc = start_worker(cmd, env, stdout=logf, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    except BaseException:
        logf.close()
        raise
    return _Job(run, slot, proc, log, logf)


def report(outcomes: Sequence[Outcome], store: RunStore) -> str:
    """A short table: one line per run with status, minutes, final validation loss and tokens/s; then the
    log tail of every failed run and what is wrong with every corrupt one. Never raises for a stored run."""
    lines = [f"{'run':<34} {'status':<8} {'min':>6} {'val loss':>9} {'tok/s':>12}"]
    problems: list[tuple[Outcome, str]] = []
    for o in outcomes:
        m: dict[str, Any] = {}
        status = o.status
        if status in ("ok", "skipped") and store.is_done(o.run):
            try:
                m = store.load(o.run).metrics
            except CorruptRunError as e:  # damaged after it was checked
                status = "corrupt"
                problems.append((o, str(e)))
        elif status == "corrupt":
            problems.append((o, o.tail))
        val = m.get("final_val_loss")
        tok = m.get("tokens_per_s_median")
        name = f"{o.run.preset}/{o.run.method}/s{o.run.seed} {o.run.run_id()}"
        lines.append(f"{name:<34} {status:<8} {o.seconds / 60:>6.1f} "
                     f"{_number(val, '.4f'):>9} {_number(tok, ',.0f'):>12}")
    for o in outcomes:
        if o.status == "failed":
            lines.append(f"\n--- {o.run.run_id()} failed (exit {o.returncode}); log {o.log}; last lines:\n{o.tail}")
    for o, problem in problems:
        lines.append(f"\n--- {o.run.run_id()} is corrupt, skipped: {problem}")
    return "\n".join(lines)


def _number(value: Any, fmt: str) -> str:
    """A metric for the report; one that is not a number (a hand-edited file) is shown as it is."""
    if value is None:
        return ""
    try:
        return format(value, fmt)
    except (TypeError, ValueError):
        return repr(value)[:9]


# -------------------------------------------------------------------------------------- pack/unpack


def pack(runs: Sequence[RunConfig], store: RunStore, out: str | os.PathLike[str],
         outcomes: Sequence[Outcome] = ()) -> dict[str, Any]:
    """Write the stored files of ``runs`` (never checkpoints) into one ``.tar.gz`` at ``out`` (atomically),
    with a ``MANIFEST.json`` listing every run and its status. A corrupt run travels without its files, its
    manifest entry saying what is wrong (``corrupt``). Returns the manifest."""
    out = Path(out)
    manifest: dict[str, Any] = {"format": "mstlib-results-pack/1", "created_utc": utc_now(), "git": git_state(),
                                "runs": [], "outcomes": [o.as_dict() for o in outcomes]}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for run in unique(runs):
            d = store.run_dir(run)
            problem = corruption(run, store) if (d / CONFIG).is_file() else ""
            files = [] if problem else [d / n for n in PACKABLE if (d / n).is_file()]
            entry = {"run_id": run.run_id(), "path": f"{run.preset}/{run.method}/{run.run_id()}",
                     "done": (d / DONE).is_file() and not problem, "files": [f.name for f in files]}
            if problem:
                entry["corrupt"] = problem
            manifest["runs"].append(entry)
            for f in files:
                tar.add(f, arcname=f"{run.preset}/{run.method}/{run.run_id()}/{f.name}", recursive=False)
        data = json.dumps(manifest, indent=1).encode()
        info = tarfile.TarInfo(MANIFEST)
        info.size, info.mtime = len(data), int(time.time())
        tar.addfile(info, io.BytesIO(data))
    atomic_write_bytes(out, buf.getvalue())
    return manifest


def _member_path(name: str) -> tuple[str, str, str, str] | None:
    """``(preset, method, run_id, file)`` for an acceptable member name, else None."""
    p = PurePosixPath(name)
    if p.is_absolute() or any(part in ("", ".", "..") for part in p.parts) or len(p.parts) != 4:
        return None
    preset, method, run_id, fname = p.parts
    if fname not in PACKABLE or "\\" in name:
        return None
    return preset, method, run_id, fname


def unpack(archive: str | os.PathLike[str], store: RunStore, overwrite: bool = False) -> dict[str, list[str]]:
    """Merge a pack into ``store``; returns run ids by outcome: ``added``, ``replaced``, ``same``,
    ``conflict`` (done here with different files: kept), ``busy`` (being trained here: its lock is held, so
    it is left alone), ``rejected`` (members that are not plain files at
    ``<preset>/<method>/<run_id>/<known file>``, or runs whose config does not hash to their id)."""
    result: dict[str, list[str]] = {k: [] for k in ("added", "replaced", "same", "conflict", "busy", "rejected")}
    runs: dict[tuple[str, str, str], dict[str, bytes]] = {}
    try:
        # read whole before anything is written: a truncated or corrupt archive changes nothing in the store
        with tarfile.open(archive, mode="r:gz") as tar:
            for m in tar.getmembers():
                if m.name == MANIFEST:
                    continue
                key = _member_path(m.name)
                if key is None or not m.isfile():  # links, devices, folders, odd paths: never extracted
                    result["rejected"].append(m.name)
                    continue
                f = tar.extractfile(m)
                assert f is not None
                runs.setdefault(key[:3], {})[key[3]] = f.read()
    except FileNotFoundError:
        raise MstError(f"no results pack at {archive}; give the path of a .tar.gz made by `python -m mstlib sweep "
                       "... --pack`") from None
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise MstError(f"cannot read the results pack {archive}: {e}. It is truncated or corrupt, and nothing was "
                       "unpacked: copy it again from where it was made, or make it again there with the same "
                       "`python -m mstlib sweep` arguments plus --pack-only --pack NAME.tar.gz") from e

    store.root.mkdir(parents=True, exist_ok=True)
    for (preset, method, run_id), files in sorted(runs.items()):
        try:
            raw = json.loads(files[CONFIG])
            run = RunConfig.from_dict(raw)
            # the hash of the config as stored (equal to run.run_id() while the config schema is unchanged)
            canonical = json.dumps(raw, sort_keys=True, separators=(",", ":")).encode()
            valid = hashlib.sha256(canonical).hexdigest()[:12] == run_id and (run.preset, run.method) == (preset, method)
        except (KeyError, ValueError):  # ConfigError is a ValueError, as is a JSON error
            valid = False
        if not valid:
            result["rejected"].append(f"{preset}/{method}/{run_id}")
            continue
        lock = store.lock(run)
        try:  # one writer per run: never replace a run while a trainer writes it
            lock.acquire()
        except RunLockedError:
            result["busy"].append(run_id)
            continue
        try:
            _unpack_run(store, preset, method, run_id, files, overwrite, result)
        finally:
            lock.release()
    return result


def _unpack_run(store: RunStore, preset: str, method: str, run_id: str, files: dict[str, bytes],
                overwrite: bool, result: dict[str, list[str]]) -> None:
    """Merge one run's files into the store (its lock held by the caller), recording the outcome."""
    dest = store.root / preset / method / run_id
    if dest.exists():
        local_done = (dest / DONE).is_file()
        if same_files(dest, files):
            result["same"].append(run_id)
            return
        if local_done and (not overwrite or DONE not in files):
            result["conflict"].append(run_id)
            return
    # stage the whole run beside its destination, then move it into place in one rename
    dest.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{run_id}.", dir=dest.parent))
    for n, b in stored_files(files).items():
        (stage / n).write_bytes(b)
    if dest.exists():
        old = dest.with_name(f".{run_id}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dest, old)
        os.replace(stage, dest)
        shutil.rmtree(old, ignore_errors=True)
        result["replaced"].append(run_id)
    else:
        os.replace(stage, dest)
        result["added"].append(run_id)
