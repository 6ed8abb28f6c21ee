"""Finish a store: `finalize` turns a fully processed `.partial/` into the finished store, crash-consistently.

Its steps are each ordered and idempotent, so that a kill at any instant leaves either a resumable partial store
or a finished one, and rerunning finishes it without redoing any decoded chunk:
  1. images: no rejects -> the staging file is renamed into place; otherwise the kept slots are copied into
     `images.npy.tmp` (blocks allocated first), fsynced and renamed into place, then the staging file is deleted.
     Staging present = step 1 not done (redo it); staging absent = `images.npy` is final.
  2. manifest.csv, rejects.csv: written whole from the plan and the records (temporary file, fsync, rename).
  3. store.json, last: from here the store is finished.
  4. `.partial/` removed, plan.json first; a finished store with a leftover `.partial/` is cleaned up on the next run.
A build that stored nothing is `discard`ed instead: rejects.csv is kept (the reasons), nothing else.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from preprocess.staging import NoSpace, Staging, fsync_dir, reserve_npy, write_atomic
from preprocess.store import (CHECKSUM_SLOTS, FORMAT_VERSION, REJECT_FIELDS, chunk_checksums, csv_text,
                              manifest_text, read_npy_header, text_checksum)

COPY_BLOCK = 256  # slots copied at a time when compacting


def reject_rows(settings: dict, rows, results: list[dict]) -> list[dict]:
    return ([{"path": path, "reason": res["reason"]} for path, res in zip(rows.column("path"), results)
             if not res["ok"]] + settings.get("plan_rejects", []))


def discard(root: Path) -> list[dict]:
    """A build that stored nothing: write rejects.csv, remove `.partial/`, leave no store. Returns the rejects."""
    st = Staging(root)
    settings, rows = st.settings(), st.rows()
    rejects = reject_rows(settings, rows, st.results(len(rows)))
    write_atomic(Path(root) / "rejects.csv", csv_text(REJECT_FIELDS, rejects))
    st.remove()
    return rejects


def finalize(root: str | Path, command: str) -> dict:
    """Turn a fully processed `.partial/` into the finished store (see the module docstring); returns store.json."""
    root = Path(root)
    st = Staging(root)
    settings, rows = st.settings(), st.rows()
    results = st.results(len(rows))
    keep = [i for i, r in enumerate(results) if r["ok"]]
    size = settings["size"]
    _place_images(st, root / "images.npy", keep, len(rows), size)
    fields = ("path", "dataset", "patient_id", "view", "labels", "split")
    cols = [rows.column(f) for f in fields]
    manifest = ({"index": k, **{f: c[i] for f, c in zip(fields, cols)}, "flags": results[i].get("flags", "")}
                for k, i in enumerate(keep))  # a generator: the rows are written, never all held
    text = manifest_text(manifest)
    write_atomic(root / "manifest.csv", text)
    rejects = reject_rows(settings, rows, results)
    write_atomic(root / "rejects.csv", csv_text(REJECT_FIELDS, rejects))
    pixels = len(keep) * size * size
    s1 = sum(results[i]["sum"] for i in keep)
    s2 = sum(results[i]["sumsq"] for i in keep)
    mean = s1 / pixels / 255 if pixels else float("nan")
    var = s2 / pixels / 255**2 - mean**2 if pixels else float("nan")
    meta = {
        "format_version": FORMAT_VERSION, "n": len(keep), "image_size": [size, size], "dtype": "uint8",
        "normalization": settings["normalize"], "resize": settings.get("resize", "lanczos (PIL, float32)"),
        "fit": settings["fit"], "mean": mean, "std": math.sqrt(max(var, 0.0)) if pixels else float("nan"),
        "counts": {"written": len(keep), "rejected": len(rejects),
                   "constant": sum(1 for i in keep if results[i].get("flags") == "constant"),
                   **settings.get("metadata_counts", {})},
        "dataset": settings["dataset"], "inputs": settings["inputs"], "command": command,
        "settings": {k: v for k, v in settings.items() if k not in ("plan_rejects", "metadata_counts", "command")},
        "manifest": {"bytes": len(text.encode()), "blake2b": text_checksum(text)},
        "checksums": {"algorithm": "blake2b-128 of each slot; blake2b-128 of a chunk's slot digests",
                      "slots_per_chunk": CHECKSUM_SLOTS,
                      "chunks": chunk_checksums([results[i]["digest"] for i in keep])},
    }
    write_atomic(root / "store.json", json.dumps(meta, indent=1))
    st.remove()
    return meta


def _place_images(st: Staging, final: Path, keep: list[int], n_rows: int, size: int) -> None:
    """Step 1 of finalize: put the kept slots in `final`. Idempotent (see the module docstring)."""
    if not st.images_path.exists():
        if final.exists() and read_npy_header(final)[1] == (len(keep), size, size):
            return  # placed by a finalize that was stopped later on
        raise ValueError(f"{st.dir} has lost its staging images: rebuild with --overwrite")
    if len(keep) == n_rows:  # nothing rejected: the staging file is the store
        with open(st.images_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(st.images_path, final)
        fsync_dir(final.parent)
        return
    tmp = final.with_name("images.npy.tmp")
    try:
        dst_offset = reserve_npy(tmp, (len(keep), size, size), f"the {len(keep)} compacted images")
    except NoSpace as e:
        raise NoSpace(f"{e}; what was decoded is kept: rerun the same command to finish") from None
    slot = size * size
    src_offset = st.data_offset()
    src, dst = os.open(st.images_path, os.O_RDONLY), os.open(tmp, os.O_RDWR)
    try:
        k = 0
        while k < len(keep):  # copy runs of consecutive kept slots, COPY_BLOCK at most at a time
            j = k + 1
            while j < len(keep) and j - k < COPY_BLOCK and keep[j] == keep[j - 1] + 1:
                j += 1
            data = os.pread(src, (j - k) * slot, src_offset + keep[k] * slot)
            os.pwrite(dst, data, dst_offset + k * slot)
            k = j
        os.fsync(dst)
    finally:
        os.close(src)
        os.close(dst)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    st.images_path.unlink()
