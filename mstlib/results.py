"""The run store: one folder per run, named by the hash of its full config, reused when already done.

Layout (``root`` is ``results/`` by default; checkpoints live apart, in ``checkpoints/``, git-ignored)::

    results/<preset>/<method>/<run_id>/
        config.json       the full RunConfig (RunConfig.from_dict reads it back)
        provenance.json   git commit, seed, package versions, device, world size, UTC times, wall time
        log.csv           one row per optimizer step (see mstlib.train.LOG_COLUMNS); log.csv.gz instead
                          in the book's store once done (sweep --unpack, RunStore.compress_logs)
        metrics.json      final losses, tokens, tokens/s, training FLOPs, peak memory
        eval.json         written later by mstlib.evaluate
        done              written last: a run is complete exactly when this file exists
    results/<preset>/<method>/.<run_id>.lock     held by the one process training the run (mstlib.runlock)
    results/<preset>/<method>/.<run_id>.retrain/ a retrain of a done run (train --no-resume) until it is done
    checkpoints/results/<run_id>/ckpt.pt      (checkpoints/<root's name>/...)

Every JSON file is written atomically (a temporary file in the same folder, then ``os.replace``), so a
crash mid-write leaves the previous version intact and never a half-written file. ``run_id`` is
:meth:`mstlib.config.RunConfig.run_id` (12 hex digits of the sha256 of the canonical JSON), so the same
config finds the same folder in every process, and any changed field finds a new one.

A stored run whose files cannot be read (a truncated ``metrics.json``, an invalid ``config.json``) raises
:class:`~mstlib.errors.CorruptRunError` when loaded by itself, with the command that repairs it; listings
(:meth:`RunStore.find`, :meth:`RunStore.table`) skip it with a :class:`~mstlib.errors.CorruptRunWarning`
that names it, so one damaged folder never hides the others.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import gzip
import json
import os
import shlex
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Iterable, Iterator

from .config import RunConfig
from .errors import CorruptRunError, CorruptRunWarning, MstError
from .provenance import REPO_ROOT, utc_now
from .runlock import RunLock

if TYPE_CHECKING:  # pandas is imported lazily: training does not need it
    import pandas as pd

CONFIG = "config.json"
PROVENANCE = "provenance.json"
METRICS = "metrics.json"
LOG = "log.csv"
#: the log of a done run as the book's store keeps it (``sweep --unpack`` writes it; a third of the size)
LOG_GZ = "log.csv.gz"
EVAL = "eval.json"
DONE = "done"
CHECKPOINT = "ckpt.pt"

# --------------------------------------------------------------------------------------- atomic writes


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """A binary file to write ``path`` through, so that readers see the old file or the new one, never a
    mixture: a temporary file in the same folder is written, flushed to disk and only then
    ``os.replace``-d over ``path``; on any error the old file stays and the temporary is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`atomic_file`)."""
    with atomic_file(path) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Serialise ``obj`` completely first (so an unserialisable value fails before anything is written),
    then write it atomically as indented JSON with sorted keys."""
    text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=True) + "\n"
    atomic_write_text(path, text)


def gzip_log(data: bytes) -> bytes:
    """A log's bytes gzip-compressed the same way every time (no time stamp, no file name)."""
    return gzip.compress(data, compresslevel=9, mtime=0)


def stored_files(files: dict[str, bytes]) -> dict[str, bytes]:
    """A done run's files as the book's store keeps them: ``log.csv`` as ``log.csv.gz`` (GPT-2 logs are a
    third of the size compressed, and every stored run travels with the working tree to the GPU machine).
    A run not done keeps its plain log: its trainer appends to it on resume."""
    if DONE not in files or LOG not in files:
        return dict(files)
    out = {n: b for n, b in files.items() if n != LOG}
    out[LOG_GZ] = gzip_log(files[LOG])
    return out


def same_files(folder: Path, files: dict[str, bytes]) -> bool:
    """Whether ``folder`` holds exactly the content of ``files``, a log compared by its text (plain or
    compressed, on either side)."""
    def text(d: dict[str, bytes]) -> dict[str, bytes]:
        d = dict(d)
        if LOG_GZ in d:
            d[LOG] = gzip.decompress(d.pop(LOG_GZ))
        return d
    here = {n: (folder / n).read_bytes() for n in (*files, LOG, LOG_GZ) if (folder / n).is_file()}
    want = text(files)
    return all(text(here).get(n) == b for n, b in want.items())



