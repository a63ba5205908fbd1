"""The zero- and few-shot evaluation sets: loaders, checksums and GPT-2-style detokenizers.

Sets (``name``: splits, file under the evaluation folder):

=================  ==================  ===================================================================
``wikitext2``      test, valid         ``wikitext-2/wiki.{test,valid}.tokens`` (tokenized, with ``<unk>``)
``wikitext2_raw``  test, valid         ``wikitext-2-raw/wiki.{test,valid}.raw`` (same text, no ``<unk>``)
``wikitext103``    test, valid         ``wikitext-103/wiki.{test,valid}.tokens`` (``<unk>`` of WT-103)
``ptb``            test, valid         ``ptb/ptb.{test,valid}.txt`` (Mikolov's preprocessing)
``1bw``            test                ``1bw/news.en.heldout-00000-of-00050`` (the standard test shard)
``lambada``        test                ``lambada/lambada_test.jsonl`` (OpenAI's detokenized version)
``rte``            train, dev          ``rte/{train,dev}.tsv`` (GLUE)
``mrpc``           train, dev          ``mrpc/{train,dev}.tsv`` (GLUE, tokenized: what HF ``glue/mrpc``
                                       gives); ``variant="msi"`` reads ``mrpc/untokenized_msi/``
=================  ==================  ===================================================================

Where the files are: the ``eval_dir`` argument, else the ``MST_EVAL_DIR`` environment variable, else
``$MST_SHARED_DIR/data/eval``, else ``<repo>/../shared/data/eval``. Before a file is used its sha256 is
compared with the one listed for it in that folder's ``SOURCES.md`` (the table is parsed at run time, so no
hash is typed twice); a file that is
missing, unlisted or different raises :class:`~mstlib.errors.DataError` saying which file, the expected
and actual hash, and how to fix it. A verified file is remembered per process (keyed by path, size and
modification time), so the ~17 MB are hashed once.

Users with internet can pass ``source="hub"`` instead: the same sets come from the Hugging Face hub
(``datasets`` is imported only then) and 1BW from the benchmark's official tarball, streamed until the
one shard is found and checked against the same sha256 as the local copy.

Word counts (the benchmark's own unit for perplexity per word): every whitespace-separated token of the
*original* (pre-detokenization) file, plus one end-of-line per line, blank lines included
(``sum(len(line.split()) + 1 for line in lines)``). That is the ``tokens+eos`` column of SOURCES.md
(WikiText test 245,569, PTB test 82,430, 1BW shard 0 159,658) and the usual word-level LM count.

Detokenization (GPT-2 scored "detokenized" text: Radford et al. 2019, sec. 3.1, "invertible
de-tokenizers"; their code is not public, so the rules below follow the widely used Megatron-LM /
lm-evaluation-harness WikiText rules and Moses-style rules for 1BW). Every rule acts within one line; the
tables (:data:`WIKITEXT_RULES`, :data:`PTB_RULES`, :data:`ONEBW_RULES`) are applied in order to each line,
and then the line's leading and trailing spaces are stripped. Each rule carries an example that the tests
check. ``<unk>`` stays literally in the text (as in GPT-2's evaluation), PTB's ``N`` (its number token)
stays ``N`` and its lower case stays lower case. LAMBADA (OpenAI jsonl), RTE and MRPC are used as given.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import tarfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Optional

from ..errors import DataError
from .tokenizer import shared_dir

Source = Literal["local", "hub"]

#: dataset -> split -> file, relative to the evaluation folder
FILES: dict[str, dict[str, str]] = {
    "wikitext2": {"test": "wikitext-2/wiki.test.tokens", "valid": "wikitext-2/wiki.valid.tokens"},
    "wikitext2_raw": {"test": "wikitext-2-raw/wiki.test.raw", "valid": "wikitext-2-raw/wiki.valid.raw"},
    "wikitext103": {"test": "wikitext-103/wiki.test.tokens", "valid": "wikitext-103/wiki.valid.tokens"},
    "ptb": {"test": "ptb/ptb.test.txt", "valid": "ptb/ptb.valid.txt"},
    "1bw": {"test": "1bw/news.en.heldout-00000-of-00050"},
    "lambada": {"test": "lambada/lambada_test.jsonl"},
    "rte": {"train": "rte/train.tsv", "dev": "rte/dev.tsv"},
    "mrpc": {"train": "mrpc/train.tsv", "dev": "mrpc/dev.tsv"},
    "mrpc_msi": {"train": "mrpc/untokenized_msi/train.tsv", "dev": "mrpc/untokenized_msi/dev.tsv"},
}
TEXT_SETS = ("wikitext2", "wikitext2_raw", "wikitext103", "ptb", "1bw")
GLUE_TASKS = ("rte", "mrpc")
#: label names of each GLUE task; the first one is the positive class
GLUE_LABELS: dict[str, tuple[str, str]] = {
    "rte": ("entailment", "not_entailment"),
    "mrpc": ("equivalent", "not_equivalent"),
}

ENV_VAR = "MST_EVAL_DIR"


# ------------------------------------------------------------------------------------ locations
def default_eval_dir() -> Path:
    """``<shared>/data/eval``: ``<shared>`` is ``$MST_SHARED_DIR`` (as for the tokenizer), else
    ``<repo>/../shared`` where ``<repo>`` is the folder holding the ``mstlib`` package."""
    return shared_dir() / "data" / "eval"


def resolve_eval_dir(eval_dir: str | os.PathLike[str] | None = None) -> Path:
    """The evaluation folder: the argument, else ``$MST_EVAL_DIR``, else :func:`default_eval_dir`."""
    if eval_dir is not None:
        return Path(eval_dir)
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else default_eval_dir()


def _file_for(name: str, split: str) -> str:
    if name not in FILES:
        raise DataError(f"unknown evaluation set {name!r}; valid names: {sorted(FILES)}")
    if split not in FILES[name]:
        raise DataError(f"evaluation set {name!r} has no split {split!r}; valid splits: {sorted(FILES[name])}")
    return FILES[name][split]


# ---------------------------------------------------------------------------------- checksums
@dataclass(frozen=True)
class SourceEntry:
    """One row of the SOURCES.md summary table."""

    file: str  # relative to the evaluation folder
    sha256: str
    tokens_eos: Optional[int]  # whitespace words + one per line, where the table gives it


def parse_sources(sources_md: str) -> dict[str, SourceEntry]:
    """Rows of the first markdown table in ``sources_md`` that has ``file`` and ``sha256`` columns,
    keyed by the file's relative path (backticks removed)."""
    entries: dict[str, SourceEntry] = {}
    header: list[str] | None = None
    for line in sources_md.splitlines():
        line = line.strip()
        if not line.startswith("|"):
            if header is not None and entries:
                break  # the table ended
            header = None
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if header is None:
            lowered = [c.lower() for c in cells]
            if "file" in lowered and "sha256" in lowered:
                header = lowered
            continue
        if set("".join(cells)) <= set("-: "):
            continue  # the |---|---| separator
        row = dict(zip(header, cells))
        file_ = row["file"].strip("`")
        sha = row["sha256"].strip("`").lower()
        if not re.fullmatch(r"[0-9a-f]{64}", sha):
            continue
        m = re.match(r"([\d,]+)", row.get("tokens+eos", ""))
        entries[file_] = SourceEntry(file_, sha, int(m.group(1).replace(",", "")) if m else None)
    return entries


