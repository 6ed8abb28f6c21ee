"""Checkpoints: written atomically (temporary file, fsync, rename), checked by a checksum when loaded.

A checkpoint is a plain `torch.save` dict (so `torch.load(path, weights_only=True)` reads it anywhere): the
method's state_dict (backbone, heads, and BYOL's EMA target), the optimizer's, the step, the epoch and the position
in it, the torch RNG states, the run's arguments and signature (training/runs.py), the W&B run id, plus `format`
and `sha256`, a digest of everything else. The digest is computed over the payload's values (tensor bytes, dtypes,
shapes, keys, numbers), not over the file, so it is recomputed from what `torch.load` returns: a flipped byte in a
weight, which the zip container does not notice, fails it. A kill -9 during a write leaves the previous file.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

CHECKPOINT = "checkpoint.pt"
ENCODER = "encoder.pt"
FORMAT = "scarce-cxr-checkpoint/1"
REQUIRED = ("method", "optimizer", "step", "epoch", "batch", "rng", "args")


def save_atomic(obj, path: str | Path) -> Path:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def digest(obj) -> str:
    """sha256 over a nest of dicts, lists, tensors and plain values, independent of the file's layout."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def _feed(h, obj) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(obj, dict):
        h.update(b"D%d;" % len(obj))
        for k in sorted(obj, key=repr):
            h.update(b"K" + repr(k).encode() + b";")
            _feed(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        h.update(b"L%d;" % len(obj))
        for v in obj:
            _feed(h, v)
    else:
        h.update(b"V" + repr(obj).encode() + b";")


def save(payload: dict, path: str | Path) -> Path:
    """Write a training checkpoint with its format tag and checksum."""
    return save_atomic({**payload, "format": FORMAT, "sha256": digest(payload)}, path)


def read(path: str | Path, what: str = "checkpoint"):
    """torch.load(weights_only=True) on the CPU, with one-line errors for a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {path}" + (": check --resume (a run folder or a checkpoint.pt)"
                                                         if what == "checkpoint" else ""))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for a damaged file
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise ValueError(f"{path} is not a readable torch file (damaged or truncated?): {type(e).__name__}: {first}"
                         ) from None


def load(path: str | Path) -> dict:
    """A training checkpoint (a run folder means its checkpoint.pt), verified: ValueError in one line if it is
    damaged (checksum), foreign (not written by training.pretrain) or incomplete. Tensors are on the CPU."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    obj = read(path)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        held = (f"a dict with keys {', '.join(map(str, list(obj)[:6]))}" if isinstance(obj, dict) else
                f"a {type(obj).__name__}")
        raise ValueError(f"{path} is not a checkpoint written by training.pretrain (it holds {held}): "
                         "pass the checkpoint.pt of a run (or its folder) to --resume")
    missing = [k for k in REQUIRED + ("sha256",) if k not in obj]
    if missing:
        raise ValueError(f"{path} is incomplete (no {', '.join(missing)}): resume from another checkpoint, or "
                         "start again with --overwrite")
    payload = {k: v for k, v in obj.items() if k not in ("format", "sha256")}
    if digest(payload) != obj["sha256"]:
        raise ValueError(f"{path} is damaged: its contents do not match the checksum written with it; resume from "
                         "a copy, or start again with --overwrite")
    return payload


def verified_step(path: str | Path) -> int | None:
    """The step of the checkpoint at `path` if it loads and verifies, else None."""
    try:
        return int(load(path)["step"])
    except (ValueError, FileNotFoundError):
        return None


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