def read_json(path: str | os.PathLike[str]) -> Any:
    """The JSON value in ``path``: MstError when it is missing, CorruptRunError when it does not parse."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise MstError(f"{path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptRunError(f"{path} is not valid JSON ({e})") from e


def resolve_root(root: str | os.PathLike[str]) -> Path:
    """A relative ``root`` that does not exist from the working directory is taken from the repository
    root, so notebooks (run from ``notebooks/``) and the command line (run from the root) share a store."""
    p = Path(root).expanduser()
    if p.is_absolute() or p.exists():
        return p
    return REPO_ROOT / p


# ------------------------------------------------------------------------------------------ a result


@dataclass
class RunResult:
    """A run as stored: its config, folder, and what is there so far. ``done`` is False for a run that was
    interrupted (``stop_after``) or is still training; its ``metrics`` are then empty."""

    run: RunConfig
    path: Path
    run_id: str
    done: bool
    metrics: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] | None = None

    def log(self) -> "pd.DataFrame":
        """The per-step training log (one row per optimizer step)."""
        import pandas as pd

        path = self.path / LOG
        if not path.is_file() and (self.path / LOG_GZ).is_file():
            path = self.path / LOG_GZ  # pandas reads it by its ending
        if not path.is_file():
            raise MstError(f"{path} does not exist: the run has not logged a step yet")
        return pd.read_csv(path)

    def row(self) -> dict[str, Any]:
        """One flat row for a table: run id, config fields (dotted keys), metrics, ``eval.*``."""
        out: dict[str, Any] = {"run_id": self.run_id, "done": self.done}
        out.update(flatten(self.run.to_dict()))
        out.update(self.metrics)
        if self.eval:
            out.update(flatten(self.eval, "eval."))
        return out


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}``; lists become tuples (hashable, so tables can group by them)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, list):
            out[key] = tuple(v)
        else:
            out[key] = v
    return out


# ------------------------------------------------------------------------------------------- the store


class RunStore:
    """Run folders under ``root`` and checkpoints under ``checkpoints``, by default
    ``checkpoints/<root's name>/`` beside ``root`` (``checkpoints/results/<run_id>/ckpt.pt``): two stores
    in one folder (``results`` and ``results-smoke``) never share a checkpoint. Only rank 0 of a DDP run
    writes."""

    def __init__(self, root: str | os.PathLike[str] = "results", checkpoints: str | os.PathLike[str] | None = None):
        self.root = resolve_root(root)
        self.checkpoints = (Path(checkpoints) if checkpoints is not None
                            else self.root.parent / "checkpoints" / self.root.name)

    def __repr__(self) -> str:
        return f"RunStore(root={str(self.root)!r}, checkpoints={str(self.checkpoints)!r})"

    # -- where things are ------------------------------------------------------------------------
    def run_dir(self, run: RunConfig) -> Path:
        """``root/<preset>/<method>/<run_id>``."""
        return self.root / run.preset / run.method / run.run_id()

    def checkpoint_path(self, run: RunConfig) -> Path:
        """``<checkpoints>/<run_id>/ckpt.pt``: the latest checkpoint (at the end of training: the final model)."""
        return self.checkpoints / run.run_id() / CHECKPOINT

    def is_done(self, run: RunConfig) -> bool:
        return (self.run_dir(run) / DONE).is_file()

    def lock(self, run: RunConfig) -> RunLock:
        """The run's writer lock (:mod:`mstlib.runlock`), not yet taken: ``.<run_id>.lock`` beside the run's
        folder, not in it, because a retrain replaces the folder while holding the lock."""
        return RunLock(self.run_dir(run).parent / f".{run.run_id()}.lock", f"run {run.run_id()}")

    def retrain_store(self, run: RunConfig) -> "RunStore":
        """Where a retrain of the done ``run`` (``train --no-resume``) writes until it is done: hidden
        folders beside the run's folder and its checkpoint folder, so the finished result stays whole and
        evaluable until :meth:`adopt` swaps the new one in. Invisible to :meth:`find`."""
        return _RetrainStore(self, run)

    def adopt(self, run: RunConfig, retrained: "RunStore") -> None:
        """Replace the run's checkpoint folder, then its results folder, by those of a finished retrain
        (each in one atomic exchange where the file system has one); the results folder goes last because
        its ``done`` marker is what readers trust. The old folders are removed."""
        _swap_in(retrained.checkpoint_path(run).parent, self.checkpoint_path(run).parent)
        _swap_in(retrained.run_dir(run), self.run_dir(run))

    # -- writing (used by mstlib.train) ----------------------------------------------------------
    def begin(self, run: RunConfig, provenance: dict[str, Any], fresh: bool) -> Path:
        """Prepare the run folder for training: write ``config.json`` and ``provenance.json``. ``fresh``
        removes what an earlier, abandoned attempt left (log, metrics, eval, done marker)."""
        d = self.run_dir(run)
        d.mkdir(parents=True, exist_ok=True)
        if fresh:
            for name in (DONE, METRICS, EVAL, LOG, LOG_GZ):
                (d / name).unlink(missing_ok=True)
        else:
            (d / DONE).unlink(missing_ok=True)
        atomic_write_json(d / CONFIG, run.to_dict())
        atomic_write_json(d / PROVENANCE, provenance)
        return d

    def write_json(self, run: RunConfig, name: str, obj: Any) -> Path:
        """Atomically write ``name`` (for example ``eval.json``) into the run's folder."""
        path = self.run_dir(run) / name
        atomic_write_json(path, obj)
        return path

    def write_eval(self, run: RunConfig, results: dict[str, Any]) -> Path:
        """Store evaluation results (``eval.json``) of a trained run."""
        if not self.is_done(run):
            raise MstError(f"run {run.run_id()} is not done training; evaluate it after training finishes")
        return self.write_json(run, EVAL, results)

    def finish(self, run: RunConfig, metrics: dict[str, Any], provenance: dict[str, Any]) -> Path:
        """Write metrics and provenance, then the ``done`` marker, last."""
        d = self.run_dir(run)
        atomic_write_json(d / METRICS, metrics)
        atomic_write_json(d / PROVENANCE, provenance)
        atomic_write_json(d / DONE, {"run_id": run.run_id(), "finished_utc": utc_now()})
        return d

    # -- reading ---------------------------------------------------------------------------------
    def load(self, run: RunConfig | str | os.PathLike[str]) -> RunResult:
        """The stored result of ``run`` (a RunConfig, or a run folder). Works for unfinished runs too
        (``done`` False, empty metrics)."""
        d = self.run_dir(run) if isinstance(run, RunConfig) else Path(run)
        return load_run_dir(d, self.checkpoints_option())

    def find(self, preset: str | None = None, method: str | None = None, done_only: bool = True) -> list[RunResult]:
        """Stored runs, optionally only one preset and/or method, sorted by (preset, method, seed, id). A
        corrupt run is skipped with a CorruptRunWarning that names it and says how to repair it."""
        pattern = f"{preset or '*'}/{method or '*'}/*/{CONFIG}"
        out = []
        for cfg in sorted(self.root.glob(pattern)):
            if any(part.startswith(".") for part in cfg.relative_to(self.root).parts):
                continue  # a retrain in progress, an unpack's staging folder
            res = self._load_or_warn(cfg.parent)
            if res is not None and (res.done or not done_only):
                out.append(res)
        out.sort(key=lambda r: (r.run.preset, r.run.method, r.run.seed, r.run_id))
        return out

    def compress_logs(self) -> int:
        """Store the log of every done run as ``log.csv.gz`` (see :func:`stored_files`); a run still
        training keeps its plain log. Each log is replaced atomically. Returns how many were compressed."""
        n = 0
        for log in sorted(self.root.glob(f"*/*/*/{LOG}")):
            d = log.parent
            if any(part.startswith(".") for part in d.relative_to(self.root).parts) or not (d / DONE).is_file():
                continue
            try:  # a run folder is named by its config's run id; anything else here is not the store's
                if RunConfig.from_dict(json.loads((d / CONFIG).read_text())).run_id() != d.name:
                    continue
            except (OSError, ValueError):
                continue
            atomic_write_bytes(d / LOG_GZ, gzip_log(log.read_bytes()))
            log.unlink()
            n += 1
        return n

    def table(self, runs: Iterable[RunResult | RunConfig]) -> "pd.DataFrame":
        """One row per run: config fields flattened to dotted columns, metrics, and ``eval.*`` columns. A
        corrupt run is left out with a CorruptRunWarning (a run that is not stored at all is an error)."""
        import pandas as pd

        loaded = [r if isinstance(r, RunResult) else self._load_or_warn(self.run_dir(r)) for r in runs]
        return pd.DataFrame([r.row() for r in loaded if r is not None])

    def _load_or_warn(self, d: Path) -> RunResult | None:
        try:
            return load_run_dir(d, self.checkpoints_option())
        except CorruptRunError as e:
            warnings.warn(CorruptRunWarning(f"skipped a corrupt run: {e}"), stacklevel=3)
            return None

    def checkpoints_option(self) -> Path | None:
        """The ``--checkpoints`` a command line on this store needs: None where it is ``root``'s default."""
        return None if self.checkpoints == RunStore(self.root).checkpoints else self.checkpoints


