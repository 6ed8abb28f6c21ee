"""The store: one uint8 (N, S, S) .npy memmap + manifest.csv + store.json (+ rejects.csv). Writer and reader.

This module is the only owner of the store's layout; everything else opens it with `open_store`.

Layout of a finished store (see DESIGN.md, "Contracts"):
    images.npy      uint8 (N, S, S), C order: np.load(..., mmap_mode="r") shares it through the page cache
    manifest.csv    one row per slot, in slot order: MANIFEST_FIELDS
    store.json      format version, N, size, recipe, measured mean/std, counts, command, settings: written last
    rejects.csv     every input that could not be used, with the reason

While it is being built, everything lives in `STORE/.partial/`: the plan (settings and the candidate list, fixed at
the first run), a staging `images.npy` with one slot per candidate that worker processes write into directly, and
one small JSON record per finished chunk. A rerun of the same command skips the recorded chunks, so the finished
store is byte-identical whether or not the run was interrupted. `finalize` compacts the good slots into the final
`images.npy`, writes the CSVs, then `store.json`, then removes `.partial/`.
"""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1
MANIFEST_FIELDS = ["index", "path", "dataset", "patient_id", "view", "labels", "split", "flags"]
REJECT_FIELDS = ["path", "reason"]
PARTIAL = ".partial"
CHUNK = 32  # slots per work unit and per progress record
COPY_BLOCK = 1024  # slots copied at a time when compacting


def write_atomic(path: Path, text: str) -> None:
    """Write a file so that it is either absent or complete: temporary file, fsync, rename."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _csv_text(fields: list[str], rows: list[dict]) -> str:
    import io
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------------- writer
class Staging:
    """The `.partial/` folder of a store being built: plan, staging memmap, chunk records."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.dir = self.root / PARTIAL
        self.images_path = self.dir / "images.npy"
        self.done_dir = self.dir / "done"

    def exists(self) -> bool:
        return (self.dir / "plan.json").exists()

    def create(self, settings: dict, rows: list[dict]) -> None:
        """Start a build: save the plan (settings + candidate rows) and a zeroed staging memmap."""
        self.done_dir.mkdir(parents=True, exist_ok=True)
        size = settings["size"]
        arr = np.lib.format.open_memmap(self.images_path, mode="w+", dtype=np.uint8,
                                        shape=(max(len(rows), 1), size, size))
        del arr
        write_atomic(self.dir / "plan.csv", _csv_text(list(rows[0].keys()) if rows else ["path"], rows))
        write_atomic(self.dir / "plan.json", json.dumps(settings, indent=1))

    def settings(self) -> dict:
        return json.loads((self.dir / "plan.json").read_text())

    def rows(self) -> list[dict]:
        with open(self.dir / "plan.csv", newline="") as f:
            return list(csv.DictReader(f))

    def chunks(self, n: int) -> list[tuple[int, int]]:
        return [(s, min(s + CHUNK, n)) for s in range(0, n, CHUNK)]

    def done(self) -> dict[int, list[dict]]:
        """Finished chunks: start slot -> per-slot results."""
        out = {}
        for p in self.done_dir.glob("chunk-*.json"):
            rec = json.loads(p.read_text())
            out[rec["start"]] = rec["results"]
        return out

    def record(self, start: int, results: list[dict]) -> None:
        write_atomic(self.done_dir / f"chunk-{start:09d}.json", json.dumps({"start": start, "results": results}))

    def open_images(self) -> np.memmap:
        return np.load(self.images_path, mmap_mode="r+")


