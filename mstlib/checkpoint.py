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
import random
import warnings
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from .config import ModelConfig, RunConfig
from .errors import CheckpointError
from .model import GPT, load_state_dict_checked
from .results import (
    CHECKPOINT,
    CONFIG,
    RunResult,
    RunStore,
    atomic_file,
    read_json,
    retrain_command,
)

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


# ------------------------------------------------------------------------- RNG state, runs' models


def rng_state() -> dict[str, Any]:
    """Every global RNG stream (the loop itself draws from none of them; they are saved so that any code
    that does, a library included, continues exactly after a resume)."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        # this process's GPU only: get_rng_state_all() would create a context on every visible GPU
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if torch.is_tensor(state.get("cuda")) and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write a checkpoint atomically, with its sha256 (:func:`save`)."""
    save(path, state)


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu",
                    advice: str = "") -> dict[str, Any]:
    """A checkpoint's state after checking its sha256 (:func:`mstlib.checkpoint.load`); ``advice`` ends the
    message of a CheckpointError (by default: how to train the checkpoint's run again)."""
    return load(path, map_location, advice or "train its run again from scratch with --no-resume")


def retrain_advice(store: RunStore, run_dir: Path) -> str:
    """What to do about a checkpoint of ``run_dir`` that cannot be used: the command that trains it again."""
    return f"train the run again from scratch: {retrain_command(run_dir, store.checkpoints_option())}"


def load_model(source: str | os.PathLike[str] | RunResult, map_location: str | torch.device = "cpu",
               store: RunStore | None = None) -> GPT:
    """The trained GPT of a run, in eval mode: ``source`` is a checkpoint file, a run folder
    (``results/<preset>/<method>/<run_id>``; its checkpoint is looked up in ``store`` or, by default, in
    ``checkpoints/<results root's name>/`` beside the results root) or a :class:`RunResult`. Raises CheckpointError when the
    checkpoint is missing or belongs to another config."""
    expected: RunConfig | None = None
    if isinstance(source, RunResult):
        run_dir = source.path
    else:
        run_dir = Path(source)
    if run_dir.is_dir():
        if not (run_dir / CONFIG).is_file():
            raise CheckpointError(f"{run_dir} is neither a checkpoint file nor a run folder (no {CONFIG})")
        expected = RunConfig.from_dict(read_json(run_dir / CONFIG))
        if store is None:  # run folders are <root>/<preset>/<method>/<run_id>
            store = RunStore(run_dir.parents[2])
        path = store.checkpoints / run_dir.name / CHECKPOINT
        advice = retrain_advice(store, run_dir)
    else:
        path = run_dir
        advice = ""
    ckpt = load_checkpoint(path, map_location, advice)
    if expected is not None and ckpt.get("config") != expected.to_dict():
        raise CheckpointError(
            f"checkpoint {path} was written for a different config than {run_dir / CONFIG}; {advice}"
        )
    try:
        model = GPT(ModelConfig(**ckpt["model_config"]))
        load_state_dict_checked(model, ckpt["model"], str(path))
    except KeyError as e:
        raise CheckpointError(f"checkpoint {path} lacks {e}; is it an mstlib checkpoint?") from None
    return model.to(map_location).eval()
