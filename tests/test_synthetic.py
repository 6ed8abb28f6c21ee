"""Tests for preprocess.synthetic: phantom content, the NIH/PadChest layouts, determinism, the CLI."""
from __future__ import annotations

import ast
import csv
import gzip
import math
import re
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from preprocess.synthetic import NIH_HEADER, PADCHEST_HEADER, generate, main, phantom

SHARED_META = Path(__file__).resolve().parents[2] / "shared" / "data" / "metadata"
LABEL_SETS = [("No Finding",), ("Nodule",), ("Fibrosis",), ("Nodule", "Fibrosis")]


def _gauss(img: np.ndarray, sigma: float) -> np.ndarray:
    r = int(3 * sigma)
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    p = sliding_window_view(np.pad(img, r, mode="edge"), k.size, axis=0) @ k
    return sliding_window_view(p, k.size, axis=1) @ k


def _bright_blobs(img: np.ndarray, sigma: float = 3.0, threshold: float = 3e-3) -> int:
    """Bright round blobs: local maxima of the scale-normalised determinant of the Hessian (ridges such as ribs
    and streaks give ~0, since one of their curvatures vanishes)."""
    g = _gauss(img.astype(np.float64), sigma)
    gy, gx = np.gradient(g)
    gyy, gyx = np.gradient(gy)
    gxy, gxx = np.gradient(gx)
    doh = sigma**4 * (gxx * gyy - gxy * gyx)
    peak = sliding_window_view(np.pad(doh, 3, constant_values=-1), (7, 7)).max(axis=(-1, -2))
    return int(((doh == peak) & (doh > threshold) & (gxx + gyy < 0)).sum())


def _read_nih(csv_path: Path) -> tuple[str, list[list[str]]]:
    with open(csv_path, newline="") as f:
        header = f.readline().rstrip("\n")
        return header, list(csv.reader(f))


