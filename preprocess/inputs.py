"""Find the input files and join them with their metadata: the plan of a preprocessing run.

A plan row is one candidate file with its manifest fields. Files are found recursively under each input folder
(hidden files skipped) and sorted, so a plan, and with it the store's slot order, depends only on the inputs.
Paths in the manifest are relative to the inputs' common root. With `--dataset nih|padchest`, a file with no row
in the metadata CSV is rejected ("no row in the metadata CSV") and rows whose file is absent are counted; neither
stops the run.
"""
from __future__ import annotations

import os
from pathlib import Path

from preprocess.metadata import folder_record, load_metadata

PLAN_FIELDS = ["path", "file", "dataset", "patient_id", "view", "labels", "split"]


def discover(inputs: list[str | Path]) -> tuple[Path, list[Path]]:
    """(common root, sorted absolute file paths) for files and folders given on the command line."""
    paths = [Path(p).resolve() for p in inputs]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"input not found: {', '.join(missing)}")
    files: set[Path] = set()
    for p in paths:
        if p.is_file():
            files.add(p)
            continue
        for dirpath, dirnames, filenames in os.walk(p):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            files.update(Path(dirpath) / f for f in filenames if not f.startswith("."))
    roots = [str(p if p.is_dir() else p.parent) for p in paths]
    return Path(os.path.commonpath(roots)), sorted(files)


def plan(inputs: list[str | Path], dataset: str, metadata: str | Path | None = None, *,
         train_list=None, test_list=None, exclude: Path | None = None) -> tuple[Path, list[dict], list[dict], dict]:
    """Returns (root, rows, rejects, counts): candidate rows in slot order, files rejected before decoding, and
    metadata counts (rows in the CSV, files matched, listed but absent, present but not listed)."""
    root, files = discover(inputs)
    if exclude is not None:
        exclude = exclude.resolve()
        files = [f for f in files if exclude not in f.parents]
    meta = None if dataset == "folder" else load_metadata(dataset, metadata, train_list=train_list,
                                                          test_list=test_list)
    rows, rejects, matched = [], [], set()
    for f in files:
        rel = f.relative_to(root).as_posix()
        if meta is None:
            rec = folder_record(rel)
        else:
            rec = meta.get(f.name)
            if rec is None:
                rejects.append({"path": rel, "reason": f"no row in the {dataset} metadata CSV"})
                continue
            matched.add(f.name)
        rows.append({"path": rel, "file": str(f), "dataset": rec.dataset, "patient_id": rec.patient_id,
                     "view": rec.view, "labels": "|".join(rec.labels), "split": rec.split})
    counts = {}
    if meta is not None:
        counts = {"metadata_rows": len(meta), "matched": len(matched),
                  "listed_missing": len(meta) - len(matched), "unlisted": len(rejects)}
    return root, rows, rejects, counts
