# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: -papermill,-execution,-ExecuteTime,-trusted
#     formats: ipynb,py:percent
#     notebook_metadata_filter: kernelspec,jupytext,-jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Data provenance: what the models read
#
# **The paper's setup.** MST pretrains GPT-2 on OpenWebText with GPT-2's byte-pair encoding, then
# evaluates it zero-shot on LAMBADA, PTB, WikiText-2/103 and One Billion Words, and few-shot on GLUE RTE
# and MRPC. No machine of this project reaches the internet, so OpenWebText cannot be downloaded here. This
# page says what we train on instead, where every token came from, and why.
#
# **How the numbers on this page are made.** `python -m mstlib data prepare --corpus offline` tokenizes the
# corpus into `data/offline/{train,val}.bin` (uint16 GPT-2 tokens, nanoGPT's format) and writes
# `data/offline/meta.json`: the sources, their files' sha256 (checked against the corpus's own `SOURCES.md`
# before use), document and token counts per source and split, the sha256 of each token file, the
# tokenizer's self-check, the split rule, the date, the wall time and the mstlib commit. This notebook only
# reads those files; every number in the prose below is glued from them. Under the `smoke` preset it first
# prepares a tiny corpus (a few documents per source) into a temporary folder, so the numbers then describe
# that tiny corpus, not the real one.

# %% tags=["parameters", "hide-cell"]
preset = "smoke"  # "smoke": prepare a tiny corpus in a temporary folder (seconds, CPU); "mini"/"paper": read data_dir
data_dir = "data"  # folder of prepared corpora (relative paths are also tried from the repository root)
corpus = "offline"  # the prepared corpus to describe (python -m mstlib data list)
smoke_max_docs = 3  # smoke only: documents per source and split
seeds = [0]  # unused here: kept so every notebook takes the same parameters
device = "auto"  # unused here: nothing runs on a device
results_dir = "results"  # unused here

# %% tags=["remove-input"]
# Check the parameters first, so a typo stops here with a message that says what to use.
import tempfile
from pathlib import Path

from mstlib import data as corpora
from mstlib import notebook
from mstlib.errors import ConfigError

notebook.check_parameter_names()
if preset not in ("smoke", "mini", "paper"):
    raise ConfigError(f"preset={preset!r} is not one of ['smoke', 'mini', 'paper']")
if not isinstance(smoke_max_docs, int) or smoke_max_docs < 1:
    raise ConfigError(f"smoke_max_docs={smoke_max_docs!r} must be an integer >= 1")

if preset == "smoke":
    # A tiny corpus in a temporary folder: the real shared corpus when it is here, else a synthetic one
    # in the same layout (the pipeline is the same; only the text differs).
    tmp = Path(tempfile.mkdtemp(prefix="mst-data-"))
    source_dir = corpora.default_source_dir()
    if not (source_dir / "SOURCES.md").is_file():
        source_dir = corpora.make_example_source(tmp / "source")
    data_dir = str(tmp / "data")
    corpora.prepare(corpora.PrepareOptions(corpus=corpus, data_dir=data_dir, source_dir=str(source_dir),
                                           max_docs=smoke_max_docs, progress=False))
meta = corpora.read_meta(data_dir, corpus)  # DataError with the prepare command if it is not there
meta_all = corpora.verify_corpus(data_dir, corpus, checksum=preset == "smoke")  # sizes always; sha256 when cheap

# %% tags=["remove-input"]
import lzma

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from myst_nb import glue

sns.set_theme(style="whitegrid", context="notebook")
SOURCE_NAMES = {"wikipedia-en": "Wikipedia (2015)", "gutenberg": "Project Gutenberg", "openwebtext": "OpenWebText",
                "total": "total"}

# %% [markdown]
# ## Sources and token counts
#
# One row per split and source; tokens include one `<|endoftext|>` per document.

# %% tags=["hide-input"]
rows = pd.DataFrame(corpora.summary_rows(meta))
table = rows.assign(source=rows["source"].map(lambda s: SOURCE_NAMES.get(s, s)),
                    tokens_M=(rows["tokens"] / 1e6).round(3))
table = table[["split", "source", "documents", "tokens", "tokens_M", "truncated_documents"]]
table.style.format({"documents": "{:,}", "tokens": "{:,}", "tokens_M": "{:.3f}"}).hide(axis="index")

