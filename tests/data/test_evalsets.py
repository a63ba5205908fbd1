"""Tests of mstlib.data.evalsets: checksums against SOURCES.md, loaders, word counts, detokenizers, hub paths."""

from __future__ import annotations

import gzip
import io
import shutil
import sys
import tarfile
import types
from collections import Counter
from pathlib import Path

import pytest

from mstlib.data import evalsets as E
from mstlib.data.examples import make_example_evalsets
from mstlib.errors import DataError

from conftest import needs_shared

EVAL = E.default_eval_dir()
needs_data = needs_shared("eval")


@pytest.fixture
def eval_dir(shared_data: Path) -> Path:
    """The evaluation folder to test the checks on: the real one where present, else synthetic sets."""
    return shared_data / "data" / "eval"


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv(E.ENV_VAR, raising=False)
    yield
    E.clear_cache()


# ----------------------------------------------------------------------------------- SOURCES.md
def test_parse_sources_reads_only_hash_rows():
    md = """intro
| dataset | file | tokens+eos | sha256 |
|---|---|---|---|
| A | `a/x.txt` | 1,234 (5 `<unk>`) | `{h}` |
| B | `b/y.tsv` | n/a | `{h2}` |
| C | `c/z` | 3 | not-a-hash |

| other | table |
|---|---|
| `q` | `r` |
""".format(h="a" * 64, h2="B" * 64)
    entries = E.parse_sources(md)
    assert set(entries) == {"a/x.txt", "b/y.tsv"}
    assert entries["a/x.txt"].tokens_eos == 1234 and entries["a/x.txt"].sha256 == "a" * 64
    assert entries["b/y.tsv"].tokens_eos is None and entries["b/y.tsv"].sha256 == "b" * 64


@needs_data
def test_every_file_is_listed_and_verifies():
    entries = E.read_sources()
    for splits in E.FILES.values():
        for rel in splits.values():
            assert rel in entries, rel
    hashes = E.verify_all()
    assert len(hashes) == sum(len(s) for s in E.FILES.values())
    assert E.ONEBW_SHA256 == entries[E.FILES["1bw"]["test"]].sha256  # the online fallback agrees


def _copy_set(src: Path, tmp_path: Path, rel: str) -> Path:
    (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "SOURCES.md", tmp_path / "SOURCES.md")
    shutil.copy(src / rel, tmp_path / rel)
    return tmp_path / rel


def test_checksum_failure_names_file_and_both_hashes(tmp_path, eval_dir):
    rel = E.FILES["ptb"]["test"]
    path = _copy_set(eval_dir, tmp_path, rel)
    E.load_text("ptb", "test", tmp_path)  # the untouched copy passes
    path.chmod(0o644)
    with open(path, "ab") as f:
        f.write(b" extra \n")  # size and mtime change, so the per-process cache must not hide it
    with pytest.raises(DataError) as e:
        E.load_text("ptb", "test", tmp_path)
    msg = str(e.value)
    assert str(path) in msg and E.read_sources(eval_dir)[rel].sha256 in msg and E.sha256_file(path) in msg
    assert "restore" in msg


def test_missing_file_and_missing_sources(tmp_path, eval_dir):
    shutil.copy(eval_dir / "SOURCES.md", tmp_path / "SOURCES.md")
    with pytest.raises(DataError, match=r"missing.*MST_EVAL_DIR"):
        E.load_lambada(tmp_path)
    (tmp_path / "SOURCES.md").unlink()
    (tmp_path / "lambada").mkdir()
    shutil.copy(eval_dir / "lambada/lambada_test.jsonl", tmp_path / "lambada/lambada_test.jsonl")
    with pytest.raises(DataError, match="SOURCES.md is missing"):
        E.load_lambada(tmp_path)


def test_eval_dir_resolution(tmp_path, monkeypatch, eval_dir):
    monkeypatch.setenv(E.ENV_VAR, str(tmp_path))
    assert E.resolve_eval_dir() == tmp_path
    assert E.resolve_eval_dir(eval_dir) == eval_dir  # the argument wins
    with pytest.raises(DataError, match=str(tmp_path)):
        E.load_text("1bw")
    monkeypatch.delenv(E.ENV_VAR)
    monkeypatch.setenv("MST_SHARED_DIR", str(tmp_path))
    assert E.resolve_eval_dir() == tmp_path / "data" / "eval"


def test_example_sets_load_and_verify(tmp_path):
    root = make_example_evalsets(tmp_path, lines=6)
    assert set(E.verify_all(root)) == {rel for splits in E.FILES.values() for rel in splits.values()}
    entries = E.read_sources(root)
    for name in E.TEXT_SETS:
        ts = E.load_text(name, next(iter(E.FILES[name])), root)
        assert ts.n_words == entries[E.FILES[name][ts.split]].tokens_eos and len(ts.lines) == 6
    assert len(E.load_lambada(root)) == 6
    for task, labels in E.GLUE_LABELS.items():
        for split in E.FILES[task]:
            assert {e.label for e in E.load_glue(task, split, root)} == set(labels)
    assert len(E.load_glue("mrpc", "dev", root, variant="msi")) == 6


