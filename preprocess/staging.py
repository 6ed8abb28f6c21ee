"""Writing a store: the `.partial/` staging area of a build (or a merge), and space reserved up front.

While a store is built, everything lives in `STORE/.partial/`: the plan (settings, candidate rows and the inputs'
fingerprints, fixed at the first run; plan.json is written last and is what makes a partial store resumable), a
staging `images.npy` with one slot per candidate whose blocks are allocated before any pixel is written (so a full
disk is an error at the start, never SIGBUS mid-run), and one small JSON record per finished chunk.
`preprocess.finalize` turns it into the finished store.
"""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np

from preprocess.store import PARTIAL, csv_text, read_npy_header

OUTPUT_NAMES = ("images.npy", "images.npy.tmp", "manifest.csv", "manifest.csv.tmp", "rejects.csv",
                "rejects.csv.tmp", "store.json.tmp")
SURROGATES = "surrogateescape"  # plan files keep non-UTF-8 file names exactly as the file system gave them


class NoSpace(ValueError):
    """Not enough free disk space for what is about to be written."""


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str, *, errors: str = "strict", sync_dir: bool = True) -> None:
    """Write a file so that it is either absent or complete: temporary file, fsync, rename, fsync the folder
    (`sync_dir=False`: the rename may be lost in a power cut, for files whose loss costs only redoing work)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8", errors=errors) as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    if sync_dir:
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


class Rows:
    """Plan rows held column by column, repeated values stored once: about a quarter of the memory of a list of
    dicts (the parent holds the plan of every image). `rows[i]` is row i as a dict; `rows.column(name)` a list."""

    SHARED = 4096  # a column with more distinct values than this keeps its values unshared

    def __init__(self, fields: list[str], records):
        self.fields = list(fields)
        self._cols: list[list[str]] = [[] for _ in self.fields]
        caches: list[dict | None] = [{} for _ in self.fields]
        for record in records:
            for k, v in enumerate(record):
                cache = caches[k]
                if cache is not None:
                    v = cache.setdefault(v, v)
                    if len(cache) > self.SHARED:
                        caches[k] = None
                self._cols[k].append(v)
        self._index = {name: k for k, name in enumerate(self.fields)}

    def __len__(self) -> int:
        return len(self._cols[0]) if self._cols else 0

    def __getitem__(self, i: int) -> dict:
        return {name: col[i] for name, col in zip(self.fields, self._cols)}

    def column(self, name: str) -> list[str]:
        return self._cols[self._index[name]]


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

    def rows(self) -> "Rows":
        with open(self.dir / "plan.csv", newline="", encoding="utf-8", errors=SURROGATES) as f:
            reader = csv.reader(f)
            return Rows(next(reader, []), reader)

    def fingerprints(self) -> list[dict]:
        return self._read_csv("inputs.csv") if (self.dir / "inputs.csv").exists() else []

    def done(self) -> dict[int, list[dict]]:
        """Finished chunks: start slot -> per-slot results. A record a power cut left unreadable is dropped (its
        chunk is simply done again)."""
        out = {}
        for p in self.done_dir.glob("chunk-*.json"):
            try:
                rec = json.loads(p.read_text())
                out[rec["start"]] = rec["results"]
            except (ValueError, KeyError, TypeError):
                p.unlink()
        return out

    def record(self, start: int, results: list[dict]) -> None:
        """Record a finished chunk (its pixels are on disk already). No folder fsync: a record lost in a power cut
        only means the chunk is done again."""
        write_atomic(self.done_dir / f"chunk-{start:09d}.json", json.dumps({"start": start, "results": results}),
                     sync_dir=False)

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


def remove_store(root: Path) -> None:
    """Delete a finished or partial store, store.json first (never a finished store with missing parts)."""
    (root / "store.json").unlink(missing_ok=True)
    Staging(root).remove()
    for name in OUTPUT_NAMES:
        (root / name).unlink(missing_ok=True)
