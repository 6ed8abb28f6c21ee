"""python -m preprocess INPUT... --out STORE: decode every image once into one uint8 memmap store.

Examples:
  python -m preprocess /data/nih/images --dataset nih --metadata /data/nih/Data_Entry_2017_v2020.csv --out stores/nih
  python -m preprocess /data/padchest --dataset padchest --metadata PADCHEST_chest_x_ray_images_labels_160K.csv.gz \\
      --normalize percentile --out stores/padchest
  python -m preprocess scans/ --out stores/mine --preview sheet.png

Interrupted (Ctrl-C, kill -9, a crash)? Run the same command again: it resumes, and the finished store is
byte-identical to one built in a single go. --overwrite starts afresh.
"""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import time
from pathlib import Path

from preprocess import build, inputs
from preprocess.pixels import FIT, NORMALIZE
from preprocess.store import PARTIAL, Staging, finalize, open_store

log = logging.getLogger("preprocess")
OUTPUT_NAMES = ("images.npy", "images.npy.tmp", "manifest.csv", "rejects.csv", "store.json")
PLAN_KEYS = ("inputs", "dataset", "metadata", "train_list", "test_list", "size", "normalize", "fit", "min_side")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m preprocess", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders (searched recursively)")
    p.add_argument("--out", required=True, type=Path, help="store folder to write (created if needed)")
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
    p.add_argument("--overwrite", action="store_true", help="delete an existing or partial store at --out first")
    p.add_argument("--preview", type=Path, metavar="FILE.png", help="also write a contact sheet of stored images")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (default: shown)")
    args = p.parse_args(argv)
    if args.dataset != "folder" and args.metadata is None:
        p.error(f"--dataset {args.dataset} needs --metadata CSV")
    if args.size < 8 or args.workers < 1 or args.min_side < 1:
        p.error("--size must be >= 8, --workers and --min-side >= 1")
    return args


def _settings(args, command: str) -> dict:
    def absolute(p):
        return str(p.resolve()) if p else None
    return {"inputs": [str(Path(i).resolve()) for i in args.inputs], "dataset": args.dataset,
            "metadata": absolute(args.metadata), "train_list": absolute(args.train_list),
            "test_list": absolute(args.test_list), "size": args.size, "normalize": args.normalize,
            "fit": args.fit, "min_side": args.min_side, "command": command}


def _changed(old: dict, new: dict) -> list[str]:
    return [k for k in PLAN_KEYS if old.get(k) != new[k]]


def _start_or_resume(args, staging: Staging, command: str) -> None:
    settings = _settings(args, command)
    if staging.exists():
        old = staging.settings()
        changed = _changed(old, settings)
        if changed:
            raise ValueError(f"{args.out} holds a partial store started with other settings ({', '.join(changed)}):"
                             f" rerun the original command to resume it, or add --overwrite to start afresh:\n"
                             f"  {old['command']}")
        print(f"resuming the partial store in {args.out}", file=sys.stderr)
        return
    root, rows, rejects, counts = inputs.plan(args.inputs, args.dataset, args.metadata, train_list=args.train_list,
                                              test_list=args.test_list, exclude=args.out)
    if counts:
        print(f"metadata: {counts['metadata_rows']} rows; {counts['matched']} files matched, "
              f"{counts['listed_missing']} listed but absent, {counts['unlisted']} present but not listed",
              file=sys.stderr)
    if not rows:
        raise ValueError(f"no usable input files under {', '.join(map(str, args.inputs))}"
                         + (f" ({len(rejects)} rejected: {rejects[0]['reason']}, ...)" if rejects else ""))
    settings.update(root=str(root), plan_rejects=rejects, metadata_counts=counts)
    staging.create(settings, rows)


def _remove(out: Path) -> None:
    import shutil
    for name in OUTPUT_NAMES:
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / PARTIAL, ignore_errors=True)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    command = shlex.join(["python", "-m", "preprocess", *(sys.argv[1:] if argv is None else argv)])
    out: Path = args.out
    staging = Staging(out)
    try:
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} is a file, not a folder: choose another --out")
        if args.overwrite:
            _remove(out)
        elif (out / "store.json").exists() and not staging.exists():
            store = open_store(out)
            changed = _changed(store.meta.get("settings", {}), _settings(args, command))
            if "settings" in store.meta and changed:
                raise ValueError(f"{out} already holds a store built with other settings ({', '.join(changed)}): "
                                 f"add --overwrite to rebuild it with these, or choose another --out")
            print(f"{out} already holds a finished store ({len(store)} images): nothing to do "
                  f"(add --overwrite to rebuild it)")
            return _preview(args, out)
        out.mkdir(parents=True, exist_ok=True)
        _start_or_resume(args, staging, command)
        t0 = time.perf_counter()
        processed, before = build.run(staging, args.workers, progress=not args.no_progress)
        seconds = time.perf_counter() - t0
        meta = finalize(out, command)
    except KeyboardInterrupt:
        print(f"\ninterrupted: what was finished is kept; run the same command again to resume:\n  {command}",
              file=sys.stderr)
        return 130
    except (ValueError, OSError) as e:  # bad flags or paths, a full disk: a message, never a traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    counts = meta["counts"]
    rate = processed / seconds if seconds > 0 else float("nan")
    print(f"store: {out}  written {counts['written']}, rejected {counts['rejected']}"
          f"{' (see rejects.csv)' if counts['rejected'] else ''}, constant {counts['constant']}; "
          f"{seconds:.1f} s for {processed} images ({rate:.1f} images/s, {args.workers} workers)"
          f"{f'; {before} were done before resuming' if before else ''}; "
          f"pixel mean {meta['mean']:.4f}, std {meta['std']:.4f}")
    if counts["written"] == 0:
        print("error: no image could be used; see rejects.csv", file=sys.stderr)
        return 1
    return _preview(args, out)


def _preview(args, out: Path) -> int:
    if args.preview:
        from preprocess.preview import contact_sheet
        contact_sheet(open_store(out), args.preview)
        print(f"preview: {args.preview}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
