"""Run a preprocessing plan: worker processes decode their chunk and write it straight into the staging images.

No pixels travel back to the parent: a worker returns per-slot results only (ok or the reject reason, the
constant flag, the sum and sum of squares the store's mean/std are measured from, and the slot's digest). The
parent records each finished chunk, so a rerun after Ctrl-C or kill -9 skips it. A chunk never spans two archives.

Work comes in three kinds of task:
  rows     a chunk of files, or of members of a zip / plain tar (random access): the worker reads and decodes them
  stream   a whole compressed tar, streamed front to back by one worker, members of recorded chunks read past and
           not decoded; one result per chunk (parallel across archives)
  bytes    a chunk of a compressed tar's members, already read: the parent streams the archives (one thread
           each, side by side: zlib lets go of the GIL) and hands member bytes to every worker (fan-out), for
           when there are fewer archives than workers
`archive_mode="auto"` streams per archive when there are at least as many compressed tars left as workers, and fans
out otherwise; `benchmarks.preprocess_archives` measures the two side by side.
"""
from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import numpy as np
from tqdm import tqdm

from preprocess.archives import READ_ERRORS, MemberReader, stream_members
from preprocess.decode import Rejected, decode_image
from preprocess.lock import close_inherited
from preprocess.pixels import to_uint8
from preprocess.staging import Staging
from preprocess.store import slot_digest
from preprocess.workers import WorkerPool

CHUNK = 32  # slots per work unit and per progress record
ARCHIVE_MODES = ("auto", "per-archive", "fan-out")
_STATE: dict = {}


def chunks(rows: list[dict]) -> list[tuple[int, int]]:
    """The plan's chunks: CHUNK slots at most, cut where the archive (or files -> archive) changes."""
    group = ["" if kind == "file" else file for kind, file in zip(rows.column("kind"), rows.column("file"))]
    out, start = [], 0
    for i in range(1, len(group) + 1):
        if i == len(group) or i - start == CHUNK or group[i] != group[start]:
            out.append((start, i))
            start = i
    return out


def process_one(file: str, settings: dict, data: bytes | None = None) -> tuple[np.ndarray | None, dict]:
    """Decode and convert one file (or its bytes): (uint8 image or None, result record)."""
    try:
        raw = decode_image(file, min_side=settings["min_side"], data=data)
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
                 "sumsq": int(flat @ flat), "digest": slot_digest(img)}


def _init_worker(staging_root: str, settings: dict) -> None:
    close_inherited()  # the parent's writer lock stays the parent's
    st = Staging(staging_root)
    _STATE.update(fd=os.open(st.images_path, os.O_RDWR), offset=st.data_offset(), settings=settings,
                  reader=MemberReader(), slot=settings["size"] ** 2)


def _store(slot: int, file: str, data: bytes | None, reason: str = "") -> dict:
    if reason:
        return {"ok": False, "reason": reason}
    img, res = process_one(file, _STATE["settings"], data)
    if img is not None:  # pwrite, not a memmap: an I/O error is an exception here, never SIGBUS
        os.pwrite(_STATE["fd"], img.tobytes(), _STATE["offset"] + slot * _STATE["slot"])
    return res


def _read(row: dict) -> tuple[bytes | None, str]:
    if row["kind"] == "file":
        return None, ""
    try:
        return _STATE["reader"].read(row["file"], row["kind"], int(row["position"]), int(row["offset"]),
                                     int(row["size"]), int(row["crc"])), ""
    except READ_ERRORS as e:
        return None, f"unreadable archive member: {' '.join(f'{type(e).__name__}: {e}'.split())[:200]}"


def _handle(task: tuple) -> Iterator[tuple[int, list[dict]]]:
    kind = task[0]
    if kind == "rows":
        _, start, rows = task
        results = []
        for i, row in enumerate(rows):
            data, reason = _read(row)
            results.append(_store(start + i, row["file"] if row["kind"] == "file" else row["path"], data, reason))
        os.fdatasync(_STATE["fd"])  # pixels on disk before the parent records the chunk
        yield start, results
    elif kind == "bytes":
        _, start, items = task
        results = [_store(slot, name, data, reason) for slot, name, data, reason in items]
        os.fdatasync(_STATE["fd"])
        yield start, results
    else:
        _, archive, spans, wanted, names = task
        yield from _per_chunk(spans, ((slot, names[slot], data, reason)
                                      for slot, data, reason in stream_members(archive, wanted)), decode=True)


