"""The stored GPU benchmark results and their manifest (mstlib.benchstore, results/bench/manifest.json):
every stored file is in the manifest and every listed file exists, only current files sit at the top of
results/bench/, no page finds benchmark data by a session-tagged file name, the appendix page is the
manifest's, and the selection API."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mstlib import benchstore
from mstlib.errors import MstError

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "results/bench"


def listed() -> set[str]:
    """Every path the manifest names (files, logs, scripts), relative to results/bench."""
    manifest = benchstore.load_manifest(ROOT / "results")
    paths = set(manifest.get("helper_scripts", []))
    for call in manifest["calls"]:
        paths.update(f["path"] for f in call["files"])
        paths.update(call["logs"])
        if call["script"] and call["script"].startswith("archive/"):
            paths.add(call["script"])
    return paths


def test_every_stored_file_is_in_the_manifest_and_every_listed_one_exists() -> None:
    paths = listed()
    missing = sorted(p for p in paths if not (BENCH / p).exists())
    assert not missing, f"the manifest lists files that are not there: {missing[:5]}"
    stored = set()
    for f in BENCH.rglob("*"):
        rel = f.relative_to(BENCH).as_posix()
        if f.is_dir() or rel in (benchstore.MANIFEST, "README.md"):
            continue
        if rel.startswith("archive/plans/"):  # the calls as plan files, written from the manifest (checked there)
            continue
        # a whole-run folder is listed as the folder
        stored.add(next((p for p in paths if rel.startswith(p + "/")), rel))
    unlisted = sorted(stored - paths)
    assert not unlisted, f"files under results/bench/ that the manifest does not list: {unlisted[:5]}"


def test_only_current_files_sit_at_the_top_and_the_rest_in_the_archive() -> None:
    for f in benchstore.files(ROOT / "results", status=None):
        if f["status"] == "current":
            assert not f["path"].startswith("archive/"), f["path"]
        else:
            assert f["path"].startswith("archive/"), f"{f['path']} is {f['status']}: it belongs in archive/"
    top = {p.name for p in BENCH.iterdir()} - {"archive", "runs", benchstore.MANIFEST, "README.md"}
    current = {f["path"] for f in benchstore.files(ROOT / "results")}
    assert top <= current, f"files at the top of results/bench/ that are not current: {sorted(top - current)}"


SESSION_TAG = re.compile(r"session\d|\bs\dcall\d|_call\d")


def test_no_page_selects_benchmark_data_by_a_session_tagged_file_name() -> None:
    for source in sorted((ROOT / "notebooks").glob("*.py")):
        hits = [line.strip() for line in source.read_text().splitlines() if SESSION_TAG.search(line)]
        assert not hits, f"{source.name} names session-tagged files: {hits[:3]}"


def test_the_appendix_page_is_the_manifest_s() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "tools/bench_archive.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_files_selects_by_kind_status_and_model_and_carries_the_call(tmp_path: Path) -> None:
    bench = tmp_path / "bench"
    bench.mkdir()
    rows = [{"variant": "dense", "model": "mini", "ms_per_step_median": 20.0}]
    (bench / "steps.json").write_text(json.dumps(rows))
    (bench / benchstore.MANIFEST).write_text(json.dumps({"calls": [
        {"call": "a.sh at 1234567", "commit": "1234567890", "script": "archive/scripts/a.sh", "started_utc": None,
         "files": [{"path": "archive/old.json", "kind": "step times", "status": "archived", "models": ["mini"]}]},
        {"call": "b.sh at abcdef0", "commit": "abcdef0123", "script": "archive/scripts/b.sh", "started_utc": None,
         "files": [{"path": "steps.json", "kind": "step times", "status": "current", "models": ["mini"]},
                   {"path": "layer.json", "kind": "attention layer", "status": "current", "models": ["paper"]}]},
    ]}))
    current = benchstore.files(tmp_path, kind="step times")
    assert [f["path"] for f in current] == ["steps.json"] and current[0]["commit"] == "abcdef0123"
    assert [f["path"] for f in benchstore.files(tmp_path, kind="step times", status=None)] == ["archive/old.json", "steps.json"]
    assert benchstore.files(tmp_path, model="paper")[0]["kind"] == "attention layer"
    frame = benchstore.step_rows(current)
    assert list(frame["call"]) == ["b.sh at abcdef0"] and frame["ms_per_step_median"].iloc[0] == 20.0
    assert benchstore.describe(current[0]) == "results/bench/steps.json, written by b.sh at abcdef0"
    with pytest.raises(MstError, match="status"):
        benchstore.files(tmp_path, status="latest")
    with pytest.raises(MstError, match="no benchmark manifest"):
        benchstore.files(tmp_path / "nowhere")
