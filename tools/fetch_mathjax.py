#!/usr/bin/env python3
"""Vendor MathJax 3 for the offline book: unpack the npm package ``mathjax`` into book/_static/vendor/.

The built HTML must render math with no internet, so the book does not load MathJax from a CDN: Sphinx's
``mathjax_path`` (set in _config.yml) points at ``_static/vendor/mathjax/es5/tex-svg.js``. This script puts
that file (and the folders it loads extensions from on demand) there, once; the files are git-ignored and
never committed.

Where the package comes from, first that works:
1. ``--tarball PATH`` or the environment variable ``MATHJAX_TGZ``: a local ``mathjax-3.2.2.tgz`` (for a
   machine with no registry at all: copy the tarball over);
2. a plain HTTPS download from the npm registry (``$NPM_CONFIG_REGISTRY`` or https://registry.npmjs.org/),
   needs only Python;
3. ``npm pack mathjax@3.2.2`` (uses npm's own registry and proxy settings).
The tarball's sha512 must equal the registry's published integrity below, whichever way it came.

Usage: python tools/fetch_mathjax.py [--dest book/_static/vendor/mathjax] [--force]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

VERSION = "3.2.2"
#: npm's published integrity of mathjax-3.2.2.tgz (`npm view mathjax@3.2.2 dist.integrity`)
INTEGRITY = "sha512-Bt+SSVU8eBG27zChVewOicYs7Xsdt40qm4+UpHyX7k0/O9NliPc+x77k1/FEsPsjKPZGJvtRZM1vO+geW0OhGw=="
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DEST = ROOT / "book" / "_static" / "vendor" / "mathjax"
ENTRY = "es5/tex-svg.js"
#: what the book needs from the package's 24 MB: the combined TeX-to-SVG component and the folders it
#: loads lazily (TeX extensions via autoload, the context menu, accessibility and speech); the CommonHTML
#: output and its fonts and the other combined components are left out.
KEEP = ("LICENSE", "package.json", ENTRY, "es5/input/", "es5/ui/", "es5/a11y/", "es5/sre/", "es5/adaptors/")


def _verify(data: bytes) -> None:
    digest = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    if digest != INTEGRITY:
        raise SystemExit(
            f"mathjax-{VERSION}.tgz has the wrong checksum ({digest[:30]}...; expected {INTEGRITY[:30]}...): "
            "a corrupt download or a different file. Delete it and run this script again."
        )


def _download() -> bytes:
    registry = os.environ.get("NPM_CONFIG_REGISTRY", "https://registry.npmjs.org/").rstrip("/")
    url = f"{registry}/mathjax/-/mathjax-{VERSION}.tgz"
    with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 - a fixed https URL
        return response.read()


def _npm_pack() -> bytes:
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not installed")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [npm, "pack", f"mathjax@{VERSION}", "--pack-destination", tmp, "--silent"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        return (Path(tmp) / f"mathjax-{VERSION}.tgz").read_bytes()


def fetch(tarball: str | None) -> bytes:
    """The verified bytes of mathjax-VERSION.tgz, from the first source that works."""
    if tarball:
        data = Path(tarball).read_bytes()
        _verify(data)
        return data
    errors = []
    for name, get in (("HTTPS download", _download), ("npm pack", _npm_pack)):
        try:
            data = get()
        except Exception as e:  # noqa: BLE001 - try the next source, report all at the end
            errors.append(f"{name}: {e}")
            continue
        _verify(data)
        return data
    raise SystemExit(
        "could not fetch MathJax " + VERSION + " (" + "; ".join(errors) + ").\n"
        "Without internet, copy mathjax-" + VERSION + ".tgz (from `npm pack mathjax@" + VERSION + "` on a "
        "machine that has it) here and run: MATHJAX_TGZ=path/to/mathjax-" + VERSION + ".tgz make book"
    )


def unpack(data: bytes, dest: Path) -> int:
    """Extract the KEEP subset of the package into ``dest`` atomically; return the number of files."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".mathjax-", dir=dest.parent))
    n = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for member in tar.getmembers():
                name = member.name.removeprefix("package/")
                if not member.isfile() or not any(name == k or name.startswith(k) for k in KEEP):
                    continue
                target = (tmp / name).resolve()
                if tmp.resolve() not in target.parents:  # a path that escapes the folder: refuse
                    raise SystemExit(f"unsafe path in the MathJax tarball: {member.name}")
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None
                target.write_bytes(source.read())
                n += 1
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST, help="folder to unpack into")
    parser.add_argument("--tarball", default=os.environ.get("MATHJAX_TGZ"), help="a local mathjax tgz")
    parser.add_argument("--force", action="store_true", help="fetch again even if already there")
    args = parser.parse_args(argv)
    version_file = args.dest / "package.json"
    if not args.force and (args.dest / ENTRY).is_file() and f'"version": "{VERSION}"' in (
        version_file.read_text() if version_file.is_file() else ""
    ):
        print(f"MathJax {VERSION} already vendored in {args.dest}")
        return 0
    n = unpack(fetch(args.tarball), args.dest)
    print(f"vendored MathJax {VERSION}: {n} files in {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