def test_unknown_names():
    with pytest.raises(DataError, match="choose one of"):
        E.load_text("wikitext3")
    with pytest.raises(DataError, match="valid splits"):
        E.load_text("1bw", "valid")
    with pytest.raises(DataError, match="rte"):
        E.load_glue("cola", "dev")
    with pytest.raises(DataError, match="variant"):
        E.load_glue("rte", "dev", variant="msi")


# --------------------------------------------------------------------------------------- loaders
@needs_data
@pytest.mark.parametrize("name", E.TEXT_SETS)
def test_word_counts_match_sources(name):
    entries = E.read_sources()
    for split, rel in E.FILES[name].items():
        ts = E.load_text(name, split)
        assert ts.n_words == entries[rel].tokens_eos  # whitespace words + one per line
        assert len(ts.detokenized_lines()) == len(ts.lines)


@needs_data
def test_lambada_and_glue_sizes():
    texts = E.load_lambada()
    assert len(texts) == 5153 and all(" " in t for t in texts)
    expect = {
        ("rte", "train"): {"entailment": 1249, "not_entailment": 1241},
        ("rte", "dev"): {"entailment": 146, "not_entailment": 131},
        ("mrpc", "train"): {"equivalent": 2474, "not_equivalent": 1194},
        ("mrpc", "dev"): {"equivalent": 279, "not_equivalent": 129},
    }
    for (task, split), counts in expect.items():
        ex = E.load_glue(task, split)
        assert dict(Counter(e.label for e in ex)) == counts
        assert all(e.text_a and e.text_b for e in ex)
    tok = E.load_glue("mrpc", "dev")
    msi = E.load_glue("mrpc", "dev", variant="msi")
    assert [e.label for e in tok] == [e.label for e in msi]
    assert "doesn 't" in " ".join(e.text_a for e in tok) and "doesn't" in msi[0].text_a
    assert msi[0].text_b.startswith('"The foodservice')  # a lone quote is text, not CSV quoting
    rte = E.load_glue("rte", "train")
    assert rte[0] == E.PairExample("No Weapons of Mass Destruction Found in Iraq Yet.",
                                   "Weapons of Mass Destruction Found in Iraq.", "not_entailment")


# -------------------------------------------------------------------------------- detokenizers
ALL_RULES = [(n, r) for n, rules in (("wikitext", E.WIKITEXT_RULES), ("ptb", E.PTB_RULES), ("1bw", E.ONEBW_RULES))
             for r in rules]


@pytest.mark.parametrize("name,rule", ALL_RULES, ids=[f"{n}:{r.pattern}" for n, r in ALL_RULES])
def test_each_rule_on_its_example(name, rule):
    before, after = rule.example
    assert rule.apply(before) == after


# real lines of each set (original -> detokenized)
REAL = {
    "wikitext2": [
        (" = Robert <unk> = ", "= Robert <unk> ="),
        (" = = Career = = ", "== Career =="),
        (" ", ""),
        (' In 2004 <unk> landed a role as " Craig " in the episode " Teddy \'s Story " of the television series The '
         "Long Firm ; he starred alongside actors Mark Strong and Derek Jacobi . ",
         'In 2004 <unk> landed a role as "Craig" in the episode "Teddy\'s Story" of the television series The '
         "Long Firm; he starred alongside actors Mark Strong and Derek Jacobi."),
        (" He had a guest @-@ starring role on the television series The Bill in 2000 . ",
         "He had a guest-starring role on the television series The Bill in 2000."),
    ],
    "wikitext103": [(" The song sold 1 @,@ 000 copies ( 2 @.@ 5 % ) , the band 's first . ",
                     "The song sold 1,000 copies (2.5%), the band's first.")],
    "ptb": [
        (" no it was n't black monday ", "no it wasn't black monday"),
        (" heavy selling of standard & poor 's 500-stock index futures in chicago <unk> beat stocks downward ",
         "heavy selling of standard & poor's 500-stock index futures in chicago <unk> beat stocks downward"),
        (" seven big board stocks ual amr bankamerica walt disney capital cities\\/abc philip morris ",
         "seven big board stocks ual amr bankamerica walt disney capital cities/abc philip morris"),
        (" the $ N million issue ", "the $N million issue"),
    ],
    "1bw": [
        ("Long before the advent of e-commerce , Wal-Mart 's founder Sam Walton set out his vision for a successful "
         "retail operation : \" We let folks know we 're interested in them and that they 're vital to us-- ' cause "
         "they are , \" he said .",
         "Long before the advent of e-commerce, Wal-Mart's founder Sam Walton set out his vision for a successful "
         "retail operation: \"We let folks know we're interested in them and that they're vital to us-- ' cause "
         "they are,\" he said."),
        ("Her back was torn open , her liver was ruptured , one of her lungs had collapsed and the other was punctured .",
         "Her back was torn open, her liver was ruptured, one of her lungs had collapsed and the other was punctured."),
    ],
}


