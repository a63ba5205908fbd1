"""The stored GPU benchmark results and the calls that made them (``results/bench/manifest.json``).

Pages never find benchmark data by matching file names: they ask this module for the files of a kind
(``"step times"``, ``"attention layer"``, ``"block-sparse matrix products"``, ``"whole runs, both compile
modes"``, ...) whose status is ``current`` (the latest measurement of that kind, at the top of
``results/bench/``), and each file comes with the call that wrote it: the code commit, the script, the
command, when it started where recorded. Earlier calls' files are in ``results/bench/archive/`` under the
names they were written with; the book's appendix lists every call (``tools/bench_archive.py`` writes it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import MstError
from .results import resolve_root

if TYPE_CHECKING:
    import pandas as pd

MANIFEST = "manifest.json"
STATUSES = ("current", "archived", "superseded")
#: what a call record contributes to each of its files (call name, code commit, script, start time)
CALL_FIELDS = ("call", "commit", "script", "started_utc", "machine")


def bench_dir(results_dir: str | Path = "results") -> Path:
    return resolve_root(results_dir) / "bench"


def load_manifest(results_dir: str | Path = "results") -> dict[str, Any]:
    path = bench_dir(results_dir) / MANIFEST
    if not path.is_file():
        raise MstError(f"no benchmark manifest at {path}: the stored GPU results come with the repository "
                       "(results/bench/manifest.json)")
    return json.loads(path.read_text())


def files(results_dir: str | Path = "results", kind: str | None = None, status: str | None = "current",
          model: str | None = None) -> list[dict[str, Any]]:
    """The manifest's file records (``path`` relative to ``results/bench``, ``kind``, ``status``, ``models``,
    ...) of ``kind`` and ``status`` (None: any), holding ``model`` if given, oldest call first; each with its
    call's :data:`CALL_FIELDS` and ``full_path``."""
    if status is not None and status not in STATUSES:
        raise MstError(f"status {status!r}: choose from {STATUSES}")
    root = bench_dir(results_dir)
    out = []
    for call in load_manifest(results_dir)["calls"]:
        for f in call["files"]:
            if (kind is None or f["kind"] == kind) and (status is None or f["status"] == status) and (
                    model is None or model in f.get("models", [])):
                out.append({**f, **{k: call.get(k) for k in CALL_FIELDS}, "full_path": root / f["path"]})
    return out


def read(record: dict[str, Any]) -> Any:
    """The parsed JSON of one file record."""
    return json.loads(Path(record["full_path"]).read_text())


def step_rows(records: list[dict[str, Any]]) -> "Any":
    """The rows of step-times files (``mstlib.benchmark.run_benchmark``'s) as one DataFrame, each row with
    its file's ``path``, ``call`` and ``commit``."""
    import pandas as pd

    rows = []
    for rec in records:
        for r in read(rec):
            rows.append({**r, "path": rec["path"], "call": rec["call"], "commit": rec["commit"]})
    return pd.DataFrame(rows)


def describe(record: dict[str, Any]) -> str:
    """Where a file's numbers are stored and which call wrote them, for a table's caption."""
    return f"results/bench/{record['path']}, written by {record['call']}"


def load_benchmarks(results_dir: str | Path = "results", folder: str = "bench") -> "pd.DataFrame":
    """Every stored step-time row (``<results_dir>/<folder>/*.json`` files that hold a list of rows of
    :func:`mstlib.benchmark.run_benchmark`) as one table; other benchmark files there (``train_speed_*.json``,
    ``ddp_compare_*.json``) have their own readers, :func:`load_json_results`. The book finds its files
    through the manifest instead (:func:`files`); ``folder="bench/archive"`` reads earlier calls."""
    import pandas as pd

    rows = []
    for f in sorted((resolve_root(results_dir) / folder).glob("*.json")):
        data = json.loads(f.read_text())
        if not (isinstance(data, list) and data and isinstance(data[0], dict) and "variant" in data[0]):
            continue
        for r in data:
            r["file"] = f.name
            rows.append(r)
    return pd.DataFrame(rows)


def load_json_results(results_dir: str | Path, pattern: str) -> list[dict[str, Any]]:
    """The stored benchmark files ``<results_dir>/bench/<pattern>`` (JSON objects), each with ``file``."""
    out = []
    for f in sorted((resolve_root(results_dir) / "bench").glob(pattern)):
        d = json.loads(f.read_text())
        d["file"] = f.name
        out.append(d)
    return out