def read_sources(eval_dir: str | os.PathLike[str] | None = None) -> dict[str, SourceEntry]:
    """Parse ``<eval_dir>/SOURCES.md`` (DataError when it is missing or lists no files)."""
    root = resolve_eval_dir(eval_dir)
    path = root / "SOURCES.md"
    if not path.is_file():
        raise DataError(
            f"{path} is missing, so the evaluation files cannot be checked. Point --eval-dir or "
            f"${ENV_VAR} at the folder that holds the evaluation sets and their SOURCES.md "
            f"(by default {default_eval_dir()}), or load them with source='hub'."
        )
    entries = parse_sources(path.read_text(encoding="utf-8"))
    if not entries:
        raise DataError(f"{path} has no table with 'file' and 'sha256' columns; is it the right file?")
    return entries


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# (resolved path, size, mtime_ns) -> sha256 that matched; a changed file is hashed again
_VERIFIED: dict[tuple[str, int, int], str] = {}


def verify_file(relpath: str, eval_dir: str | os.PathLike[str] | None = None) -> Path:
    """Check ``<eval_dir>/<relpath>`` against SOURCES.md and return its path (DataError otherwise)."""
    root = resolve_eval_dir(eval_dir)
    path = root / relpath
    if not path.is_file():
        raise DataError(
            f"evaluation file {path} is missing. Put the evaluation sets (see SOURCES.md) in {root}, point "
            f"--eval-dir or ${ENV_VAR} at the folder that holds them, or load them with source='hub'."
        )
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    entries = read_sources(root)
    if relpath not in entries:
        raise DataError(f"{path} is not listed in {root / 'SOURCES.md'}, so its checksum cannot be verified")
    expected = entries[relpath].sha256
    if _VERIFIED.get(key) == expected:
        return path
    actual = sha256_file(path)
    if actual != expected:
        raise DataError(
            f"evaluation file {path} fails its checksum: expected sha256 {expected} (from "
            f"{root / 'SOURCES.md'}), got {actual}. The file is truncated, edited or another version; "
            f"restore it from the pinned source that SOURCES.md names for it."
        )
    _VERIFIED[key] = expected
    return path


