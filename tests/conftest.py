"""Shared pytest fixtures (keep this file small: one fixture per need, each documented)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread is ~40x faster than two on a shared 2-core machine (use it with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository's root folder (where pyproject.toml is)."""
    return ROOT


@pytest.fixture
def kernel_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment for Jupyter kernels started by a test (papermill): the repository root on PYTHONPATH,
    so notebooks import this checkout's mstlib even where the package is not installed; returns it."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    # a kernel must draw figures inline (as in JupyterLab), so no MPLBACKEND from the caller's shell
    monkeypatch.delenv("MPLBACKEND", raising=False)
    return dict(os.environ)
