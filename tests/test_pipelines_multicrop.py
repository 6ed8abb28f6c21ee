"""Multi-crop view groups (AugmentConfig.small_views) on every loader: the configured groups in order with their
shapes; each group's crop areas distributed as torchvision's RandomResizedCrop with that group's scale range (KS,
recovered from ramp images as in tests/test_pipelines_crops.py); resume mid-epoch bitwise; two ranks cover every
slot once per epoch."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import ks_2samp

from pipelines import AugmentConfig, build_loader
from pipelines.config import ViewGroup
from tests.pipelines_fixtures import (NO_PHOTOMETRIC, RAMP, config_for, loader, phantom_store,  # noqa: F401
                                      ramp_stores)
from tests.training_fixtures import CODED_N, coded_store, decode_views  # noqa: F401

KINDS = ["dali-cpu", "opencv", "torchvision"]
LARGE, SMALL = 48, 24
GROUPS = dict(scale=(0.14, 1.0), small_views=(ViewGroup(4, SMALL, (0.05, 0.14)),))


def _epochs(ld, epochs, start_batch: int = 0) -> list[tuple]:
    out = []
    for e in epochs:
        ld.set_epoch(e, start_batch=start_batch)
        out += [tuple(views) for views in ld]
    return out


@pytest.mark.parametrize("kind", KINDS + ["dali-cpu torch float end"])
def test_every_loader_yields_the_configured_groups(phantom_store, kind):  # noqa: F811
    kind, *option = kind.split(" ", 1)
    config = config_for(phantom_store, LARGE, **GROUPS)
    ld = loader(phantom_store, kind, 4, config, seed=2, **({"float_end": "torch"} if option else {}))
    batches = _epochs(ld, [0])
    assert len(batches) == len(ld) == len(phantom_store) // 4
    for views in batches:
        assert [tuple(v.shape) for v in views] == [(4, 1, LARGE, LARGE)] * 2 + [(4, 1, SMALL, SMALL)] * 4
        assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in views)
    flat = [v.flatten(1) for v in batches[0][2:]]
    assert all((a - b).abs().mean() > 1e-3 for i, a in enumerate(flat) for b in flat[:i]), "small views differ"


def _fit(profiles: np.ndarray) -> np.ndarray:
    """Extent in source pixels per view from (V, size) ramp profiles (3 px left out at each end, as the resize
    filters clamp at the crop's border)."""
    size = profiles.shape[1]
    centres = np.arange(3, size - 3) + 0.5
    p, c = profiles[:, 3:size - 3], centres - centres.mean()
    return np.abs((p - p.mean(1, keepdims=True)) @ c / (c @ c)) * size


def _reference_areas(scale, n: int = 20000) -> np.ndarray:
    from torchvision.transforms import RandomResizedCrop
    torch.manual_seed(0)
    img = torch.empty(1, RAMP, RAMP)
    crops = np.array([RandomResizedCrop.get_params(img, list(scale), [3 / 4, 4 / 3]) for _ in range(n)], float)
    return crops[:, 2] * crops[:, 3] / RAMP**2


@pytest.mark.parametrize("kind", KINDS)
def test_each_group_crop_area_follows_its_scale_range(ramp_stores, kind):  # noqa: F811
    config = AugmentConfig(crop_size=LARGE, mean=0.0, std=1.0, **NO_PHOTOMETRIC, **GROUPS)
    runs = [_epochs(loader(store, kind, 32, config, seed=4), range(5)) for store in ramp_stores]
    for g, (first, count, group) in enumerate([(0, 2, config.groups[0]), (2, 4, config.groups[1])]):
        vx, vy = (torch.cat([v for views in run for v in views[first:first + count]])[:, 0].double().numpy() * 255
                  for run in runs)
        w, h = _fit(vx.mean(1)), _fit(vy.mean(2))
        area = w * h / RAMP**2
        stat = ks_2samp(area, _reference_areas(group.scale)).statistic
        print(f"KS {kind} group {g} ({group.count} x {group.size}, scale {group.scale}): {stat:.4f}, n={len(area)}")
        assert len(area) >= 320 and stat <= 0.1, f"{kind} group {g}: crop areas differ from scale {group.scale}"
        lo, hi = group.scale
        assert lo * 0.9 < area.min() and area.max() < hi * 1.1  # within the group's range, up to the fit's error


@pytest.mark.parametrize("kind", KINDS)
def test_resume_mid_epoch_is_bitwise_with_small_views(phantom_store, kind):  # noqa: F811
    config = config_for(phantom_store, LARGE, **GROUPS)
    full = _epochs(loader(phantom_store, kind, 4, config, seed=9), [1])
    resumed = _epochs(loader(phantom_store, kind, 4, config, seed=9), [1], start_batch=2)
    assert len(resumed) == len(full) - 2
    for j, (a, b) in enumerate(zip(resumed, full[2:]), start=2):
        assert all(torch.equal(x, y) for x, y in zip(a, b)), f"{kind}: resumed batch {j} differs"


@pytest.mark.parametrize("kind", KINDS)
def test_two_ranks_cover_every_slot_once_with_small_views(coded_store, kind):  # noqa: F811
    """Large views of the whole image spell their slot; the small views ride along, as many per image."""
    config = AugmentConfig.for_store(coded_store, crop_size=32, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0,
                                     **NO_PHOTOMETRIC, small_views=(ViewGroup(2, 16, (0.05, 0.3)),))
    loaders = [build_loader(coded_store, kind, 4, config=config, seed=1, rank=r, world_size=2, num_workers=1,
                            device="cpu") for r in range(2)]
    for epoch in (0, 1):
        seen = []
        for ld in loaders:
            mine = []
            for views in _epochs(ld, [epoch]):
                assert len(views) == 4 and views[2].shape == views[3].shape == (4, 1, 16, 16)
                assert decode_views(views[0]) == decode_views(views[1])
                mine += decode_views(views[0])
            seen.append(mine)
        assert not set(seen[0]) & set(seen[1])
        assert sorted(seen[0] + seen[1]) == list(range(CODED_N)), f"{kind}: epoch {epoch} coverage"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the dali-gpu loader)")
def test_dali_gpu_yields_the_configured_groups(phantom_store):  # noqa: F811
    pytest.importorskip("nvidia.dali")
    config = config_for(phantom_store, LARGE, **GROUPS)
    views = next(iter(build_loader(phantom_store, "dali-gpu", 4, config=config, seed=2)))
    assert [tuple(v.shape) for v in views] == [(4, 1, LARGE, LARGE)] * 2 + [(4, 1, SMALL, SMALL)] * 4
    assert all(v.device.type == "cuda" and torch.isfinite(v).all() for v in views)


def test_view_groups_from_the_command_line_and_their_errors():
    from training.build import parse_overrides
    got = parse_overrides(["small_views=6x96:0.05,0.14+2x64:0.1,0.3", "scale=0.14,1"])
    config = AugmentConfig(**got)
    assert config.groups == (ViewGroup(2, 224, (0.14, 1.0)), ViewGroup(6, 96, (0.05, 0.14)),
                             ViewGroup(2, 64, (0.1, 0.3)))
    assert config.n_views == 10 and AugmentConfig().groups == (ViewGroup(2, 224, (0.08, 1.0)),)
    with pytest.raises(ValueError, match="COUNTxSIZE:LO,HI"):
        parse_overrides(["small_views=6x96"])
    with pytest.raises(ValueError, match="size <= crop_size"):
        AugmentConfig(crop_size=64, small_views=(ViewGroup(2, 96, (0.05, 0.14)),))
