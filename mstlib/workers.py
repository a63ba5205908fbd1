"""Worker processes of a sweep: each in its own process group, stopped with it, and dying with the sweep.

A trainer left running after its sweep is gone keeps writing its run while a rerun of the sweep starts
another trainer on it. So the sweep starts every worker in a new session (its own process group, which a
terminal's Ctrl-C or hang-up does not reach) and stops the whole group itself when it is told to stop
(SIGTERM, SIGINT, SIGHUP). A SIGKILL of the sweep cannot be caught: for that case the worker asks the kernel
to send it SIGTERM when its parent dies (Linux ``prctl(PR_SET_PDEATHSIG)``; elsewhere a thread polls its
parent's PID). The run lock (:mod:`mstlib.runlock`) makes a rerun safe even if a worker outlived its sweep.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Sequence

#: The environment variable through which a sweep tells its worker the PID it must not outlive.
PARENT_ENV = "MSTLIB_DIE_WITH_PARENT"

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def start_worker(cmd: Sequence[str], env: dict[str, str], **popen: Any) -> subprocess.Popen:
    """``Popen(cmd)`` as a worker: in a session and process group of its own, told to die with us."""
    env = {**env, PARENT_ENV: str(os.getpid())}
    return subprocess.Popen(list(cmd), env=env, start_new_session=True, **popen)


def stop_workers(procs: Sequence[subprocess.Popen], grace_s: float = 30.0) -> None:
    """SIGTERM the process group of every worker in ``procs``, wait up to ``grace_s`` seconds for them, then
    SIGKILL the groups still there. A trainer killed this way keeps its last checkpoint."""
    for p in procs:
        _signal_group(p, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(p, signal.SIGKILL)
            p.wait()
    for p in procs:  # what the workers started themselves (the group outlives its leader)
        _signal_group(p, signal.SIGKILL)


def _signal_group(p: subprocess.Popen, sig: int) -> None:
    if p.pid <= 1:  # killpg(1) or killpg(0) would reach init or our own group
        return
    try:
        os.killpg(p.pid, sig)  # a new session's leader is its group's leader: pgid == pid
    except (ProcessLookupError, PermissionError):
        pass


def die_with_parent() -> None:
    """In a worker: arrange a SIGTERM to ourselves when the sweep that started us dies (also by SIGKILL).
    Does nothing in a process not started by :func:`start_worker`."""
    expected = os.environ.pop(PARENT_ENV, None)  # not inherited by what we start ourselves
    if not expected or not expected.isdigit():
        return
    parent = int(expected)
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0:
                if os.getppid() != parent:  # it died before prctl took effect
                    os.kill(os.getpid(), signal.SIGTERM)
                return
        except (AttributeError, OSError):
            pass
    threading.Thread(target=_watch_parent, args=(parent,), name="die-with-parent", daemon=True).start()


def _watch_parent(parent: int, poll_s: float = 1.0) -> None:
    while os.getppid() == parent:
        time.sleep(poll_s)
    os.kill(os.getpid(), signal.SIGTERM)
