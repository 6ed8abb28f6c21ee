"""The crop windows the loaders really cut, recovered from their output, against torchvision's RandomResizedCrop.

The stores hold ramps: pixel value = x (resp. y) coordinate, 0..255, on 256 px images. With the photometric changes
off and mean 0 / std 1, a view's column (row) profile is a straight line whose slope is (crop width)/(crop size) and
whose ends are the crop's first and last source column. The parameters depend only on (seed, rank, epoch, batch),
not on the pixels, so the same loader on the x and the y store cuts the same windows: width and height of each view
come from the two stores, and their product is the area fraction.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines import AugmentConfig
from pipelines.params import draw
from pipelines.sampler import key
from tests.pipelines_fixtures import NO_PHOTOMETRIC, RAMP, loader, ramp_stores, views  # noqa: F401 (fixture)

CROP, BATCH, SEED, N_VIEWS = 64, 32, 2, 1024
CONFIG = AugmentConfig(crop_size=CROP, mean=0.0, std=1.0, **NO_PHOTOMETRIC)  # flip_p stays 0.5


def _line_fit(profiles: np.ndarray):
    """Per view: (extent in source pixels, first source pixel, reversed?) from (V, CROP) profiles. The 3 pixels at
    each end are left out (resize filters clamp at the crop's border)."""
    centres = np.arange(3, CROP - 3) + 0.5
    p = profiles[:, 3:CROP - 3]
    c = centres - centres.mean()
    slope = (p - p.mean(1, keepdims=True)) @ c / (c @ c)
    at_left_edge = p.mean(1) - slope * centres.mean()
    extent = np.abs(slope) * CROP
    start = np.where(slope < 0, at_left_edge - extent, at_left_edge) + 0.5  # value x is the centre of pixel x
    return extent, start, slope < 0


def _recovered(stores, kind):
    """(V, 4) recovered (top, left, h, w) and (V,) flips of N_VIEWS views of `kind` on the x and y stores."""
    out = []
    for store in stores:
        v = views(loader(store, kind, BATCH, CONFIG, seed=SEED), N_VIEWS)[:, 0].double().numpy() * 255
        assert v.shape[0] >= N_VIEWS
        out.append(v)
    vx, vy = out
    assert np.abs(vx - vx.mean(1, keepdims=True)).max() <= 1.01, "x-ramp views must be constant down each column"
    assert np.abs(vy - vy.mean(2, keepdims=True)).max() <= 1.01, "y-ramp views must be constant along each row"
    w, left, flip = _line_fit(vx.mean(1))
    h, top, flipped_y = _line_fit(vy.mean(2))
    assert not flipped_y.any(), "views are never flipped vertically"
    return np.stack([top, left, h, w], 1), flip


def _reference(n: int = 20000) -> np.ndarray:
    from torchvision.transforms import RandomResizedCrop

    torch.manual_seed(0)
    img = torch.empty(1, RAMP, RAMP)
    return np.array([RandomResizedCrop.get_params(img, list(CONFIG.scale), list(CONFIG.ratio)) for _ in range(n)],
                    dtype=np.float64)


@pytest.fixture(scope="module")
def reference():
    return _reference()


@pytest.fixture(scope="module")
def recovered(ramp_stores):  # noqa: F811
    """kind -> (crops, flips), computed once per kind for the tests below."""
    cache = {}

    def get(kind):
        if kind not in cache:
            cache[kind] = _recovered(ramp_stores, kind)
        return cache[kind]
    return get


def _area(c):
    return c[:, 2] * c[:, 3] / RAMP**2


@pytest.mark.parametrize("kind", ["dali-cpu", "opencv", "torchvision"])
def test_crop_area_fraction_follows_torchvision(recovered, reference, kind):
    ks_2samp = pytest.importorskip("scipy.stats").ks_2samp
    crops, flip = recovered(kind)
    top, left, h, w = crops.T
    assert (top > -1).all() and (left > -1).all(), "crops start inside the image"
    assert (top + h < RAMP + 1).all() and (left + w < RAMP + 1).all(), "crops end inside the image"
    area, ref_area = _area(crops), _area(reference)
    stat = ks_2samp(area, ref_area).statistic
    print(f"KS {kind} crop area fraction vs torchvision get_params: {stat:.4f}")
    assert stat <= 0.06, f"{kind}: crop area fraction differs from RandomResizedCrop's (KS {stat:.3f})"
    assert ks_2samp(w / h, reference[:, 3] / reference[:, 2]).statistic <= 0.06, f"{kind}: aspect ratio"
    assert ks_2samp(w / RAMP, reference[:, 3] / RAMP).statistic <= 0.06, f"{kind}: width fraction"
    assert 0.4 < flip.mean() < 0.6, f"{kind}: flip rate {flip.mean():.2f} for p = 0.5"


@pytest.mark.parametrize("kind", ["dali-cpu", "opencv"])
def test_loaders_cut_exactly_the_drawn_windows(recovered, kind):
    """View by view, the recovered window and flip are the ones pipelines.params drew for (seed, rank, epoch, batch):
    catches an ROI given as (x, y) instead of (y, x), a flip of the wrong axis, a half-pixel shift."""
    crops, flip = recovered(kind)
    epochs = len(crops) // (2 * BATCH)  # one batch per epoch: the stores hold BATCH images
    drawn = [draw(CONFIG, key(SEED, 0, e, 0), 2 * BATCH, RAMP, RAMP) for e in range(epochs)]
    want = np.concatenate([p.crop for p in drawn]).astype(np.float64)
    want_flip = np.concatenate([p.flip for p in drawn])
    assert np.array_equal(flip, want_flip), "flips differ from the drawn ones"
    err = np.abs(crops - want)
    assert err[:, 2:].max() <= 1.5, f"crop size off by up to {err[:, 2:].max():.2f} px"
    assert err[:, :2].max() <= 1.0, f"crop position off by up to {err[:, :2].max():.2f} px"
    assert err.mean() < 0.2
