"""python -m preprocess INPUT... --out STORE: decode every image once into one uint8 memmap store.

Examples:
  python -m preprocess /data/nih/images_*.tar.gz --dataset nih --metadata /data/nih/Data_Entry_2017_v2020.csv \\
      --out stores/nih                                           # the archives as downloaded, never extracted
  python -m preprocess /data/padchest --dataset padchest --metadata PADCHEST_chest_x_ray_images_labels_160K.csv.gz \\
      --normalize percentile --out stores/padchest               # a folder of PNGs, or of the 0.zip ... 54.zip
  python -m preprocess /data/nih/images_*.tar.gz --dataset nih --metadata Data_Entry_2017_v2020.csv \\
      --and /data/padchest/*.zip --dataset padchest --metadata PADCHEST_...csv.gz --out stores/cxr  # both in one
  python -m preprocess scans/ --out stores/mine --preview sheet.png

Interrupted (Ctrl-C, kill -9, a crash)? Run the same command again: it resumes, and the finished store is
byte-identical to one built in a single go; a resume whose inputs changed refuses and says what changed.
--overwrite starts afresh. One run at a time per --out (a second one is refused, naming the first one's pid).
Check a store's pixels against its checksums with `python -m preprocess.verify STORE`; concatenate finished stores
with `python -m preprocess.merge`.
"""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import time
from pathlib import Path

from preprocess import build
from preprocess.lock import WriterLock
from preprocess.pixels import FIT, NORMALIZE
from preprocess.resume import EmptyRun, check_finished, empty_message, start_or_resume
from preprocess.finalize import discard, finalize
from preprocess.staging import Staging, remove_store
from preprocess.store import open_store
from preprocess.workers import WorkerDied, WorkerPool

log = logging.getLogger("preprocess")


GROUP_FLAGS = ("inputs", "dataset", "metadata", "train_list", "test_list")
AND = "--and"


