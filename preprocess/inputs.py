"""Find the inputs and join them with their metadata: the plan of a preprocessing run, and the inputs' fingerprints.

A plan row is one candidate image with its manifest fields and where its bytes are (`kind`: a file, or a member of
a zip, a plain tar or a compressed tar; see `preprocess.archives`). Files are found recursively under each input
folder (hidden names skipped; a symlink to a folder is followed unless that folder was already read, which is
recorded as skipped), archives among them are listed, and everything is sorted, so a plan, and with it the
store's slot order, depends only on the inputs. Manifest paths are relative to the inputs' common root; an archive
member's is `ARCHIVE/member/path`. A name that is not valid UTF-8 is kept exactly for reading and shown with
backslash escapes in the manifest. With `--dataset nih|padchest`, an image with no row in the metadata CSV is
rejected, and so is every image whose basename another input shares (one CSV row cannot say which it labels).

The fingerprints (path, size, mtime of every file found) and the metadata files' checksums let a resume refuse
inputs that changed since the run started.
"""
from __future__ import annotations

import hashlib
import os
from collections import Counter
from pathlib import Path

from preprocess.archives import is_archive, list_members
from preprocess.metadata import folder_record, load_metadata

PLAN_FIELDS = ["path", "file", "kind", "position", "offset", "size", "crc", "dataset", "patient_id", "view",
               "labels", "split"]


