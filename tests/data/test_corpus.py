"""Corpus preparation, verification, opening, packing, and the OpenWebText path, on tiny data made here."""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from mstlib import data as corpus
from mstlib.data import PrepareOptions, make_example_source, open_tokens, prepare
import mstlib.data.commands  # noqa: F401  (corpus.commands: the command line)
from mstlib.errors import DataError
from mstlib.data.tokenizer import EOT, get_encoding

from conftest import needs_shared

REAL_SOURCES = corpus.default_source_dir()


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return make_example_source(tmp_path_factory.mktemp("src"), train_shards=2, docs_per_shard=6, val_docs=3)


def opts(source: Path, data: Path, **kw) -> PrepareOptions:
    base = dict(data_dir=str(data), source_dir=str(source), workers=1, progress=False)
    base.update(kw)
    return PrepareOptions(**base)


def expected_docs(source: Path, split: str) -> list[str]:
    """Every document text of a split, straight from the xz files and manifests (the reference)."""
    import lzma

    out = []
    for part in ("wikipedia-en", "gutenberg"):
        for d in corpus.read_manifest(source, part):
            if d.split == split:
                raw = lzma.open(source / part / (d.file + ".xz")).read()
                out.append(raw[d.byte_offset:d.byte_offset + d.byte_len].decode())
    return out


def test_prepare_tokens_equal_the_documents(source, tmp_path):
    meta = prepare(opts(source, tmp_path, workers=2))  # workers=2 exercises the process pool
    enc = get_encoding()
    for split in ("train", "val"):
        toks = open_tokens(tmp_path, "offline", split, verify=True)
        assert toks.dtype == np.uint16
        texts = enc.decode(toks.tolist()).split("<|endoftext|>")
        assert texts[-1] == ""  # the file ends with EOT
        assert sorted(texts[:-1]) == sorted(expected_docs(source, split))
        info = meta["splits"][split]
        assert int((toks == EOT).sum()) == info["documents"] == len(texts) - 1
        assert info["tokens"] == len(toks) == sum(c["tokens"] for c in info["sources"].values())
    docs = corpus.read_documents(tmp_path, "offline")
    assert len(docs) == meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"]
    assert meta["tokenizer"]["checked"]["Hello world"] == [15496, 995]
    assert set(meta["recipe"]["source_sha256"]) >= {"gutenberg/manifest.tsv", "wikipedia-en/shard-000.txt.xz"}


def test_prepare_is_idempotent_and_force_redoes(source, tmp_path):
    m1 = prepare(opts(source, tmp_path))
    train = tmp_path / "offline" / "train.bin"
    stamp = train.stat().st_mtime_ns
    m2 = prepare(opts(source, tmp_path))
    assert m2["provenance"] == m1["provenance"] and train.stat().st_mtime_ns == stamp
    m3 = prepare(opts(source, tmp_path, max_docs=2))  # another recipe: prepared again
    assert m3["splits"]["train"]["documents"] == 4
    m4 = prepare(opts(source, tmp_path, max_docs=2, force=True))
    assert m4["splits"]["train"]["sha256"] == m3["splits"]["train"]["sha256"]  # deterministic
    assert not list(tmp_path.glob(".tmp-*")) and not list(tmp_path.glob(".old-*"))


def test_a_damaged_corpus_is_prepared_again(source, tmp_path):
    prepare(opts(source, tmp_path))
    (tmp_path / "offline" / "val.bin").write_bytes(b"\0\0")
    m = prepare(opts(source, tmp_path))
    open_tokens(tmp_path, "offline", "val", verify=True)
    assert m["splits"]["val"]["tokens"] > 1


def test_a_failed_run_leaves_the_old_corpus_intact(source, tmp_path, monkeypatch):
    prepare(opts(source, tmp_path))
    before = {p.name: p.read_bytes() for p in (tmp_path / "offline").iterdir()}

    def boom(*a, **k):
        raise RuntimeError("simulated crash after the token files were written")

    monkeypatch.setattr(corpus.preparation, "write_json", boom)
    with pytest.raises(RuntimeError, match="simulated"):
        prepare(opts(source, tmp_path, force=True, max_docs=1))
    after = {p.name: p.read_bytes() for p in (tmp_path / "offline").iterdir()}
    assert after == before
    assert not list(tmp_path.glob(".tmp-*"))
    monkeypatch.undo()
    open_tokens(tmp_path, "offline", "train", verify=True)


