"""Preemption: SIGTERM (SLURM, Kubernetes, torchrun passing on its own) and SIGINT (Ctrl-C) stop a run cleanly.

The handler only notes the signal; the loop finishes the step it is in, writes a checkpoint at that step and
returns, and the command exits 128 + the signal (143 for SIGTERM, 130 for SIGINT), so that a job script can tell
a preemption from a failure. A second Ctrl-C stops at once (KeyboardInterrupt, the last checkpoint kept).

A terminal's Ctrl-C and SLURM's SIGTERM reach every process of the job, loader workers included, and a worker
killed by them would take the step down with it: the main process decides, and stops its workers itself. Workers
are forked after the handler is installed and inherit it for SIGINT (there it does nothing); for SIGTERM torch
installs its own handler in each worker, which would kill it, so `next_batch` blocks SIGTERM while the loader
makes its workers: they start with it blocked (pending, harmless), and the main process gets it the moment it is
unblocked again.

Under torchrun the ranks must stop at the same step (a rank that leaves early hangs the others in their next
all-reduce). `Agreement` max-reduces each rank's [signal, checkpoint due] flags every step, asynchronously, and acts
on the result one step later: every rank acts on the same reduced flags at the same step, and no step waits for
the reduction.
"""
from __future__ import annotations

import os
import signal

import torch
import torch.distributed as dist

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignal:
    """Notes the first SIGTERM / SIGINT in `signum`; a second SIGINT raises KeyboardInterrupt."""

    def __init__(self):
        self.signum, self.pid, self.previous = None, os.getpid(), {}

    def __enter__(self):
        for s in SIGNALS:
            self.previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, h in self.previous.items():
            signal.signal(s, h)
        return False

    def _handle(self, signum, frame):
        if os.getpid() != self.pid:
            return  # a forked loader worker: keep working, the main process stops it
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: the user does not want to wait for the step
        self.signum = self.signum or signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""


def next_batch(batches):
    """next(batches, None) with SIGTERM blocked in this thread meanwhile (see the module docstring): a DataLoader
    forks its workers at its first batch, from this thread, and a forked process inherits the blocked mask."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        return next(batches, None)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class Agreement:
    """(signal, checkpoint) agreed by every rank, a step late (world size 1: at once, no communication). signal:
    the largest signal number any rank received (SIGTERM 15 outranks SIGINT 2), 0 for none."""

    def __init__(self, world_size: int, group=None):
        self.world, self.group, self.work, self.buf = world_size, group, None, None

    def __call__(self, signum: int, checkpoint: bool) -> tuple[int, bool]:
        if self.world == 1:
            return signum, checkpoint
        agreed = (0, False)
        if self.work is not None:
            self.work.wait()
            sig, ck = self.buf.tolist()
            agreed = (sig, bool(ck))
        self.buf = torch.tensor([int(signum), int(checkpoint)], dtype=torch.int32)
        self.work = dist.all_reduce(self.buf, op=dist.ReduceOp.MAX, group=self.group, async_op=True)
        return agreed

    def close(self) -> None:
        if self.work is not None:
            self.work.wait()
            self.work = None