def shown(name: str) -> str:
    """A file name as printable UTF-8: bytes that are not UTF-8 become backslash escapes (\\xe9)."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def discover(inputs: list[str | Path]) -> tuple[Path, list[Path], list[dict]]:
    """(common root, sorted absolute file paths, skipped folders) for the files and folders given."""
    paths = [Path(p).absolute() for p in inputs]
    missing = [shown(str(p)) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"input not found: {', '.join(missing)}")
    paths = [p.resolve() for p in paths]
    files: set[Path] = {p for p in paths if p.is_file()}
    folders = [p for p in paths if not p.is_file()]
    seen = {os.path.realpath(d): d for p in folders for d, _, _ in _walk(p, follow=False)}  # read without links
    skipped = []
    for p in folders:
        for dirpath, dirnames, filenames in _walk(p, follow=True):
            keep = []
            for d in dirnames:
                full = os.path.join(dirpath, d)
                real = os.path.realpath(full)
                if os.path.islink(full):
                    if real in seen:  # a folder read already, or a loop: read each folder once
                        skipped.append({"path": full, "reason": f"symlink to a folder already read as "
                                                                f"{shown(seen[real])}: skipped"})
                        continue
                    seen[real] = full
                keep.append(d)
            dirnames[:] = keep
            files.update(Path(dirpath) / f for f in filenames if not f.startswith("."))
    return common_root(paths), sorted(files), skipped


def common_root(paths: list[str | Path]) -> Path:
    """The folder that manifest paths are relative to: the common path of the input folders (a file's parent)."""
    resolved = [Path(p).resolve() for p in paths]
    return Path(os.path.commonpath([str(p if p.is_dir() else p.parent) for p in resolved]))


def _walk(top: Path, *, follow: bool):
    """os.walk, hidden folders pruned, subfolders in sorted order."""
    for dirpath, dirnames, filenames in os.walk(top, followlinks=follow):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        yield dirpath, dirnames, filenames


def found_files(inputs: list[str | Path], exclude: Path | None = None) -> tuple[Path, list[Path], list[dict]]:
    """`discover`, less anything under `exclude` (the store being written)."""
    root, files, skipped = discover(inputs)
    if exclude is not None:
        exclude = exclude.resolve()
        files = [f for f in files if exclude not in f.parents]
        skipped = [s for s in skipped if exclude not in Path(s["path"]).parents and Path(s["path"]) != exclude]
    return root, files, skipped


def fingerprints(files: list[Path]) -> list[dict]:
    """path, size and mtime (ns) of each file (-1 for one that cannot be stat'ed, e.g. a broken link)."""
    out = []
    for f in files:
        try:
            st = os.stat(f)
            out.append({"path": str(f), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
        except OSError:
            out.append({"path": str(f), "size": -1, "mtime_ns": -1})
    return out


def changes(old: list[dict], new: list[dict]) -> tuple[list[str], list[str], list[str]]:
    """(added, removed, changed) paths between two fingerprint lists."""
    a = {r["path"]: (int(r["size"]), int(r["mtime_ns"])) for r in old}
    b = {r["path"]: (int(r["size"]), int(r["mtime_ns"])) for r in new}
    return (sorted(set(b) - set(a)), sorted(set(a) - set(b)), sorted(p for p in a.keys() & b.keys() if a[p] != b[p]))


def file_checksum(path: str | Path | None) -> str | None:
    """blake2b of a metadata file's bytes (None for no file)."""
    if path is None:
        return None
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _listings(archives: list[Path], workers: int) -> list:
    if len(archives) > 1 and workers > 1:  # a compressed tar is listed by decompressing it: one per process
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(min(workers, len(archives)), mp_context=mp.get_context("fork")) as ex:
            return list(ex.map(list_members, archives))
    return [list_members(a) for a in archives]


def _candidates(root: Path, files: list[Path], workers: int) -> tuple[list[dict], list[dict]]:
    """Every candidate image as a plan row without metadata, and what was rejected while listing archives."""
    archives = [f for f in files if is_archive(f.name)]
    listings = dict(zip(archives, _listings(archives, workers)))
    out, rejects = [], []
    for f in files:
        rel = shown(f.relative_to(root).as_posix())
        if f not in listings:
            out.append({"path": rel, "file": str(f), "kind": "file", "position": -1, "offset": -1, "size": -1,
                        "crc": -1, "base": f.name})
            continue
        lst = listings[f]
        for pos, name, offset, size, crc in lst.members:
            out.append({"path": f"{rel}/{shown(name)}", "file": str(f), "kind": lst.kind, "position": pos,
                        "offset": offset, "size": size, "crc": crc, "base": name.rsplit("/", 1)[-1]})
        rejects += [{"path": f"{rel}/{shown(name)}", "reason": reason} for name, reason in lst.skipped]
        if lst.error:
            rejects.append({"path": rel, "reason": lst.error + ("; the members before it are kept"
                                                               if lst.members else "")})
    return out, rejects


def plan(inputs: list[str | Path], dataset: str, metadata: str | Path | None = None, *, train_list=None,
         test_list=None, exclude: Path | None = None, workers: int = 1, root: Path | None = None):
    """Returns (root, rows, rejects, counts, fingerprints): candidate rows in slot order, inputs rejected before
    decoding, metadata counts (rows in the CSV, images matched, listed but absent, present but not listed,
    duplicate basenames), and the fingerprint of every file found. Paths are relative to `root` (default: the
    inputs' common root; several plans of one store share the root of all their inputs)."""
    found_root, files, skipped = found_files(inputs, exclude)
    root = root or found_root
    meta = None if dataset == "folder" else load_metadata(dataset, metadata, train_list=train_list,
                                                          test_list=test_list)
    candidates, rejects = _candidates(root, files, workers)
    rejects = [{"path": shown(os.path.relpath(s["path"], root)), "reason": s["reason"]} for s in skipped] + rejects
    by_base = Counter(c["base"] for c in candidates) if meta is not None else Counter()
    sharing: dict[str, list[str]] = {}
    for c in candidates:
        if by_base[c["base"]] > 1:
            sharing.setdefault(c["base"], []).append(c["path"])
    rows, matched, duplicates = [], set(), 0
    for c in candidates:
        base = c.pop("base")
        if meta is None:
            rec = folder_record(c["path"])
        else:
            rec = meta.get(base)
            if rec is None:
                rejects.append({"path": c["path"], "reason": f"no row in the {dataset} metadata CSV"})
                continue
            matched.add(base)
            if base in sharing:
                others = [p for p in sharing[base] if p != c["path"]]
                duplicates += 1
                rejects.append({"path": c["path"], "reason": f"duplicate basename: {len(others)} other input(s) are "
                                f"named {shown(base)} ({', '.join(others[:3])}) and the metadata CSV has one row for "
                                f"them: keep one"})
                continue
        rows.append({**c, "dataset": rec.dataset, "patient_id": rec.patient_id, "view": rec.view,
                     "labels": "|".join(rec.labels), "split": rec.split})
    counts = {}
    if meta is not None:
        counts = {"metadata_rows": len(meta), "matched": len(matched), "listed_missing": len(meta) - len(matched),
                  "unlisted": sum(1 for r in rejects if r["reason"].startswith("no row in")),
                  "duplicate_basenames": duplicates}
    return root, rows, rejects, counts, fingerprints(files)