def test_max_tokens_is_exact_and_mixes_sources(source, tmp_path):
    full = prepare(opts(source, tmp_path, name="full"))["splits"]["train"]
    n = full["tokens"] // 3
    m = prepare(opts(source, tmp_path, name="third", max_tokens=n, max_val_tokens=50))
    t = m["splits"]["train"]
    assert t["tokens"] == n and m["splits"]["val"]["tokens"] == 50
    assert all(c["documents"] > 0 for c in t["sources"].values())  # both sources in a prefix
    # the subset is a prefix of the full corpus, so a small subset and the full one agree where they overlap
    assert np.array_equal(open_tokens(tmp_path, "third", "train"), open_tokens(tmp_path, "full", "train")[:n])
    assert sum(c["truncated_documents"] for c in t["sources"].values()) <= 1


def test_open_tokens_errors_say_how_to_fix(source, tmp_path):
    with pytest.raises(DataError, match="python -m mstlib data prepare --corpus offline"):
        open_tokens(tmp_path, "offline", "train")
    with pytest.raises(DataError, match="Unknown corpus 'nope'.*offline.*openwebtext"):
        open_tokens(tmp_path, "nope", "train")
    prepare(opts(source, tmp_path))
    with pytest.raises(DataError, match="no split 'test'"):
        open_tokens(tmp_path, "offline", "test")
    path = tmp_path / "offline" / "train.bin"
    good = path.read_bytes()
    path.write_bytes(good[:-1])  # odd size
    with pytest.raises(DataError, match="truncated or corrupt"):
        open_tokens(tmp_path, "offline", "train")
    path.write_bytes(good[:-2])  # one token short
    with pytest.raises(DataError, match="truncated or corrupt"):
        open_tokens(tmp_path, "offline", "train")
    path.write_bytes(good)
    open_tokens(tmp_path, "offline", "train")
    path.write_bytes(good[:10] + bytes([good[10] ^ 1]) + good[11:])  # same size, one bit flipped
    with pytest.raises(DataError, match="Checksum mismatch"):
        open_tokens(tmp_path, "offline", "train")  # every open checks the sha256 (of a changed file: again)
    (tmp_path / "offline" / "val.bin").unlink()
    with pytest.raises(DataError, match="missing"):
        open_tokens(tmp_path, "offline", "val")


def test_token_ids_outside_the_vocabulary_are_refused_on_open(source, tmp_path):
    prepare(opts(source, tmp_path))
    meta_path = tmp_path / "offline" / "meta.json"
    meta = json.loads(meta_path.read_text())
    n = meta["splits"]["train"]["tokens"]
    bad = np.full(n, 0xFFFF, dtype=np.uint16)  # consistent with meta.json: only the ids are wrong
    bad.tofile(tmp_path / "offline" / "train.bin")
    meta["splits"]["train"]["sha256"] = corpus.sha256_file(tmp_path / "offline" / "train.bin")
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"token id 65535, outside the vocabulary \(ids 0..50256") as e:
        open_tokens(tmp_path, "offline", "train")
    assert "python -m mstlib data prepare --corpus offline" in str(e.value)
    open_tokens(tmp_path, "offline", "val")
    with pytest.raises(DataError, match="model's vocab_size is 512"):
        open_tokens(tmp_path, "offline", "val", vocab_size=512)  # GPT-2 ids, but not this model's


def test_open_tokens_reads_each_file_once_per_process(source, tmp_path, monkeypatch):
    prepare(opts(source, tmp_path))
    import hashlib
    import types

    reads = []  # one sha256 per read of the file
    monkeypatch.setattr(corpus.tokens, "hashlib", types.SimpleNamespace(sha256=lambda: reads.append(1) or hashlib.sha256()))
    for _ in range(3):
        open_tokens(tmp_path, "offline", "train")
    assert len(reads) == 1
    open_tokens(tmp_path, "offline", "train", verify=True)
    assert len(reads) == 2


