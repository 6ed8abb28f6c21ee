"""Labels, patient ids, views and splits round-trip from a synthetic NIH / PadChest label table into the manifest.

The expected values are read from the generated CSVs with the csv module here, independently of
preprocess.metadata (whose parsing of the real tables is covered by test_metadata.py).
"""
from __future__ import annotations

import ast
import csv
import re
from pathlib import Path

import numpy as np
from PIL import Image

from preprocess.synthetic import generate


def _nih_expected(csv_path: Path) -> dict[str, dict]:
    with open(csv_path, newline="") as f:
        rows = list(csv.reader(f))[1:]  # 11 values a row: read by position (the header has commas in names)
    return {r[0]: {"labels": "|".join(sorted(set(r[1].split("|")) - {"No Finding"})), "patient_id": r[3],
                   "view": r[6], "raw_labels": r[1]} for r in rows}


def _padchest_expected(csv_path: Path) -> dict[str, dict]:
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    out = {}
    for r in rows:
        labels = {s.strip() for s in ast.literal_eval(r["Labels"])} - {"", "normal"}
        out[r["ImageID"]] = {"labels": "|".join(sorted(labels)), "patient_id": r["PatientID"],
                             "view": r["Projection"], "raw_labels": r["Labels"]}
    return out


def test_nih_labels_round_trip(tmp_path, preprocess_cli, read_store):
    csv_path = generate(tmp_path / "nih", 40, "nih", size=64, workers=1)
    expected = _nih_expected(csv_path)
    names = sorted(expected)
    (tmp_path / "nih" / "test_list.txt").write_text("\n".join(names[::4]) + "\n")  # found next to the CSV
    (tmp_path / "nih" / "train_val_list.txt").write_text("\n".join(n for n in names if n not in names[::4]))
    rc, _, err = preprocess_cli(tmp_path / "nih" / "images", "--out", tmp_path / "store", "--dataset", "nih",
                                "--metadata", csv_path, "--size", "32", "--workers", "2")
    assert rc == 0, err
    s = read_store(tmp_path / "store")
    assert s.rejects == [] and len(s.manifest) == 40 == len(s.images)
    assert s.meta["counts"]["matched"] == 40 and s.meta["counts"]["listed_missing"] == 0
    assert [row["path"] for row in s.manifest] == names  # slot order = sorted paths
    no_finding = 0
    for row in s.manifest:
        want = expected[row["path"]]
        assert row["dataset"] == "nih"
        assert (row["labels"], row["patient_id"], row["view"]) == (want["labels"], want["patient_id"], want["view"])
        assert row["split"] == ("test" if row["path"] in names[::4] else "train")
        if want["raw_labels"] == "No Finding":
            no_finding += 1
            assert row["labels"] == ""
    assert no_finding >= 10 and any("|" in row["labels"] for row in s.manifest)
    assert {row["view"] for row in s.manifest} <= {"PA", "AP"}


def test_padchest_16bit_levels_and_labels_round_trip(tmp_path, preprocess_cli, read_store):
    csv_path = generate(tmp_path / "pc", 34, "padchest", size=256, workers=1)
    expected = _padchest_expected(csv_path)
    rc, _, err = preprocess_cli(tmp_path / "pc" / "images", "--out", tmp_path / "store", "--dataset", "padchest",
                                "--metadata", csv_path, "--workers", "2")
    assert rc == 0, err
    s = read_store(tmp_path / "store")
    assert s.rejects == [] and len(s.manifest) == 34 and s.images.shape == (34, 256, 256)
    assert any(re.search(r"'\s\w", e["raw_labels"]) for e in expected.values())  # the leading-space quirk
    assert any("''" in e["raw_labels"] for e in expected.values())  # and the stray ''
    for row in s.manifest:
        name = row["path"].rsplit("/", 1)[-1]
        want = expected[name]
        assert row["dataset"] == "padchest" and row["split"] == ""
        assert (row["labels"], row["patient_id"], row["view"]) == (want["labels"], want["patient_id"], want["view"])

    levels, naive = [], []
    for row in s.manifest:
        with Image.open(tmp_path / "pc" / "images" / row["path"]) as img:
            assert img.mode == "I;16"
            raw = np.asarray(img)
        assert raw.max() < 4096  # 12-bit values in a 16-bit container
        levels.append(len(np.unique(s.images[int(row["index"])])))
        naive.append(len(np.unique(raw // 256)))  # what an 8-bit-first route keeps
    assert np.median(levels) > 250, levels  # a few images have histogram gaps: fewer levels to keep
    assert max(naive) <= 16, naive
    assert all(ours >= 10 * kept for ours, kept in zip(levels, naive)), (levels, naive)