def finalize(root: str | Path, command: str) -> dict:
    """Turn a fully processed `.partial/` into the finished store; returns the store.json dict."""
    root = Path(root)
    st = Staging(root)
    settings, rows, done = st.settings(), st.rows(), st.done()
    results = [r for start in sorted(done) for r in done[start]]
    assert len(results) == len(rows), "finalize called before every chunk was recorded"
    keep = [i for i, r in enumerate(results) if r["ok"]]
    size = settings["size"]
    final = root / "images.npy"
    if st.images_path.exists():
        if len(keep) == len(rows) and rows:
            os.replace(st.images_path, final)  # nothing rejected: the staging array is the store
        else:
            _compact(st.images_path, final, keep, size)
    manifest, rejects = [], []
    for i, (row, res) in enumerate(zip(rows, results)):
        if res["ok"]:
            manifest.append({"index": len(manifest), "path": row["path"], "dataset": row["dataset"],
                             "patient_id": row["patient_id"], "view": row["view"], "labels": row["labels"],
                             "split": row["split"], "flags": res.get("flags", "")})
        else:
            rejects.append({"path": row["path"], "reason": res["reason"]})
    write_atomic(root / "manifest.csv", _csv_text(MANIFEST_FIELDS, manifest))
    write_atomic(root / "rejects.csv", _csv_text(REJECT_FIELDS, rejects + settings.get("plan_rejects", [])))
    pixels = len(keep) * size * size
    s1 = sum(results[i]["sum"] for i in keep)
    s2 = sum(results[i]["sumsq"] for i in keep)
    mean = s1 / pixels / 255 if pixels else float("nan")
    var = s2 / pixels / 255**2 - mean**2 if pixels else float("nan")
    meta = {
        "format_version": FORMAT_VERSION, "n": len(keep), "image_size": [size, size], "dtype": "uint8",
        "normalization": settings["normalize"], "resize": "lanczos (PIL, float32)", "fit": settings["fit"],
        "mean": mean, "std": math.sqrt(max(var, 0.0)) if pixels else float("nan"),
        "counts": {"written": len(keep), "rejected": len(rejects) + len(settings.get("plan_rejects", [])),
                   "constant": sum(1 for i in keep if results[i].get("flags") == "constant"),
                   **settings.get("metadata_counts", {})},
        "dataset": settings["dataset"], "inputs": settings["inputs"], "command": command,
        "settings": {k: v for k, v in settings.items() if k not in ("plan_rejects", "metadata_counts", "command")},
    }
    write_atomic(root / "store.json", json.dumps(meta, indent=1))
    shutil.rmtree(st.dir, ignore_errors=True)
    return meta


def _compact(src_path: Path, dst_path: Path, keep: list[int], size: int) -> None:
    src = np.load(src_path, mmap_mode="r")
    tmp = dst_path.with_name("images.npy.tmp")
    dst = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(keep), size, size))
    for b in range(0, len(keep), COPY_BLOCK):
        dst[b:b + COPY_BLOCK] = src[keep[b:b + COPY_BLOCK]]
    dst.flush()
    del dst
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, dst_path)


# ----------------------------------------------------------------------------------------------------- reader
@dataclass
class Store:
    """A finished store, opened read-only. `images` is a memmap: indexing it reads from the page cache."""

    root: Path
    images: np.ndarray
    meta: dict
    _manifest: list[dict] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def size(self) -> int:
        return self.images.shape[1]

    @property
    def mean(self) -> float:
        return float(self.meta["mean"])

    @property
    def std(self) -> float:
        return float(self.meta["std"])

    @property
    def manifest(self) -> list[dict]:
        """Manifest rows (read on first use, so opening a store stays O(1) whatever its size)."""
        if self._manifest is None:
            with open(self.root / "manifest.csv", newline="") as f:
                self._manifest = list(csv.DictReader(f))
        return self._manifest


def open_store(path: str | Path) -> Store:
    """Open a finished store read-only, checking images.npy against store.json; clear errors otherwise."""
    root = Path(path)
    if root.name in ("store.json", "images.npy"):
        root = root.parent
    if not root.is_dir():
        raise FileNotFoundError(f"no store at {root}: build one with `python -m preprocess INPUT... --out {root}`")
    meta_path = root / "store.json"
    if not meta_path.exists():
        if Staging(root).exists():
            cmd = Staging(root).settings().get("command", "python -m preprocess ...")
            raise ValueError(f"the store at {root} is incomplete (preprocessing stopped before it finished): "
                             f"rerun the same command to resume it:\n  {cmd}")
        raise FileNotFoundError(f"{root} has no store.json, so it is not a store: build one with "
                                f"`python -m preprocess INPUT... --out {root}`")
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError as e:
        raise ValueError(f"{meta_path} is damaged ({e}): rebuild the store with --overwrite") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{root} is store format {meta.get('format_version')}, this code reads {FORMAT_VERSION}: "
                         "rebuild it with `python -m preprocess ... --overwrite`")
    n, (h, w) = meta["n"], meta["image_size"]
    images_path = root / "images.npy"
    try:
        images = np.load(images_path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"{images_path} is missing: rebuild the store with --overwrite") from None
    except (ValueError, EOFError) as e:  # numpy: "mmap length is greater than file size", "No data left in file"
        raise ValueError(f"{images_path} is truncated or damaged ({e}): rebuild the store with --overwrite") from None
    if images.dtype != np.uint8 or images.shape != (n, h, w) or not images.flags.c_contiguous:
        raise ValueError(f"{images_path} holds {images.dtype} {images.shape}, but store.json says uint8 "
                         f"{(n, h, w)}: the store is damaged; rebuild it with --overwrite")
    return Store(root=root, images=images, meta=meta)
