"""Per-image metadata (patient, view, labels, split) from the NIH or PadChest label table, or none for a folder.

Formats and their quirks:

- NIH ChestX-ray14 ``Data_Entry_2017*.csv``: one row per image, keyed by ``Image Index`` (``00000001_000.png``).
  The header names ``OriginalImage[Width,Height]`` and ``OriginalImagePixelSpacing[x,y]`` hold unquoted commas,
  so a CSV reader sees 11 fields in every row (and 9 or 11 header names, depending on quoting): columns are found
  by name in the header and read by position, which is safe because the ones used come first. ``Finding Labels``
  is ``|``-joined; ``No Finding`` (always alone) maps to no labels. Some copies say ``Patient Sex`` for
  ``Patient Gender`` (not used here). The official split is two text files, one basename a line:
  ``train_val_list.txt`` and ``test_list.txt``; when not passed, files with those names next to the CSV are used.
- PadChest ``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv``: keyed by ``ImageID``; ``Labels`` is a
  Python-list string (``"['pleural effusion', ' nodule']"``) whose items often carry a leading space and may be
  ``''``; every label is stripped, ``''`` and ``normal`` are dropped. 103 cells read ``nan`` (no report): they
  map to no labels, as does a cell ``ast.literal_eval`` cannot read (counted, never raised). No split.
- ``folder``: no table; :func:`folder_record` derives a record from the file's path.

Either CSV may be plain or gzip-compressed (detected from its first bytes, not its name).
"""
from __future__ import annotations

import ast
import csv
import gzip
from dataclasses import dataclass
from pathlib import Path, PurePath

DATASETS = ("nih", "padchest", "folder")
NIH_COLUMNS = ("Image Index", "Finding Labels", "Patient ID", "View Position")
PADCHEST_COLUMNS = ("ImageID", "PatientID", "Projection", "Labels")
NIH_SPLIT_FILES = {"train": "train_val_list.txt", "test": "test_list.txt"}
_MISSING_CELLS = {"", "nan", "none", "null"}  # how an absent PadChest label list is spelled (pandas writes 'nan')


@dataclass(frozen=True)
class Record:
    """What is known about one image. ``labels`` is sorted, unique and stripped; ``()`` = no finding or unknown."""

    dataset: str  # "nih" | "padchest" | "folder"
    patient_id: str
    view: str  # NIH 'View Position' (PA/AP), PadChest 'Projection' (PA/L/AP/AP_horizontal/...), '' if unknown
    labels: tuple[str, ...]
    split: str  # "train" | "test" | ""


class Metadata(dict):
    """``{image basename: Record}`` plus ``stats``, counts for reporting.

    ``stats`` keys: ``rows`` (data rows read), ``duplicates`` (repeated basenames; the first is kept),
    ``malformed_rows`` (too short or no basename; skipped), ``unparseable_labels`` (PadChest cells that are not a
    list of strings; mapped to ``()``), ``missing_labels`` (empty / ``nan`` label cells), ``no_labels`` (records
    whose labels are ``()``), and ``split_train`` / ``split_test`` / ``split_none`` (records per split).
    """

    def __init__(self, dataset: str, stats: dict[str, int]):
        super().__init__()
        self.dataset = dataset
        self.stats = stats

    @property
    def records(self) -> dict[str, Record]:
        return self


def folder_record(relpath: str) -> Record:
    """The record of an image found in a plain folder: patient = file stem, nothing else known."""
    return Record(dataset="folder", patient_id=PurePath(_basename(relpath)).stem, view="", labels=(), split="")


def load_metadata(dataset: str, csv_path: str | Path | None, *, train_list: str | Path | None = None,
                  test_list: str | Path | None = None) -> Metadata:
    """Read ``dataset``'s label table into a :class:`Metadata` keyed by image basename.

    ``dataset="folder"`` reads nothing (``csv_path`` is ignored) and returns an empty mapping; use
    :func:`folder_record` per file. ``train_list`` / ``test_list`` (NIH only) are the official split files; see
    the module docstring for the formats. ``len()``, ``[name]`` and ``.get(name)`` work as on a dict.

    Raises:
        ValueError: unknown ``dataset``; no ``csv_path`` for nih/padchest; a CSV lacking the dataset's columns;
            an image listed in both split files; a file that is not a readable UTF-8 CSV (binary, truncated gzip).
        FileNotFoundError: ``csv_path`` or a split file does not exist.
    """
    name = str(dataset).strip().lower()
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}: expected one of {'|'.join(DATASETS)} (--dataset)")
    if name == "folder":
        return Metadata("folder", stats=_new_stats())
    if csv_path is None:
        raise ValueError(f"--dataset {name} needs its label CSV: pass --metadata PATH (or use --dataset folder)")
    path = Path(csv_path)
    if not path.is_file():
        raise FileNotFoundError(f"metadata CSV {str(path)!r} does not exist: fix --metadata "
                                f"(or use --dataset folder to go without labels)")
    try:
        if name == "nih":
            return _load_nih(path, _nih_splits(path, train_list, test_list))
        return _load_padchest(path)
    except (UnicodeDecodeError, EOFError, gzip.BadGzipFile, csv.Error) as e:
        raise ValueError(f"{path} is not a readable UTF-8 CSV (plain or .gz): {e}; check --metadata") from e


