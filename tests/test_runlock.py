"""The run lock: exclusive, refused at once with the holder's PID, taken over from a dead holder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mstlib.errors import RunLockedError
from mstlib.runlock import RunLock, holder

REPO = Path(__file__).resolve().parent.parent


def test_a_second_holder_is_refused_at_once_with_the_first_ones_pid(tmp_path):
    path = tmp_path / "m" / ".abc.lock"
    with RunLock(path, "run abc") as first:
        assert first.held and holder(path) == os.getpid()
        with pytest.raises(RunLockedError, match=rf"run abc is being trained by process {os.getpid()} .*kill {os.getpid()}"):
            RunLock(path, "run abc").acquire()
    assert holder(path) is None  # released: no stale PID for the next message
    with RunLock(path, "run abc"):  # and free again
        pass


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    """flock belongs to the process: the kernel drops it when the process dies, even by SIGKILL, while
    the file (with the dead PID in it) stays."""
    path = tmp_path / ".abc.lock"
    code = ("import os, signal, sys; from mstlib.runlock import RunLock; RunLock(sys.argv[1], 'run abc').acquire(); "
            "os.kill(os.getpid(), signal.SIGKILL)")
    dead = subprocess.run([sys.executable, "-c", code, str(path)], cwd=REPO, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert dead.returncode == -9 and path.is_file() and holder(path) not in (None, os.getpid())
    with RunLock(path, "run abc"):
        assert holder(path) == os.getpid()
