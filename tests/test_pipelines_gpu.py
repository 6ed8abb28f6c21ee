"""dali-gpu (streamed from the memmap, and GPU-resident) against dali-cpu: same parameters, so the same views up to
small numeric differences between DALI's CPU and GPU kernels. Runs only where CUDA and DALI are available."""
from __future__ import annotations

import pytest
import torch

from pipelines import build_loader
from pipelines.factory import dali_available
from tests.pipelines_fixtures import (check_uint8_path, config_for, epoch_batches, first_batch, loader,  # noqa: F401
                                      phantom_store)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the dali-gpu loader)"),
    pytest.mark.skipif(not dali_available(), reason="needs NVIDIA DALI: pip install '.[dali]'"),
]

CROP, BATCH, SEED = 64, 4, 17


def _no_noise(store):
    # the noise comes from a torch generator on the output device; CPU and CUDA generators draw different numbers
    # from the same seed, so the view-by-view comparison leaves the noise out
    return config_for(store, CROP, noise_std=0.0)


@pytest.mark.parametrize("resident", [False, True], ids=["streamed", "resident"])
def test_dali_gpu_matches_dali_cpu(phantom_store, resident):  # noqa: F811
    config = _no_noise(phantom_store)
    gpu = build_loader(phantom_store, "dali-gpu", BATCH, config=config, seed=SEED, num_workers=2, resident=resident)
    cpu = loader(phantom_store, "dali-cpu", BATCH, config, seed=SEED)
    assert len(gpu) == len(cpu) == len(phantom_store) // BATCH
    gpu.set_epoch(0)
    v1, v2 = next(iter(gpu))
    for v in (v1, v2):
        assert v.device.type == "cuda" and v.device.index == torch.cuda.current_device()
        assert v.dtype == torch.float32 and v.shape == (BATCH, 1, CROP, CROP)
        assert torch.isfinite(v).all()
    want = first_batch(cpu)
    got = torch.cat([v1, v2]).cpu()
    diff = (got - want).abs().mean().item()
    assert diff < 0.05, f"dali-gpu (resident={resident}) differs from dali-cpu by {diff:.4f} on average"
    assert (got - want).abs().max().item() < 1.0


@pytest.mark.parametrize("resident", [False, True], ids=["streamed", "resident"])
def test_dali_gpu_repeated_epochs(phantom_store, resident):  # noqa: F811
    ld = build_loader(phantom_store, "dali-gpu", BATCH, config=config_for(phantom_store, CROP), seed=SEED,
                      num_workers=2, resident=resident)
    epochs = [epoch_batches(ld, e) for e in (0, 1, 0)]
    for batches in epochs:
        assert len(batches) == len(ld)
        assert all(b.device.type == "cuda" and b.shape == (2 * BATCH, 1, CROP, CROP) for b in batches)
        assert all(torch.isfinite(b).all() for b in batches)
    assert (epochs[0][0] - epochs[1][0]).abs().mean().item() > 1e-3, "another epoch, other views"
    again = max((a - b).abs().max().item() for a, b in zip(epochs[0], epochs[2]))
    assert again < 1e-4, f"epoch 0 run twice differs by up to {again}"
    # resume mid-epoch and abandon an epoch on the GPU path too
    resumed = epoch_batches(ld, 0, start_batch=2)
    assert len(resumed) == len(ld) - 2
    assert max((a - b).abs().max().item() for a, b in zip(resumed, epochs[0][2:])) < 1e-4
    epoch_batches(ld, 1, limit=1)
    after = epoch_batches(ld, 0)
    assert len(after) == len(ld) and max((a - b).abs().max().item() for a, b in zip(after, epochs[0])) < 1e-4


@pytest.mark.parametrize("kind", ["dali-cpu", "opencv", "torchvision"])
def test_cpu_kinds_deliver_to_the_gpu(phantom_store, kind):  # noqa: F811
    """The default device is CUDA where there is one: CPU loaders hand their batches over to it. dali-cpu and
    torchvision make the same views for either device (float rounding apart). The opencv loader for a GPU blurs in
    uint8 in its workers and finishes on the GPU, unlike its CPU path (float blur, up to 1.5 gray levels apart):
    it is compared with that uint8 path computed on the CPU (the same check runs on a CPU in
    test_pipelines_photometric.py)."""
    config = _no_noise(phantom_store)
    ld = build_loader(phantom_store, kind, BATCH, config=config, seed=SEED, num_workers=2)
    got = first_batch(ld)
    assert got.device.type == "cuda" and got.dtype == torch.float32 and got.shape == (2 * BATCH, 1, CROP, CROP)
    if kind == "opencv":
        check_uint8_path(ld, got)
        return
    want = first_batch(loader(phantom_store, kind, BATCH, config, seed=SEED))
    assert (got.cpu() - want).abs().max().item() < 1e-3
