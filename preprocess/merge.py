"""python -m preprocess.merge STORE... --out STORE: concatenate finished stores into one (several datasets, one store).

The stores must agree on the pixel recipe (image size, normalization, fit, resize): otherwise their pixels do not
mean the same and the merge is refused, naming what differs. Slots follow the order of the STORE arguments, each
store's slots in its own order; the manifest keeps every row's dataset, patient, view, labels and split, with
paths made relative to the stores' common input root (so merging a store of /data/nih with one of /data/padchest
gives the manifest one build over both folders would). Rejects are concatenated the same way. The pixel mean/std
are measured over the merged images, exactly (integer sums), and every chunk read is checked against its source
store's checksum, so damage is not copied silently.

The merge is built like a preprocessing run (`preprocess.staging`): one writer at a time, space reserved up front,
each copied chunk recorded, a crash-consistent finalize. Interrupted? Run the same command again: it resumes and
ends byte-identical. --overwrite starts afresh.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import os
import posixpath
import shlex
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from preprocess.lock import WriterLock
from preprocess.finalize import finalize
from preprocess.staging import Staging, remove_store
from preprocess.store import chunk_checksums, open_store, slot_digest

RECIPE = ("image_size", "normalization", "fit", "resize")
ROW_FIELDS = ("dataset", "patient_id", "view", "labels", "split", "flags")


def _relocate(path: str, root: str, common: str) -> str:
    prefix = os.path.relpath(root, common)
    return path if prefix == "." else posixpath.join(Path(prefix).as_posix(), path)


def _plan(paths: list[Path], command: str):
    """(settings, plan rows, stores) for merging the finished stores at `paths`; ValueError if they disagree."""
    stores = [open_store(p) for p in paths]
    first = stores[0].meta
    for p, s in zip(paths[1:], stores[1:]):
        for key in RECIPE:
            if s.meta[key] != first[key]:
                raise ValueError(f"the stores disagree on {key}: {paths[0]} has {first[key]}, {p} has "
                                 f"{s.meta[key]}: merge only stores built with the same --size, --normalize and "
                                 f"--fit (rebuild one of them)")
    roots = [s.meta["settings"].get("root") or str(s.root.resolve()) for s in stores]
    common = os.path.commonpath(roots)
    rows, rejects = [], []
    for s, root in zip(stores, roots):
        rows += [{"path": _relocate(r["path"], root, common), **{k: r[k] for k in ROW_FIELDS}} for r in s.manifest]
        with open(s.root / "rejects.csv", newline="") as f:
            rejects += [{"path": _relocate(r["path"], root, common), "reason": r["reason"]}
                        for r in csv.DictReader(f)]
    datasets = list(dict.fromkeys(s.meta["dataset"] for s in stores))
    settings = {"merge": [str(p.resolve()) for p in paths],
                "merge_blake2b": [hashlib.blake2b((s.root / "store.json").read_bytes(), digest_size=16).hexdigest()
                                  for s in stores],
                "size": first["image_size"][0], "normalize": first["normalization"], "fit": first["fit"],
                "resize": first["resize"], "dataset": "+".join(datasets), "inputs": [str(p) for p in paths],
                "root": common, "command": command, "plan_rejects": rejects, "metadata_counts": {}}
    return settings, rows, stores


def _copy(staging: Staging, stores, *, progress: bool) -> tuple[int, int]:
    """Copy every chunk not yet recorded; returns (slots copied now, slots done before)."""
    done = staging.done()
    before = sum(len(r) for r in done.values())
    flags = staging.rows().column("flags")
    size = stores[0].size
    offset, slot = staging.data_offset(), size * size
    bar = tqdm(total=len(flags), initial=before, unit="img", desc="merge", disable=not progress, dynamic_ncols=True)
    fd, copied, base = os.open(staging.images_path, os.O_RDWR), 0, 0
    try:
        for s in stores:
            per, expected = s.meta["checksums"]["slots_per_chunk"], s.meta["checksums"]["chunks"]
            for k in range(len(expected)):
                start, end = k * per, min((k + 1) * per, len(s))
                if base + start in done:
                    continue
                block = np.ascontiguousarray(s.images[start:end])
                digests = [slot_digest(img) for img in block]
                if chunk_checksums(digests, per)[0] != expected[k]:
                    raise ValueError(f"{s.root} is damaged at slots {start}-{end - 1} (their checksum differs): "
                                     f"check it with `python -m preprocess.verify {s.root}` and rebuild it")
                os.pwrite(fd, block.tobytes(), offset + (base + start) * slot)
                os.fdatasync(fd)
                flat = block.reshape(len(block), -1).astype(np.int64)
                staging.record(base + start, [
                    {"ok": True, "flags": flags[base + i], "sum": int(x.sum()), "sumsq": int(x @ x),
                     "digest": d} for i, (x, d) in enumerate(zip(flat, digests), start)])
                copied += end - start
                bar.update(end - start)
            base += len(s)
    finally:
        os.close(fd)
        bar.close()
    return copied, before


def _merge(args, command: str) -> tuple[dict, int | None, int]:
    out, staging = args.out, Staging(args.out)
    if args.overwrite:
        remove_store(out)
    settings, rows, stores = _plan(args.stores, command)
    keys = ("merge", "merge_blake2b")
    if (out / "store.json").exists():
        if staging.dir.exists():
            staging.remove()  # a finalize stopped after store.json: finished
        meta = open_store(out).meta
        if any(meta["settings"].get(k) != settings[k] for k in keys):
            raise ValueError(f"{out} already holds a store made from other stores (or they changed since): add "
                             f"--overwrite to merge these into it, or choose another --out")
        return meta, None, meta["n"]
    if staging.exists():
        old = staging.settings()
        if any(old.get(k) != settings[k] for k in keys):
            raise ValueError(f"{out} holds a partial merge of other stores (or they changed since it started): rerun"
                             f" the original command to resume it, or add --overwrite to start afresh:\n"
                             f"  {old['command']}")
        print(f"resuming the partial merge in {out}", file=sys.stderr)
    else:
        staging.create(settings, rows)
    copied, before = _copy(staging, stores, progress=not args.no_progress)
    return finalize(out, command), copied, before


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m preprocess.merge", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stores", nargs="+", type=Path, metavar="STORE", help="finished stores, in slot order")
    p.add_argument("--out", required=True, type=Path, help="the merged store's folder (created if needed)")
    p.add_argument("--overwrite", action="store_true", help="delete an existing or partial store at --out first")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (default: shown)")
    args = p.parse_args(argv)
    command = shlex.join(["python", "-m", "preprocess.merge", *(sys.argv[1:] if argv is None else argv)])
    if any(s.resolve() == args.out.resolve() for s in args.stores):
        p.error("--out must not be one of the stores being merged")
    lock = None
    try:
        if args.out.exists() and not args.out.is_dir():
            raise ValueError(f"--out {args.out} is a file, not a folder: choose another --out")
        lock = WriterLock(args.out).acquire()
        meta, copied, before = _merge(args, command)
    except KeyboardInterrupt:
        print(f"\ninterrupted: what was copied is kept; run the same command again to resume:\n  {command}",
              file=sys.stderr)
        return 130
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if lock is not None:
            lock.release()
    if copied is None:
        print(f"{args.out} already holds this merge ({meta['n']} images): nothing to do")
        return 0
    print(f"store: {args.out}  {meta['n']} images from {len(args.stores)} stores ({meta['dataset']}), "
          f"rejected {meta['counts']['rejected']}; copied {copied}"
          f"{f', {before} were done before resuming' if before else ''}; "
          f"pixel mean {meta['mean']:.4f}, std {meta['std']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