def load_run_dir(d: str | os.PathLike[str], checkpoints: str | os.PathLike[str] | None = None) -> RunResult:
    """Read a run folder (``config.json`` required; metrics, provenance and eval when present). A file
    that is there but unreadable raises CorruptRunError with the command that repairs the run (for a store
    whose checkpoints are not in the default place, pass them as ``checkpoints``)."""
    d = Path(d)
    if not (d / CONFIG).is_file():
        raise MstError(f"{d} is not a run folder (no {CONFIG}); run folders are <root>/<preset>/<method>/<run_id>")
    try:
        run = RunConfig.from_dict(read_json(d / CONFIG))
    except MstError as e:  # not JSON, or not a valid config (ConfigError)
        raise CorruptRunError(
            f"run {d.name} at {d}: {CONFIG} cannot be read ({e}), so nothing says which run it is. Delete the "
            f"folder (rm -r {shlex.quote(str(d))}) and train the run again with --no-resume"
        ) from e
    done = (d / DONE).is_file()
    stored: dict[str, Any] = {}
    for name in (DONE, METRICS, PROVENANCE, EVAL):
        if not (d / name).is_file() or (name == METRICS and not done):
            continue
        try:
            stored[name] = read_json(d / name)
        except CorruptRunError as e:
            if name == EVAL:  # the training result is intact: only the evaluation has to be redone
                todo = (f"delete it and evaluate again: rm {shlex.quote(str(d / EVAL))} && "
                        f"{_train_command(d, checkpoints)} --evaluate")
            else:
                todo = (f"train it again (the old result stays until the new one is done): "
                        f"{retrain_command(d, checkpoints)}")
            todo += (" (or, for a run trained elsewhere, unpack its archive again: python -m mstlib sweep "
                     "--unpack ARCHIVE --overwrite)")
            raise CorruptRunError(f"run {d.name} at {d}: {e}; {todo}") from e
    return RunResult(
        run=run,
        path=d,
        # the folder name is the id the run was stored under (a config field added later would change
        # run.run_id(); the stored id stays the name the folder is found by)
        run_id=d.name,
        done=done,
        metrics=stored.get(METRICS, {}),
        provenance=stored.get(PROVENANCE, {}),
        eval=stored.get(EVAL),
    )


