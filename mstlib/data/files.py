"""Writing a corpus folder safely: disk errors with advice, JSON written atomically, and the build folder
renamed into place only when complete."""

from __future__ import annotations

import concurrent.futures as cf
import errno
import json
import os
import shutil
from pathlib import Path
from typing import Any

from ..errors import DataError


def disk_error(what: str, where: Path, e: OSError) -> DataError:
    """A DataError for an OSError while writing: what failed, where, and what to do."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        advice = (f"the disk is full: free space where {where} is (df -h {where}) or choose another folder, "
                  "then run the same command again")
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        advice = f"{where} is not writable: choose another folder or fix its permissions, then run it again"
    else:
        advice = "fix the cause and run the same command again"
    return DataError(f"{what} failed: {e.strerror or e}{f' ({e.filename})' if e.filename else ''}. {advice}. "
                     "Nothing was installed: what was there before is unchanged.")


def reports_disk_errors(what: Any, where: Any, tmp: Any = None) -> Any:
    """Decorator: an OSError (a full disk, a read-only folder) or a broken worker pool inside ``fn`` becomes a
    DataError saying what failed; ``what``, ``where`` and ``tmp`` take the call's arguments and give its
    description, its output folder and a partial output to remove."""
    import functools

    def deco(fn: Any) -> Any:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kw: Any) -> Any:
            try:
                return fn(*args, **kw)
            except (OSError, cf.process.BrokenProcessPool) as e:
                if tmp is not None:
                    shutil.rmtree(tmp(*args, **kw), ignore_errors=True)
                if isinstance(e, OSError):
                    raise disk_error(what(*args, **kw), where(*args, **kw), e) from e
                raise DataError(f"{what(*args, **kw)} failed: a worker process died ({e}); the machine may be "
                                "out of memory: run it again with --workers 1") from e
        return wrapper
    return deco


def install(tmp: Path, final: Path) -> None:
    """Replace ``final`` by the finished ``tmp`` folder. Linux cannot swap two folders atomically, so the old
    folder is first renamed aside (``.old-*``) and deleted only after the new one is in place."""
    if final.exists():
        old = final.with_name(f".old-{final.name}-{os.getpid()}")
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)


def clean_stale(data_dir: Path, name: str) -> None:
    """Remove leftovers of killed runs (``.tmp-<name>-<pid>`` whose process is gone)."""
    for p in data_dir.glob(f".tmp-{name}-*"):
        try:
            pid = int(p.name.rsplit("-", 1)[1])
            os.kill(pid, 0)
        except (ValueError, ProcessLookupError):
            shutil.rmtree(p, ignore_errors=True)
        except PermissionError:
            pass


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
