"""One writer per run: an exclusive ``flock`` on a lock file beside the run's folder.

Two trainers of one run id would append every step to the same ``log.csv`` and overwrite each other's
checkpoints. The lock is taken without waiting: a second trainer refuses at once and names the holder's
PID, which the holder writes into the file. The kernel drops a ``flock`` when its process dies (however it
dies, SIGKILL included), so a lock left by a dead trainer is simply taken over; the PID in the file is only
for the message. The file itself is never deleted: unlinking it while a second process has it open would
let two processes lock two different files of the same name.

On NFS, Linux emulates ``flock`` with POSIX byte-range locks, which hold across hosts when the server
supports locking.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .errors import RunLockedError


class RunLock:
    """The lock of one run: ``with RunLock(path, "run abc123"):`` or ``acquire()`` / ``release()``."""

    def __init__(self, path: str | os.PathLike[str], what: str) -> None:
        self.path = Path(path)
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        """Take the lock or raise :class:`RunLockedError` naming the process that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = holder(self.path)
            who = f"process {pid}" if pid else "another process (it has not written its PID yet)"
            raise RunLockedError(
                f"{self.what} is being trained by {who} (lock {self.path}); wait for it to finish, or stop it"
                + (f" (kill {pid})" if pid else "") + " and train again: it resumes from its last checkpoint"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)  # no stale PID for the next message; the file stays (module docstring)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def holder(path: str | os.PathLike[str]) -> int | None:
    """The PID written into the lock file ``path`` (None when empty or absent). Only meaningful while the
    file is locked: after a crash it names the dead process."""
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
