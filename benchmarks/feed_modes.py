"""python -m benchmarks.feed_modes: how to feed DALI from the memmap, measured side by side.

Two ways of getting a batch of slots from the store into a DALI pipeline (nothing else in the pipeline, so the feed
alone is timed):
  batch    one batch-mode callback gathers the whole batch with one fancy-index read of the memmap (what
           pipelines/dali_loader.py does)
  parallel parallel external source: a per-sample callback in `--py-workers` worker processes, each returning one
           slot, handed over through shared memory
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np


class _Sample:
    """Per-sample source for parallel external source (picklable: opens the memmap in the worker)."""

    def __init__(self, path: str, n: int, seed: int):
        self.path, self.perm = path, np.random.default_rng(seed).permutation(n)
        self.images = None

    def __call__(self, info):
        if self.images is None:
            self.images = np.load(self.path, mmap_mode="r")
        return np.asarray(self.images[self.perm[info.idx_in_epoch % len(self.perm)]])[..., None]  # endless


def _pipe(source, batch_size, parallel: bool, py_workers: int):
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=batch_size, num_threads=2, device_id=None, prefetch_queue_depth=2,
                  py_num_workers=py_workers, py_start_method="fork")
    def feed():
        return fn.external_source(source=source, batch=not parallel, parallel=parallel, layout="HWC",
                                  dtype=types.UINT8, ndim=3)

    return feed()


def measure(store, mode: str, batch_size: int, batches: int, py_workers: int) -> float:
    n = len(store)
    rng = np.random.default_rng(0)
    if mode == "batch":
        def source():
            return store.images[np.sort(rng.choice(n, batch_size, replace=False))][..., None]
        pipe = _pipe(source, batch_size, False, py_workers)
    else:
        pipe = _pipe(_Sample(str(store.root / "images.npy"), n, 0), batch_size, True, py_workers)
    pipe.build()
    for _ in range(3):
        pipe.run()
    t = time.perf_counter()
    for _ in range(batches):
        pipe.run()
    rate = batches * batch_size / (time.perf_counter() - t)
    del pipe
    return rate


def main(argv=None) -> int:
    from preprocess.store import open_store
    p = argparse.ArgumentParser(prog="python -m benchmarks.feed_modes", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", type=Path, help="store (default: the demo store, built if missing)")
    p.add_argument("--batch-size", type=int, default=256, help="batch size (default: 256)")
    p.add_argument("--batches", type=int, default=40, help="timed batches (default: 40)")
    p.add_argument("--py-workers", type=int, default=os.cpu_count(), help="parallel mode's worker processes "
                                                                          f"(default: all cores, {os.cpu_count()})")
    p.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = p.parse_args(argv)
    if args.store is None:
        from training.demo import ensure_store
        args.store = ensure_store()
    store = open_store(args.store)
    res = {m: measure(store, m, args.batch_size, args.batches, args.py_workers) for m in ("batch", "parallel")}
    res["batch_over_parallel"] = res["batch"] / res["parallel"]
    print(f"feed only, {len(store)} x {store.size}px store, batch {args.batch_size}: batch callback "
          f"{res['batch']:.0f} images/s, parallel external source ({args.py_workers} workers) {res['parallel']:.0f} "
          f"images/s, ratio {res['batch_over_parallel']:.2f}", file=sys.stderr)
    if args.out:
        args.out.write_text(json.dumps({**res, "batch_size": args.batch_size, "py_workers": args.py_workers,
                                        "store_images": len(store)}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
