"""What the loader benchmark measures around a timed stage: CPU time of the process tree, private memory of the
loader's worker processes, and the machine it ran on."""
from __future__ import annotations

import os
import platform
import sys

import psutil
import torch


def _tree() -> list[psutil.Process]:
    me = psutil.Process()
    return [me, *me.children(recursive=True)]


def cpu_seconds() -> dict[int, float]:
    """user+system CPU seconds of this process and every live descendant (DataLoader workers, DALI threads)."""
    out = {}
    for p in _tree():
        try:
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
        except psutil.Error:
            pass
    return out


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two `cpu_seconds()` readings (processes started in between count from zero)."""
    return sum(v - before.get(pid, 0.0) for pid, v in after.items())


def private_dirty_mib(pids: list[int]) -> float:
    """Sum of Private_Dirty (memory a process owns alone: written anonymous pages, broken copy-on-write) over pids.

    Pages of the memmap read from the page cache are clean and shared through the cache, so they are not counted:
    this is the memory the workers really add.
    """
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                total += sum(int(line.split()[1]) for line in f if line.startswith("Private_Dirty:"))
        except OSError:
            pass
    return total / 1024


def worker_pids() -> list[int]:
    return [p.pid for p in psutil.Process().children(recursive=True)]


def machine(command: list[str]) -> dict:
    from training.gpu_monitor import gpu_info
    cpu_model = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu_model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu_model)
    except OSError:
        pass
    try:
        import nvidia.dali as dali
        dali_version = dali.__version__
    except ImportError:
        dali_version = None
    return {"cpu_model": cpu_model, "cpu_cores": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total
                                                                                   / 2**30, 1),
            **gpu_info(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(), "dali": dali_version, "python": sys.version.split()[0],
            "command": " ".join(command)}
