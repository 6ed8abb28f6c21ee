"""Run logging: JSON lines always (metrics.jsonl), Weights & Biases when asked (offline by default), progress.

Every metrics line carries `time` (wall clock, ISO 8601 with its UTC offset) and `elapsed_s` (seconds of
training in this run, summed over resumes: a resume starts from the value saved with its checkpoint). On a resume
the lines after the checkpoint's step are dropped first (they describe steps that will be trained again), so the
file reads as one uninterrupted run.

wandb is imported only when used: it is an extra (`pip install wandb`). `check_wandb` runs before any file is
written: `online` without wandb or without an API key is a one-line error; `offline` without wandb is a warning and
the run goes on with JSON lines. The W&B run id is chosen when a run starts and saved in its checkpoints, so every
resume continues the same W&B run. Only rank 0 writes.

Progress: a tqdm bar on a terminal; where stderr is not one (a batch job's log) or with --no-progress, one plain
line per log interval instead, so a log file does not fill with carriage-return updates.
"""
from __future__ import annotations

import json
import logging
import math
import netrc
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from urllib.parse import urlparse

log = logging.getLogger("training")
WANDB_MODES = ("offline", "online", "disabled")
METRICS = "metrics.jsonl"


def check_wandb(mode: str, warn: bool = True) -> bool:
    """Whether W&B will be used; ValueError for an `online` run that could not start; `warn`: log a warning
    when `offline` finds no wandb."""
    if mode == "disabled":
        return False
    try:
        import wandb  # noqa: F401
    except ImportError:
        if mode == "online":
            raise ValueError("--wandb-mode online needs wandb, which is not installed: pip install wandb "
                             "(or use --wandb-mode offline or disabled)") from None
        if warn:
            log.warning("wandb is not installed: metrics go to metrics.jsonl only (pip install wandb for W&B)")
        return False
    if mode == "online" and not _wandb_key():
        raise ValueError("--wandb-mode online needs a W&B API key: run `wandb login` or set WANDB_API_KEY "
                         "(or use --wandb-mode offline and `wandb sync` later)")
    return True


def _wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def keep_until(path: Path, step: int) -> None:
    """Drop the lines of metrics.jsonl after `step` (and a torn last line), atomically."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a kill
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(f"{l}\n" for l in kept))
    os.replace(tmp, path)


class RunLog:
    """metrics.jsonl (+ W&B). `resume_step`: drop the lines after it (None: a new run, the file starts empty).
    `elapsed`: training seconds before this invocation (from the checkpoint)."""

    def __init__(self, out: Path, *, rank: int = 0, wandb_mode: str = "offline", config: dict | None = None,
                 project: str = "scarce-cxr", run_name: str | None = None, run_id: str | None = None,
                 resume_step: int | None = None, elapsed: float = 0.0):
        if wandb_mode not in WANDB_MODES:
            raise ValueError(f"unknown --wandb-mode {wandb_mode!r}: choose one of {', '.join(WANDB_MODES)}")
        self.active = rank == 0
        self.path = Path(out) / METRICS
        self.wandb, self.elapsed0, self.t0 = None, elapsed, time.monotonic()
        if not self.active:
            return
        if check_wandb(wandb_mode):
            import wandb
            try:
                self.wandb = wandb.init(project=project, name=run_name, id=run_id, resume="allow", mode=wandb_mode,
                                        dir=str(out), config=config or {})
            except Exception as e:  # wandb raises its own types (UsageError, CommError, ...)
                raise ValueError(f"W&B could not start ({type(e).__name__}: {str(e).splitlines()[0][:200]}): "
                                 "fix it, or use --wandb-mode offline or disabled") from None
        if resume_step is None:
            self.path.unlink(missing_ok=True)
        else:
            keep_until(self.path, resume_step)
        self.file = open(self.path, "a")

    def elapsed(self) -> float:
        return self.elapsed0 + time.monotonic() - self.t0

    def log(self, record: dict) -> None:
        if not self.active:
            return
        record = {**record, "time": datetime.now().astimezone().isoformat(timespec="milliseconds"),
                  "elapsed_s": round(self.elapsed(), 3)}
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self.file.write(json.dumps(clean) + "\n")
        self.file.flush()
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if v is not None and k != "time"},
                           step=record.get("step"))

    def close(self) -> None:
        if self.active:
            self.file.close()
            if self.wandb is not None:
                self.wandb.finish()


class Progress:
    """A tqdm bar on a terminal; otherwise (or with `plain`) one line per logged record, on stderr."""

    def __init__(self, total: int, initial: int, *, enabled: bool, plain: bool = False):
        from tqdm import tqdm
        self.total, self.enabled = total, enabled
        self.plain = enabled and (plain or not sys.stderr.isatty())
        self.bar = tqdm(total=total, initial=initial, disable=not enabled or self.plain, unit="step",
                        dynamic_ncols=True)

    def update(self) -> None:
        self.bar.update(1)

    def record(self, rec: dict) -> None:
        if self.plain:
            print(f"step {rec['step']}/{self.total} epoch {rec['epoch']} loss {rec['loss']:.4f} lr {rec['lr']:.4g} "
                  f"{rec['images_per_s']:.0f} img/s data-wait {rec['data_wait_frac']:.0%}", file=sys.stderr,
                  flush=True)
        else:
            self.bar.set_postfix(loss=f"{rec['loss']:.3f}", img_s=f"{rec['images_per_s']:.0f}")

    def close(self) -> None:
        self.bar.close()
