"""Stores and helpers for the tests of `pipelines` (import the fixtures by name into a test module).

Every store is built through the real writer (`python -m preprocess`, in-process) from images written in a temporary
folder, and opened with `preprocess.store.open_store`, as a loader would. They are tiny so that the pipeline tests run
in a few minutes on two cores:

  real_store    the real radiograph `../shared/data/real/rg1_chest_pa_16bit.png`, 4 copies, 64 px (skips if absent)
  ramp_stores   (x, y): 32 identical 256 px images whose value is the x (resp. y) coordinate, 0..255; a view's
                pixel values then say which source columns (rows) it was cropped from
  phantom_store 24 synthetic phantoms (preprocess.synthetic), 96 px: different images, for the contract checks
  flat_store    16 copies of one synthetic phantom, 96 px: identical images, so views differ only by augmentation
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines import AugmentConfig, build_loader
from preprocess.store import open_store

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL_PNG = SHARED_DATA / "real" / "rg1_chest_pa_16bit.png"
RAMP = 256
NO_PHOTOMETRIC = dict(brightness=0.0, contrast=0.0, blur_p=0.0, noise_std=0.0)


def build_store(inputs: Path, out: Path, size: int):
    """Run the store writer on `inputs` and open the result."""
    from preprocess.__main__ import main

    rc = main([str(inputs), "--out", str(out), "--size", str(size), "--workers", "2", "--no-progress"])
    assert rc == 0, f"preprocess failed on {inputs} (exit {rc})"
    return open_store(out)


def _copies(folder: Path, image: np.ndarray | Path, n: int) -> Path:
    folder.mkdir(parents=True)
    for i in range(n):
        if isinstance(image, Path):
            shutil.copyfile(image, folder / f"img{i:03d}{image.suffix}")
        else:
            Image.fromarray(image).save(folder / f"img{i:03d}.png")
    return folder


@pytest.fixture(scope="session")
def real_store(tmp_path_factory):
    if not REAL_PNG.exists():
        pytest.skip(f"../shared/data is absent ({REAL_PNG} not found): the equivalence check needs the real image")
    tmp = tmp_path_factory.mktemp("real")
    return build_store(_copies(tmp / "in", REAL_PNG, 4), tmp / "store", 64)


@pytest.fixture(scope="session")
def ramp_stores(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ramps")
    x = np.tile(np.arange(RAMP, dtype=np.uint8), (RAMP, 1))
    stores = tuple(build_store(_copies(tmp / f"{name}_in", img, 32), tmp / name, RAMP)
                   for name, img in (("x", x), ("y", np.ascontiguousarray(x.T))))
    for store, img in zip(stores, (x, x.T)):
        assert (store.images[0] == img).all(), "the store writer changed the ramp: coordinates cannot be recovered"
    return stores


def _phantoms(tmp: Path, n: int) -> Path:
    from preprocess.synthetic import generate

    generate(tmp, n, "nih", seed=3, size=96, workers=1)
    return tmp / "images"


@pytest.fixture(scope="session")
def phantom_store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("phantoms")
    return build_store(_phantoms(tmp / "gen", 24), tmp / "store", 96)


@pytest.fixture(scope="session")
def flat_store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("flat")
    one = sorted(_phantoms(tmp / "gen", 1).iterdir())[0]
    return build_store(_copies(tmp / "in", one, 16), tmp / "store", 96)


def config_for(store, crop: int, **overrides) -> AugmentConfig:
    """The defaults with the store's mean/std and a small crop."""
    return AugmentConfig.for_store(store, crop_size=crop, **overrides)


def loader(store, kind: str, batch_size: int, config: AugmentConfig, **kw):
    return build_loader(store, kind, batch_size, config=config, num_workers=2, device="cpu", **kw)


def epoch_batches(ld, epoch: int, start_batch: int = 0, limit: int | None = None) -> list[torch.Tensor]:
    """The batches of one epoch as (2B, 1, c, c) tensors (view1 stacked over view2); stop after `limit`."""
    ld.set_epoch(epoch, start_batch=start_batch)
    out = []
    for v1, v2 in ld:
        out.append(torch.cat([v1, v2]))
        if limit is not None and len(out) == limit:
            break
    return out


def first_batch(ld, epoch: int = 0) -> torch.Tensor:
    return epoch_batches(ld, epoch, limit=1)[0]


def views(ld, n: int) -> torch.Tensor:
    """At least n views, (V, 1, c, c), from consecutive epochs 0, 1, ..."""
    out, total, epoch = [], 0, 0
    while total < n:
        for b in epoch_batches(ld, epoch):
            out.append(b)
            total += b.shape[0]
        epoch += 1
    return torch.cat(out)


# The opencv loader's GPU path: its workers crop, resize, flip and blur in uint8 (`opencv_views.uint8_views`), then
# the float end (jitter, normalize, clamp) runs on the training device. Against a reference computed from the same
# uint8 views on the CPU the only differences are float32 rounding in x * scale + offset (|x| <= about 21 in
# normalized units: ulp 2e-6) and in each view's mean (summed in another order: about 1e-6 relative, under 1e-5 in
# the output). 1e-4 leaves 10x room for that and still sees any uint8 difference: one gray level is at least
# min(brightness x contrast) / (255 std) in the output, which `check_uint8_path` checks is above it.
UINT8_PATH_TOL = 1e-4


def opencv_uint8_reference(ld, epoch: int = 0, j: int = 0) -> torch.Tensor:
    """Batch j of `epoch` as the opencv loader `ld` makes it for a GPU, computed here on the CPU: the workers' uint8
    views (`opencv_views.batch` without a noise seed), then `photometric.finish_torch`. For configs without noise
    (CPU and CUDA generators draw different noise from one seed)."""
    from pipelines import opencv_views
    from pipelines.params import draw
    from pipelines.photometric import finish_torch

    slots = ld.sampler.batches(epoch)[j]
    p = draw(ld.config, ld.views.key(epoch, j), 2 * len(slots), ld.size, ld.size)
    u8 = opencv_views.batch(ld.views.images, slots, p, ld.config, None)
    return finish_torch(u8, p, ld.config, ld.views.key(epoch, j, 1)), p


def check_uint8_path(ld, got: torch.Tensor) -> float:
    """Assert the opencv loader's first batch `got` (2B, 1, c, c) is its uint8 path within UINT8_PATH_TOL."""
    assert ld.config.noise_std == 0, "the reference leaves the noise out: use a config without noise"
    want, p = opencv_uint8_reference(ld)
    one_gray = float((p.brightness * p.contrast).min()) / (255 * ld.config.std)
    assert one_gray > 2 * UINT8_PATH_TOL, f"the tolerance would not see one gray level ({one_gray:.2e})"
    diff = (got.cpu() - want).abs().max().item()
    assert diff < UINT8_PATH_TOL, f"the opencv loader's uint8 path differs from its reference by {diff:.2e}"
    return diff