# %% tags=["remove-input"]
train, val = meta["splits"]["train"], meta["splits"]["val"]
prov = meta["provenance"]
src = train["sources"]
glue("corpus_name", meta["name"], display=False)
glue("train_tokens_m", train["tokens"] / 1e6, display=False)
glue("val_tokens_m", val["tokens"] / 1e6, display=False)
glue("train_docs", train["documents"], display=False)
glue("val_docs", val["documents"], display=False)
for key, name in (("wiki", "wikipedia-en"), ("gut", "gutenberg")):
    if name in src:
        glue(f"{key}_train_tokens_m", src[name]["tokens"] / 1e6, display=False)
        glue(f"{key}_train_docs", src[name]["documents"], display=False)
        glue(f"{key}_train_share", 100 * src[name]["tokens"] / train["tokens"], display=False)
        glue(f"{key}_val_tokens_m", val["sources"][name]["tokens"] / 1e6, display=False)
        glue(f"{key}_val_docs", val["sources"][name]["documents"], display=False)
glue("prepare_wall_s", prov["prepare_wall_s"], display=False)
glue("prepare_workers", prov["workers"], display=False)
glue("train_bin_mb", train["bytes"] / 1e6, display=False)
glue("tokenizer_check", str(meta["tokenizer"]["checked"]), display=False)
glue("tiktoken_version", meta["tokenizer"]["tiktoken_version"], display=False)
glue("train_sha256_short", train["sha256"][:16], display=False)
glue("git_commit_short", (prov["git"]["commit"] or "unknown")[:10], display=False)

# %% [markdown]
# The {glue:text}`corpus_name` corpus has **{glue:text}`train_tokens_m:.2f` million training tokens** in
# {glue:text}`train_docs:,d` documents and **{glue:text}`val_tokens_m:.2f` million validation tokens** in
# {glue:text}`val_docs:,d` documents. Wikipedia gives {glue:text}`wiki_train_tokens_m:.2f` M training tokens
# ({glue:text}`wiki_train_share:.1f`%, {glue:text}`wiki_train_docs:,d` articles) and Project Gutenberg
# {glue:text}`gut_train_tokens_m:.2f` M ({glue:text}`gut_train_share:.1f`%, {glue:text}`gut_train_docs:,d`
# books). Preparing it took {glue:text}`prepare_wall_s:.0f` s with {glue:text}`prepare_workers` worker
# processes; `train.bin` is {glue:text}`train_bin_mb:.0f` MB (its sha256 begins with
# {glue:text}`train_sha256_short`), made at mstlib commit {glue:text}`git_commit_short`. The tokenizer is
# GPT-2's BPE through tiktoken {glue:text}`tiktoken_version`, checked on known answers:
# {glue:text}`tokenizer_check`.

# %% [markdown]
# ## Why these sources
#
# - **English Wikipedia (2015 dump).** Clean, edited expository prose. It is the domain of WikiText-2 and
#   WikiText-103, two of the paper's zero-shot benchmarks, so their perplexities measure something the model
#   could learn. The corpus maker removed the WikiText-103 validation and test articles from the dump and
#   probed the shards for their text (see the corpus's `SOURCES.md`), so these benchmarks stay held out.
# - **Project Gutenberg books.** Long narrative prose with dialogue: long-range context as in LAMBADA
#   (whose passages come from BookCorpus novels, not Gutenberg; the corpus maker found none of LAMBADA's
#   test passages in these books) and a less formal register than Wikipedia, nearer to OpenWebText's mix.
# - **Not used: the registry sources** of `../shared/docs/data-sources.md`. Most of their tokens are
#   dictionary entries (GCIDE, WordNet), kernel documentation and software manuals: technical or list-like
#   text, unlike the web prose of OpenWebText, and together smaller than either source above. The Penn
#   Treebank package (`treebank`) is *PTB itself*, one of the paper's evaluation sets: training on it
#   would turn a zero-shot PTB score into an in-domain one, so it must never be in a training corpus.
# - **OpenWebText**, the paper's corpus, remains available for users with internet:
#   `python -m mstlib data prepare --corpus openwebtext` runs nanoGPT's own preparation (the Hugging Face
#   `openwebtext` dataset, `train_test_split(test_size=0.0005, seed=2357)`, `encode_ordinary` + end-of-text).
#   Our offline corpus is cleaner and more formal than web text, so absolute perplexities are not comparable
#   with the paper's; comparisons *between* methods trained on the same tokens are what this book reports.

