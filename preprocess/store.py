"""The store: one uint8 (N, S, S) .npy file + manifest.csv + store.json (+ rejects.csv). Its layout and its reader.

This module owns the store's layout; `preprocess.staging` writes it, everything else opens it with `open_store`.

Layout of a finished store (see DESIGN.md, "Contracts"):
    images.npy      uint8 (N, S, S), C order: np.load(..., mmap_mode="r") shares it through the page cache
    manifest.csv    one row per slot, in slot order: MANIFEST_FIELDS
    store.json      format version, N, size, recipe, measured mean/std, counts, command, settings, the manifest's
                    size and checksum, and one checksum per CHECKSUM_SLOTS slots of images.npy: written last
    rejects.csv     every input that could not be used, with the reason
    .lock           the writer's lock (`preprocess.lock`): one writer at a time

Checksums: a slot's digest is blake2b-128 of its S*S bytes; a chunk's checksum is blake2b-128 of the digests of
its CHECKSUM_SLOTS slots (raw 16-byte digests, concatenated). Workers digest each image as they write it, so a
finished store's checksums cost no second pass; `python -m preprocess.verify` recomputes them from the file.

Opening checks what it can in O(1): store.json's schema, the images.npy header and file size against store.json,
manifest.csv's size; the manifest's checksum, row count and slot order are checked when it is first read. A
failure is one line saying what is wrong and how to rebuild. Pixels are never read at open.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FORMAT_VERSION = 2
MANIFEST_FIELDS = ["index", "path", "dataset", "patient_id", "view", "labels", "split", "flags"]
REJECT_FIELDS = ["path", "reason"]
PARTIAL = ".partial"
CHECKSUM_SLOTS = 64
DIGEST_SIZE = 16
_NUMBER = (int, float)
SCHEMA = {"format_version": int, "n": int, "image_size": list, "dtype": str, "normalization": str, "resize": str,
          "fit": str, "mean": _NUMBER, "std": _NUMBER, "counts": dict, "dataset": str, "inputs": list,
          "command": str, "settings": dict, "manifest": dict, "checksums": dict}


def slot_digest(img) -> str:
    """blake2b-128 of one slot's bytes (a uint8 array or bytes), as hex."""
    return hashlib.blake2b(memoryview(np.ascontiguousarray(img)).cast("B"), digest_size=DIGEST_SIZE).hexdigest()


def chunk_checksums(digests: list[str], per: int = CHECKSUM_SLOTS) -> list[str]:
    """The per-chunk checksums of a store whose slots have these digests (in slot order)."""
    return [hashlib.blake2b(bytes.fromhex("".join(digests[i:i + per])), digest_size=DIGEST_SIZE).hexdigest()
            for i in range(0, len(digests), per)]


def manifest_text(rows) -> str:
    return csv_text(MANIFEST_FIELDS, rows)


def csv_text(fields: list[str], rows) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def text_checksum(text: str | bytes) -> str:
    data = text.encode() if isinstance(text, str) else text
    return hashlib.blake2b(data, digest_size=DIGEST_SIZE).hexdigest()


def read_npy_header(path: Path) -> tuple[np.dtype, tuple, bool, int]:
    """(dtype, shape, fortran_order, data offset) from a .npy header, without reading or mapping the data."""
    with open(path, "rb", buffering=0) as f:  # unbuffered: read the header's bytes, not 8 KiB of pixels
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
        return dtype, shape, fortran, f.tell()


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
        """Manifest rows, checked against store.json (read on first use, so opening stays O(1))."""
        if self._manifest is None:
            path = self.root / "manifest.csv"
            data = path.read_bytes()
            if text_checksum(data) != self.meta["manifest"]["blake2b"]:
                raise ValueError(f"{path} was changed after the store was built ({_manifest_fault(data, len(self))})"
                                 f": {_rebuild(self.meta)}")
            self._manifest = list(csv.DictReader(io.StringIO(data.decode())))
        return self._manifest


def _rebuild(meta) -> str:
    cmd = meta.get("command") if isinstance(meta, dict) else None
    if isinstance(cmd, str) and "preprocess" in cmd:
        return f"rebuild the store: {cmd}{'' if '--overwrite' in cmd else ' --overwrite'}"
    return "rebuild the store with `python -m preprocess ... --overwrite`"


def _manifest_fault(data: bytes, n: int) -> str:
    """What is wrong with a manifest.csv that does not match store.json, in a few words."""
    try:
        reader = csv.reader(io.StringIO(data.decode()))
        header = next(reader, None)
        rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as e:
        return f"not a readable CSV: {e}"
    if header != MANIFEST_FIELDS:
        return f"its header is {header}, not {MANIFEST_FIELDS}" if header else "it is empty"
    if len(rows) != n:
        return f"it has {len(rows)} rows, store.json says {n}"
    for i, row in enumerate(rows):
        if not row or row[0] != str(i):
            return f"row {i + 1} is not slot {i}: rows are out of slot order"
    return "its content differs from what store.json records"


