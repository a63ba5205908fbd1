"""Tests of mstlib.gpu: GPU calls as plan files (parsing, lanes, staging, packing), run here on a CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mstlib import gpu
from mstlib.cli import main as cli_main
from mstlib.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent

PLAN = """# what: two lanes and a file
set N=3
run gpu=0 log=a echo one ${N}
run gpu=1 timeout=30 echo two   # a trailing comment
run gpu=0 echo "three # not a comment"
collect out.txt missing.txt
"""


def test_a_plan_parses_into_lanes():
    p = gpu.parse_plan(PLAN, "x.plan")
    assert p.about == ["what: two lanes and a file"]
    lanes = p.lanes()
    assert [c.argv for c in lanes["0"]] == ["echo one 3", 'echo "three # not a comment"']
    assert lanes["1"][0].timeout == 30 and lanes["1"][0].argv == "echo two"
    assert p.collect == ["out.txt", "missing.txt"]
    assert gpu.parse_plan(PLAN, values={"N": "7"}).commands[0].argv == "echo one 7"  # the command line wins


@pytest.mark.parametrize("text, match", [("frobnicate x", "unknown statement"), ("run echo ${NOPE}", "NOPE"),
                                         ("need disk", "need 'disk'"), ("run gpu=0", "needs a command")])
def test_a_bad_plan_says_what_is_wrong(text, match):
    with pytest.raises(ConfigError, match=match):
        gpu.parse_plan(text)


def test_a_call_runs_its_lanes_and_packs_files_logs_and_a_record(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    plan = gpu.parse_plan("run gpu=0 log=w echo hi > out.txt\nrun gpu=1 log=env echo $CUDA_VISIBLE_DEVICES\n"
                          "run gpu=1 log=slow timeout=1 sleep 5\ncollect out.txt", "t.plan")
    out = tmp_path / "out"
    rec = gpu.run_plan(plan, out, root)
    assert (out / "files/out.txt").read_text() == "hi\n"
    assert (out / "logs/env.log").read_text().splitlines()[-1] == "1"
    assert {r["log"]: r["exit"] for r in rec["commands"]} == {"logs/w.log": 0, "logs/env.log": 0, "logs/slow.log": 124}
    assert json.loads((out / "call.json").read_text())["files"] == ["out.txt"]


def test_the_command_line_dry_run(tmp_path, capsys):
    (tmp_path / "p.plan").write_text(PLAN)
    assert cli_main(["gpu", str(tmp_path / "p.plan"), "--dry-run"]) == 0
    assert "gpu 1: echo two  (timeout 30 s)" in capsys.readouterr().out


@pytest.mark.parametrize("path", sorted(str(p.relative_to(ROOT)) for p in
                                        [*(ROOT / "tools/gpu/plans").glob("*.plan"),
                                         *(ROOT / "results/bench/archive/plans").glob("*.plan")]))
def test_every_kept_plan_parses(path):
    plan = gpu.read_plan(ROOT / path, {"RUNS": "r.json", "NAME": "r"})
    assert plan.commands or plan.about, path  # a call whose commands were not kept is still described


def test_sweep_sh_is_the_sweep_plan():
    """tools/gpu/sweep.sh keeps its command line and runs the sweep plan (here as far as the dry run)."""
    env = {"MSTLIB_GPU_DRY_RUN": "1", "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    r = subprocess.run(["bash", "tools/gpu/sweep.sh", ".gpu/runs/callA.json", "300", "--per-gpu", "2"],
                       cwd=ROOT, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert "need corpus offline-50m" in r.stdout and "(timeout 300 s)" in r.stdout
    assert "--runs .gpu/runs/callA.json --evaluate --results results --per-gpu 2" in r.stdout
    assert '--pack "$OUT/callA.tar.gz"' in r.stdout


def test_a_plan_passes_the_shells_own_variables_through():
    p = gpu.parse_plan("set A=1\nrun echo ${A} $${B} $C")
    assert p.commands[0].argv == "echo 1 ${B} $C"
