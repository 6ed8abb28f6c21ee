"""Repeatability of the loaders: a function of (seed, rank, epoch); ranks differ; resuming mid-epoch redraws exactly
what an uninterrupted epoch would have; an abandoned epoch leaves nothing behind."""
from __future__ import annotations

import pytest
import torch

from tests.pipelines_fixtures import (config_for, epoch_batches, first_batch, flat_store, loader,  # noqa: F401
                                      phantom_store)

KINDS = ["dali-cpu", "opencv", "torchvision"]
CROP, BATCH = 64, 4


def _differ(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape != b.shape or (a - b).abs().mean().item() > 1e-3


@pytest.mark.parametrize("kind", KINDS)
def test_ranks_draw_different_augmentations(flat_store, kind):  # noqa: F811
    """All images are identical, so views can differ only through the augmentation each rank draws."""
    config = config_for(flat_store, CROP)
    r0 = first_batch(loader(flat_store, kind, BATCH, config, seed=3, rank=0, world_size=2))
    r1 = first_batch(loader(flat_store, kind, BATCH, config, seed=3, rank=1, world_size=2))
    again = first_batch(loader(flat_store, kind, BATCH, config, seed=3, rank=0, world_size=2))
    assert _differ(r0, r1), f"{kind}: ranks 0 and 1 drew the same views"
    assert torch.equal(r0, again), f"{kind}: the same rank, seed and epoch gave other views"
    # within a batch too, every view of the identical images is augmented differently
    flat = r0.flatten(1)
    assert all(_differ(flat[i], flat[j]) for i in range(len(flat)) for j in range(i))


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_first_batch(phantom_store, kind):  # noqa: F811
    config = config_for(phantom_store, CROP)
    a = first_batch(loader(phantom_store, kind, BATCH, config, seed=21))
    b = first_batch(loader(phantom_store, kind, BATCH, config, seed=21))
    c = first_batch(loader(phantom_store, kind, BATCH, config, seed=22))
    assert a.dtype == torch.float32 and a.shape == (2 * BATCH, 1, CROP, CROP)
    assert torch.equal(a, b), f"{kind}: two loaders with the same seed gave different first batches"
    assert _differ(a, c), f"{kind}: another seed gave the same first batch"


@pytest.mark.parametrize("kind", KINDS)
def test_epochs_differ(phantom_store, kind):  # noqa: F811
    ld = loader(phantom_store, kind, BATCH, config_for(phantom_store, CROP), seed=1)
    assert _differ(first_batch(ld, 0), first_batch(ld, 1))
    assert torch.equal(first_batch(ld, 0), first_batch(ld, 0)), f"{kind}: epoch 0 is not repeatable"


@pytest.mark.parametrize("kind", KINDS)
def test_resume_mid_epoch_is_bitwise_the_rest_of_the_epoch(phantom_store, kind):  # noqa: F811
    config = config_for(phantom_store, CROP)
    ld = loader(phantom_store, kind, BATCH, config, seed=9)
    n = len(ld)
    assert n == len(phantom_store) // BATCH
    full = epoch_batches(ld, 1)
    assert len(full) == n
    for k in (1, n - 1):
        resumed = epoch_batches(loader(phantom_store, kind, BATCH, config, seed=9), 1, start_batch=k)
        assert len(resumed) == n - k
        for j, (a, b) in enumerate(zip(resumed, full[k:]), start=k):
            assert torch.equal(a, b), f"{kind}: resumed batch {j} differs from the uninterrupted one"
    # a resumed epoch on a loader that already ran, then the next whole epoch
    resumed = epoch_batches(ld, 1, start_batch=2)
    assert all(torch.equal(a, b) for a, b in zip(resumed, full[2:])) and len(resumed) == n - 2
    fresh2 = epoch_batches(loader(phantom_store, kind, BATCH, config, seed=9), 2)
    after = epoch_batches(ld, 2)
    assert len(after) == n and all(torch.equal(a, b) for a, b in zip(after, fresh2)), \
        f"{kind}: the epoch after a resumed one differs from a fresh loader's"


@pytest.mark.parametrize("kind", KINDS)
def test_abandoned_epoch_leaves_nothing_behind(phantom_store, kind):  # noqa: F811
    config = config_for(phantom_store, CROP)
    want = epoch_batches(loader(phantom_store, kind, BATCH, config, seed=4), 1)
    ld = loader(phantom_store, kind, BATCH, config, seed=4)
    epoch_batches(ld, 0, limit=2)  # stop after 2 of the 6 batches
    got = epoch_batches(ld, 1)
    assert len(got) == len(want) == len(ld)
    for j, (a, b) in enumerate(zip(got, want)):
        assert torch.equal(a, b), f"{kind}: batch {j} after an abandoned epoch differs from a fresh loader's"
    # abandoning a resumed epoch too
    epoch_batches(ld, 1, start_batch=3, limit=1)
    again = epoch_batches(ld, 1)
    assert len(again) == len(want) and all(torch.equal(a, b) for a, b in zip(again, want))