def verify_all(eval_dir: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """Verify every file of :data:`FILES`; returns ``{relpath: sha256}`` (raises on the first failure)."""
    root = resolve_eval_dir(eval_dir)
    entries = read_sources(root)
    out = {}
    for splits in FILES.values():
        for rel in splits.values():
            verify_file(rel, root)
            out[rel] = entries[rel].sha256
    return out


def clear_cache() -> None:
    """Forget which files were verified in this process (for tests)."""
    _VERIFIED.clear()


# ----------------------------------------------------------------------------- detokenization
@dataclass(frozen=True)
class DetokRule:
    """``re.sub(pattern, repl, line)``; ``example`` is an (input line, output line) pair after the rule
    alone (before the final strip), checked by the tests."""

    pattern: str
    repl: str
    why: str
    example: tuple[str, str]
    _regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_regex", re.compile(self.pattern))  # compiled once, applied per line

    def apply(self, line: str) -> str:
        return self._regex.sub(self.repl, line)


_CONTRACTION = DetokRule(
    r" '(s|t|re|ve|ll|d|m)\b", r"'\1", "clitics split off by the tokenizer: 's 't 're 've 'll 'd 'm",
    ("Teddy 's Story , don 't", "Teddy's Story , don't"),
)
_CLOSE = DetokRule(
    r" ([.,;:!?%)\]}])", r"\1", "no space before closing punctuation or %",
    ("in 2000 . He ( born 1 ) , 5 %", "in 2000. He ( born 1), 5%"),
)
_OPEN = DetokRule(r"([(\[{]) ", r"\1", "no space after an opening bracket", ("a ( b ) [ c", "a (b ) [c"))
_CURRENCY = DetokRule(r"([$£€¥#]) (?=\d)", r"\1", "currency and # signs attach to the number",
                      ("$ 2.5 billion , # 1", "$2.5 billion , #1"))
_QUOTES = DetokRule(
    r'"\s*([^"]*?)\s*"', r'"\1"', 'pair double quotes left to right within a line; no inner spaces',
    ('as " Craig " in', 'as "Craig" in'),
)

#: WikiText (tokenized and raw): Moses-style tokens with @-@ @,@ @.@ inside words and numbers
WIKITEXT_RULES: tuple[DetokRule, ...] = (
    DetokRule(r" @([-,.])@ ", r"\1", "WikiText's in-word hyphen and number separators",
              ("guest @-@ starring , 1 @,@ 000 , 2 @.@ 5", "guest-starring , 1,000 , 2.5")),
    _CONTRACTION,
    DetokRule(r"s ' ", "s' ", "plural possessive", ("the ships ' crews", "the ships' crews")),
    _CLOSE,
    _OPEN,
    _CURRENCY,
    _QUOTES,
    DetokRule(r"= (?==)", "=", "section markers: '= = Career = =' -> '== Career =='",
              (" = = Career = = ", " == Career == ")),
)

#: PTB (Mikolov): lower case, no punctuation, numbers as N, rare words as <unk> -- all kept
PTB_RULES: tuple[DetokRule, ...] = (
    DetokRule(r" n't\b", "n't", "PTB splits negation as 'was n't'", ("it was n't black", "it wasn't black")),
    DetokRule(r" '(s|re|ve|ll|d|m)\b", r"'\1", "clitics 's 're 've 'll 'd 'm",
              ("the company 's shares", "the company's shares")),
    DetokRule(r"s ' ", "s' ", "plural possessive", ("the investors ' standpoint", "the investors' standpoint")),
    DetokRule(r"\$ (?=\S)", "$", "currency sign attaches to the amount", ("$ N million", "$N million")),
    DetokRule(r"# (?=\S)", "#", "number sign attaches to the number", ("# N", "#N")),
    DetokRule(r"\\/", "/", "the treebank escapes slashes", (r"capital cities\/abc", "capital cities/abc")),
)

#: 1BW: Moses tokenization ('don 't', 'Wal-Mart 's', ' , ', '" quoted "')
ONEBW_RULES: tuple[DetokRule, ...] = (_CONTRACTION, _CLOSE, _OPEN, _CURRENCY, _QUOTES)

DETOK_RULES: dict[str, tuple[DetokRule, ...]] = {
    "wikitext2": WIKITEXT_RULES,
    "wikitext2_raw": WIKITEXT_RULES,
    "wikitext103": WIKITEXT_RULES,
    "ptb": PTB_RULES,
    "1bw": ONEBW_RULES,
}


def detokenize_line(line: str, rules: Iterable[DetokRule]) -> str:
    """Apply ``rules`` in order to one line (no newline in it), then strip its outer spaces."""
    for rule in rules:
        line = rule.apply(line)
    return line.strip(" ")


def detokenize(name: str, text: str) -> str:
    """Detokenize a whole text of set ``name`` line by line (newlines are kept)."""
    rules = DETOK_RULES.get(name)
    if rules is None:
        raise DataError(f"no detokenizer for {name!r}; text sets: {sorted(DETOK_RULES)}")
    return "\n".join(detokenize_line(line, rules) for line in text.split("\n"))


# ------------------------------------------------------------------------------------- records
@dataclass(frozen=True)
class TextSet:
    """A perplexity set: its original lines (without newline characters) and where they came from."""

    name: str
    split: str
    lines: tuple[str, ...]
    origin: str  # file path or hub id

    @property
    def n_words(self) -> int:
        """Whitespace words plus one end-of-line per line (see the module docstring)."""
        return sum(len(line.split()) + 1 for line in self.lines)

    def detokenized_lines(self) -> list[str]:
        """Each line after :data:`DETOK_RULES` of this set."""
        rules = DETOK_RULES[self.name]
        return [detokenize_line(line, rules) for line in self.lines]


@dataclass(frozen=True)
class PairExample:
    """A GLUE sentence pair: RTE (premise, hypothesis) or MRPC (sentence 1, sentence 2), and its label
    name from :data:`GLUE_LABELS`."""

    text_a: str
    text_b: str
    label: str


# ------------------------------------------------------------------------------------- loaders
def lines_of(text: str) -> tuple[str, ...]:
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the file's final newline ends the last line; it does not start another
    return tuple(lines)


def load_text(
    name: str, split: str = "test", eval_dir: str | os.PathLike[str] | None = None, source: Source = "local"
) -> TextSet:
    """A perplexity set (``wikitext2``, ``wikitext2_raw``, ``wikitext103``, ``ptb``, ``1bw``)."""
    if name not in TEXT_SETS:
        raise DataError(f"{name!r} is not a perplexity set; choose one of {list(TEXT_SETS)}")
    rel = _file_for(name, split)
    if source == "hub":
        return TextSet(name, split, lines_of(_hub_text(name, split)), f"hub:{name}/{split}")
    path = verify_file(rel, eval_dir)
    return TextSet(name, split, lines_of(path.read_text(encoding="utf-8")), str(path))


def load_lambada(eval_dir: str | os.PathLike[str] | None = None, source: Source = "local") -> list[str]:
    """The 5,153 LAMBADA test passages of OpenAI's jsonl (field ``text``), in file order."""
    if source == "hub":
        return [row["text"] for row in _hub_load("EleutherAI/lambada_openai", "default", "test")]
    path = verify_file(_file_for("lambada", "test"), eval_dir)
    texts = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    texts.append(json.loads(line)["text"])
                except (json.JSONDecodeError, KeyError) as e:
                    raise DataError(f"{path} line {i} is not a JSON object with 'text' ({e})") from e
    return texts


def load_glue(
    task: str,
    split: str,
    eval_dir: str | os.PathLike[str] | None = None,
    source: Source = "local",
    variant: Literal["glue", "msi"] = "glue",
) -> list[PairExample]:
    """GLUE ``rte`` or ``mrpc``, split ``train`` (for demonstrations) or ``dev`` (scored).

    ``variant="msi"`` (MRPC only, local only) reads Microsoft's untokenized text instead of the tokenized
    text that the GLUE script and HF ``glue/mrpc`` give."""
    if task not in GLUE_TASKS:
        raise DataError(f"unknown GLUE task {task!r}; choose one of {list(GLUE_TASKS)}")
    if variant not in ("glue", "msi") or (variant == "msi" and task != "mrpc"):
        raise DataError(f"variant {variant!r} is not available for {task}; use 'glue' (or 'msi' for mrpc)")
    key = "mrpc_msi" if variant == "msi" else task
    rel = _file_for(key, split)
    if source == "hub":
        if variant == "msi":
            raise DataError("the untokenized MSI variant of MRPC is not on the hub; use variant='glue'")
        return _hub_glue(task, split)
    path = verify_file(rel, eval_dir)
    # utf-8-sig: the MRPC files start with a byte-order mark, as the GLUE script writes them.
    # QUOTE_NONE: quotes inside sentences are text, not CSV quoting (one MRPC row starts with '"').
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    header, body = rows[0], [r for r in rows[1:] if r]
    out = []
    for i, row in enumerate(body, 2):
        if len(row) != len(header):
            raise DataError(f"{path} line {i} has {len(row)} fields, expected {len(header)}")
        if task == "rte":  # index, sentence1, sentence2, label
            out.append(PairExample(row[1], row[2], row[3]))
        else:  # Quality, #1 ID, #2 ID, #1 String, #2 String
            out.append(PairExample(row[3], row[4], "equivalent" if row[0] == "1" else "not_equivalent"))
    labels = set(GLUE_LABELS[task])
    bad = {e.label for e in out} - labels
    if bad:
        raise DataError(f"{path} has labels {sorted(bad)}; expected only {sorted(labels)}")
    return out


# ----------------------------------------------------------------------------------- online hubs
#: Hugging Face ids of the same sets, for users with internet
HUB_TEXT: dict[str, tuple[str, Optional[str], str]] = {  # name -> (dataset id, config, text field)
    "wikitext2": ("Salesforce/wikitext", "wikitext-2-v1", "text"),
    "wikitext2_raw": ("Salesforce/wikitext", "wikitext-2-raw-v1", "text"),
    "wikitext103": ("Salesforce/wikitext", "wikitext-103-v1", "text"),
    "ptb": ("ptb-text-only/ptb_text_only", None, "sentence"),
}
HUB_SPLIT = {"test": "test", "valid": "validation", "dev": "validation", "train": "train"}
#: the benchmark's release tarball; shard 0 of its held-out folder is the standard 1BW test set
ONEBW_URL = "http://www.statmt.org/lm-benchmark/1-billion-word-language-modeling-benchmark-r13output.tar.gz"
ONEBW_MEMBER = "heldout-monolingual.tokenized.shuffled/news.en.heldout-00000-of-00050"
#: sha256 of that shard, for online users who have no SOURCES.md; where SOURCES.md can be read, its entry is
#: used instead (a test checks that the two agree)
ONEBW_SHA256 = "265dccd51762253e20425c21ff6ddf09e6da2e11a365da399b0390eebb2d52c8"


def _hub_load(dataset: str, config: Optional[str], split: str) -> Any:
    try:
        import datasets  # imported lazily: only online users need it
    except ImportError:
        raise DataError(
            "source='hub' needs the Hugging Face 'datasets' package (pip install datasets) and internet; "
            "offline, use the local files (source='local')"
        ) from None
    try:
        if config is None:
            return datasets.load_dataset(dataset, split=split)
        return datasets.load_dataset(dataset, config, split=split)
    except Exception as e:  # network, hub or cache errors: say which set failed
        raise DataError(f"could not load {dataset} ({config}, {split}) from the hub: {e}") from e


def _hub_text(name: str, split: str) -> str:
    """The hub version of a text set, rebuilt into the original file's layout (one line each)."""
    if name == "1bw":
        return _download_1bw().decode("utf-8")
    dataset, config, field = HUB_TEXT[name]
    rows = _hub_load(dataset, config, HUB_SPLIT[split])
    if name == "ptb":
        # HF keeps each sentence without the file's leading and trailing space
        return "".join(f" {row[field]} \n" for row in rows)
    # HF wikitext: one row per original line with its "\n"; blank lines (" \n" in the file) are ""
    return "".join(row[field] if row[field] else " \n" for row in rows)


def _hub_glue(task: str, split: str) -> list[PairExample]:
    rows = _hub_load("nyu-mll/glue", task, HUB_SPLIT[split])
    # HF label ids: rte 0 = entailment, 1 = not_entailment; mrpc 0 = not_equivalent, 1 = equivalent
    names = {"rte": ("entailment", "not_entailment"), "mrpc": ("not_equivalent", "equivalent")}[task]
    return [PairExample(r["sentence1"], r["sentence2"], names[int(r["label"])]) for r in rows]


def _download_1bw(url: str = ONEBW_URL, opener: Callable[[str], Any] = urllib.request.urlopen) -> bytes:
    """Stream the 1BW tarball until the held-out shard 0 arrives; return its bytes, sha256-checked."""
    try:
        with opener(url) as response, tarfile.open(fileobj=response, mode="r|gz") as tar:
            for member in tar:
                if member.name.endswith(ONEBW_MEMBER):
                    f = tar.extractfile(member)
                    data = f.read() if f is not None else b""
                    break
            else:
                raise DataError(f"{url} has no member {ONEBW_MEMBER}")
    except (OSError, tarfile.TarError) as e:
        raise DataError(f"could not download 1BW from {url}: {e}") from e
    try:
        expected = read_sources()[FILES["1bw"]["test"]].sha256
    except DataError:
        expected = ONEBW_SHA256
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise DataError(f"1BW shard from {url}: expected sha256 {expected}, got {actual}")
    return data


__all__ = [
    "DETOK_RULES", "DetokRule", "FILES", "GLUE_LABELS", "GLUE_TASKS", "ONEBW_RULES", "PTB_RULES", "PairExample",
    "SourceEntry", "TEXT_SETS", "TextSet", "WIKITEXT_RULES", "clear_cache", "default_eval_dir", "detokenize",
    "detokenize_line", "load_glue", "load_lambada", "load_text", "parse_sources", "read_sources", "resolve_eval_dir",
    "sha256_file", "verify_all", "verify_file",
]