def _open_text(path: Path):
    """Open a plain or gzip CSV as text (UTF-8, a BOM tolerated), with the newline handling csv needs."""
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    if gz:
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def _check_columns(header: list[str], required: tuple[str, ...], dataset: str, path: Path) -> None:
    missing = [c for c in required if c not in header]
    if not missing:
        return
    other = "padchest" if dataset == "nih" else "nih"
    guess = NIH_COLUMNS if other == "nih" else PADCHEST_COLUMNS
    kind = "an NIH Data_Entry" if dataset == "nih" else "a PadChest labels"
    hint = f"did you mean --dataset {other}?" if all(c in header for c in guess) else "check --metadata."
    raise ValueError(f"{path}: missing column(s) {missing} (found {header[:12]}): this does not look like "
                     f"{kind} CSV; {hint}")


def _basename(name: str) -> str:
    return name.strip().replace("\\", "/").rsplit("/", 1)[-1]


def _new_stats() -> dict[str, int]:
    return {"rows": 0, "duplicates": 0, "malformed_rows": 0, "unparseable_labels": 0, "missing_labels": 0,
            "no_labels": 0}


def _add(out: Metadata, key: str, record: Record) -> None:
    if key in out:
        out.stats["duplicates"] += 1
        return
    out[key] = record
    out.stats["no_labels"] += not record.labels
    split_key = f"split_{record.split or 'none'}"
    out.stats[split_key] = out.stats.get(split_key, 0) + 1


def _read_list(path: Path, flag: str) -> set[str]:
    if not path.is_file():
        raise FileNotFoundError(f"split list {str(path)!r} does not exist: fix {flag}")
    with open(path, encoding="utf-8-sig") as f:
        return {_basename(line) for line in f if line.strip()}


def _nih_splits(csv_path: Path, train_list, test_list) -> dict[str, str]:
    """basename -> 'train' | 'test' from the NIH split files (given, else found next to the CSV)."""
    given = {"train": train_list, "test": test_list}
    names: dict[str, set[str]] = {}
    for split, fname in NIH_SPLIT_FILES.items():
        if given[split] is not None:
            names[split] = _read_list(Path(given[split]), f"--{split}-list")
        elif (csv_path.parent / fname).is_file():
            names[split] = _read_list(csv_path.parent / fname, f"--{split}-list")
    both = names.get("train", set()) & names.get("test", set())
    if both:
        raise ValueError(f"{len(both)} image(s) are in both the train and the test list (e.g. {min(both)}): "
                         f"check --train-list / --test-list")
    return {n: split for split, ns in names.items() for n in ns}


def _load_nih(path: Path, splits: dict[str, str]) -> Metadata:
    out = Metadata("nih", stats=_new_stats())
    with _open_text(path) as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        _check_columns(header, NIH_COLUMNS, "nih", path)
        i_img, i_lab, i_pat, i_view = (header.index(c) for c in NIH_COLUMNS)
        width = max(i_img, i_lab, i_pat, i_view) + 1
        for row in reader:
            if not row:
                continue
            out.stats["rows"] += 1
            key = _basename(row[i_img]) if len(row) >= width else ""
            if not key:
                out.stats["malformed_rows"] += 1
                continue
            labels = {s.strip() for s in row[i_lab].split("|")} - {"", "No Finding"}
            out.stats["missing_labels"] += not row[i_lab].strip()
            _add(out, key, Record("nih", row[i_pat].strip(), row[i_view].strip(), tuple(sorted(labels)),
                                  splits.get(key, "")))
    return out


def _padchest_labels(cell: str) -> tuple[tuple[str, ...], str | None]:
    """Labels of one cell, and the stats key to count it under (missing/unparseable) or None."""
    if cell.strip().lower() in _MISSING_CELLS:
        return (), "missing_labels"
    try:
        value = ast.literal_eval(cell.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        value = None
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        return (), "unparseable_labels"
    return tuple(sorted({v.strip() for v in value} - {"", "normal"})), None


def _load_padchest(path: Path) -> Metadata:
    out = Metadata("padchest", stats=_new_stats())
    with _open_text(path) as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        _check_columns(header, PADCHEST_COLUMNS, "padchest", path)
        reader.fieldnames = header
        parsed: dict[str, tuple[tuple[str, ...], str | None]] = {}
        for row in reader:
            out.stats["rows"] += 1
            key = _basename(row.get("ImageID") or "")
            if not key:
                out.stats["malformed_rows"] += 1
                continue
            cell = row.get("Labels") or ""
            if cell not in parsed:  # ~29k distinct cells in 161k rows: parse each once
                parsed[cell] = _padchest_labels(cell)
            labels, problem = parsed[cell]
            if problem:
                out.stats[problem] += 1
            _add(out, key, Record("padchest", (row.get("PatientID") or "").strip(),
                                  (row.get("Projection") or "").strip(), labels, ""))
    return out
