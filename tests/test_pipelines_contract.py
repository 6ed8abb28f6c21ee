"""The loader contract (DESIGN.md): build_loader's kinds and errors, len(), set_epoch, what a batch is."""
from __future__ import annotations

import pytest
import torch

from pipelines import KINDS, AugmentConfig, best_kind, build_loader
from tests.pipelines_fixtures import (NO_PHOTOMETRIC, config_for, epoch_batches, first_batch, loader,  # noqa: F401
                                      phantom_store)

CPU_KINDS = ["dali-cpu", "opencv", "torchvision"]
CROP = 64


@pytest.mark.parametrize("kind", CPU_KINDS)
@pytest.mark.parametrize("batch,world", [(4, 1), (5, 2)])
def test_len_set_epoch_and_batches(phantom_store, kind, batch, world):  # noqa: F811
    """len() is the number of batches an epoch yields; each is two float32 (B, 1, crop, crop) CPU tensors."""
    ld = loader(phantom_store, kind, batch, config_for(phantom_store, CROP), seed=0, rank=world - 1,
                world_size=world)
    assert len(ld) == len(phantom_store) // (batch * world)
    for epoch in (0, 1):
        ld.set_epoch(epoch)
        n = 0
        for item in ld:
            assert isinstance(item, tuple) and len(item) == 2
            for v in item:
                assert isinstance(v, torch.Tensor) and v.dtype == torch.float32 and v.device.type == "cpu"
                assert v.shape == (batch, 1, CROP, CROP)
                assert torch.isfinite(v).all()
            n += 1
        assert n == len(ld), f"{kind}: epoch {epoch} yielded {n} batches, len() says {len(ld)}"


@pytest.mark.parametrize("kind", CPU_KINDS)
def test_last_partial_batch_without_drop_last(phantom_store, kind):  # noqa: F811
    ld = loader(phantom_store, kind, 5, config_for(phantom_store, CROP), drop_last=False)
    sizes = [b.shape[0] // 2 for b in epoch_batches(ld, 0)]
    assert sizes == [5, 5, 5, 5, 4] and len(ld) == 5


@pytest.mark.parametrize("kind", CPU_KINDS)
def test_normalized_with_the_store_statistics(phantom_store, kind):  # noqa: F811
    """With the photometric changes off, views are resized crops of the store's images: normalized with the store's
    measured mean/std, their pixels have mean ~0 and std ~1 (crops over-sample the centre, hence the tolerance)."""
    config = config_for(phantom_store, CROP, **NO_PHOTOMETRIC)
    assert (config.mean, config.std) == (phantom_store.mean, phantom_store.std)
    x = torch.cat(epoch_batches(loader(phantom_store, kind, 4, config), 0) +
                  epoch_batches(loader(phantom_store, kind, 4, config), 1))
    assert abs(x.mean().item()) < 0.3 and 0.75 < x.std().item() < 1.25, (x.mean().item(), x.std().item())
    # the same views with the default augmentation: still centred near 0 and spread near 1
    y = torch.cat(epoch_batches(loader(phantom_store, kind, 4, config_for(phantom_store, CROP)), 0))
    assert abs(y.mean().item()) < 0.6 and 0.6 < y.std().item() < 1.6, (y.mean().item(), y.std().item())


@pytest.mark.parametrize("kind", CPU_KINDS)
def test_default_config_reads_the_store(phantom_store, kind):  # noqa: F811
    """config=None: the store's mean/std and the seed's 224 crop, which a 96 px store cannot give."""
    with pytest.raises(ValueError, match="crop_size 224 is larger"):
        build_loader(phantom_store, kind, 4, num_workers=0, device="cpu")
    config = AugmentConfig.for_store(phantom_store)
    assert config.mean == phantom_store.mean and config.std == phantom_store.std and config.crop_size == 224


def test_unknown_kind_names_the_kinds(phantom_store):  # noqa: F811
    with pytest.raises(ValueError) as err:
        build_loader(phantom_store, "pillow", 4, config=config_for(phantom_store, CROP))
    assert all(k in str(err.value) for k in KINDS)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where no CUDA GPU is visible")
def test_dali_gpu_without_cuda_names_the_alternatives(phantom_store):  # noqa: F811
    with pytest.raises(ValueError) as err:
        build_loader(phantom_store, "dali-gpu", 4, config=config_for(phantom_store, CROP))
    assert all(k in str(err.value) for k in ("dali-cpu", "opencv", "torchvision"))
    assert best_kind() in ("dali-cpu", "opencv")


@pytest.mark.parametrize("kind", CPU_KINDS)
def test_resident_needs_dali_gpu(phantom_store, kind):  # noqa: F811
    with pytest.raises(ValueError, match="dali-gpu"):
        build_loader(phantom_store, kind, 4, config=config_for(phantom_store, CROP), resident=True)


@pytest.mark.parametrize("kind", CPU_KINDS)
def test_crop_larger_than_the_store_raises(phantom_store, kind):  # noqa: F811
    with pytest.raises(ValueError, match="larger than the store"):
        build_loader(phantom_store, kind, 4, config=config_for(phantom_store, phantom_store.size + 1))
    build_loader(phantom_store, kind, 4, config=config_for(phantom_store, phantom_store.size), num_workers=0,
                 device="cpu")


def test_store_path_and_store_object_give_the_same_loader(phantom_store):  # noqa: F811
    config = config_for(phantom_store, CROP)
    a = first_batch(build_loader(phantom_store.root, "opencv", 4, config=config, num_workers=0, device="cpu"))
    b = first_batch(build_loader(phantom_store, "opencv", 4, config=config, num_workers=0, device="cpu"))
    assert torch.equal(a, b)


@pytest.mark.parametrize("kind", CPU_KINDS)
def test_store_too_small_for_a_batch_raises(phantom_store, kind):  # noqa: F811
    with pytest.raises(ValueError, match="cannot fill one batch"):
        build_loader(phantom_store, kind, 13, config=config_for(phantom_store, CROP), world_size=2, device="cpu")
