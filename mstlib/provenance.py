"""Where a result came from: code version, package versions, hardware and time, without the host name.

Every run folder gets a ``provenance.json`` built here (see :mod:`mstlib.results`). The host name is left
out on purpose: results are committed to a public repository and the machine's name says nothing about
the numbers, while the device name (``NVIDIA H200``, a CPU model) does.

The GPU machine receives a copy of the working tree that may have no ``.git`` folder. Set
``MSTLIB_GIT_COMMIT`` (and optionally ``MSTLIB_GIT_DIRTY=0/1``) there to record the commit the copy was made
from, as a literal computed where the copy was made: a copied tree may carry a ``.git`` whose ``HEAD`` is
an older base (with the newer code as uncommitted changes), so ``$(git rev-parse HEAD)`` evaluated on the
GPU machine names the wrong commit (session 5's GPU files were recorded that way and corrected afterwards,
with a note). Otherwise the commit is recorded as ``null`` rather than guessed.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

#: mstlib's version (``mstlib.__version__``; pyproject.toml says the same)
MSTLIB_VERSION = "0.1.0"

#: The repository root (the folder above the ``mstlib`` package).
REPO_ROOT = Path(__file__).resolve().parent.parent

#: Packages whose versions can change a result.
PACKAGES = ("torch", "numpy", "tiktoken", "triton", "pandas", "nvidia-cudnn-frontend")


def utc_now() -> str:
    """The current time in UTC, ISO 8601 to the second (``2026-11-28T18:00:00+00:00``)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def git_state(repo: Path = REPO_ROOT) -> dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool or None, "source": "git" | "env" | "unavailable"}``.

    ``dirty`` means tracked files differ from the commit (untracked files are ignored: results written
    during a run must not make the run look dirty)."""
    env_commit = os.environ.get("MSTLIB_GIT_COMMIT")
    if env_commit:
        dirty_env = os.environ.get("MSTLIB_GIT_DIRTY")
        return {"commit": env_commit, "dirty": None if dirty_env is None else dirty_env == "1", "source": "env"}

    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10)
        if out.returncode != 0:
            raise subprocess.SubprocessError(out.stderr.strip())
        return out.stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None, "source": "unavailable"}
    return {"commit": commit, "dirty": dirty, "source": "git"}


def package_versions() -> dict[str, str | None]:
    """Versions of Python and of the packages in :data:`PACKAGES` (None when not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    # the version torch reports itself is the one that ran (a source build can differ from its metadata)
    if "torch" in sys.modules:
        out["torch"] = sys.modules["torch"].__version__
        out["cuda"] = sys.modules["torch"].version.cuda
        out["cudnn"] = sys.modules["torch"].backends.cudnn.version()  # the library the cuDNN kernels came from
    return out


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux, else ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_name(device: Any) -> str:
    """A human-readable name of ``device`` (a ``torch.device`` or string): the GPU's name for CUDA,
    the CPU model otherwise."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(dev)
    return cpu_model()


def collect(seed: int, device: Any, world_size: int) -> dict[str, Any]:
    """The provenance of a run started now: git state, seed, package versions, device, world size and
    start time. :mod:`mstlib.train` adds the end time and wall time when the run finishes."""
    return {
        "git": git_state(),
        "seed": seed,
        "packages": package_versions(),
        "device": str(device),
        "device_name": device_name(device),
        "world_size": world_size,
        "platform": f"{platform.system()} {platform.machine()}",
        "cpu_count": os.cpu_count(),
        "argv": [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv else [],
        "start_utc": utc_now(),
    }