@pytest.mark.parametrize("name", sorted(REAL))
def test_detokenizer_on_real_lines(name):
    for before, after in REAL[name]:
        assert E.detokenize_line(before, E.DETOK_RULES[name]) == after
    text = "\n".join(b for b, _ in REAL[name])
    assert E.detokenize(name, text) == "\n".join(a for _, a in REAL[name])


@needs_data
@pytest.mark.parametrize("name", ["wikitext2", "ptb", "1bw"])
def test_real_lines_are_in_the_files(name):
    lines = set(E.load_text(name).lines)
    # every example above that is a whole line of the file, not an invented one, is found there
    whole = [b for b, _ in REAL[name] if b in lines]
    assert len(whole) >= 2


@needs_data
def test_detokenized_sets_lose_the_markers():
    for name, gone in [("wikitext2", [" @-@ ", " @,@ ", " , ", " . "]), ("ptb", [" n't ", "\\/"]),
                       ("1bw", [" 's ", " , "])]:
        text = "\n".join(E.load_text(name).detokenized_lines())
        for marker in gone:
            assert marker not in text, (name, marker)
    assert "<unk>" in "\n".join(E.load_text("ptb").detokenized_lines())  # kept on purpose


# -------------------------------------------------------------------------------- online (faked)
class FakeDatasets(types.ModuleType):
    """Stands in for Hugging Face ``datasets``: records calls, serves rows in the hub's format."""

    def __init__(self, tables):
        super().__init__("datasets")
        self.tables, self.calls = tables, []

    def load_dataset(self, name, config=None, split=None):
        self.calls.append((name, config, split))
        return self.tables[(name, config, split)]


@needs_data
def test_hub_loaders_rebuild_the_local_files(monkeypatch):
    wt = E.load_text("wikitext2", "test")
    ptb = E.load_text("ptb", "valid")
    rte = E.load_glue("rte", "dev")
    mrpc = E.load_glue("mrpc", "train")
    hf_rte = {"entailment": 0, "not_entailment": 1}
    hf_mrpc = {"not_equivalent": 0, "equivalent": 1}
    tables = {
        # HF wikitext: each line with its newline, blank lines (" " in the file) as ""
        ("Salesforce/wikitext", "wikitext-2-v1", "test"): [{"text": "" if ln == " " else ln + "\n"} for ln in wt.lines],
        ("ptb-text-only/ptb_text_only", None, "validation"): [{"sentence": ln.strip()} for ln in ptb.lines],
        ("EleutherAI/lambada_openai", "default", "test"): [{"text": t} for t in E.load_lambada()[:3]],
        ("nyu-mll/glue", "rte", "validation"): [
            {"sentence1": e.text_a, "sentence2": e.text_b, "label": hf_rte[e.label]} for e in rte],
        ("nyu-mll/glue", "mrpc", "train"): [
            {"sentence1": e.text_a, "sentence2": e.text_b, "label": hf_mrpc[e.label]} for e in mrpc],
    }
    fake = FakeDatasets(tables)
    monkeypatch.setitem(sys.modules, "datasets", fake)
    assert E.load_text("wikitext2", "test", source="hub").lines == wt.lines
    assert E.load_text("ptb", "valid", source="hub").lines == ptb.lines
    assert E.load_lambada(source="hub") == E.load_lambada()[:3]
    assert E.load_glue("rte", "dev", source="hub") == rte
    assert E.load_glue("mrpc", "train", source="hub") == mrpc
    assert len(fake.calls) == 5


def test_hub_without_datasets_says_how(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails
    with pytest.raises(DataError, match="pip install datasets"):
        E.load_lambada(source="hub")


def _tarball(members: dict[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue())


@needs_data
def test_1bw_download_streams_the_shard_and_checks_it():
    shard = (EVAL / E.FILES["1bw"]["test"]).read_bytes()
    top = "1-billion-word-language-modeling-benchmark-r13output/"
    blob = _tarball({top + "README": b"x", top + E.ONEBW_MEMBER: shard})
    assert E._download_1bw("fake://", opener=lambda url: io.BytesIO(blob)) == shard
    bad = _tarball({top + E.ONEBW_MEMBER: shard[:-10]})
    with pytest.raises(DataError, match="expected sha256"):
        E._download_1bw("fake://", opener=lambda url: io.BytesIO(bad))
    with pytest.raises(DataError, match="no member"):
        E._download_1bw("fake://", opener=lambda url: io.BytesIO(_tarball({"other": b"y"})))


def test_verification_is_cached_per_process(monkeypatch, eval_dir):
    calls = []
    real = E.sha256_file
    monkeypatch.setattr(E, "sha256_file", lambda p: calls.append(p) or real(p))
    E.clear_cache()
    E.load_text("ptb", "valid", eval_dir)
    E.load_text("ptb", "valid", eval_dir)
    E.load_glue("rte", "dev", eval_dir)
    assert len(calls) == 2  # ptb once, rte once
