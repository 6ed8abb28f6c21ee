"""The training loop: short on purpose, so that runs differ only by their SSL objective or their input pipeline.

Per step: the next pair of views from the loader, one TrainStep (training/step.py), the learning rate from the
schedule (linear warmup, then cosine decay to 0). The loss stays on the device: `.item()` runs only at a log line,
and a non-finite loss is noted on the device (the first such step) and acted on at the next log line or checkpoint,
which is then not written: the last checkpoint on disk stays the last good one.

Checkpoints: every --checkpoint-every steps, every --checkpoint-minutes of wall time, at the end, and when a
SIGTERM / SIGINT arrives (training/preempt.py: the step in progress is finished first, and every rank stops at
the same step).
"""
from __future__ import annotations

import math
import time

import torch

from training.logs import Progress, RunLog
from training.preempt import Agreement, next_batch


class NonFiniteLoss(RuntimeError):
    """args[0]: the first step (numbered from 1, as in the logs) whose loss was NaN or infinite."""


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warmup to `peak` over `warmup` steps, then cosine decay to 0 at `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class Meter:
    """Interval statistics for the log line: mean loss, images/s, fraction of wall time waiting for data."""

    def __init__(self, device, gpu):
        self.gpu, self.loss = gpu, torch.zeros((), device=device)
        self.reset()

    def reset(self):
        self.loss.zero_()
        self.n, self.images, self.wait, self.t0 = 0, 0, 0.0, time.perf_counter()
        if self.gpu:
            self.gpu.reset()

    def record(self, step, epoch, lr) -> dict:
        dt = time.perf_counter() - self.t0
        rec = {"step": step, "epoch": epoch, "loss": (self.loss / self.n).item(), "lr": lr,
               "images_per_s": self.images / dt, "data_wait_frac": self.wait / dt,
               "gpu_util": self._gpu_util()}
        self.reset()
        return rec

    def _gpu_util(self):
        """Mean NVML utilisation over the interval (one sample taken now if the interval was shorter than one)."""
        if not self.gpu:
            return None
        if not self.gpu.summary()["samples"]:
            self.gpu.sample_once()
        return self.gpu.summary()["gpu_util_mean"]


def train(args, d, loader, method, model, opt, peak, state: dict, log: RunLog, save, stop=None) -> dict:
    """The loop. `state`: step, epoch, batch (position in the epoch), total, warmup; `save(state)` writes a
    checkpoint; `stop`: a training.preempt.StopSignal. Runs to the total, for --stop-after steps in this
    invocation, or until a signal; then state["stopped_by"] is its number. Returns the final state."""
    from training.gpu_monitor import GpuMonitor
    from training.step import TrainStep
    total, cuda = state["total"], d.device.type == "cuda"
    end = min(total, state["step"] + args.stop_after) if args.stop_after else total
    train_step = TrainStep(method, model, opt, d.device)
    meter = Meter(d.device, GpuMonitor(device=d.device).start() if cuda else None)
    bad_step = torch.tensor(-1, device=d.device)  # first non-finite step, kept without a sync per step
    progress = Progress(total, state["step"], enabled=d.main, plain=args.no_progress)
    agree, every_s = Agreement(d.world_size, d.control), args.checkpoint_minutes * 60
    timer = time.monotonic()  # when the last time-based checkpoint was asked for
    while state["step"] < end and not state.get("stopped_by"):
        loader.set_epoch(state["epoch"], start_batch=state["batch"])
        batches = iter(loader)
        while state["step"] < end:
            t = time.perf_counter()
            views = next_batch(batches)
            meter.wait += time.perf_counter() - t
            if views is None:
                state.update(epoch=state["epoch"] + 1, batch=0)
                break
            step = state["step"]
            loss = train_step(views, step, total, lr_at(step, total, peak, state["warmup"]))
            bad_step = torch.where((bad_step < 0) & ~torch.isfinite(loss), step + 1, bad_step)  # numbered as in logs
            meter.loss += loss.float()
            meter.n, meter.images = meter.n + 1, meter.images + views[0].shape[0] * d.world_size
            state.update(step=step + 1, batch=state["batch"] + 1)
            progress.update()
            due = bool(every_s) and d.main and time.monotonic() - timer >= every_s
            timer = time.monotonic() if due else timer
            halt, due = agree(stop.signum or 0 if stop else 0, due)
            last = state["step"] == end or halt
            if state["step"] % args.log_every == 0 or last:
                _check_finite(bad_step)
                rec = meter.record(state["step"], state["epoch"], opt.param_groups[0]["lr"])
                log.log(rec)
                state.setdefault("losses", []).append(rec["loss"])
                progress.record(rec)
            if state["step"] % args.checkpoint_every == 0 or last or due:
                _check_finite(bad_step)
                save(state)
            if halt:
                state["stopped_by"] = halt
                break
    agree.close()
    progress.close()
    if meter.gpu:
        meter.gpu.close()
    return state


def _check_finite(bad_step: torch.Tensor) -> None:
    s = int(bad_step.item())
    if s >= 0:
        raise NonFiniteLoss(s)
