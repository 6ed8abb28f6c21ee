"""A run folder and what makes a run itself: never clobbered, resumed only into the same run.

A folder holds a run when it has any of RUN_FILES. Starting there needs --resume (continue) or --overwrite
(remove them and start again); otherwise `check_folder` refuses in one line naming both. A bare --resume in a
folder with no checkpoint yet starts the run, so one command serves a job's first launch and its requeues.
--resume CKPT of another run continues it into --out only if --out holds no run. One process writes a folder at a
time: `claim` takes an exclusive lock on OUT/.lock (preprocess.lock's, the store's writer lock) for the whole run, so
a second launch into the same folder (a requeued job while the old one still drains) is refused in one line with
the holder's pid, and it checks that nobody changed the folder between the decision and the lock.

The signature is what gives a run its meaning: the store (its store.json's digest, so a copied or moved store is
the same store, and its size), the subset trained on, method, arch, batch size, world size, total and warmup
steps, learning rate, seed, loader and the full AugmentConfig. It is saved with every checkpoint; --resume
compares it with the one the command line makes and refuses, listing each difference, unless --allow-changes.
Everything else (log and checkpoint intervals, workers, device, W&B settings, --stop-after) may change freely.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path

from preprocess.lock import WriterLock
from training.checkpoint import CHECKPOINT, ENCODER

RUN_FILES = (CHECKPOINT, ENCODER, "metrics.jsonl", "args.json")


def holds_run(out: Path) -> list[str]:
    return [name for name in RUN_FILES if (Path(out) / name).exists()]


def check_folder(out: Path, resume: str | None, overwrite: bool) -> str:
    """'new', 'resume' or 'overwrite' for this folder and these flags; ValueError where it would lose a run."""
    held = holds_run(out)
    if resume == "auto":
        return "resume" if (Path(out) / CHECKPOINT).exists() else "new"
    if resume and held and not _is_own(resume, out):
        raise ValueError(f"{out} already holds a run ({', '.join(held)}) and --resume {resume} is another run's "
                         "checkpoint: continue that run in its own folder, or into an empty --out")
    if resume:
        return "resume"
    if held and not overwrite:
        raise ValueError(f"{out} already holds a run ({', '.join(held)}): pass --resume to continue it, or "
                         "--overwrite to start again (its files are removed)")
    return "overwrite" if held else "new"


def _is_own(resume: str, out: Path) -> bool:
    path = Path(resume) / CHECKPOINT if Path(resume).is_dir() else Path(resume)
    return path.resolve() == (Path(out) / CHECKPOINT).resolve()


def stamp(out: Path) -> tuple | None:
    """The folder's checkpoint as (inode, mtime): every save is a new file renamed into place, so it changes."""
    try:
        s = (Path(out) / CHECKPOINT).stat()
    except FileNotFoundError:
        return None
    return s.st_ino, s.st_mtime_ns


def claim(out: Path, resume: str | None, overwrite: bool, mode: str, seen: tuple | None) -> WriterLock:
    """Lock the run folder for this process (creating it) and check that it is as it was when `mode` was decided
    (`seen`: its checkpoint's stamp then); ValueError in one line if another process holds it or changed it."""
    lock = WriterLock(out).acquire()
    try:
        if check_folder(out, resume, overwrite) != mode or stamp(out) != seen:
            raise ValueError(f"{out} changed while this run was starting (another process wrote to it): run the "
                             "command again")
    except ValueError:
        lock.release()
        raise
    return lock


def clear(out: Path) -> None:
    """--overwrite: remove the run's files (W&B's own folder stays: its runs are separate, by id)."""
    for name in RUN_FILES + (CHECKPOINT + ".tmp", ENCODER + ".tmp", "metrics.jsonl.tmp"):
        (Path(out) / name).unlink(missing_ok=True)


def store_digest(store) -> str:
    return hashlib.sha256((Path(store.root) / "store.json").read_bytes()).hexdigest()[:16]


def signature(args, store, loader, config, select, world_size: int, total: int, warmup: int, peak: float) -> dict:
    return {"store": store_digest(store), "store_images": len(store), "subset": select.describe(),
            "images": loader.sampler.n if hasattr(loader, "sampler") else None, "method": args.method,
            "arch": args.arch, "batch_size": args.batch_size, "world_size": world_size, "total_steps": total,
            "warmup_steps": warmup, "lr_scaling": args.lr_scaling, "peak_lr": peak, "seed": args.seed,
            "loader": args.loader, "augment": asdict(config)}


def differences(saved: dict, now: dict) -> list[str]:
    """'name: saved -> now' for every signature entry that differs (AugmentConfig field by field)."""
    out = []
    for k in sorted(set(saved) | set(now)):
        a, b = saved.get(k), now.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"augment.{f}: {_show(a.get(f))} -> {_show(b.get(f))}" for f in sorted(set(a) | set(b))
                    if _norm(a.get(f)) != _norm(b.get(f))]
        elif _norm(a) != _norm(b):
            out.append(f"{k}: {_show(a)} -> {_show(b)}")
    return out


def _norm(v):
    if isinstance(v, (list, tuple)):
        return tuple(_norm(x) for x in v)
    if isinstance(v, float):
        return round(v, 12)
    return v


def _show(v) -> str:
    if isinstance(v, (list, tuple)):
        return "(" + ", ".join(_show(x) for x in v) + ")"
    return f"{v:.6g}" if isinstance(v, float) else str(v)
