"""A sweep's workers: their own process group, stopped with it, and never outliving a killed sweep."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mstlib import workers

REPO = Path(__file__).resolve().parent.parent


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped by whoever adopted it, does not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def wait_until(cond, timeout_s: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


_SWEEP_LIKE = """
import subprocess, sys, time
from mstlib import workers
child = "from mstlib.workers import die_with_parent; import time; die_with_parent(); time.sleep(120)"
p = workers.start_worker([sys.executable, "-c", child], dict(__import__("os").environ))
print(p.pid, flush=True)
time.sleep(120)
"""


def test_a_worker_dies_when_its_parent_is_killed_with_sigkill():
    """SIGKILL cannot be caught, so the parent cannot stop its worker: the worker must notice by itself."""
    parent = subprocess.Popen([sys.executable, "-c", _SWEEP_LIKE], stdout=subprocess.PIPE, text=True, cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    child = int(parent.stdout.readline())
    try:
        time.sleep(0.5)  # the worker has started and called die_with_parent
        assert alive(child) and os.getpgid(child) == child  # a process group of its own
        parent.kill()
        parent.wait(timeout=30)
        wait_until(lambda: not alive(child), 30, "the orphaned worker to die")
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)


def test_stop_workers_stops_the_whole_process_group(tmp_path):
    """A worker's own children (a compile pool, a data loader) go with it."""
    code = ("import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
            "print(c.pid, flush=True); time.sleep(120)")
    p = workers.start_worker([sys.executable, "-c", code], dict(os.environ), stdout=subprocess.PIPE, text=True)
    grandchild = int(p.stdout.readline())
    try:
        workers.stop_workers([p], grace_s=10)
        assert p.returncode == -signal.SIGTERM
        wait_until(lambda: not alive(grandchild), 10, "the worker's child to die")
    finally:
        for pid in (p.pid, grandchild):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_die_with_parent_does_nothing_outside_a_sweep_and_is_not_inherited(monkeypatch):
    import threading

    monkeypatch.delenv(workers.PARENT_ENV, raising=False)
    threads = threading.active_count()
    workers.die_with_parent()  # (a real PID here would tie this test process to its parent)
    monkeypatch.setenv(workers.PARENT_ENV, "not-a-pid")
    workers.die_with_parent()
    assert workers.PARENT_ENV not in os.environ  # not passed on to what we start ourselves
    assert threading.active_count() == threads
