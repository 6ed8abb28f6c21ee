"""Run logging: JSON lines always (metrics.jsonl), Weights & Biases when asked (offline by default).

wandb is imported only when used: it is an extra (`pip install '.[wandb]'`). In `offline` mode a missing wandb is a
warning and the run goes on with JSON lines; `online` without it is an error at start, not after hours of training.
Only rank 0 writes.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

log = logging.getLogger("training")
WANDB_MODES = ("offline", "online", "disabled")


class RunLog:
    def __init__(self, out: Path, *, rank: int = 0, wandb_mode: str = "offline", config: dict | None = None,
                 project: str = "scarce-cxr"):
        if wandb_mode not in WANDB_MODES:
            raise ValueError(f"unknown --wandb-mode {wandb_mode!r}: choose one of {', '.join(WANDB_MODES)}")
        self.active = rank == 0
        self.path = Path(out) / "metrics.jsonl"
        self.wandb = None
        if not self.active:
            return
        self.file = open(self.path, "a")
        if wandb_mode != "disabled":
            try:
                import wandb
            except ImportError:
                if wandb_mode == "online":
                    raise ValueError("--wandb-mode online needs wandb: pip install '.[wandb]' "
                                     "(or use --wandb-mode offline/disabled)") from None
                log.warning("wandb is not installed: metrics go to %s only (pip install '.[wandb]' for W&B)",
                            self.path)
                return
            self.wandb = wandb.init(project=project, mode=wandb_mode, dir=str(out), config=config or {},
                                    resume="allow")

    def log(self, record: dict) -> None:
        if not self.active:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self.file.write(json.dumps(clean) + "\n")
        self.file.flush()
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if v is not None}, step=record.get("step"))

    def close(self) -> None:
        if self.active:
            self.file.close()
            if self.wandb is not None:
                self.wandb.finish()
