"""The fast loaders against the seed: on the real radiograph, the per-view mean and standard deviation of views from
dali-cpu and from opencv are distributed as those of the seed's torchvision chain (two-sample KS <= 0.1)."""
from __future__ import annotations

import pytest
import torch

from tests.pipelines_fixtures import config_for, first_batch, loader, real_store, views  # noqa: F401 (fixture)

N_VIEWS = 1600
CROP = 56


@pytest.fixture(scope="module")
def view_stats(real_store):  # noqa: F811 (the fixture imported above)
    """kind -> (per-view mean, per-view std), over N_VIEWS views of the real image."""
    config = config_for(real_store, CROP)
    out = {}
    for kind in ("torchvision", "dali-cpu", "opencv"):
        ld = loader(real_store, kind, len(real_store), config, seed=11)
        v = views(ld, N_VIEWS).flatten(1).double()
        assert v.shape[0] >= N_VIEWS and torch.isfinite(v).all()
        out[kind] = (v.mean(1).numpy(), v.std(1).numpy())
        del ld
    return out


@pytest.mark.parametrize("kind", ["dali-cpu", "opencv"])
def test_view_statistics_match_the_seed(view_stats, kind):
    ks_2samp = pytest.importorskip("scipy.stats").ks_2samp
    for i, name in enumerate(("mean", "std")):
        stat = ks_2samp(view_stats[kind][i], view_stats["torchvision"][i]).statistic
        print(f"KS {kind} vs torchvision, per-view {name}: {stat:.4f}")
        assert stat <= 0.1, f"per-view {name} of {kind} views differs from the seed's (KS {stat:.3f} > 0.1)"


def test_view_statistics_are_not_degenerate(view_stats):
    """The augmentation really varies the views (a KS test between two constants would pass trivially)."""
    for kind, (mean, std) in view_stats.items():
        assert mean.std() > 0.1 and std.std() > 0.05, kind
        assert 0.3 < std.mean() < 2.0, kind


def test_dali_cpu_and_opencv_agree_view_by_view(real_store):  # noqa: F811
    """Same seed, same parameters (pipelines.params): with the jitter and noise off the two only differ by their
    resize and blur kernels, so the views agree pixel by pixel up to small numeric differences. (The noise comes
    from each one's own generator, and the DALI graph applies ColorJitter's two clamps in torchvision's order where
    opencv clamps once: tests/test_pipelines_graph.py checks those against torchvision.)"""
    config = config_for(real_store, CROP, noise_std=0.0, brightness=0.0, contrast=0.0)
    a = first_batch(loader(real_store, "dali-cpu", 4, config, seed=5))
    b = first_batch(loader(real_store, "opencv", 4, config, seed=5))
    assert a.shape == b.shape
    diff = (a - b).abs().mean().item()
    assert diff < 0.05, f"dali-cpu and opencv views differ by {diff:.3f} (normalized units) on average"