def test_missing_or_corrupt_sources(source, tmp_path):
    with pytest.raises(DataError, match="Missing source.*SOURCES.md"):
        prepare(opts(tmp_path / "nowhere", tmp_path / "d"))
    src = tmp_path / "src"
    shutil.copytree(source, src)
    (src / "gutenberg" / "shard-001.txt.xz").unlink()
    with pytest.raises(DataError, match="Missing source"):
        prepare(opts(src, tmp_path / "d"))
    shutil.copy(source / "gutenberg" / "shard-000.txt.xz", src / "gutenberg" / "shard-001.txt.xz")
    with pytest.raises(DataError, match="Checksum mismatch for source"):
        prepare(opts(src, tmp_path / "d"))
    with pytest.raises(DataError, match="Unknown corpus 'owt'.*openwebtext"):
        prepare(opts(source, tmp_path / "d", corpus="owt"))
    assert not (tmp_path / "d" / "offline").exists()


def test_pack_unpack_round_trip(source, tmp_path):
    prepare(opts(source, tmp_path / "a", max_docs=4))
    # a tiny transfer limit forces several transfer folders and files cut into pieces
    man = corpus.pack_corpus(tmp_path / "a", "offline", tmp_path / "gpu", transfer_mib=0.001, preset=1,
                             block_mib=1, with_tokenizer=False, workers=1, progress=False)
    root = tmp_path / "gpu" / "offline"
    assert man["transfers"] > 1
    assert all(sum(p["bytes"] for p in man["pieces"] if p["path"].startswith(t.name + "/")) <= 0.001 * 2**20
               for t in root.iterdir())
    corpus.unpack_corpus(root, tmp_path / "b", progress=False)
    for f in ("train.bin", "val.bin", "meta.json", "documents.tsv"):
        assert (tmp_path / "b" / "offline" / f).read_bytes() == (tmp_path / "a" / "offline" / f).read_bytes()
    corpus.unpack_corpus(root, tmp_path / "b", progress=False)  # again: verified and kept
    # a corrupt piece and a missing transfer are caught before anything is installed
    piece = root / man["pieces"][-1]["path"]
    piece.write_bytes(piece.read_bytes()[:-1])
    with pytest.raises(DataError, match="Checksum mismatch for piece"):
        corpus.unpack_corpus(root, tmp_path / "c", progress=False)
    shutil.rmtree(root / "t01")
    with pytest.raises(DataError, match="incomplete.*t01"):
        corpus.unpack_corpus(root, tmp_path / "c", progress=False)
    assert not (tmp_path / "c" / "offline").exists()


def test_pack_carries_the_tokenizer(source, tmp_path, monkeypatch):
    prepare(opts(source, tmp_path / "a", max_docs=1))
    man = corpus.pack_corpus(tmp_path / "a", "offline", tmp_path / "gpu", preset=0, workers=1, progress=False)
    assert {e["kind"] for e in man["files"]} == {"corpus", "tokenizer"}
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "cache"))
    corpus.unpack_corpus(tmp_path / "gpu" / "offline", tmp_path / "b", progress=False)
    from mstlib.data.tokenizer import missing_files

    assert missing_files(tmp_path / "cache") == []


class FakeDataset:
    """The few ``datasets.Dataset`` methods nanoGPT's prepare uses, over a list of rows."""

    calls: list = []

    def __init__(self, rows, numpy=False):
        self.rows, self.numpy = rows, numpy

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, col):
        vals = [r[col] for r in self.rows]
        return [np.asarray(v) for v in vals] if self.numpy else vals

    def select(self, idx):
        return FakeDataset([self.rows[i] for i in idx])

    def train_test_split(self, test_size, seed, shuffle):
        FakeDataset.calls.append(("split", test_size, seed, shuffle))
        order = list(range(len(self.rows)))
        random.Random(seed).shuffle(order)
        n_test = math.ceil(test_size * len(order))
        return FakeDict(train=FakeDataset([self.rows[i] for i in order[n_test:]]),
                        test=FakeDataset([self.rows[i] for i in order[:n_test]]))

    def shard(self, num_shards, index, contiguous):
        assert contiguous
        n = len(self.rows)
        per, extra = divmod(n, num_shards)
        start = index * per + min(index, extra)
        return FakeDataset(self.rows[start:start + per + (index < extra)])

    def with_format(self, fmt):
        return FakeDataset(self.rows, numpy=fmt == "numpy")


class FakeDict(dict):
    def map(self, fn, remove_columns, desc, num_proc):
        return FakeDict({k: FakeDataset([{kk: vv for kk, vv in {**r, **fn(r)}.items() if kk not in remove_columns}
                                         for r in v.rows]) for k, v in self.items()})