def _per_chunk(spans, items, *, decode: bool) -> Iterator:
    """Group streamed (slot, name, data, reason) items into the chunks `spans`, in slot order whatever order the
    items come in; decode each item (a worker), or pack them into 'bytes' tasks (the parent)."""
    it = iter(spans)
    start, end = next(it, (None, None))
    got: dict[int, object] = {}
    for slot, name, data, reason in items:
        got[slot] = _store(slot, name, data, reason) if decode else (slot, name, data, reason)
        while start is not None and all(i in got for i in range(start, end)):
            chunk = [got.pop(i) for i in range(start, end)]
            if decode:
                os.fdatasync(_STATE["fd"])
                yield start, chunk
            else:
                yield ("bytes", start, chunk)
            start, end = next(it, (None, None))


def _stream_tasks(rows: list[dict], pending: list[tuple[int, int]]) -> dict[str, tuple]:
    """archive -> (its pending chunks, {member position: slot}, {slot: manifest path}) for the compressed tars
    with work left."""
    out: dict[str, tuple] = {}
    kind, file, position, path = (rows.column(k) for k in ("kind", "file", "position", "path"))
    for start, end in pending:
        if kind[start] == "stream":
            spans, wanted, names = out.setdefault(file[start], ([], {}, {}))
            spans.append((start, end))
            wanted.update((int(position[i]), i) for i in range(start, end))
            names.update((i, path[i]) for i in range(start, end))
    return out


def _sources(rows, pending, streams, fan_out: bool) -> list:
    """The task sources: the long streaming tasks first (so that file chunks fill in around them), the file and
    random-access chunks, and in fan-out mode one source per compressed tar, read in the parent side by side."""
    keys = ("path", "file", "kind", "position", "offset", "size", "crc")
    columns = [rows.column(k) for k in keys]
    chunked = (("rows", start, [dict(zip(keys, (c[i] for c in columns))) for i in range(start, end)])
               for start, end in pending if columns[2][start] != "stream")
    if not fan_out:
        return [itertools.chain((("stream", a, *task) for a, task in streams.items()), chunked)]

    def read(archive, spans, wanted, names):
        items = ((slot, names[slot], data, reason) for slot, data, reason in stream_members(archive, wanted))
        yield from _per_chunk(spans, items, decode=False)
    return [chunked] + [read(a, *task) for a, task in streams.items()]


def run(staging: Staging, workers: int, *, progress: bool = True, archive_mode: str = "auto",
        pool: WorkerPool | None = None) -> tuple[int, int]:
    """Process every chunk not yet recorded, in `pool` (forked early by the caller; default: a new one of
    `workers`). Returns (slots processed now, slots already done before).

    Raises KeyboardInterrupt after stopping the workers, WorkerDied if one dies; what was recorded stays."""
    rows, settings = staging.rows(), staging.settings()
    done = staging.done()
    pending = [c for c in chunks(rows) if c[0] not in done]
    before = sum(len(r) for r in done.values())
    if not pending:  # all decoded (a finalize may have moved the staging images already)
        return 0, before
    streams = _stream_tasks(rows, pending)
    fan_out = archive_mode == "fan-out" or (archive_mode == "auto" and workers > 1 and len(streams) < workers)
    bar = tqdm(total=len(rows), initial=before, unit="img", disable=not progress, desc="preprocess",
               smoothing=0.1, dynamic_ncols=True)
    processed, pool = 0, pool or WorkerPool(workers)
    try:
        for start, res in pool.run(_sources(rows, pending, streams, fan_out), _handle, init=_init_worker,
                                   init_args=(str(staging.root), settings)):
            staging.record(start, res)
            processed += len(res)
            bar.update(len(res))
    finally:
        bar.close()
        pool.close()
        if "fd" in _STATE:
            os.close(_STATE["fd"])
            _STATE["reader"].close()
        _STATE.clear()
    return processed, before
