"""Checkpoints: atomic, safe to load, and clear about files that are not checkpoints."""

import os
import pickle

import pytest
import torch

from pglab.checkpoint import load_checkpoint, save_checkpoint
from pglab.errors import CheckpointError


def test_round_trip(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", {"actor": {"w": torch.ones(2)}, "config": {"a": 1}})
    state = load_checkpoint(path)
    assert torch.equal(state["actor"]["w"], torch.ones(2)) and state["config"] == {"a": 1}
    assert os.listdir(tmp_path) == ["c.pt"]  # no temporary file left


def test_not_a_pglab_checkpoint(tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.ones(1)}, plain)
    with pytest.raises(CheckpointError, match="not a pglab checkpoint"):
        load_checkpoint(plain)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(text)


def test_truncated_file(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", {"actor": {"w": torch.randn(1000)}})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    assert "\n" not in str(error.value) and "not a readable checkpoint" in str(error.value)


class Payload:
    """Unpickling this would create a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_payload_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": "pglab-checkpoint", "version": 1, "x": Payload(str(marker))}, path)
    with pytest.raises(CheckpointError, match="refused.*nothing from it was run"):
        load_checkpoint(path)
    assert not marker.exists()
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(Payload(str(marker))))
    with pytest.raises(CheckpointError):
        load_checkpoint(raw)
    assert not marker.exists()


def test_interrupted_write_keeps_old_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "c.pt", {"n": 1})

    def explode(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", explode)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"n": 2})
    assert load_checkpoint(path)["n"] == 1
    assert os.listdir(tmp_path) == ["c.pt"]


def test_missing_paths(tmp_path):
    with pytest.raises(CheckpointError, match="no run folder or checkpoint"):
        load_checkpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="has no checkpoints/last.pt"):
        load_checkpoint(tmp_path)