def retrain_command(run_dir: str | os.PathLike[str], checkpoints: str | os.PathLike[str] | None = None) -> str:
    """The command line that trains the run of ``run_dir`` again from scratch (its stored result, if any,
    stays until the new one is done)."""
    return _train_command(run_dir, checkpoints) + " --no-resume"


def _train_command(run_dir: str | os.PathLike[str], checkpoints: str | os.PathLike[str] | None) -> str:
    d = Path(run_dir)
    args = ["--config", str(d / CONFIG), "--results", str(d.parents[2])]
    if checkpoints is not None:
        args += ["--checkpoints", str(checkpoints)]
    # spelt out, so that tests/test_cli.py's scan of suggested commands finds it
    return "python -m mstlib train " + shlex.join(args)


class _RetrainStore(RunStore):
    """The run store of one retrain in progress (:meth:`RunStore.retrain_store`)."""

    def __init__(self, base: RunStore, run: RunConfig) -> None:
        super().__init__(base.root, base.checkpoints)
        hidden = f".{run.run_id()}.retrain"
        self._run_dir = base.run_dir(run).with_name(hidden)
        self._checkpoint = base.checkpoint_path(run).parent.with_name(hidden) / CHECKPOINT

    def run_dir(self, run: RunConfig) -> Path:
        return self._run_dir

    def checkpoint_path(self, run: RunConfig) -> Path:
        return self._checkpoint

    def load(self, run: RunConfig | str | os.PathLike[str]) -> RunResult:
        res = super().load(run)
        if isinstance(run, RunConfig):
            res.run_id = run.run_id()  # not the hidden folder's name
        return res

    def discard(self) -> None:
        """Remove what an earlier, abandoned retrain left."""
        shutil.rmtree(self._run_dir, ignore_errors=True)
        shutil.rmtree(self._checkpoint.parent, ignore_errors=True)


_RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):  # glibc older than 2.28, or another C library
        return False
    at_fdcwd = -100
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # this file system cannot exchange
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _swap_in(new: Path, dest: Path) -> None:
    """Put the folder ``new`` at ``dest``, removing what was there; readers of ``dest`` see the old folder
    or the new one, never a mixture (and, without an atomic exchange, for an instant no folder)."""
    if not new.exists():
        return
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(new, dest)
        return
    if _exchange(new, dest):
        shutil.rmtree(new)  # now the old folder
        return
    old = dest.with_name(f".{dest.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(dest, old)
    os.replace(new, dest)
    shutil.rmtree(old)


def table(runs: Iterable[RunResult]) -> "pd.DataFrame":
    """One row per stored result (see :meth:`RunResult.row`); use :meth:`RunStore.table` to pass configs."""
    import pandas as pd

    return pd.DataFrame([r.row() for r in runs])