def _check_schema(meta, meta_path: Path) -> None:
    def bad(what: str):
        raise ValueError(f"{meta_path} is damaged ({what}): {_rebuild(meta)}")
    if not isinstance(meta, dict):
        bad(f"it holds a {type(meta).__name__}, not an object")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{meta_path.parent} is store format {meta.get('format_version')}, this code reads "
                         f"{FORMAT_VERSION}: {_rebuild(meta)}")
    for key, kind in SCHEMA.items():
        if key not in meta:
            bad(f"no {key!r}")
        if not isinstance(meta[key], kind) or isinstance(meta[key], bool):
            bad(f"{key!r} is {type(meta[key]).__name__} {meta[key]!r:.40}")
    size, n = meta["image_size"], meta["n"]
    if n < 0 or len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
        bad(f"n {n} and image_size {size!r:.40} are not a count and two positive ints")
    if meta["dtype"] != "uint8":
        bad(f"dtype {meta['dtype']!r}, not 'uint8'")
    m, c = meta["manifest"], meta["checksums"]
    if not (isinstance(m.get("bytes"), int) and isinstance(m.get("blake2b"), str)):
        bad("'manifest' lacks its bytes and blake2b")
    per, chunks = c.get("slots_per_chunk"), c.get("chunks")
    if not (isinstance(per, int) and per > 0 and isinstance(chunks, list) and all(isinstance(x, str) for x in chunks)
            and len(chunks) == math.ceil(n / per)):
        bad(f"'checksums' does not hold ceil(n / slots_per_chunk) = ceil({n} / {per}) checksums")


def _regular(path: Path, what: str, meta) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: {_rebuild(meta)}")
    if not path.is_file():
        raise ValueError(f"{path} is not a file (a folder?), so {what} is unreadable: {_rebuild(meta)}")


def _check_images(path: Path, meta) -> int:
    n, (h, w) = meta["n"], meta["image_size"]
    _regular(path, "the images", meta)
    try:
        dtype, shape, fortran, offset = read_npy_header(path)
    except (ValueError, EOFError, OSError) as e:  # numpy: bad magic, a cut-short header
        raise ValueError(f"{path} is truncated or damaged ({e}): {_rebuild(meta)}") from None
    faults = []
    if dtype != np.uint8:
        faults.append(f"dtype {dtype}, store.json says uint8")
    if tuple(shape) != (n, h, w):
        faults.append(f"shape {tuple(shape)}, store.json says {(n, h, w)}")
    if fortran:
        faults.append("Fortran order, the store is C order")
    if faults:
        raise ValueError(f"{path} holds {'; '.join(faults)}: the store is damaged; {_rebuild(meta)}")
    actual, expected = os.path.getsize(path), offset + n * h * w
    if actual != expected:
        how = "is truncated or damaged" if actual < expected else "has extra bytes (damaged)"
        raise ValueError(f"{path} {how}: {actual} bytes, its header says {expected}: {_rebuild(meta)}")
    return offset


def open_store(path: str | Path) -> Store:
    """Open a finished store read-only, checking store.json, images.npy and manifest.csv; one-line errors."""
    root = Path(path)
    if root.name in ("store.json", "images.npy") and root.parent.is_dir():
        root = root.parent
    if not root.is_dir():
        raise FileNotFoundError(f"no store at {root}: build one with `python -m preprocess INPUT... --out {root}`")
    meta_path = root / "store.json"
    if not meta_path.exists():
        plan = root / PARTIAL / "plan.json"
        if plan.is_file():
            try:
                cmd = json.loads(plan.read_text()).get("command", "python -m preprocess ...")
            except (ValueError, OSError, AttributeError):
                cmd = "python -m preprocess ..."
            raise ValueError(f"the store at {root} is incomplete (preprocessing stopped before it finished): "
                             f"rerun the same command to resume it:\n  {cmd}")
        raise FileNotFoundError(f"{root} has no store.json, so it is not a store: build one with "
                                f"`python -m preprocess INPUT... --out {root}`")
    _regular(meta_path, "the store's description", None)
    try:
        meta = json.loads(meta_path.read_text())
    except (ValueError, OSError) as e:
        raise ValueError(f"{meta_path} is damaged ({e}): {_rebuild(None)}") from None
    _check_schema(meta, meta_path)
    images_path = root / "images.npy"
    offset = _check_images(images_path, meta)
    manifest_path = root / "manifest.csv"
    _regular(manifest_path, "the manifest", meta)
    if os.path.getsize(manifest_path) != meta["manifest"]["bytes"]:
        raise ValueError(f"{manifest_path} does not match store.json "
                         f"({_manifest_fault(manifest_path.read_bytes(), meta['n'])}): {_rebuild(meta)}")
    if meta["n"] == 0:
        raise ValueError(f"the store at {root} holds no images: {_rebuild(meta)}")
    n, (h, w) = meta["n"], meta["image_size"]
    images = np.memmap(images_path, dtype=np.uint8, mode="r", offset=offset, shape=(n, h, w))  # maps, reads nothing
    return Store(root=root, images=images, meta=meta)
