"""Run a preprocessing plan: worker processes decode their chunk and write it straight into the staging memmap.

No pixels travel back to the parent: a worker returns only per-slot results (ok or the reject reason, the
constant flag, and the sum and sum of squares the store's mean/std are measured from). The parent records each
finished chunk, so a rerun after Ctrl-C or kill -9 skips it. Workers die with the parent (PR_SET_PDEATHSIG), so a
killed run leaves no orphans writing behind a rerun's back.
"""
from __future__ import annotations

import ctypes
import multiprocessing as mp
import signal
import sys

import numpy as np
from tqdm import tqdm

from preprocess.decode import Rejected, decode_image
from preprocess.pixels import to_uint8
from preprocess.store import Staging

_STATE: dict = {}


def _init_worker(staging_root: str, rows: list[dict], settings: dict, in_child: bool) -> None:
    if in_child:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and terminates the pool
        if sys.platform.startswith("linux"):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    _STATE.update(images=Staging(staging_root).open_images(), rows=rows, settings=settings)


def process_one(file: str, settings: dict) -> tuple[np.ndarray | None, dict]:
    """Decode and convert one file: (uint8 image or None, result record)."""
    try:
        raw = decode_image(file, min_side=settings["min_side"])
        img, constant = to_uint8(raw, settings["size"], normalize_method=settings["normalize"],
                                 fit=settings["fit"])
    except Rejected as e:
        return None, {"ok": False, "reason": str(e)}
    except MemoryError:
        return None, {"ok": False, "reason": "out of memory while decoding (image too large)"}
    except Exception as e:  # a bad file must never stop a run: keep the reason, go on
        return None, {"ok": False, "reason": f"unexpected error: {type(e).__name__}: {e}"}
    flat = img.ravel().astype(np.int64)
    return img, {"ok": True, "flags": "constant" if constant else "", "sum": int(flat.sum()),
                 "sumsq": int(flat @ flat)}


def _process_chunk(span: tuple[int, int]) -> tuple[int, list[dict]]:
    start, end = span
    images, rows, settings = _STATE["images"], _STATE["rows"], _STATE["settings"]
    results = []
    for i in range(start, end):
        img, res = process_one(rows[i]["file"], settings)
        if img is not None:
            images[i] = img
        results.append(res)
    images.flush()  # pixels on disk before the parent records the chunk: a power cut cannot leave a recorded hole
    return start, results


def run(staging: Staging, workers: int, *, progress: bool = True) -> tuple[int, int]:
    """Process every chunk not yet recorded. Returns (slots processed now, slots already done before).

    Raises KeyboardInterrupt after stopping the workers; what was recorded stays recorded.
    """
    rows, settings = staging.rows(), staging.settings()
    done = staging.done()
    pending = [c for c in staging.chunks(len(rows)) if c[0] not in done]
    before = sum(len(r) for r in done.values())
    bar = tqdm(total=len(rows), initial=before, unit="img", disable=not progress, desc="preprocess",
               smoothing=0.1, dynamic_ncols=True)
    processed, pool = 0, None
    try:
        if workers <= 1 or len(pending) <= 1:
            _init_worker(str(staging.root), rows, settings, in_child=False)
            results = map(_process_chunk, pending)
        else:
            pool = mp.get_context("fork").Pool(workers, _init_worker, (str(staging.root), rows, settings, True))
            results = pool.imap_unordered(_process_chunk, pending)
        for start, res in results:
            staging.record(start, res)
            processed += len(res)
            bar.update(len(res))
        if pool is not None:
            pool.close()
            pool.join()
    except BaseException:
        if pool is not None:
            pool.terminate()
            pool.join()
        raise
    finally:
        bar.close()
        _STATE.clear()
    return processed, before

