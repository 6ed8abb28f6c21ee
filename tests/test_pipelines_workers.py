"""The CPU loaders' worker processes: freed with the loader, and forked safely from a process that uses OpenCV."""
from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap
import weakref
from pathlib import Path

import pytest

from tests.pipelines_fixtures import config_for, epoch_batches, loader, phantom_store  # noqa: F401 (fixture)

CPU_KINDS = ["dali-cpu", "opencv", "torchvision"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("kind", CPU_KINDS)
def test_a_dropped_loader_is_freed_at_once(phantom_store, kind):  # noqa: F811
    """No reference cycle through the loader: dropping it (mid-epoch too) frees it and stops its workers at once,
    not at some later garbage collection (where a DataLoader's shutdown can wait 5 s per worker)."""
    config = config_for(phantom_store, 64)
    gc.collect()
    gc.disable()
    try:
        ld = loader(phantom_store, kind, 4, config)
        epoch_batches(ld, 0)
        epoch_batches(ld, 1, limit=1)  # abandoned mid-epoch: work items still queued
        ref = weakref.ref(ld)
        del ld
        assert ref() is None, f"{kind}: the loader outlived its last reference (a reference cycle)"
    finally:
        gc.enable()


FORK_SCRIPT = textwrap.dedent("""
    import sys, time
    import cv2
    import numpy as np
    from pipelines import AugmentConfig, build_loader

    cv2.setNumThreads(4)
    big = np.random.default_rng(0).integers(0, 255, (2000, 2000), dtype=np.uint8)
    cv2.GaussianBlur(cv2.resize(big, (1500, 1500)), (23, 23), 2.0)  # OpenCV's thread pool runs in this process
    time.sleep(1.5)  # and its threads fall asleep, waiting for work
    for kind in ("opencv", "torchvision"):
        ld = build_loader(sys.argv[1], kind, 4, config=AugmentConfig(crop_size=64), num_workers=2, device="cpu")
        for epoch in (0, 1):
            ld.set_epoch(epoch)
            next(iter(ld))
        print(kind, "ok", cv2.getNumThreads(), flush=True)
""")


def _run(script: str, *args: str, timeout: int = 90) -> str:
    """Run `script` in a fresh Python (killed with its forked workers if it hangs); its stdout."""
    proc = subprocess.Popen([sys.executable, "-c", script, *args], cwd=ROOT, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the script and its forked workers
        proc.communicate()
        pytest.fail(f"the script hung for {timeout} s")
    assert proc.returncode == 0, err[-3000:]
    return out


def test_workers_fork_safely_after_opencv_ran_in_the_parent(phantom_store):  # noqa: F811
    """A worker forked from a process whose OpenCV thread pool exists must not hang (it did: setNumThreads(1) in the
    child waited forever on the parent's threads)."""
    out = _run(FORK_SCRIPT, str(phantom_store.root))
    assert out.split("\n")[:2] == ["opencv ok 4", "torchvision ok 4"], out


FIRST_BUILD_SCRIPT = textwrap.dedent("""
    import gc, sys, weakref
    from pipelines import AugmentConfig, build_loader

    def first_epoch_start(kind):  # the first CPU loader of the process: its build imports torchvision
        ld = build_loader(sys.argv[1], kind, 4, config=AugmentConfig(crop_size=64), num_workers=2, device="cpu")
        next(iter(ld))
        return weakref.ref(ld)

    gc.disable()  # what an unlucky moment for the collector looks like: no collection for a while
    print(sys.argv[2], "freed" if first_epoch_start(sys.argv[2])() is None else "alive")
""")


@pytest.mark.parametrize("kind", ["opencv", "torchvision"])
def test_the_first_loader_of_a_process_is_freed_with_its_frame(phantom_store, kind):  # noqa: F811
    """torchvision's import leaves cyclic garbage holding the importing frames; the loader built in such a frame
    must still go with it, not at a later collection that stops its workers in arbitrary order (5 s per worker)."""
    assert _run(FIRST_BUILD_SCRIPT, str(phantom_store.root), kind).strip() == f"{kind} freed"
