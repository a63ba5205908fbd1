"""Shared pytest fixtures (keep this file small: one fixture per need, each documented)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent

# Test files import their neighbours' helpers by module name (``from test_tokenizer import fake_clients``);
# the folders that mirror mstlib's sub-packages are on the path as tests/ itself is.
for _folder in sorted(p for p in Path(__file__).resolve().parent.iterdir() if p.is_dir() and p.name[0] not in "._"):
    if _folder.name != "fixtures":
        sys.path.insert(0, str(_folder))


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


# ---------------------------------------------------------------------------------- shared data
# The real evaluation sets and corpus are read from <shared>/data (../shared or $MST_SHARED_DIR). A fresh
# clone with nothing beside it runs the pipeline on synthetic stand-ins (`shared_data`) and skips only the
# tests about the real files' contents; CI has ../shared and sets MST_REQUIRE_SHARED=1 (.ci/run), so there a
# missing folder fails the run instead of skipping or silently testing stand-ins.
REQUIRE_SHARED = os.environ.get("MST_REQUIRE_SHARED") == "1"
HOW_TO_PROVIDE = {
    "eval": "set MST_SHARED_DIR to a folder holding data/eval with its SOURCES.md (see README, Data)",
    "corpus": "set MST_SHARED_DIR to a folder holding data/corpus with its SOURCES.md (see README, Data)",
}


def shared_folder(what: str) -> Path:
    """``<shared>/data/eval`` or ``<shared>/data/corpus`` as the library resolves them."""
    from mstlib import data as corpus
    from mstlib.data import evalsets

    return evalsets.default_eval_dir() if what == "eval" else corpus.default_source_dir()


def has_shared(what: str) -> bool:
    return (shared_folder(what) / "SOURCES.md").is_file()


def needs_shared(what: str) -> pytest.MarkDecorator:
    """Skip a test about the real ``eval`` sets or ``corpus`` where they are absent, saying how to provide them."""
    return pytest.mark.skipif(not has_shared(what), reason=f"needs the real {'evaluation sets' if what == 'eval' else 'corpus'}"
                              f" ({shared_folder(what)} has no SOURCES.md): {HOW_TO_PROVIDE[what]}")


def pytest_sessionstart(session: pytest.Session) -> None:
    missing = [w for w in HOW_TO_PROVIDE if not has_shared(w)]
    if REQUIRE_SHARED and missing:
        raise pytest.UsageError(f"MST_REQUIRE_SHARED=1 but the shared data is missing ({', '.join(missing)}): "
                                + "; ".join(HOW_TO_PROVIDE[w] for w in missing))


@pytest.fixture(scope="session")
def shared_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder to use as MST_SHARED_DIR holding ``data/eval`` and ``data/corpus``: the real shared folder's
    where present, else synthetic ones in the real layout (``make_example_evalsets``, ``make_example_source``)."""
    from mstlib import data as corpus
    from mstlib.data import evalsets, tokenizer

    root = tmp_path_factory.mktemp("shared")
    bpe = tokenizer.shared_dir() / "data" / "tokenizer"
    if bpe.is_dir():  # so that a first get_encoding under this MST_SHARED_DIR still fills the cache offline
        (root / "data").mkdir()
        (root / "data" / "tokenizer").symlink_to(bpe, target_is_directory=True)
    for what, make in (("eval", corpus.make_example_evalsets), ("corpus", corpus.make_example_source)):
        dest = root / "data" / what
        dest.parent.mkdir(parents=True, exist_ok=True)
        if has_shared(what):
            dest.symlink_to(shared_folder(what), target_is_directory=True)
        else:
            make(dest)
    return root


@pytest.fixture
def with_shared_data(shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """MST_SHARED_DIR set to `shared_data` for one test; returns it."""
    from mstlib.data import evalsets

    monkeypatch.setenv("MST_SHARED_DIR", str(shared_data))
    monkeypatch.delenv(evalsets.ENV_VAR, raising=False)
    evalsets.clear_cache()
    return shared_data
