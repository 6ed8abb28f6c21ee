"""Writing a store: the `.partial/` staging area of a build, space reserved up front, and a crash-consistent finalize.

While a store is built, everything lives in `STORE/.partial/`: the plan (settings, candidate rows and the inputs'
fingerprints, fixed at the first run; plan.json is written last and is what makes a partial store resumable), a
staging `images.npy` with one slot per candidate whose blocks are allocated before any pixel is written (so a full
disk is an error at the start, never SIGBUS mid-run), and one small JSON record per finished chunk.

`finalize` turns it into the finished store in steps that are each ordered and idempotent, so that a kill at any
instant leaves either a resumable partial store or a finished one, and rerunning finishes it without redoing any
decoded chunk:
  1. images: no rejects -> the staging file is renamed into place; otherwise the kept slots are copied into
     `images.npy.tmp` (blocks allocated first), fsynced and renamed into place, then the staging file is deleted.
     Staging present = step 1 not done (redo it); staging absent = `images.npy` is final.
  2. manifest.csv, rejects.csv: written whole from the plan and the records (temporary file, fsync, rename).
  3. store.json, last: from here the store is finished.
  4. `.partial/` removed, plan.json first; a finished store with a leftover `.partial/` is cleaned up on the next run.
"""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np

from preprocess.store import (CHECKSUM_SLOTS, FORMAT_VERSION, PARTIAL, REJECT_FIELDS, chunk_checksums, csv_text,
                              manifest_text, read_npy_header, text_checksum)

COPY_BLOCK = 256  # slots copied at a time when compacting
SURROGATES = "surrogateescape"  # plan files keep non-UTF-8 file names exactly as the file system gave them


class NoSpace(ValueError):
    """Not enough free disk space for what is about to be written."""


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str, *, errors: str = "strict") -> None:
    """Write a file so that it is either absent or complete: temporary file, fsync, rename, fsync the folder."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8", errors=errors) as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024


def reserve_npy(path: Path, shape: tuple[int, ...], what: str) -> int:
    """Create a uint8 .npy file of `shape` with all its blocks allocated; returns the data offset.

    Raises NoSpace (and leaves no file) if the file system cannot hold it."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": tuple(shape)})
        offset = f.tell()
    total = offset + math.prod(shape)
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, total)
        os.fsync(fd)
    except OSError as e:
        os.close(fd)
        fd = -1
        path.unlink(missing_ok=True)
        if e.errno not in (28, 122):  # ENOSPC, EDQUOT
            raise
        free = shutil.disk_usage(path.parent).free
        raise NoSpace(f"not enough free space for {what}: it needs {_human(total)}, {path.parent} has "
                      f"{_human(free)} free; free some space or choose another --out") from None
    finally:
        if fd >= 0:
            os.close(fd)
    return offset


class Staging:
    """The `.partial/` folder of a store being built: plan, staging images, chunk records."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.dir = self.root / PARTIAL
        self.images_path = self.dir / "images.npy"
        self.done_dir = self.dir / "done"
        self.plan_path = self.dir / "plan.json"

    def exists(self) -> bool:
        return self.plan_path.is_file()

    def create(self, settings: dict, rows: list[dict], fingerprints: list[dict] | None = None) -> None:
        """Start a build: staging images (space reserved), plan rows, fingerprints, then plan.json."""
        shutil.rmtree(self.dir, ignore_errors=True)  # leftovers of an older, unfinished attempt
        self.done_dir.mkdir(parents=True)
        size = settings["size"]
        try:
            reserve_npy(self.images_path, (max(len(rows), 1), size, size), f"the {len(rows)} staging images")
        except NoSpace:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise
        write_atomic(self.dir / "plan.csv", csv_text(list(rows[0].keys()) if rows else ["path"], rows),
                     errors=SURROGATES)
        write_atomic(self.dir / "inputs.csv", csv_text(["path", "size", "mtime_ns"], fingerprints or []),
                     errors=SURROGATES)
        write_atomic(self.plan_path, json.dumps(settings, indent=1))

    def settings(self) -> dict:
        return json.loads(self.plan_path.read_text())

    def _read_csv(self, name: str) -> list[dict]:
        with open(self.dir / name, newline="", encoding="utf-8", errors=SURROGATES) as f:
            return list(csv.DictReader(f))

    def rows(self) -> list[dict]:
        return self._read_csv("plan.csv")

    def fingerprints(self) -> list[dict]:
        return self._read_csv("inputs.csv") if (self.dir / "inputs.csv").exists() else []

    def done(self) -> dict[int, list[dict]]:
        """Finished chunks: start slot -> per-slot results."""
        out = {}
        for p in self.done_dir.glob("chunk-*.json"):
            rec = json.loads(p.read_text())
            out[rec["start"]] = rec["results"]
        return out

    def record(self, start: int, results: list[dict]) -> None:
        write_atomic(self.done_dir / f"chunk-{start:09d}.json", json.dumps({"start": start, "results": results}))

    def data_offset(self) -> int:
        return read_npy_header(self.images_path)[3]

    def results(self, n: int) -> list[dict]:
        done = self.done()
        results = [r for start in sorted(done) for r in done[start]]
        assert len(results) == n, "finalize called before every chunk was recorded"
        return results

    def remove(self) -> None:
        """Delete `.partial/`: plan.json first, so that a half-removed folder is never taken for a resumable one."""
        self.plan_path.unlink(missing_ok=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def reject_rows(settings: dict, rows: list[dict], results: list[dict]) -> list[dict]:
    return ([{"path": row["path"], "reason": res["reason"]} for row, res in zip(rows, results) if not res["ok"]]
            + settings.get("plan_rejects", []))


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
    manifest = [{"index": k, "path": rows[i]["path"], "dataset": rows[i]["dataset"],
                 "patient_id": rows[i]["patient_id"], "view": rows[i]["view"], "labels": rows[i]["labels"],
                 "split": rows[i]["split"], "flags": results[i].get("flags", "")} for k, i in enumerate(keep)]
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
