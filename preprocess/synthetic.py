"""Synthetic chest-like phantoms, written as an NIH- or PadChest-shaped dataset (images + label table).

They stand in for real radiographs where those are absent or too big to ship: the demo store, the tests of the
readers and the store writer, and the learning check of the training loop (the findings are learnable from the
pixels and survive a resize to 64 px). A phantom has a dark background, a body, two darker lung fields crossed
by bright rib arcs, a bright mediastinum, heart and spine, smooth noise, and per-image jitter of the anatomy plus
a global gain, offset and gamma. ``Nodule`` adds 4-10 small bright dots (radius 1.2-2.5% of the width) in the
lungs, ``Fibrosis`` a net of fine bright streaks in the lower lungs, ``No Finding`` neither.

``nih``: 8-bit square PNGs and ``Data_Entry_2017.csv`` (NIH's header, 11 values a row). ``padchest``: 16-bit
PNGs (mode ``I;16``) holding 12-bit values in a partial range, non-square, under ``images/{ImageDir}/``, and
``PADCHEST_chest_x_ray_images_labels_160K.csv`` (36 columns; labels with leading spaces and a stray ``''``).
Deterministic given ``seed``: image ``i`` draws its pixels from ``np.random.default_rng([seed, i])``.

    python -m preprocess.synthetic /tmp/demo --n 64 --kind nih --size 256
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import os
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

KINDS = ("nih", "padchest")
LABEL_MIX = {("No Finding",): 0.40, ("Nodule",): 0.35, ("Fibrosis",): 0.15, ("Nodule", "Fibrosis"): 0.10}
NIH_CSV, PADCHEST_CSV = "Data_Entry_2017.csv", "PADCHEST_chest_x_ray_images_labels_160K.csv"
NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
PADCHEST_HEADER = (  # the real file's header: a leading unnamed index column, 36 names in all
    ",ImageID,ImageDir,StudyDate_DICOM,StudyID,PatientID,PatientBirth,PatientSex_DICOM,ViewPosition_DICOM,"
    "Projection,MethodProjection,Pediatric,Modality_DICOM,Manufacturer_DICOM,PhotometricInterpretation_DICOM,"
    "PixelRepresentation_DICOM,PixelAspectRatio_DICOM,SpatialResolution_DICOM,BitsStored_DICOM,WindowCenter_DICOM,"
    "WindowWidth_DICOM,Rows_DICOM,Columns_DICOM,XRayTubeCurrent_DICOM,Exposure_DICOM,ExposureInuAs_DICOM,"
    "ExposureTime,RelativeXRayExposure_DICOM,ReportID,Report,MethodLabel,Labels,Localizations,"
    "LabelsLocalizationsBySentence,labelCUIS,LocalizationsCUIS").split(",")
PADCHEST_NAMES = {"No Finding": "normal", "Nodule": "nodule", "Fibrosis": "pulmonary fibrosis"}
PADCHEST_REPORTS = {"No Finding": "sin hallazg patolog", "Nodule": "nodul pulmonar", "Fibrosis": "fibrosis pulmonar"}
PADCHEST_VIEWS = {"PA": "POSTEROANTERIOR", "L": "LATERAL", "AP": "ANTEROPOSTERIOR"}


def _soft_ellipse(x, y, cx, cy, a, b, edge=0.15):
    """1 inside the ellipse, 0 outside, a linear ramp of ``edge`` (in squared-radius units) at the border."""
    r2 = ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2
    return np.clip((1.0 - r2) / edge, 0.0, 1.0)


def _smooth_noise(rng, grid, size):
    """Gaussian noise on a ``grid`` x ``grid`` lattice, upsampled bicubically to ``size`` (H, W)."""
    low = Image.fromarray(rng.standard_normal((grid, grid)).astype(np.float32))
    return np.asarray(low.resize((size[1], size[0]), Image.BICUBIC), dtype=np.float32)


def _lung_points(rng, lungs, k, tilt, size, lower):
    """``k`` random pixel positions (py, px) inside the lung ellipses (their lower halves when ``lower``)."""
    side, rho = rng.integers(0, 2, k), (0.9 if lower else 0.75) * np.sqrt(rng.random(k))
    th = rng.uniform(0.1, np.pi - 0.1, k) if lower else rng.uniform(0, 2 * np.pi, k)
    lx, ly, la, lb = np.array(lungs).T[:, side]
    py = ly + lb * rho * np.sin(th)
    return py * size[0], (lx + la * rho * np.cos(th) + 0.5 - tilt * (py - 0.5)) * size[1]


def phantom(rng: np.random.Generator, size: tuple[int, int], labels: tuple[str, ...]) -> np.ndarray:
    """A chest-like phantom: float32 array of shape ``size`` (H, W), values in [0, 1].

    ``labels`` may hold ``"Nodule"`` and/or ``"Fibrosis"`` (anything else, e.g. ``"No Finding"``, adds nothing).
    The anatomy, noise and global intensity are drawn before the findings, so the same generator state gives the
    same image with and without them.
    """
    H, W = size
    u = rng.uniform  # anatomy: (cx, cy) centre, s scale, tilt as a shear; x in [-.5, .5] of W, y in [0, 1] of H
    s, cx, cy, tilt = u(0.82, 1.1), u(-0.06, 0.06), u(-0.05, 0.05), u(-0.08, 0.08)
    y = ((np.arange(H, dtype=np.float32) + 0.5) / H)[:, None]
    x = ((np.arange(W, dtype=np.float32) + 0.5) / W - 0.5)[None, :] + tilt * (y - 0.5)
    lungs = [(cx + side * 0.19 * s * u(0.9, 1.1), 0.46 + cy + u(-0.02, 0.02),
              0.14 * s * u(0.85, 1.15), 0.28 * s * u(0.85, 1.08)) for side in (-1, 1)]
    img = u(0.0, 0.15) + u(0.3, 0.45) * _soft_ellipse(x, y, cx, 0.58 + cy, 0.47 * s * u(0.9, 1.1), 0.66, 0.3)
    img = img + u(0.15, 0.3) * np.clip((y - 0.72 - cy) / 0.15, 0, 1) * (np.abs(x - cx) < 0.45 * s)  # abdomen
    lung_mask = np.maximum(_soft_ellipse(x, y, *lungs[0]), _soft_ellipse(x, y, *lungs[1]))
    img = img - u(0.18, 0.32) * lung_mask
    t = (y - cy) - u(1.2, 2.0) * (x - cx) ** 2  # rib arcs: bands of constant t droop laterally
    ribs = np.clip((np.cos(t * (2 * np.pi / (0.06 * s * u(0.9, 1.1))) + u(0, 6.3)) - 0.35) / 0.65, 0, 1)
    thorax = np.maximum(*(_soft_ellipse(x, y, lx, ly, la * 1.25, lb * 1.1, 0.4) for lx, ly, la, lb in lungs))
    img = img + u(0.06, 0.12) * ribs * thorax
    heart = _soft_ellipse(x, y, cx + 0.06 * s * u(0.6, 1.4), 0.64 + cy, 0.14 * s * u(0.85, 1.2), 0.13 * s, 0.3)
    medi = np.clip((0.07 * s - np.abs(x - cx)) / 0.02, 0, 1) * np.clip((0.7 + cy - y) / 0.1, 0, 1)
    img = img + (u(0.5, 0.65) - img) * np.maximum(heart, medi) * u(0.75, 1.0)
    lung_mask = lung_mask * (1 - heart)
    spine = np.clip((0.03 * s - np.abs(x - cx)) / 0.01, 0, 1) * (0.75 + 0.25 * np.cos(y * (2 * np.pi / 0.045)))
    img = img + u(0.06, 0.16) * spine + u(0.02, 0.05) * _smooth_noise(rng, 6, size)
    img = img + 0.012 * _smooth_noise(rng, 32, size) + 0.006 * rng.standard_normal(size, dtype=np.float32)
    gain, offset, gamma = u(0.7, 1.3), u(-0.08, 0.1), u(0.6, 1.6)
    if "Nodule" in labels:  # 4-10 bright dots inside the lungs, each drawn on its own small patch
        k = int(rng.integers(4, 11))
        pys, pxs = _lung_points(rng, lungs, k, tilt, size, lower=False)
        rad, amp = rng.uniform(0.012, 0.025, k) * W, rng.uniform(0.25, 0.4, k)
        for py, px, r, a in zip(pys, pxs, rad, amp):
            y0, x0 = max(int(py - r) - 1, 0), max(int(px - r) - 1, 0)
            y1, x1 = min(int(py + r) + 2, H), min(int(px + r) + 2, W)
            d = np.hypot(np.arange(y0, y1)[:, None] + 0.5 - py, np.arange(x0, x1)[None, :] + 0.5 - px)
            img[y0:y1, x0:x1] += a * np.clip((1 - d / r) / 0.3, 0, 1)
    if "Fibrosis" in labels:  # a reticular net of short fine streaks in the lower half of each lung
        k = int(rng.integers(180, 320))
        pys, pxs = _lung_points(rng, lungs, k, tilt, size, lower=True)
        ang, half = rng.uniform(0, np.pi, k), rng.uniform(0.008, 0.025, k) * W
        dx, dy = half * np.cos(ang), half * np.sin(ang)
        canvas = Image.new("L", (W, H))
        draw, width = ImageDraw.Draw(canvas), max(1, round(W / 300))
        for seg in np.stack([pxs - dx, pys - dy, pxs + dx, pys + dy], 1).tolist():
            draw.line(seg, fill=255, width=width)
        img = img + rng.uniform(0.15, 0.25) * (np.asarray(canvas, dtype=np.float32) / 255) * lung_mask
    img = np.clip(img, 0, 1) ** gamma * gain + offset
    return np.clip(img, 0, 1).astype(np.float32, copy=False)


def _digits(rng, n):
    return str(rng.integers(1, 10)) + "".join(map(str, rng.integers(0, 10, n - 1)))


def _plan(n, kind, seed, size):
    """One dict per image: where it goes, its size, labels and every CSV value (drawn from ``default_rng(seed)``)."""
    rng = np.random.default_rng(seed)
    combos, probs = list(LABEL_MIX), np.array(list(LABEL_MIX.values()))
    counts = np.floor(probs * n).astype(int)
    counts[np.argsort(-(probs * n - counts))[: n - counts.sum()]] += 1  # largest remainders: the mix is exact
    labels = [combos[c] for c in rng.permutation(np.repeat(np.arange(len(combos)), counts))]
    empty_quirk = set(rng.choice(n, round(0.03 * n), replace=False).tolist())  # PadChest's stray '' labels
    plan, patient = [], 0
    while len(plan) < n:
        patient += 1
        age, sex, pid = int(rng.integers(18, 86)), "MF"[rng.integers(0, 2)], _digits(rng, 39)
        for follow in range(min(int(rng.integers(1, 5)), n - len(plan))):
            i = len(plan)
            r = dict(index=i, labels=labels[i], patient=patient, follow=follow, age=age + follow // 2, sex=sex)
            if kind == "nih":
                r.update(path=f"images/{patient:08d}_{follow:03d}.png", hw=(size or 1024,) * 2,
                         view="PA" if rng.random() < 0.8 else "AP")
            else:
                h = size or int(rng.integers(1500, 2501))
                d = int(rng.integers(50, 350))  # never square
                w = round(size * 0.93) if size else (h - d if h > 2000 else h + d)
                lo = int(rng.integers(20, 700))
                study, image_dir = _digits(rng, 38), int(rng.integers(0, 3))
                name = f"{study}_{''.join(rng.choice(list('abcdefghijklmnopqrstuvwxyz'), 6))}.png"
                r.update(path=f"images/{image_dir}/{name}", hw=(h, w), window=(lo, int(rng.integers(lo + 2000, 4096))),
                         name=name, image_dir=image_dir, study=study, pid=pid, empty=i in empty_quirk,
                         view=str(rng.choice(["PA", "L", "AP"], p=[0.7, 0.2, 0.1])),
                         date=f"{2009 + follow + int(rng.integers(0, 5))}{int(rng.integers(1, 13)):02d}15")
            plan.append(r)
    return plan


def _render(task):
    """Draw image ``index`` from its own generator and save it (PNG, compress_level=1)."""
    root, seed, r = task
    img = phantom(np.random.default_rng([seed, r["index"]]), r["hw"], r["labels"])
    if "window" in r:  # 12-bit values in a 16-bit container: never the full 0..65535
        lo, hi = r["window"]
        arr = np.rint(lo + img * (hi - lo)).astype(np.uint16)
    else:
        arr = np.rint(img * 255).astype(np.uint8)
    Image.fromarray(arr).save(Path(root) / r["path"], compress_level=1)


def _nih_row(r):
    ow, oh, sp = [(2500, 2048, 0.168), (2992, 2991, 0.143), (3056, 2544, 0.139)][r["index"] % 3]
    return [Path(r["path"]).name, "|".join(r["labels"]), r["follow"], r["patient"], r["age"], r["sex"], r["view"],
            ow, oh, sp, sp]


def _padchest_row(r):
    names = [PADCHEST_NAMES[l] for l in r["labels"]]
    quirky = names[:1] + [" " + s for s in names[1:]]  # PadChest's leading spaces, and its stray ''
    if r["empty"]:
        quirky.insert(r["index"] % (len(quirky) + 1), "")
    (h, w), (lo, hi) = r["hw"], r["window"]
    report = " " + " . ".join(PADCHEST_REPORTS[l] for l in r["labels"]) + " ."
    return [r["index"], r["name"], r["image_dir"], r["date"], r["study"], r["pid"], f"{2010.0 - r['age']}",
            r["sex"], PADCHEST_VIEWS[r["view"]], r["view"], "Manual review of DICOM fields", "No", "CR",
            "ImagingDynamicsCompanyLtd", "MONOCHROME2", 0, "None", "None", 12, (lo + hi) // 2, hi - lo, h, w,
            250, 2, 2500, 10, "None", 4000000 + r["index"], report, "Physician", repr(quirky), "[]",
            repr([[s] for s in names]), "[]", "[]"]


def generate(out: str | Path, n: int, kind: str = "nih", *, seed: int = 0, size: int | None = None,
             workers: int | None = None) -> Path:
    """Write ``n`` phantoms and the label table under ``out``; return the CSV's path (written last).

    ``size``: NIH side (default 1024); PadChest height, width ``round(size * 0.93)`` (default: random, 1500-2500
    px a side). ``workers``: processes (default ``os.cpu_count()``); the output does not depend on it.
    """
    if kind not in KINDS or n < 1 or (size is not None and size < 16):
        raise ValueError(f"need kind in {KINDS}, n >= 1 and size >= 16 (or None); got {kind!r}, {n}, {size}")
    out = Path(out)
    plan = _plan(n, kind, seed, size)
    for d in {Path(r["path"]).parent for r in plan}:
        (out / d).mkdir(parents=True, exist_ok=True)
    workers = min(workers or os.cpu_count() or 1, n)
    tasks = [(str(out), seed, r) for r in plan]
    with Pool(workers) if workers > 1 else contextlib.nullcontext() as pool:
        for _ in tqdm(pool.imap_unordered(_render, tasks) if pool else map(_render, tasks), total=n,
                      desc=f"synthetic {kind}", unit="img"):
            pass
    csv_path = out / (NIH_CSV if kind == "nih" else PADCHEST_CSV)
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        if kind == "nih":
            f.write(NIH_HEADER + "\n")  # raw: csv would quote the names that hold commas
            writer.writerows(_nih_row(r) for r in plan)
        else:
            writer.writerow(PADCHEST_HEADER)
            writer.writerows(_padchest_row(r) for r in plan)
    return csv_path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m preprocess.synthetic", description=__doc__.split("\n")[0])
    p.add_argument("out", help="output folder (created); images go to OUT/images/")
    p.add_argument("--n", type=int, required=True, help="number of images (at least 1)")
    p.add_argument("--kind", choices=KINDS, default="nih", help="dataset layout to mimic (default: nih)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--size", type=int, default=None,
                   help="image side in px (default: 1024 for nih; random 1500-2500 for padchest)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: os.cpu_count())")
    a = p.parse_args(argv)
    for flag, value, least in (("--n", a.n, 1), ("--size", a.size, 16), ("--workers", a.workers, 1)):
        if value is not None and value < least:
            p.error(f"{flag} must be at least {least}, got {value}")
    csv_path = generate(a.out, a.n, a.kind, seed=a.seed, size=a.size, workers=a.workers)
    print(f"images: {Path(a.out) / 'images'}\ncsv: {csv_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
