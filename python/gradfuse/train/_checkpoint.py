"""A trainer's checkpoint file: :func:`gradfuse.save` / :func:`gradfuse.load` (one safetensors
file, arrays by dotted path plus JSON metadata for everything else, written to a temporary file,
fsync'd and renamed over the target, so a crash mid-write keeps the previous checkpoint)."""

from __future__ import annotations

import os

from .. import serialization

__all__ = ["save", "load", "FORMAT"]

FORMAT = "gradfuse.train/1"  # the "format" entry of Trainer.state_dict()


def save(state: dict, path) -> None:
    """Write a trainer state atomically (see :func:`gradfuse.save`), creating the directory
    (ModelCheckpoint paths like ``"ckpt/epoch{epoch:03d}.safetensors"``)."""
    if isinstance(path, (str, os.PathLike)):  # else gf.save names the bad argument
        os.makedirs(os.path.dirname(os.path.abspath(os.fspath(path))), exist_ok=True)
    serialization.save(state, path)


def load(path) -> dict:
    """Read a trainer state; ValueError (gf.serialization.CheckpointError) naming the file when
    it is missing, corrupt or not a trainer checkpoint."""
    path = os.fspath(path)
    state = serialization.load(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise serialization.CheckpointError(
            f"{path}: not a gradfuse.train checkpoint (no format {FORMAT!r}; a bare "
            "gf.save() of a model loads with gf.load)")
    return state
