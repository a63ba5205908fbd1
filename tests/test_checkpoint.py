"""Checkpoint files: the sha256 inside, verified on load; atomic replacement; old files still read."""

from __future__ import annotations

import warnings
import zipfile

import pytest
import torch

from mstlib import checkpoint as C
from mstlib.errors import CheckpointError


def _state():
    torch.manual_seed(0)
    return {"model": {"w": torch.randn(64, 64)}, "step": 6, "rng": [1, 2.5, "x"]}


def test_roundtrip_carries_a_verified_sha256_and_stays_a_torch_file(tmp_path):
    path = tmp_path / "ckpt.pt"
    C.save(path, _state())
    assert C.recorded_digest(path) == C.actual_digest(path)
    got = C.load(path)
    assert torch.equal(got["model"]["w"], _state()["model"]["w"]) and got["version"] == C.VERSION
    # the digest is the zip archive's comment: torch.load and zip tools read the file as it is
    assert torch.equal(torch.load(path, weights_only=False)["model"]["w"], got["model"]["w"])
    with zipfile.ZipFile(path) as z:
        assert z.comment.startswith(b"mstlib-sha256:") and z.testzip() is None


@pytest.mark.parametrize("where", [0.3, 0.6, 0.9])
def test_a_flipped_byte_is_refused_with_the_callers_advice(tmp_path, where):
    path = tmp_path / "ckpt.pt"
    C.save(path, _state())
    data = bytearray(path.read_bytes())
    data[int(len(data) * where)] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"is corrupt: its sha256 .* not the .* recorded.*; do this"):
        C.load(path, advice="do this")


def test_a_lost_digest_is_refused_and_a_file_from_before_digests_loads_with_a_warning(tmp_path):
    path = tmp_path / "ckpt.pt"
    C.save(path, _state())
    data = path.read_bytes()
    cut = len(data) - C._COMMENT_SIZE
    stripped = data[: cut - 2] + b"\0\0"  # comment length 0 and no comment: as torch.save wrote it
    path.write_bytes(stripped)
    with pytest.raises(CheckpointError, match="lost the sha256"):
        C.load(path)
    torch.save({"model": {}, "version": 1}, path)  # what mstlib wrote before checksums
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert C.load(path)["version"] == 1
    assert any("predates checksums" in str(w.message) for w in caught)


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "ckpt.pt"
    C.save(path, _state())
    before = path.read_bytes()
    with pytest.raises(Exception):
        C.save(path, {"bad": lambda: 0})  # a lambda does not pickle
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist; retrain"):
        C.load(tmp_path / "nope.pt", advice="retrain")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        C.load(tmp_path / "bad.pt")


def test_load_model_from_a_file_verifies_it_and_restores_the_weights(tmp_path):
    from mstlib.config import ModelConfig
    from mstlib.model import GPT

    cfg = ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=97)
    torch.manual_seed(0)
    m = GPT(cfg)
    path = tmp_path / "ckpt.pt"
    C.save(path, {"model_config": cfg.__dict__, "model": m.state_dict()})
    got = C.load_model(path)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), got.state_dict().values()))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # the only way to load a model checks the checksum
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        C.load_model(path)
