"""Tests for pipelines.sampler (epoch permutation, rank shards) and pipelines.params (crop windows vs torchvision)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines import AugmentConfig, EpochSampler
from pipelines.params import NO_BLUR_SIGMA, crop_windows, draw


def _all_batches(n, b, world, epoch, *, seed=0, drop_last=True):
    return [EpochSampler(n, b, seed=seed, rank=r, world_size=world, drop_last=drop_last).batches(epoch)
            for r in range(world)]


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("n,b", [(50, 4), (48, 4), (37, 5)])
def test_every_index_once_per_epoch_with_drop_last(world, n, b):
    if n < b * world:
        pytest.skip("too small for this world size")
    per_rank = _all_batches(n, b, world, epoch=2)
    lengths = {len(batches) for batches in per_rank}
    assert lengths == {n // (b * world)}, "every rank must take the same number of steps"
    assert all(len(EpochSampler(n, b, rank=r, world_size=world)) == n // (b * world) for r in range(world))
    seen = np.concatenate([idx for batches in per_rank for idx in batches])
    assert all(len(idx) == b for batches in per_rank for idx in batches)
    assert len(seen) == len(set(seen.tolist())) == (n // (b * world)) * b * world  # no repeats, remainder dropped
    assert seen.min() >= 0 and seen.max() < n
    assert all((np.diff(idx) > 0).all() for batches in per_rank for idx in batches), "batches are sorted"


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("n,b", [(50, 4), (37, 5), (7, 3)])
def test_every_index_once_per_epoch_without_drop_last(world, n, b):
    per_rank = _all_batches(n, b, world, epoch=1, drop_last=False)
    seen = np.concatenate([idx for batches in per_rank for idx in batches])
    assert sorted(seen.tolist()) == list(range(n))
    for r, batches in enumerate(per_rank):
        assert len(EpochSampler(n, b, rank=r, world_size=world, drop_last=False)) == len(batches)
        assert all(0 < len(idx) <= b for idx in batches)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_epochs_and_seeds(world):
    def order(epoch, seed):
        return np.concatenate([np.concatenate(bs) for bs in _all_batches(60, 4, world, epoch, seed=seed)])

    assert np.array_equal(order(0, 7), order(0, 7)), "same seed and epoch, same order"
    assert not np.array_equal(order(0, 7), order(1, 7)), "another epoch, another order"
    assert not np.array_equal(order(0, 7), order(0, 8)), "another seed, another order"
    # another epoch changes the membership of batches, not only their order
    b0 = {tuple(x) for x in _all_batches(60, 4, world, 0, seed=7)[0]}
    b1 = {tuple(x) for x in _all_batches(60, 4, world, 1, seed=7)[0]}
    assert b0 != b1


def test_ranks_get_disjoint_shards():
    r0, r1 = _all_batches(40, 4, 2, epoch=0)
    assert not set(np.concatenate(r0).tolist()) & set(np.concatenate(r1).tolist())


@pytest.mark.parametrize("n,b,world", [(3, 4, 1), (7, 4, 2), (8, 3, 3)])
def test_too_small_store_raises(n, b, world):
    with pytest.raises(ValueError, match="cannot fill one batch"):
        EpochSampler(n, b, world_size=world, drop_last=True)


def test_bad_arguments_raise():
    with pytest.raises(ValueError):
        EpochSampler(10, 0)
    with pytest.raises(ValueError):
        EpochSampler(10, 2, rank=2, world_size=2)


# ------------------------------------------------------------------------------------------------ crop windows
def _torchvision_crops(n, height, width, scale, ratio, seed=0):
    from torchvision.transforms import RandomResizedCrop

    torch.manual_seed(seed)
    img = torch.empty(1, height, width)
    return np.array([RandomResizedCrop.get_params(img, list(scale), list(ratio)) for _ in range(n)])


@pytest.mark.parametrize("height,width,scale", [(256, 256, (0.08, 1.0)), (64, 256, (0.08, 1.0)),
                                                (300, 100, (0.5, 1.0)), (128, 128, (0.9, 1.0))])
def test_crop_windows_match_torchvision(height, width, scale):
    ks_2samp = pytest.importorskip("scipy.stats").ks_2samp
    ratio = (3 / 4, 4 / 3)
    ours = crop_windows(np.random.default_rng(1), 6000, height, width, scale, ratio)
    ref = _torchvision_crops(6000, height, width, scale, ratio)
    top, left, h, w = ours.T
    assert (top >= 0).all() and (left >= 0).all() and (h >= 1).all() and (w >= 1).all()
    assert (top + h <= height).all() and (left + w <= width).all(), "a crop leaves the image"
    for name, f in (("area fraction", lambda c: c[:, 2] * c[:, 3] / (height * width)),
                    ("aspect ratio", lambda c: c[:, 3] / c[:, 2]),
                    ("top fraction", lambda c: (c[:, 0] + c[:, 2] / 2) / height),
                    ("left fraction", lambda c: (c[:, 1] + c[:, 3] / 2) / width)):
        stat = ks_2samp(f(ours), f(ref)).statistic
        assert stat <= 0.04, f"{name}: KS {stat:.3f} against torchvision's get_params"
    # how often the 10 attempts all fail and the centre fallback is used agrees too
    fallback = np.mean((ours[:, 2] == ref[:, 2].max()) & (ours[:, 3] == ref[:, 3].max()))
    fallback_ref = np.mean((ref[:, 2] == ref[:, 2].max()) & (ref[:, 3] == ref[:, 3].max()))
    assert abs(fallback - fallback_ref) < 0.03


def test_crop_windows_stay_in_the_configured_ranges():
    """Area fraction within `scale` and aspect ratio within `ratio`, up to the rounding to whole pixels."""
    c = crop_windows(np.random.default_rng(0), 20000, 512, 512, (0.08, 1.0), (3 / 4, 4 / 3))
    frac, aspect = c[:, 2] * c[:, 3] / 512**2, c[:, 3] / c[:, 2]
    assert frac.min() > 0.079 and frac.max() <= 1.0
    assert aspect.min() >= 3 / 4 - 0.01 and aspect.max() <= 4 / 3 + 0.01
    assert frac.min() < 0.085 and frac.max() > 0.98, "the whole scale range is used"


def test_draw_is_a_function_of_its_seed_and_respects_the_config():
    config = AugmentConfig(crop_size=32, flip_p=0.5, blur_p=0.5, noise_p=0.25)
    a, b, other = draw(config, 5, 4000, 64, 64), draw(config, 5, 4000, 64, 64), draw(config, 6, 4000, 64, 64)
    for field in ("crop", "flip", "brightness", "contrast", "sigma", "noise"):
        assert np.array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.crop, other.crop)
    assert 0.45 < a.flip.mean() < 0.55
    assert 0.2 <= a.brightness.min() and a.brightness.max() <= 1.8 and 0.2 <= a.contrast.min()
    blurred = a.sigma > NO_BLUR_SIGMA
    assert 0.45 < blurred.mean() < 0.55 and (a.sigma[blurred] >= 0.1).all() and (a.sigma[blurred] <= 2.0).all()
    assert 0.2 < (a.noise > 0).mean() < 0.3 and set(np.unique(a.noise).tolist()) <= {0.0, float(np.float32(0.1))}
    off = draw(AugmentConfig(crop_size=32, **{"brightness": 0, "contrast": 0, "blur_p": 0, "noise_std": 0}),
               5, 100, 64, 64)
    assert (off.brightness == 1).all() and (off.contrast == 1).all() and (off.sigma == NO_BLUR_SIGMA).all()
    assert (off.noise == 0).all()


def test_roi_encodes_crop_and_flip():
    p = draw(AugmentConfig(crop_size=32), 3, 200, 64, 64)
    start, end = p.roi()
    top, left, h, w = p.crop.T
    assert np.array_equal(start[:, 0], top) and np.array_equal(end[:, 0], top + h)
    assert np.array_equal(np.minimum(start[:, 1], end[:, 1]), left)
    assert np.array_equal(np.abs(end[:, 1] - start[:, 1]), w)
    assert np.array_equal(end[:, 1] < start[:, 1], p.flip)
