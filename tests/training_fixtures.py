"""Stores for the training tests (import the fixtures by name into a test module).

  tiny_store      48 synthetic phantoms, 64 px: for the loop's mechanics (resume, non-finite, checkpoints)
  labelled_store  1,024 synthetic phantoms (Nodule / Fibrosis / No Finding, NIH-format CSV), 64 px: the learning check
  coded_store     24 images, 64 px, whose vertical bands spell their slot index in binary: a view of the whole
                  image (no crop, no photometric change) says which slot it came from
  coded_nih_store the same 24 coded images with an NIH-format CSV and split lists: slot i is view AP when
                  i % 3 == 0 (else PA) and in the test split when i >= 16 (CODED_VIEWS, CODED_SPLITS)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from preprocess.store import open_store

CODED_N, CODED_BITS = 24, 6
CODED_VIEWS = ["AP" if i % 3 == 0 else "PA" for i in range(CODED_N)]
CODED_SPLITS = ["test" if i >= 16 else "train" for i in range(CODED_N)]
# every photometric change off and the crop = the whole image, so a view shows its slot's code
WHOLE_IMAGE_AUG = ["scale=1,1", "ratio=1,1", "flip_p=0", "brightness=0", "contrast=0", "blur_p=0", "noise_std=0"]


def _preprocess(*argv) -> None:
    from preprocess.__main__ import main
    assert main([str(a) for a in argv] + ["--workers", "2", "--no-progress"]) == 0


def _synthetic_store(tmp: Path, n: int, gen_size: int, size: int):
    from preprocess.synthetic import generate
    csv = generate(tmp / "raw", n, "nih", seed=0, size=gen_size, workers=2)
    _preprocess(tmp / "raw" / "images", "--dataset", "nih", "--metadata", csv, "--out", tmp / "store",
                "--size", size)
    return open_store(tmp / "store")


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory):
    return _synthetic_store(tmp_path_factory.mktemp("tiny"), 48, 128, 64)


@pytest.fixture(scope="session")
def labelled_store(tmp_path_factory):
    return _synthetic_store(tmp_path_factory.mktemp("labelled"), 1024, 256, 64)


def code_image(i: int, size: int = 64) -> np.ndarray:
    """8 vertical bands: white, black (references), then the 6 bits of i, least significant first."""
    bands = [255, 0] + [255 * ((i >> b) & 1) for b in range(CODED_BITS)]
    return np.repeat(np.array(bands, dtype=np.uint8), size // 8)[None, :].repeat(size, 0)


def decode_views(views) -> list[int]:
    """Slot indices from views (B, 1, H, W) of coded images (any normalization: compared to the references)."""
    x = views[:, 0, views.shape[2] // 2, :].float()
    w = x.shape[1]
    vals = x[:, [int((b + 0.5) * w / 8) for b in range(8)]]
    bits = (vals[:, 2:] > (vals[:, :1] + vals[:, 1:2]) / 2).long()
    return (bits * torch.tensor([1 << b for b in range(CODED_BITS)])).sum(1).tolist()


@pytest.fixture(scope="session")
def coded_store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("coded")
    (tmp / "in").mkdir()
    for i in range(CODED_N):
        Image.fromarray(code_image(i)).save(tmp / "in" / f"img{i:03d}.png")
    _preprocess(tmp / "in", "--out", tmp / "store", "--size", 64)
    return open_store(tmp / "store")


@pytest.fixture(scope="session")
def coded_nih_store(tmp_path_factory):
    from preprocess.synthetic import NIH_HEADER
    tmp = tmp_path_factory.mktemp("coded-nih")
    (tmp / "in").mkdir()
    names = [f"{i:08d}_000.png" for i in range(CODED_N)]
    rows = [NIH_HEADER]
    for i, name in enumerate(names):
        Image.fromarray(code_image(i)).save(tmp / "in" / name)
        rows.append(f"{name},No Finding,0,{i},50,M,{CODED_VIEWS[i]},2500,2048,0.168,0.168")
    (tmp / "Data_Entry_2017.csv").write_text("\n".join(rows) + "\n")
    for split in ("train", "test"):
        listed = [n for n, s in zip(names, CODED_SPLITS) if s == split]
        (tmp / ("train_val_list.txt" if split == "train" else "test_list.txt")).write_text("\n".join(listed) + "\n")
    _preprocess(tmp / "in", "--dataset", "nih", "--metadata", tmp / "Data_Entry_2017.csv", "--out", tmp / "store",
                "--size", 64)
    store = open_store(tmp / "store")
    assert [r["view"] for r in store.manifest] == CODED_VIEWS and [r["split"] for r in store.manifest] == CODED_SPLITS
    return store