def _parser(required: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m preprocess", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files, archives (.tar, .tar.gz/.tgz, .zip: read in place, never extracted) or "
                        "folders of either (searched recursively). `--and INPUT... --dataset D --metadata CSV` "
                        "adds another group of inputs with its own metadata to the same store")
    p.add_argument("--out", required=required, type=Path, help="store folder to write (created if needed)")
    p.add_argument("--dataset", choices=("nih", "padchest", "folder"), default="folder",
                   help="metadata format (default: folder, i.e. no CSV: patient id = file stem, no labels)")
    p.add_argument("--metadata", type=Path, help="metadata CSV (.csv or .csv.gz); required for nih and padchest")
    p.add_argument("--train-list", type=Path, help="NIH train_val_list.txt (default: next to --metadata if there)")
    p.add_argument("--test-list", type=Path, help="NIH test_list.txt (default: next to --metadata if there)")
    p.add_argument("--size", type=int, default=256, help="stored image side in pixels (default: 256)")
    p.add_argument("--normalize", choices=NORMALIZE, default="minmax",
                   help="per-image normalization on the raw values (default: minmax; percentile clips to 0.5/99.5)")
    p.add_argument("--fit", choices=FIT, default="stretch",
                   help="how a non-square image becomes square (default: stretch, as the seed)")
    p.add_argument("--min-side", type=int, default=32, help="reject images smaller than this (default: 32)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help=f"worker processes (default: all cores, here {os.cpu_count()})")
    p.add_argument("--archive-reading", choices=build.ARCHIVE_MODES, default="auto",
                   help="how compressed tars are read: per-archive (each worker streams whole archives), fan-out "
                        "(this process streams them and hands members to every worker), or auto: per-archive "
                        "while there are at least as many archives left as workers (default: auto)")
    p.add_argument("--overwrite", action="store_true", help="delete an existing or partial store at --out first")
    p.add_argument("--preview", type=Path, metavar="FILE.png", help="also write a contact sheet of stored images")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (default: shown)")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    """The flags; `args.groups` holds each input group's inputs, dataset, metadata and split lists (one group
    unless `--and` starts more); every other flag applies to the whole store and may be given in any group."""
    argv = list(sys.argv[1:] if argv is None else argv)
    segments = [[]]
    for token in argv:
        segments.append([]) if token == AND else segments[-1].append(token)
    p = _parser()
    if len(segments) == 1:
        args = p.parse_args(argv)
        args.groups = [argparse.Namespace(**{k: getattr(args, k) for k in GROUP_FLAGS})]
    else:
        loose, common, groups = _parser(required=False), {}, []
        defaults = vars(loose.parse_args(["x"]))
        for seg in segments:
            ns = vars(loose.parse_args(seg))
            groups.append(argparse.Namespace(**{k: ns.pop(k) for k in GROUP_FLAGS}))
            for k, v in ns.items():  # a flag of the whole store: the value given, in whichever group
                if v != defaults[k] and common.setdefault(k, v) != v:
                    p.error(f"--{k.replace('_', '-')} is given twice with different values")
        if "out" not in common:
            p.error("the following arguments are required: --out")
        args = argparse.Namespace(**{**defaults, **common, **vars(groups[0])}, groups=groups)
    for g in args.groups:
        if g.dataset != "folder" and g.metadata is None:
            p.error(f"--dataset {g.dataset} needs --metadata CSV")
    if args.size < 8 or args.workers < 1 or args.min_side < 1:
        p.error("--size must be >= 8, --workers and --min-side >= 1")
    return args


def _build(args, out: Path, command: str):
    """Start or resume, run, finalize. Returns (store.json, processed now, done before, seconds)."""
    staging = Staging(out)
    if args.overwrite:
        remove_store(out)
    elif (out / "store.json").exists():
        if staging.dir.exists():
            staging.remove()  # a finalize stopped after writing store.json: the store is finished
        store = open_store(out)
        check_finished(args, store.meta, command)
        return store.meta, None, len(store), 0.0
    with WorkerPool(args.workers) as pool:  # forked before the plan is loaded: workers stay small (workers.py)
        start_or_resume(args, staging, command)
        t0 = time.perf_counter()
        processed, before = build.run(staging, args.workers, progress=not args.no_progress,
                                      archive_mode=args.archive_reading, pool=pool)
        seconds = time.perf_counter() - t0
    if not any(r["ok"] for rs in staging.done().values() for r in rs):
        raise EmptyRun(empty_message(out, discard(out)))
    return finalize(out, command), processed, before, seconds


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    command = shlex.join(["python", "-m", "preprocess", *(sys.argv[1:] if argv is None else argv)])
    out: Path = args.out
    lock, created = None, not out.exists()
    try:
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} is a file, not a folder: choose another --out")
        lock = WriterLock(out).acquire()
        meta, processed, before, seconds = _build(args, out, command)
    except KeyboardInterrupt:
        print(f"\ninterrupted: what was finished is kept; run the same command again to resume:\n  {command}",
              file=sys.stderr)
        return 130
    except WorkerDied as e:
        print(f"error: {e}; what was finished is kept: run the same command again to resume", file=sys.stderr)
        return 1
    except EmptyRun as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as e:  # bad flags or paths, a full disk, a damaged store: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        _release(lock, out, created)
    if processed is None:
        print(f"{out} already holds a finished store ({meta['n']} images): nothing to do "
              f"(add --overwrite to rebuild it)")
        return _preview(args, out)
    counts = meta["counts"]
    rate = processed / seconds if seconds > 0 else float("nan")
    print(f"store: {out}  written {counts['written']}, rejected {counts['rejected']}"
          f"{' (see rejects.csv)' if counts['rejected'] else ''}, constant {counts['constant']}; "
          f"{seconds:.1f} s for {processed} images ({rate:.1f} images/s, {args.workers} workers)"
          f"{f'; {before} were done before resuming' if before else ''}; "
          f"pixel mean {meta['mean']:.4f}, std {meta['std']:.4f}")
    return _preview(args, out)


def _release(lock, out: Path, created: bool) -> None:
    """Drop the lock; where no store or partial store is left, remove the lock file (and a folder we made empty)."""
    if lock is None:
        return
    nothing = not (out / "store.json").exists() and not Staging(out).dir.exists()
    lock.release(remove=nothing)
    if nothing and created:
        try:
            out.rmdir()  # only if empty: a rejects.csv stays, for the reasons
        except OSError:
            pass


def _preview(args, out: Path) -> int:
    if args.preview:
        from preprocess.preview import contact_sheet
        contact_sheet(open_store(out), args.preview)
        print(f"preview: {args.preview}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
