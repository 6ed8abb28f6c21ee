"""build_loader: the one way the training and benchmark code (and outside checks) get a loader.

    loader = build_loader("stores/nih", "dali-gpu", 256, seed=0, rank=rank, world_size=world)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for view1, view2 in loader:   # float32 (B, 1, crop, crop), normalized, on the training device
            ...                        # with config.small_views: view1, view2, *small (each (B, 1, size, size))
"""
from __future__ import annotations

import gc
import sys
from pathlib import Path

import torch

from pipelines.config import AugmentConfig
from pipelines.sampler import EpochSampler
from pipelines.subset import Subset, select_slots
from preprocess.store import Store, open_store

KINDS = ("dali-gpu", "dali-cpu", "torchvision", "opencv")


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
        return True
    except ImportError:
        return False


def best_kind() -> str:
    """The fastest loader this machine can run, as measured (docs/BENCHMARKS.md): dali-gpu where a GPU and DALI
    are there; otherwise opencv, which on a CPU makes 5.9x the images per core of dali-cpu (2,898 vs 490)."""
    if dali_available() and torch.cuda.is_available():
        return "dali-gpu"
    return "opencv"


def build_loader(store: str | Path | Store, kind: str, batch_size: int, *, config: AugmentConfig | None = None,
                 seed: int = 0, rank: int = 0, world_size: int = 1, drop_last: bool = True,
                 num_workers: int | None = None, device: str | torch.device | None = None,
                 resident: bool = False, select: Subset | None = None, float_end: str = "graph"):
    """A loader of `kind` over `store`, yielding (view1, view2) on `device` (and the small views after them when
    `config.small_views` asks for some).

    kind: dali-gpu | dali-cpu | torchvision | opencv. config: defaults to AugmentConfig with the store's measured
    mean/std. num_workers: DataLoader workers (CPU loaders) or DALI CPU threads; default all cores.
    device: the training device (default: cuda if available, else cpu). resident (dali-gpu only): copy the whole
    store to GPU memory once and gather batches there. select: a `pipelines.subset.Subset` (views, datasets,
    split): the sampler deals only the manifest's matching slots (default: every slot). float_end (DALI loaders):
    "graph", the whole chain in DALI (default), or "torch", jitter/noise/normalize after DALI in torch/OpenCV.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown loader kind {kind!r}: choose one of {', '.join(KINDS)}")
    if kind.startswith("dali") and not dali_available():
        raise ValueError(f"the {kind} loader needs NVIDIA DALI: pip install '.[dali]' "
                         "(nvidia-dali-cuda120>=2.4), or use --loader torchvision or opencv")
    if kind == "dali-gpu" and not torch.cuda.is_available():
        raise ValueError("the dali-gpu loader needs a CUDA GPU and none is visible here: "
                         "use dali-cpu (DALI's CPU backend), opencv or torchvision")
    if float_end != "graph" and not kind.startswith("dali"):
        raise ValueError(f"float_end={float_end!r} is a choice of the DALI loaders only (dali-gpu, dali-cpu)")
    if resident and kind != "dali-gpu":
        raise ValueError("resident=True (a GPU-resident store) works only with the dali-gpu loader")
    store = store if isinstance(store, Store) else open_store(store)
    config = config or AugmentConfig.for_store(store)
    if config.crop_size > store.size:
        raise ValueError(f"crop_size {config.crop_size} is larger than the store's images ({store.size}px)")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    slots = select_slots(store, select)
    n = len(store) if slots is None else len(slots)
    if slots is not None and drop_last and n < batch_size * world_size:
        raise ValueError(f"{select.describe()} leaves {n} of the store's {len(store)} images, fewer than one batch "
                         f"of {batch_size} on each of {world_size} rank(s): widen the selection or lower --batch-size")
    sampler = EpochSampler(n, batch_size, seed=seed, rank=rank, world_size=world_size, drop_last=drop_last,
                           slots=slots)
    if kind.startswith("dali"):
        from pipelines.dali_loader import DaliLoader
        return DaliLoader(store, sampler, config, device=kind[5:], num_threads=num_workers, out_device=device,
                          resident=resident, float_end=float_end)
    first_import = "pipelines.cpu_loaders" not in sys.modules
    from pipelines.cpu_loaders import FastCpuLoader, SeedLoader
    if first_import:
        # importing torchvision leaves cyclic garbage that holds the importing frames, the caller's among them: a
        # loader that frame goes on to hold would outlive it until some later collection, which then stops its
        # workers in an arbitrary order (5 s per worker). Collect that garbage now, while it holds no loader.
        gc.collect()
    cls = SeedLoader if kind == "torchvision" else FastCpuLoader
    return cls(store, sampler, config, num_workers=num_workers, out_device=device)
