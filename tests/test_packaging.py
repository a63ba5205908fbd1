"""Packaging: pyproject.toml and environment.yml ask for the same packages with the same bounds; the
Makefile's torch pin lies inside the supported range; README, Makefile and CI agree on the commands."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from mstlib.data import tokenizer

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent
#: conda-forge names that differ from the PyPI name of the same package
CONDA_TO_PYPI = {"pytorch": "torch"}
#: extras for GPU machines only, which the (CPU-and-GPU) conda environment leaves out on purpose; each must be
#: named in environment.yml's comments so a reader learns how to add it
GPU_ONLY_EXTRAS = {"cudnn"}


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def pyproject_requirements() -> dict[str, SpecifierSet]:
    """Name -> specifier of every requirement: dependencies and all extras but :data:`GPU_ONLY_EXTRAS`,
    self-references expanded."""
    project = pyproject()["project"]
    out: dict[str, SpecifierSet] = {}
    lines = list(project["dependencies"])
    for name, extra in project["optional-dependencies"].items():
        if name not in GPU_ONLY_EXTRAS:
            lines += extra
    for line in lines:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        if name == canonicalize_name(project["name"]):
            continue  # "mstlib[book]" in dev: its packages are listed in the book extra itself
        assert name not in out or out[name] == req.specifier, f"{name} listed twice with different bounds"
        out[name] = req.specifier
    return out


def conda_requirements() -> tuple[SpecifierSet, dict[str, SpecifierSet]]:
    """(python specifier, name -> specifier) from environment.yml; conda and pip sections together."""
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    python = None
    out: dict[str, SpecifierSet] = {}
    for dep in env["dependencies"]:
        entries = dep["pip"] if isinstance(dep, dict) else [dep]
        for entry in entries:
            if entry.startswith("-e "):  # the project itself
                continue
            m = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*(.*)", entry.strip())
            assert m, f"cannot read environment.yml entry {entry!r}"
            name = canonicalize_name(CONDA_TO_PYPI.get(m.group(1), m.group(1)))
            spec = SpecifierSet(m.group(2).replace(" ", ""))
            if name == "python":
                python = spec
            elif name != "pip":
                assert name not in out, f"{name} twice in environment.yml"
                out[name] = spec
    assert python is not None, "environment.yml does not say which Python"
    return python, out


def test_gpu_only_extras_are_named_in_environment_yml() -> None:
    """The GPU-only extras exist, and environment.yml says how to add each (``pip install`` of its packages)."""
    extras = pyproject()["project"]["optional-dependencies"]
    text = (ROOT / "environment.yml").read_text()
    for name in GPU_ONLY_EXTRAS:
        assert name in extras, f"GPU_ONLY_EXTRAS names {name!r}, which pyproject.toml does not define"
        for line in extras[name]:
            assert f"pip install {line}" in text or f"pip install '{line}'" in text or \
                f'pip install "{line}"' in text, f"environment.yml does not say how to add {line!r} ({name})"


def test_environment_yml_agrees_with_pyproject() -> None:
    python, conda = conda_requirements()
    pip = pyproject_requirements()
    assert sorted(set(pip) - set(conda)) == [], "in pyproject.toml but not in environment.yml"
    assert sorted(set(conda) - set(pip)) == [], "in environment.yml but not in pyproject.toml"
    differ = {n: (str(pip[n]), str(conda[n])) for n in pip if pip[n] != conda[n]}
    assert differ == {}, f"bounds differ (pyproject, environment.yml): {differ}"
    assert python == SpecifierSet(pyproject()["project"]["requires-python"])


def test_book_extra_stays_on_jupyter_book_1() -> None:
    spec = pyproject_requirements()["jupyter-book"]
    assert Version("1.0.4") in spec and not any(Version(v) in spec for v in ("1.0.3", "2.0.0", "2.1.0"))


def test_makefile_torch_pin_is_inside_the_supported_range() -> None:
    m = re.search(r"^TORCH_SPEC \?= torch==(\S+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert m, "Makefile has no TORCH_SPEC ?= torch==X pin"
    assert Version(m.group(1)) in pyproject_requirements()["torch"]


def test_package_finds_only_mstlib() -> None:
    assert pyproject()["tool"]["setuptools"]["packages"]["find"]["include"] == ["mstlib", "mstlib.*"]


def readme_commands() -> list[str]:
    """The commands of the README's first code block."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```(?:bash|sh|console)?\n(.*?)```", text, re.DOTALL)
    assert block, "README.md has no code block"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.split("#")[0].strip()]


def test_readme_starts_with_book_then_test_and_ci_runs_the_test_command() -> None:
    first, second = readme_commands()[:2]
    assert first == "make book" and second == "make test"
    ci = (ROOT / ".ci/run").read_text()
    assert ci.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in ci
    commands = [line.strip() for line in ci.splitlines() if line.strip().startswith("make ")]
    assert second in commands, f".ci/run does not run the README's test command {second!r}"


def test_ci_requires_the_shared_data_and_a_missing_folder_fails(tmp_path: Path) -> None:
    """CI must run the tests of the real data, never skip them: .ci/run sets MST_REQUIRE_SHARED=1, and with it
    a missing shared folder stops pytest at the start, saying how to provide it."""
    assert 'MST_REQUIRE_SHARED="${MST_REQUIRE_SHARED:-1}"' in (ROOT / ".ci/run").read_text()
    env = {**os.environ, "MST_REQUIRE_SHARED": "1", "MST_SHARED_DIR": str(tmp_path / "absent")}
    quick = "tests/test_packaging.py::test_package_finds_only_mstlib"
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", quick], cwd=ROOT,
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 4 and "MST_REQUIRE_SHARED=1 but the shared data is missing" in r.stderr, r.stdout + r.stderr
    assert "set MST_SHARED_DIR to a folder holding data/eval" in r.stderr
    env["MST_SHARED_DIR"] = str(tokenizer.shared_dir())
    if all((tokenizer.shared_dir() / "data" / w / "SOURCES.md").is_file() for w in ("eval", "corpus")):
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", quick], cwd=ROOT,
                           capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