# %% [markdown]
# ## Document lengths
#
# Wikipedia articles are short next to whole books: the figure shows how many GPT-2 tokens each training
# document has (log scale), as a share of each source's documents. With nanoGPT's random 1024-token windows, a window from a book almost always lies inside
# one document, while a window from Wikipedia often spans several articles joined by `<|endoftext|>`.

# %% tags=["hide-input"]
docs = corpora.read_documents(data_dir, corpus)
docs["source"] = docs["source"].map(lambda s: SOURCE_NAMES.get(s, s))
fig, ax = plt.subplots(figsize=(7, 3.6))
bins = np.logspace(np.log10(max(1, docs["tokens"].min())), np.log10(docs["tokens"].max() + 1), 40)
for name, group in docs[docs["split"] == "train"].groupby("source"):
    # each source normalised to 100% of its own documents: Gutenberg has far fewer documents than Wikipedia
    ax.hist(group["tokens"], bins=bins, weights=np.full(len(group), 100 / len(group)), alpha=0.6,
            label=f"{name} ({len(group):,} documents)")
ax.set_xscale("log")
ax.set_xlabel("document length (GPT-2 tokens, with end-of-text)")
ax.set_ylabel("% of the source's train documents")
ax.legend()
ax.set_title(f"Document lengths in corpus '{meta['name']}'")
fig.tight_layout()
glue("doc_length_figure", fig, display=False)
median = docs[docs["split"] == "train"].groupby("source")["tokens"].median()
for key, name in (("wiki", "Wikipedia (2015)"), ("gut", "Project Gutenberg")):
    if name in median:
        glue(f"{key}_median_doc_tokens", int(median[name]), display=False)
plt.show()

# %% [markdown]
# The median training document has {glue:text}`wiki_median_doc_tokens:,d` tokens in Wikipedia and
# {glue:text}`gut_median_doc_tokens:,d` in Gutenberg.
#
# ## The split and the order of documents
#
# The rules as `meta.json` records them:

# %% tags=["hide-input"]
import re

from IPython.display import Markdown


def as_markdown(rule: str) -> str:
    """Command-line options, file patterns and the end-of-text token as code, so they render verbatim."""
    return re.sub(r"(--[a-z-]+(?: N)?|<\|endoftext\|>|[\w*-]+\.txt\.xz|\w*\.bin|k % 100 == 50)", r"`\1`", rule)


Markdown(f"**Split.** {as_markdown(meta['split_rule'])}\n\n**Order.** {as_markdown(meta['order_rule'])}")

# %% [markdown]
# ## Getting the tokens to a GPU machine
#
# The GPU machines have no copy of the shared corpus and receive at most 64 MiB per transfer, while the
# training tokens as uint16 take {glue:text}`train_bin_mb:.0f` MB. `tools/stage_corpus.sh 50M` prepares
# the first 50M training tokens (the order above makes that prefix a proportional mix of both sources) as
# `data/offline-50m/` and packs it with `python -m mstlib data pack` into xz pieces, grouped into transfer
# folders of at most 56 MiB with a manifest of sha256s; `python -m mstlib data unpack` on the GPU machine
# checks every piece and file and installs the corpus and the tokenizer cache. GPT-2 tokens compress well:
# measured on the first {glue:text}`xz_sample_tokens_m:.1f` M training tokens of this corpus, xz (preset 6)
# needs {glue:text}`xz_bytes_per_token:.2f` bytes per token, so one 56 MiB transfer holds about
# {glue:text}`tokens_per_transfer_m:.0f` M tokens.

# %% tags=["hide-input"]
tokens = corpora.open_tokens(data_dir, corpus, "train")
sample = np.asarray(tokens[: min(len(tokens), 4_000_000)])  # 8 MB: a few seconds of xz
xz_bytes_per_token = len(lzma.compress(sample.tobytes(), preset=6)) / len(sample)
glue("xz_sample_tokens_m", len(sample) / 1e6, display=False)
glue("xz_bytes_per_token", xz_bytes_per_token, display=False)
glue("tokens_per_transfer_m", 56 * 2**20 / xz_bytes_per_token / 1e6, display=False)
print(f"{len(sample):,} tokens -> {xz_bytes_per_token:.3f} xz bytes/token")

# %% tags=["remove-input"]
if preset == "smoke":  # the tiny corpus was only for this page
    import shutil

    del tokens
    shutil.rmtree(tmp, ignore_errors=True)
