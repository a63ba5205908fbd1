"""The run store: one folder per run, named by the hash of its full config, reused when already done.

Layout (``root`` is ``results/`` by default; checkpoints live apart, in ``checkpoints/``, git-ignored)::

    results/<preset>/<method>/<run_id>/
        config.json       the full RunConfig (RunConfig.from_dict reads it back)
        provenance.json   git commit, seed, package versions, device, world size, UTC times, wall time
        log.csv           one row per optimizer step (see mstlib.train.LOG_COLUMNS)
        metrics.json      final losses, tokens, tokens/s, training FLOPs, peak memory
        eval.json         written later by mstlib.evaluate
        done              written last: a run is complete exactly when this file exists
    checkpoints/results/<run_id>/ckpt.pt      (checkpoints/<root's name>/...)

Every JSON file is written atomically (a temporary file in the same folder, then ``os.replace``), so a
crash mid-write leaves the previous version intact and never a half-written file. ``run_id`` is
:meth:`mstlib.config.RunConfig.run_id` (12 hex digits of the sha256 of the canonical JSON), so the same
config finds the same folder in every process, and any changed field finds a new one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Iterable, Iterator, Sequence

from .config import RunConfig
from .errors import MstError
from .provenance import REPO_ROOT, utc_now

if TYPE_CHECKING:  # pandas is imported lazily: training does not need it
    import pandas as pd

CONFIG = "config.json"
PROVENANCE = "provenance.json"
METRICS = "metrics.json"
LOG = "log.csv"
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


def read_json(path: str | os.PathLike[str]) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise MstError(f"{path} does not exist") from None
    except json.JSONDecodeError as e:
        # the run folder alone is not enough: train would resume from the run's checkpoint and refuse it
        run_dir = Path(path).parent  # <root>/<preset>/<method>/<run_id>, checkpoints as RunStore puts them
        root = run_dir.parents[2] if len(run_dir.parents) > 2 else run_dir.parent
        ckpt = root.parent / "checkpoints" / root.name / run_dir.name
        raise MstError(f"{path} is not valid JSON ({e}); delete the run folder {run_dir} and its checkpoint "
                       f"folder {ckpt} (<--checkpoints>/{run_dir.name} if you chose another), then train it "
                       "again") from e


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

    # -- writing (used by mstlib.train) ----------------------------------------------------------
    def begin(self, run: RunConfig, provenance: dict[str, Any], fresh: bool) -> Path:
        """Prepare the run folder for training: write ``config.json`` and ``provenance.json``. ``fresh``
        removes what an earlier, abandoned attempt left (log, metrics, eval, done marker)."""
        d = self.run_dir(run)
        d.mkdir(parents=True, exist_ok=True)
        if fresh:
            for name in (DONE, METRICS, EVAL, LOG):
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
        return load_run_dir(d)

    def find(self, preset: str | None = None, method: str | None = None, done_only: bool = True) -> list[RunResult]:
        """Stored runs, optionally only one preset and/or method, sorted by (preset, method, seed, id)."""
        pattern = f"{preset or '*'}/{method or '*'}/*/{CONFIG}"
        out = []
        for cfg in sorted(self.root.glob(pattern)):
            res = load_run_dir(cfg.parent)
            if res.done or not done_only:
                out.append(res)
        out.sort(key=lambda r: (r.run.preset, r.run.method, r.run.seed, r.run_id))
        return out

    def table(self, runs: Iterable[RunResult | RunConfig]) -> "pd.DataFrame":
        """One row per run: config fields flattened to dotted columns, metrics, and ``eval.*`` columns."""
        import pandas as pd

        rows = [(r if isinstance(r, RunResult) else self.load(r)).row() for r in runs]
        return pd.DataFrame(rows)

    # -- training what is missing ----------------------------------------------------------------
    def ensure(
        self, runs: Sequence[RunConfig], device: str = "auto", progress: bool = True, **train_kwargs: Any
    ) -> list[RunResult]:
        """Results of ``runs`` in order: stored ones are reused, missing ones trained here, one after the
        other, in this process (meant for the smoke preset in notebooks; use ``python -m mstlib sweep`` for
        real runs on GPUs)."""
        from .train import train

        out = []
        for run in runs:
            if self.is_done(run):
                out.append(self.load(run))
            else:
                out.append(train(run, self, device=device, progress=progress, **train_kwargs))
        return out


def load_run_dir(d: str | os.PathLike[str]) -> RunResult:
    """Read a run folder (``config.json`` required; metrics, provenance and eval when present)."""
    d = Path(d)
    if not (d / CONFIG).is_file():
        raise MstError(f"{d} is not a run folder (no {CONFIG}); run folders are <root>/<preset>/<method>/<run_id>")
    run = RunConfig.from_dict(read_json(d / CONFIG))
    done = (d / DONE).is_file()
    return RunResult(
        run=run,
        path=d,
        # the folder name is the id the run was stored under (a config field added later would change
        # run.run_id(); the stored id stays the name the folder is found by)
        run_id=d.name,
        done=done,
        metrics=read_json(d / METRICS) if done and (d / METRICS).is_file() else {},
        provenance=read_json(d / PROVENANCE) if (d / PROVENANCE).is_file() else {},
        eval=read_json(d / EVAL) if (d / EVAL).is_file() else None,
    )


def table(runs: Iterable[RunResult]) -> "pd.DataFrame":
    """One row per stored result (see :meth:`RunResult.row`); use :meth:`RunStore.table` to pass configs."""
    import pandas as pd

    return pd.DataFrame([r.row() for r in runs])
