"""Checkpoints: plain tensors and a config dict, written atomically, read safely.

A checkpoint is a ``torch.save`` of a dict of tensors, numbers, strings, lists and
dicts only, so it loads with ``torch.load(..., weights_only=True)``: a file someone
sends you cannot run code on your machine. Writes go to a temporary file in the same
folder, are flushed to disk, and are renamed over the old file, so an interruption
leaves either the old checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

from pglab.errors import CheckpointError
from pglab.paths import make_dirs
from pglab.safety import atomic_write, remove_stale_temps

FORMAT = "pglab-checkpoint"
VERSION = 1
CHECKPOINT_DIR = "checkpoints"
LAST = "last.pt"
#: The checkpoint of the run's best evaluation so far (by its mean).
BEST = "best.pt"


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Atomically write ``state`` (plus the format marker) to ``path``.

    In a run's ``checkpoints/`` folder, the temporary files of writes that were killed
    before their rename (``.last.pt.*``) are removed first (see
    :func:`~pglab.safety.remove_stale_temps`; the run folder's lock makes this process
    its only writer).
    """
    path = Path(path)
    if path.parent.name == CHECKPOINT_DIR:  # a run's own folder: never written through a link
        make_dirs(path.parent, path.parent.parent)
        remove_stale_temps(path.parent, "*.pt")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "version": VERSION, **state}
    with atomic_write(path, "wb") as stream:
        torch.save(payload, stream)
    return path


#: The checkpoints of a run folder that ``--checkpoint`` names.
CHOICES: dict[str, str] = {"last": LAST, "best": BEST}


def checkpoint_path(path: str | Path, which: str = "last") -> Path:
    """The checkpoint file for a run folder (its ``which`` checkpoint: ``last`` or
    ``best``, the best evaluation's) or a checkpoint file path."""
    path = Path(path)
    if which not in CHOICES:
        raise CheckpointError(f"--checkpoint is one of {', '.join(CHOICES)}; got {which!r}")
    if path.is_dir():
        candidate = path / CHECKPOINT_DIR / CHOICES[which]
        if not candidate.exists():
            raise CheckpointError(
                f"run folder {str(path)!r} has no {CHECKPOINT_DIR}/{CHOICES[which]}"
                + (" (it is written at the first evaluation)" if which == "best" else "")
            )
        return candidate
    if not path.exists():
        raise CheckpointError(f"no run folder or checkpoint at {str(path)!r}")
    if which != "last":
        raise CheckpointError(
            f"--checkpoint {which} goes with a run folder; got the file {str(path)!r}"
        )
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint (file or run folder) with ``weights_only=True``.

    Raises :class:`CheckpointError` with one line when the file is not a pglab
    checkpoint, is truncated or corrupt, or holds Python objects (a pickle payload,
    which is refused without being run).
    """
    file = checkpoint_path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "unsupported global" not in str(error).lower():  # garbage, not a refused object
            raise CheckpointError(f"{str(file)!r} is not a readable checkpoint") from None
        raise CheckpointError(
            f"{str(file)!r} was refused: it holds Python objects, not just tensors and "
            "data (nothing from it was run)"
        ) from None
    except Exception as error:  # any other failure to parse: truncated, corrupt, foreign
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"{str(file)!r} is not a readable checkpoint ({reason})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{str(file)!r} is not a pglab checkpoint")
    if state.get("version") != VERSION:
        raise CheckpointError(
            f"{str(file)!r} is a pglab checkpoint of version {state.get('version')}; "
            f"this pglab reads version {VERSION}"
        )
    return state
