"""Checkpoints: written atomically (temporary file, fsync, rename), loaded with weights_only=True.

A checkpoint holds only tensors, numbers, strings, lists and dicts, so `torch.load(..., weights_only=True)` reads
it: the method's state_dict (backbone, heads, and BYOL's EMA target), the optimizer's, the step, the epoch and the
position in it, the torch RNG states, and the run's arguments. The learning-rate schedule is a function of the
step, so restoring the step restores it. A kill -9 during a write leaves the previous checkpoint in place.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

CHECKPOINT = "checkpoint.pt"
ENCODER = "encoder.pt"


def save_atomic(obj, path: str | Path) -> Path:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}: check --resume (a run folder or a checkpoint.pt)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise ValueError(f"{path} is not a loadable checkpoint ({type(e).__name__}: {e})") from None


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
