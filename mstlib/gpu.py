"""A GPU call as data: a plan file says what the call needs and which commands it runs on which GPU; one
runner (``python -m mstlib gpu PLAN`` or ``tools/gpu/call.sh PLAN``) stages what is needed, runs the commands
(one lane per GPU, lanes side by side, commands in a lane one after the other), and packs the files the plan
names, every command's log and a record of the call into ``$OUT``.

A plan is a text file, one statement a line (``#`` starts a comment; ``${NAME}`` is replaced by a
``NAME=VALUE`` given on the command line, or by the plan's own ``set``; ``$${NAME}`` reaches the shell as
``${NAME}``)::

    # what: step times of the mini model, eager and compiled
    set T=480
    need corpus offline-50m          # unpack .gpu/corpus/offline-50m into data/ unless it is there
    need eval                        # unpack .gpu/eval.tar.xz and point MST_EVAL_DIR at it
    run gpu=0 timeout=${T} python3 -m mstlib bench --models mini --out results/bench/step_times.json
    run gpu=1 log=tests python3 -m pytest tests/attention -q -p no:cacheprovider
    collect results/bench/step_times.json

``run`` takes ``gpu=N`` (the lane; default 0; ``gpu=all`` sees every GPU), ``timeout=SECONDS`` and
``log=NAME``. ``collect`` copies a file or folder (relative to the repository) into ``$OUT/files/``.
The record, ``$OUT/call.json``, holds what the archive's manifest holds for each call: the plan, the commit,
the commands with their exit status and wall time, and the files.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import tarfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError
from .provenance import REPO_ROOT, git_state, utc_now

NEEDS = ("corpus", "eval")


@dataclass
class Command:
    argv: str  # a shell command line, run with bash from the repository root
    gpu: str = "0"
    timeout: int | None = None
    log: str = ""


@dataclass
class Plan:
    path: str
    about: list[str] = field(default_factory=list)  # the plan's leading comments
    needs: list[tuple[str, str]] = field(default_factory=list)
    commands: list[Command] = field(default_factory=list)
    collect: list[str] = field(default_factory=list)

    def lanes(self) -> dict[str, list[Command]]:
        out: dict[str, list[Command]] = {}
        for c in self.commands:
            out.setdefault(c.gpu, []).append(c)
        return out


def _fill(text: str, fill) -> str:
    """``${NAME}`` replaced by ``fill``; ``$${NAME}`` is a literal ``${NAME}`` (for the shell)."""
    return re.sub(r"(?<!\$)\$\{(\w+)\}", fill, text).replace("$${", "${")


def parse_plan(text: str, path: str = "<plan>", values: dict[str, str] | None = None) -> Plan:
    """The plan in ``text``; ``values`` fill ``${NAME}`` (a name with no value is a ConfigError)."""
    values = dict(values or {})
    plan = Plan(path)
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line.startswith("#"):
            if not plan.needs and not plan.commands:
                plan.about.append(line.lstrip("# ").rstrip())
            continue
        line = re.sub(r"\s+#(?![^\"']*[\"']).*$", "", line).strip()  # a trailing comment, outside quotes
        if not line:
            continue

        def fill(m: re.Match[str]) -> str:
            if m.group(1) not in values:
                raise ConfigError(f"{path}:{n}: ${{{m.group(1)}}} has no value; give {m.group(1)}=VALUE")
            return values[m.group(1)]

        word, _, rest = line.partition(" ")
        if word == "set":
            name, eq, value = rest.strip().partition("=")
            if not eq:
                raise ConfigError(f"{path}:{n}: set needs NAME=VALUE, got {rest!r}")
            values.setdefault(name.strip(), _fill(value.strip(), fill))
            continue
        rest = _fill(rest.strip(), fill)
        if word == "need":
            kind, _, arg = rest.partition(" ")
            if kind not in NEEDS:
                raise ConfigError(f"{path}:{n}: need {kind!r}: choose one of {NEEDS}")
            plan.needs.append((kind, arg.strip()))
        elif word == "run":
            cmd = Command("")
            words = rest.split(" ")
            while words and re.fullmatch(r"(gpu|timeout|log)=\S+", words[0]):
                key, value = words.pop(0).split("=", 1)
                if key == "timeout":
                    cmd.timeout = int(value)
                else:
                    setattr(cmd, key, value)
            cmd.argv = " ".join(words).strip()
            if not cmd.argv:
                raise ConfigError(f"{path}:{n}: run needs a command")
            plan.commands.append(cmd)
        elif word == "collect":
            plan.collect += shlex.split(rest)
        else:
            raise ConfigError(f"{path}:{n}: unknown statement {word!r}; a plan knows set, need, run, collect")
    return plan


def read_plan(path: str | os.PathLike[str], values: dict[str, str] | None = None) -> Plan:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"no plan file {p}")
    return parse_plan(p.read_text(), str(p), values)


def stage(plan: Plan, root: Path, env: dict[str, str], log: Path) -> None:
    """Unpack what the plan needs from ``.gpu/`` (where the call's carried files are), unless it is there."""
    for kind, arg in plan.needs:
        if kind == "eval":
            if not (root / ".gpu/eval/eval").is_dir():
                (root / ".gpu/eval").mkdir(parents=True, exist_ok=True)
                with tarfile.open(root / ".gpu/eval.tar.xz") as tar:
                    tar.extractall(root / ".gpu/eval", filter="data")
            env["MST_EVAL_DIR"] = str(root / ".gpu/eval/eval")
        elif kind == "corpus" and not (root / "data" / arg / "meta.json").is_file():
            with open(log, "a") as f:
                subprocess.run(["python3", "-m", "mstlib", "data", "unpack", f".gpu/corpus/{arg}"], cwd=root,
                               env=env, stdout=f, stderr=subprocess.STDOUT, check=True)


def _run_lane(cmds: list[Command], gpu: str, root: Path, env: dict[str, str], logs: Path,
              record: list[dict]) -> None:
    for i, c in enumerate(cmds):
        lane_env = dict(env)
        if gpu != "all":
            lane_env["CUDA_VISIBLE_DEVICES"] = gpu
        name = c.log or f"gpu{gpu}-{i + 1}"
        start = time.monotonic()
        with open(logs / f"{name}.log", "w") as f:
            f.write(f"$ {c.argv}\n")
            f.flush()
            try:
                rc = subprocess.run(["bash", "-c", c.argv], cwd=root, env=lane_env, stdout=f,
                                    stderr=subprocess.STDOUT, timeout=c.timeout).returncode
            except subprocess.TimeoutExpired:
                rc = 124
        record.append({"gpu": gpu, "command": c.argv, "log": f"logs/{name}.log", "exit": rc,
                       "wall_s": round(time.monotonic() - start, 1)})


def run_plan(plan: Plan, out: Path, root: Path = REPO_ROOT) -> dict:
    """Stage, run and pack ``plan`` into ``out``; returns the record written to ``out/call.json``."""
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OUT": str(out), "PYTHONUNBUFFERED": "1", "NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
           "NVSHMEM_DISABLE_NVLS": "1"}
    started = utc_now()
    stage(plan, root, env, logs / "stage.log")
    ran: list[dict] = []
    threads = [threading.Thread(target=_run_lane, args=(cmds, gpu, root, env, logs, ran))
               for gpu, cmds in plan.lanes().items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    files = []
    for rel in plan.collect:
        src = root / rel
        dst = out / "files" / rel
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True)
        elif src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
        else:
            continue
        files.append(rel)
    record = {"plan": plan.path, "about": plan.about, "commit": git_state().get("commit"), "started_utc": started,
              "commands": sorted(ran, key=lambda r: (r["gpu"], r["log"])), "files": files}
    (out / "call.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``python -m mstlib gpu PLAN [NAME=VALUE ...]``: run a GPU call's plan, results and logs into $OUT."""
    parser.add_argument("plan", help="the plan file")
    parser.add_argument("values", nargs="*", metavar="NAME=VALUE", help="values for the plan's ${NAME}")
    parser.add_argument("--out", default=None, help="where results and logs go (default: $OUT or /tmp/gpu-out)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the lanes and commands, run nothing (also: MSTLIB_GPU_DRY_RUN=1)")


def main(args: argparse.Namespace) -> int:
    values = dict(v.split("=", 1) for v in args.values if "=" in v)
    bad = [v for v in args.values if "=" not in v]
    if bad:
        raise ConfigError(f"plan values are NAME=VALUE, got {bad}")
    plan = read_plan(args.plan, values)
    if args.dry_run or os.environ.get("MSTLIB_GPU_DRY_RUN") == "1":
        for kind, arg in plan.needs:
            print(f"need {kind} {arg}".rstrip())
        for gpu, cmds in plan.lanes().items():
            for c in cmds:
                print(f"gpu {gpu}: {c.argv}" + (f"  (timeout {c.timeout} s)" if c.timeout else ""))
        for rel in plan.collect:
            print(f"collect {rel}")
        return 0
    out = Path(args.out or os.environ.get("OUT") or "/tmp/gpu-out")
    record = run_plan(plan, out)
    for r in record["commands"]:
        print(f"gpu {r['gpu']}: exit {r['exit']} after {r['wall_s']} s: {r['command']} ({r['log']})")
    print(f"{len(record['files'])} collected into {out / 'files'}; record {out / 'call.json'}")
    return max((r["exit"] for r in record["commands"]), default=0)