def _read_padchest(csv_path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(csv_path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], [dict(zip(rows[0], r, strict=True)) for r in rows[1:]]


# --- phantom ---------------------------------------------------------------------------------------------------

def test_phantom_shape_range_and_global_variety():
    imgs = [phantom(np.random.default_rng([3, i]), (96, 80), ("No Finding",)) for i in range(8)]
    for img in imgs:
        assert img.shape == (96, 80) and img.dtype == np.float32
        assert 0.0 <= img.min() and img.max() <= 1.0 and img.std() > 0.05
    means = [float(img.mean()) for img in imgs]
    assert max(means) - min(means) > 0.08, means  # gain / offset / gamma differ from image to image
    assert not np.array_equal(imgs[0], imgs[1])


def test_phantom_is_vectorised():
    """Whole-array NumPy work, never a loop over pixels. Timed side by side (best of 3 each, so a busy machine
    slows both alike) against a Python loop doing one exp per pixel over 100x100: a 1024x1024 phantom costs about
    30 such loops here, that is less than one exp per pixel; a phantom drawn pixel by pixel (dozens of operations
    each, 100x the pixels) would cost thousands."""
    def per_pixel_loop():
        img = np.zeros((100, 100), np.float32)
        for y in range(100):
            for x in range(100):
                img[y, x] = math.exp(-((x - 50) ** 2 + (y - 50) ** 2) / 400.0)

    def best(fn) -> float:
        times = []
        for _ in range(3):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    ratio = best(lambda: phantom(np.random.default_rng(0), (1024, 1024), ("Nodule", "Fibrosis"))) / best(per_pixel_loop)
    assert ratio < 100, f"a 1024x1024 phantom took {ratio:.0f}x a one-exp-per-pixel Python loop over 100x100"


def test_nodules_are_small_bright_blobs():
    normal = [_bright_blobs(phantom(np.random.default_rng([7, s]), (256, 256), ("No Finding",))) for s in range(6)]
    nodule = [_bright_blobs(phantom(np.random.default_rng([7, s]), (256, 256), ("Nodule",))) for s in range(6)]
    fibrosis = [_bright_blobs(phantom(np.random.default_rng([7, s]), (256, 256), ("Fibrosis",))) for s in range(6)]
    assert all(b > a for a, b in zip(normal, nodule)), (normal, nodule)
    assert sum(nodule) >= sum(normal) + 3 * len(nodule), (normal, nodule)
    assert sum(fibrosis) <= sum(normal) + len(fibrosis), (normal, fibrosis)  # streaks are lines, not blobs


def test_findings_are_drawn_on_top_of_the_same_anatomy():
    size = (200, 186)
    base = phantom(np.random.default_rng(11), size, ("No Finding",))
    nod = phantom(np.random.default_rng(11), size, ("Nodule",)) - base
    fib = phantom(np.random.default_rng(11), size, ("Fibrosis",)) - base
    assert nod.min() >= 0 and 0 < (nod > 0.02).mean() < 0.05  # a few small bright spots, nothing else moved
    assert fib.min() >= 0 and fib.sum() > 0
    assert not fib[: int(0.35 * size[0])].any()  # streaks only in the lower lungs
    assert fib[int(0.5 * size[0]):].sum() > fib[: int(0.5 * size[0])].sum()


# --- NIH layout -------------------------------------------------------------------------------------------------

def test_nih_layout(tmp_path):
    csv_path = generate(tmp_path, 20, "nih", seed=1, size=128, workers=1)
    assert csv_path == tmp_path / "Data_Entry_2017.csv"
    header, rows = _read_nih(csv_path)
    assert header == NIH_HEADER and len(next(csv.reader([header]))) == 11  # 9 names, two holding commas
    assert len(rows) == 20 and all(len(r) == 11 for r in rows)
    mix = Counter(tuple(r[1].split("|")) for r in rows)
    assert mix == {("No Finding",): 8, ("Nodule",): 7, ("Fibrosis",): 3, ("Nodule", "Fibrosis"): 2}
    per_patient = defaultdict(list)
    for name, _, follow, patient, age, sex, view, *_ in rows:
        assert name == f"{int(patient):08d}_{int(follow):03d}.png"
        assert view in {"PA", "AP"} and sex in {"M", "F"} and 18 <= int(age) <= 100
        per_patient[patient].append(int(follow))
        with Image.open(tmp_path / "images" / name) as im:
            assert im.mode == "L" and im.size == (128, 128)
    assert all(f == list(range(len(f))) and 1 <= len(f) <= 4 for f in per_patient.values())
    assert 1 < len(per_patient) < 20  # follow-ups exist, so a split by patient means something


@pytest.mark.parametrize("kind", ["nih", "padchest"])
def test_deterministic_and_independent_of_workers(tmp_path, kind):
    a = generate(tmp_path / "a", 6, kind, seed=5, size=96, workers=1).parent
    b = generate(tmp_path / "b", 6, kind, seed=5, size=96, workers=2).parent
    c = generate(tmp_path / "c", 6, kind, seed=6, size=96, workers=1).parent
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 7 and files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    first = next(p for p in files if p.suffix == ".png")
    other = sorted(p for p in c.rglob("*.png"))[0]
    assert (a / first).read_bytes() != other.read_bytes()


# --- PadChest layout --------------------------------------------------------------------------------------------

def test_padchest_layout_and_label_quirks(tmp_path):
    csv_path = generate(tmp_path, 40, "padchest", seed=2, size=128, workers=2)
    assert csv_path.name == "PADCHEST_chest_x_ray_images_labels_160K.csv"
    header, rows = _read_padchest(csv_path)
    assert header == list(PADCHEST_HEADER) and len(header) == 36 and header[0] == ""
    raw_labels, patients = [], Counter()
    for r in rows:
        assert re.fullmatch(r"[1-9]\d{20,}_[a-z]{6}\.png", r["ImageID"]), r["ImageID"]
        assert r["ImageDir"] in {"0", "1", "2"} and r["Projection"] in {"PA", "L", "AP"}
        assert r["BitsStored_DICOM"] == "12" and (r["Rows_DICOM"], r["Columns_DICOM"]) == ("128", "119")
        assert (tmp_path / "images" / r["ImageDir"] / r["ImageID"]).is_file()
        labels = ast.literal_eval(r["Labels"])
        assert isinstance(labels, list) and labels
        assert {s.strip() for s in labels} - {""} <= {"normal", "nodule", "pulmonary fibrosis"}
        raw_labels.append(labels)
        patients[r["PatientID"]] += 1
    assert any(s.startswith(" ") for labels in raw_labels for s in labels[1:])  # leading space after the first
    assert not any(labels[0].startswith(" ") for labels in raw_labels)
    assert 0 < sum("" in labels for labels in raw_labels) <= 4  # a few stray ''
    assert "['nodule', ' pulmonary fibrosis']" in {r["Labels"] for r in rows}
    assert any(labels == ["normal"] for labels in raw_labels)
    assert max(patients.values()) > 1


def test_padchest_pngs_are_partial_range_16_bit(tmp_path):
    csv_path = generate(tmp_path, 3, "padchest", seed=0, size=128, workers=1)
    for r in _read_padchest(csv_path)[1]:
        with Image.open(tmp_path / "images" / r["ImageDir"] / r["ImageID"]) as im:
            assert im.mode == "I;16" and im.size == (119, 128)
            a = np.asarray(im)
        assert 0 < a.min() and a.max() <= 4095  # 12-bit values in a 16-bit container
        assert len(np.unique(a)) > 1000
        lo, width = int(r["WindowCenter_DICOM"]) - int(r["WindowWidth_DICOM"]) // 2, int(r["WindowWidth_DICOM"])
        assert lo - 1 <= a.min() and a.max() <= lo + width + 1


def test_padchest_default_sizes_are_random_and_not_square(tmp_path):
    csv_path = generate(tmp_path, 2, "padchest", seed=4, workers=1)
    sizes = []
    for r in _read_padchest(csv_path)[1]:
        with Image.open(tmp_path / "images" / r["ImageDir"] / r["ImageID"]) as im:
            w, h = im.size
        assert (str(h), str(w)) == (r["Rows_DICOM"], r["Columns_DICOM"])
        assert 1400 <= min(w, h) and max(w, h) <= 2600 and w != h
        sizes.append((w, h))
    assert sizes[0] != sizes[1]


@pytest.mark.skipif(not SHARED_META.is_dir(), reason=f"real metadata CSVs not found at {SHARED_META}")
def test_headers_match_the_real_files():
    with gzip.open(SHARED_META / "Data_Entry_2017_v2020.csv.gz", "rt") as f:
        assert f.readline().rstrip("\r\n") == NIH_HEADER
    with gzip.open(SHARED_META / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz", "rt", newline="") as f:
        assert next(csv.reader(f)) == list(PADCHEST_HEADER)


# --- CLI --------------------------------------------------------------------------------------------------------

def test_cli_writes_and_reports(tmp_path, capsys):
    assert main([str(tmp_path / "out"), "--n", "3", "--kind", "nih", "--size", "64", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "out" / "images") in out and "Data_Entry_2017.csv" in out
    assert len(list((tmp_path / "out" / "images").glob("*.png"))) == 3


@pytest.mark.parametrize("argv", [["--n", "0"], ["--n", "3", "--kind", "mimic"], ["--n", "3", "--size", "4"],
                                  ["--n", "3", "--workers", "0"]])
def test_cli_rejects_bad_arguments(tmp_path, capsys, argv):
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "out"), *argv])
    assert e.value.code == 2 and "error" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_generate_rejects_unknown_kind(tmp_path):
    with pytest.raises(ValueError, match="kind"):
        generate(tmp_path, 2, "mimic")
