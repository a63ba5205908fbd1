"""Checkpoint files: ``torch.save`` archives that carry their own sha256, verified on every load.

``torch.load`` reads most flipped bytes without complaint (a tensor's data is not checked), so a damaged
checkpoint would resume or evaluate silently with wrong weights. The digest travels inside the file, as the
zip archive comment that ``torch.save``'s zip format allows, so file and digest are replaced together by
one atomic rename: no crash can leave a checkpoint beside the digest of another. ``torch.load`` and any
zip tool still read the file as it is.

The digest is the sha256 of the archive exactly as ``torch.save`` wrote it (no comment, comment length 0).
A checkpoint written before digests existed (``version`` < 2) loads with a warning; a newer one without a
valid digest is refused.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Any, BinaryIO

import torch

from .errors import CheckpointError
from .results import atomic_file

#: 2: the file carries its sha256 (module docstring); 1: written before that
VERSION = 2

_EOCD = b"PK\x05\x06"  # the zip end-of-central-directory record: 22 bytes, its last 2 the comment length
_EOCD_SIZE = 22
_PREFIX = b"mstlib-sha256:"
_COMMENT_SIZE = len(_PREFIX) + 64
_CHUNK = 1 << 22


class _HashingWriter:
    """Passes ``torch.save``'s writes to ``f``, hashing them and keeping the last bytes (the zip's end
    record, whose comment length is patched afterwards)."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.sha, self.tail = f, hashlib.sha256(), b""

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.tail = (self.tail + bytes(data))[-_EOCD_SIZE:]
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def save(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Write ``state`` (with ``version`` set) to ``path`` atomically: a temporary file in the same folder,
    renamed over ``path`` once complete, so the previous checkpoint stays until the new one is whole."""
    state = {**state, "version": VERSION}
    with atomic_file(path) as f:
        w = _HashingWriter(f)
        torch.save(state, w)
        if not (w.tail.startswith(_EOCD) and w.tail.endswith(b"\0\0")):  # pragma: no cover - a torch change
            raise CheckpointError("torch.save did not end its archive with a zip end record without comment")
        comment = _PREFIX + w.sha.hexdigest().encode()
        f.seek(-2, os.SEEK_END)
        f.write(len(comment).to_bytes(2, "little") + comment)


def recorded_digest(path: str | os.PathLike[str]) -> str | None:
    """The sha256 the file says it has (None when it carries none)."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        n = _EOCD_SIZE + _COMMENT_SIZE
        if size < n:
            return None
        f.seek(size - n)
        end = f.read(n)
    comment = end[_EOCD_SIZE:]
    if not (end.startswith(_EOCD) and int.from_bytes(end[20:22], "little") == _COMMENT_SIZE
            and comment.startswith(_PREFIX)):
        return None
    return comment[len(_PREFIX):].decode("ascii", errors="replace")


def actual_digest(path: str | os.PathLike[str]) -> str:
    """The sha256 of the archive without its comment (what :func:`save` recorded)."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        remaining = f.seek(0, os.SEEK_END) - _COMMENT_SIZE - 2
        f.seek(0)
        while remaining > 0:
            chunk = f.read(min(_CHUNK, remaining))
            if not chunk:
                break
            sha.update(chunk)
            remaining -= len(chunk)
    sha.update(b"\0\0")  # the comment length as torch.save wrote it
    return sha.hexdigest()


def load(path: str | os.PathLike[str], map_location: str | torch.device = "cpu", advice: str = "") -> dict[str, Any]:
    """The state saved at ``path``, after checking its sha256. Raises CheckpointError (ending in
    ``advice``, what to do about it) when the file is missing, unreadable or not what was written."""
    path = Path(path)
    todo = f"; {advice}" if advice else ""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist{todo}")
    recorded = recorded_digest(path)
    if recorded is not None:
        actual = actual_digest(path)
        if actual != recorded:
            raise CheckpointError(
                f"checkpoint {path} is corrupt: its sha256 is {actual[:16]}..., not the {recorded[:16]}... "
                f"recorded when it was written (a damaged disk or an edited file){todo}"
            )
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # truncated or foreign file
        raise CheckpointError(f"checkpoint {path} cannot be read ({e}){todo}") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not an mstlib checkpoint{todo}")
    if recorded is None:
        if state.get("version", 1) >= 2:
            raise CheckpointError(f"checkpoint {path} has lost the sha256 it was written with{todo}")
        warnings.warn(f"checkpoint {path} predates checksums (version {state.get('version', 1)}); it cannot be "
                      "verified", stacklevel=2)
    return state