def test_openwebtext_the_nanogpt_way_on_a_fake_hub(tmp_path):
    rows = [{"text": f"Document {i}: some web text, {'very ' * (i % 7)}short."} for i in range(2100)]
    FakeDataset.calls.clear()
    meta = prepare(PrepareOptions(corpus="openwebtext", data_dir=str(tmp_path), workers=2, progress=False),
                   dataset=FakeDict(train=FakeDataset(rows)))
    assert FakeDataset.calls == [("split", 0.0005, 2357, True)]
    assert meta["splits"]["val"]["documents"] == 2 and meta["splits"]["train"]["documents"] == 2098
    enc = get_encoding()
    val = open_tokens(tmp_path, "openwebtext", "val", verify=True)
    texts = enc.decode(val.tolist()).split("<|endoftext|>")[:-1]
    assert all(t.startswith("Document ") for t in texts) and len(texts) == 2
    train = open_tokens(tmp_path, "openwebtext", "train", verify=True)
    assert int((train == EOT).sum()) == 2098
    assert meta["recipe"]["hub_id"] == "openwebtext"


def test_openwebtext_without_datasets_or_network_is_a_clear_error(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_datasets(name, *a, **k):
        if name == "datasets":
            raise ImportError("No module named 'datasets'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(DataError, match="pip install datasets"):
        prepare(PrepareOptions(corpus="openwebtext", data_dir=str(tmp_path), progress=False))


def test_parse_count():
    assert corpus.commands.parse_count("40M") == 40_000_000
    assert corpus.commands.parse_count("1.5e6") == 1_500_000
    assert corpus.commands.parse_count("200k") == 200_000
    with pytest.raises(argparse.ArgumentTypeError):
        corpus.commands.parse_count("lots")


def test_cli_prepare_describe_verify(source, tmp_path, capsys, with_shared_data):
    p = argparse.ArgumentParser()
    corpus.commands.add_arguments(p)
    run = lambda *a: corpus.commands.main(p.parse_args(list(a)))  # noqa: E731
    assert run("prepare", "--data-dir", str(tmp_path), "--source-dir", str(source), "--max-docs", "2",
               "--name", "tiny", "--quiet", "--workers", "1") == 0
    assert run("describe", "--data-dir", str(tmp_path), "--corpus", "tiny") == 0
    assert run("verify", "--data-dir", str(tmp_path), "--sources", "--source-dir", str(source)) == 0
    assert run("list", "--data-dir", str(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "tiny ok: train" in out and "tokenizer ok" in out and "sources ok" in out and "evaluation sets ok" in out


@needs_shared("corpus")
def test_real_sources_table_and_a_real_tiny_prepare(tmp_path):
    shards, manifests = corpus.read_sources_table(REAL_SOURCES)
    assert len(shards) == 16 and len(manifests) == 2
    assert all(len(s.sha256_xz) == 64 for s in shards.values())
    # the table's token counts add up to the totals SOURCES.md states for the train split
    meta = prepare(PrepareOptions(data_dir=str(tmp_path), max_docs=2, max_val_tokens=2000, progress=False))
    t = meta["splits"]["train"]
    assert t["documents"] == 4 and meta["splits"]["val"]["tokens"] == 2000
    docs = corpus.read_documents(tmp_path, "offline")
    assert "Anarchism" in set(docs["title"])  # the first Wikipedia article of the 2015 dump


# ----------------------------------------------------------------------------------- hostile input


def _pack(source: Path, tmp_path: Path) -> Path:
    prepare(opts(source, tmp_path / "a"))
    corpus.pack_corpus(tmp_path / "a", "offline", tmp_path / "gpu", preset=0, workers=1, progress=False,
                       with_tokenizer=False, transfer_mib=0.002)  # several transfer folders, one pack.json each
    return tmp_path / "gpu" / "offline"


def _rewrite_piece(root: Path, rel: str, data: bytes) -> None:
    """Replace a piece and make every pack.json agree with it, so only the xz stream itself is wrong."""
    import hashlib

    (root / rel).write_bytes(data)
    for pj in root.glob("t*/pack.json"):
        man = json.loads(pj.read_text())
        for p in man["pieces"]:
            if p["path"] == rel:
                p["bytes"], p["sha256"] = len(data), hashlib.sha256(data).hexdigest()
        pj.write_text(json.dumps(man))


def test_a_corrupt_or_truncated_pack_is_a_data_error(source, tmp_path):
    root = _pack(source, tmp_path)
    pieces = sorted((p.relative_to(root).as_posix() for p in root.glob("t*/train.bin.xz.*")),
                    key=lambda r: r.rsplit(".", 1)[1])
    first, last = pieces[0], pieces[-1]
    cases = {"flipped": (first, lambda b: b[:40] + bytes([b[40] ^ 0xFF]) + b[41:], "not valid xz data"),
             "truncated": (last, lambda b: b[: len(b) // 2], "ends inside an xz stream")}
    for name, (rel, damage, message) in cases.items():
        good = (root / rel).read_bytes()
        _rewrite_piece(root, rel, damage(good))
        with pytest.raises(DataError, match=message):
            corpus.unpack_corpus(root, tmp_path / name, progress=False)
        assert not (tmp_path / name / "offline").exists()
        _rewrite_piece(root, rel, good)
    copies = sorted(root.glob("t*/pack.json"))
    copies[0].write_text(copies[0].read_text()[:50])  # one copy truncated in transit: another one is read
    corpus.unpack_corpus(root, tmp_path / "ok", progress=False)
    for c in copies:
        c.write_text(c.read_text()[:50])
    with pytest.raises(DataError, match="pack.json .* unreadable"):
        corpus.unpack_corpus(root, tmp_path / "none", progress=False)


def _disk_full_on_write(monkeypatch):
    """Every file mstlib.data opens for writing fails as a full disk does (ENOSPC) on its first write."""
    import builtins
    import errno

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device", self.f.name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def __getattr__(self, name):
            return getattr(self.f, name)

    def full_open(file, mode="r", *a, **k):
        f = builtins.open(file, mode, *a, **k)
        return Full(f) if any(c in mode for c in "wa+") else f

    for room in (corpus.catalogue, corpus.tokens, corpus.files, corpus.preparation, corpus.pack, corpus.openwebtext):
        monkeypatch.setattr(room, "open", full_open, raising=False)


def test_a_full_disk_while_preparing_packing_or_unpacking_says_so(source, tmp_path, monkeypatch):
    prepare(opts(source, tmp_path / "a"))
    corpus.pack_corpus(tmp_path / "a", "offline", tmp_path / "gpu", preset=0, workers=1, progress=False,
                       with_tokenizer=False)
    before = corpus.read_meta(tmp_path / "a", "offline")
    _disk_full_on_write(monkeypatch)
    with pytest.raises(DataError, match=r"Preparing corpus offline failed: No space left on device.*disk is full") as e:
        prepare(opts(source, tmp_path / "a", force=True))
    assert "Nothing was installed" in str(e.value)
    assert corpus.read_meta(tmp_path / "a", "offline") == before  # the old corpus is untouched
    assert not list((tmp_path / "a").glob(".tmp-*"))
    with pytest.raises(DataError, match="Packing corpus offline failed: No space left on device"):
        corpus.pack_corpus(tmp_path / "a", "offline", tmp_path / "gpu2", preset=0, workers=1, progress=False)
    assert not list((tmp_path / "gpu2").glob(".tmp-*"))
    with pytest.raises(DataError, match="Unpacking .* failed: No space left on device"):
        corpus.unpack_corpus(tmp_path / "gpu" / "offline", tmp_path / "b", progress=False)
    assert not (tmp_path / "b" / "offline").exists()


def test_verify_checks_the_evaluation_sets_too(shared_data, tmp_path, capsys):
    from mstlib import cli

    evals = tmp_path / "eval"
    shutil.copytree(shared_data / "data" / "eval", evals)
    assert cli.main(["data", "verify", "--eval-dir", str(evals), "--data-dir", str(tmp_path / "none")]) == 0
    assert "evaluation sets ok: 16 files" in capsys.readouterr().out
    f = evals / "ptb" / "ptb.test.txt"
    f.write_bytes(f.read_bytes()[:-5])
    assert cli.main(["data", "verify", "--eval-dir", str(evals), "--data-dir", str(tmp_path / "none")]) == 2
    assert "ptb.test.txt fails its checksum" in capsys.readouterr().err
    assert cli.main(["data", "verify", "--no-eval", "--eval-dir", str(evals), "--data-dir", str(tmp_path / "none")]) == 0
