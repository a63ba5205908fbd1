"""Pretraining corpora: prepare, describe, verify, open, and pack for a machine with no shared data.

A *prepared corpus* is a folder ``<data_dir>/<name>/`` in nanoGPT's format:

- ``train.bin``, ``val.bin``: GPT-2 token ids as raw little-endian ``uint16``; every document is followed by
  ``<|endoftext|>`` (50256). Read them with :func:`open_tokens`.
- ``meta.json``: where every token came from (sources, files and their sha256, document and token counts per
  source and split), the sha256 of each ``.bin``, the tokenizer and its self-check, the split and order rules,
  the options, the date, the wall time of the preparation and the mstlib version and git commit.
- ``documents.tsv`` (shard corpora only): one row per document: split, source, file, index in file, title,
  token offset in the split's ``.bin`` and token count (with its end-of-text token).

Named corpora (:data:`CORPORA`): ``offline`` (the default: English Wikipedia 2015 + Project Gutenberg books
from ``<shared>/data/corpus/``), its two halves ``wikipedia`` and ``gutenberg``, and ``openwebtext`` (the
paper's corpus, prepared as nanoGPT does, for users with internet).

Preparation is idempotent (a folder whose ``meta.json`` has the same recipe and whose files verify is kept),
parallel over shards (a process pool with ``os.cpu_count()`` workers), shows progress, and atomic: it builds in
``<data_dir>/.tmp-<name>-<pid>/`` and renames that into place only when everything is written and checked, so
a failed run leaves an existing corpus untouched.

The GPU machines receive at most 64 MiB per transfer and have no shared folder: :func:`pack_corpus` writes a
prepared corpus as xz-compressed pieces grouped into transfer folders (each under a size limit) with a
manifest of sha256s, and :func:`unpack_corpus` reassembles and verifies it on arrival.

Rooms: :mod:`.catalogue` (named corpora, rules, paths, the shared sources' tables), :mod:`.tokens` (open,
verify, describe), :mod:`.preparation` (and :mod:`.openwebtext`), :mod:`.files` (writing folders safely),
:mod:`.pack` (for the GPU machines), :mod:`.tokenizer` (GPT-2 BPE, offline) and :mod:`.evalsets` (the
evaluation sets). Command line (:mod:`.commands`): ``python -m mstlib data {list,prepare,describe,verify,
tokenizer,pack,unpack}``.
"""

from __future__ import annotations

from . import evalsets, tokenizer  # noqa: F401,E402
from .examples import make_example_evalsets, make_example_source  # noqa: F401,E402
from .tokenizer import EOT, N_VOCAB, REPO_ROOT, cache_dir, get_encoding, self_check, sha256_file, shared_dir  # noqa: F401,E402
from .catalogue import (  # noqa: F401
    CORPORA,
    DTYPE,
    FORMAT,
    ORDER_RULE_SHARDS,
    PACK_FORMAT,
    PARTS,
    SPLIT_RULE_OWT,
    SPLIT_RULE_SHARDS,
    SPLITS,
    SUBSETS,
    TOKEN_BYTES,
    CorpusSpec,
    Doc,
    Part,
    PrepareOptions,
    ShardInfo,
    corpus_dir,
    default_source_dir,
    prepared_names,
    read_manifest,
    read_meta,
    read_sources_table,
    remake_command,
    resolve_data_dir,
)
from .pack import (  # noqa: F401
    pack_corpus,
    unpack_corpus,
)
from .preparation import (  # noqa: F401
    prepare,
    verify_sources,
)
from .tokens import (  # noqa: F401
    check_split_file,
    describe_text,
    open_tokens,
    read_documents,
    summary_rows,
    verify_corpus,
)
