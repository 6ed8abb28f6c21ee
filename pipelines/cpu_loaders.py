"""The CPU loaders, in torch DataLoader workers over the memmap (forked workers share its page cache).

`SeedLoader` ("torchvision"): exactly the seed's transform list on PIL images, one image per work item, as the seed
ran it. Each image's RNG is seeded from (seed, epoch, slot), so the result does not depend on which worker ran it.

`FastCpuLoader` ("opencv"): the same distributions written for speed. A work item is a whole batch: one gather from
the memmap, then per view an OpenCV resize of the crop window, a separable Gaussian blur and a flip, all in uint8;
the batch travels as uint8 and the float end (jitter, noise, normalize) runs batched in torch on the training
device (`pipelines.photometric`), with the same parameter draws as the DALI loader (`pipelines.params`).
"""
from __future__ import annotations

import contextlib
import os
import sys
import weakref

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
# at the top, not in seed_transform: a first import inside a loader's constructor leaves cyclic garbage (frames)
# that keeps the loader, and so its worker processes, alive until the next garbage collection
from torchvision import transforms as T

from pipelines.config import AugmentConfig
from pipelines.params import draw
from pipelines.photometric import finish
from pipelines.sampler import EpochSampler, key


class AddGaussianNoise:
    """The seed's noise: x + N(0, std) on [0, 1] intensities, not clamped."""

    def __init__(self, std: float):
        self.std = std

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.randn_like(x) * self.std


def seed_transform(config: AugmentConfig):
    """The seed's torchvision chain, with every number taken from `config`."""
    def maybe(p, t):
        return t if p >= 1 else T.RandomApply([t], p=p)

    return T.Compose([
        T.RandomResizedCrop(config.crop_size, scale=config.scale, ratio=config.ratio),
        T.RandomHorizontalFlip(p=config.flip_p),
        maybe(config.jitter_p, T.ColorJitter(brightness=config.brightness, contrast=config.contrast)),
        maybe(config.blur_p, T.GaussianBlur(kernel_size=config.blur_kernel, sigma=config.blur_sigma)),
        T.ToTensor(),
        maybe(config.noise_p, AddGaussianNoise(config.noise_std)),
        T.Normalize(mean=[config.mean], std=[config.std]),
    ])


class _SeedViews(Dataset):
    def __init__(self, images, config: AugmentConfig, seed: int):
        self.images, self.transform, self.seed = images, seed_transform(config), seed

    def __len__(self):
        return len(self.images)

    def __getitem__(self, item):
        epoch, slot = item
        img = Image.fromarray(np.asarray(self.images[slot]))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(key(self.seed, epoch, slot))
            return self.transform(img), self.transform(img)


class _FastViews(Dataset):
    def __init__(self, images, config: AugmentConfig):
        self.images, self.config, self.finish_here = images, config, False

    def __len__(self):
        return len(self.images)

    def __getitem__(self, item):
        import cv2

        slots, seed, noise_seed = item
        c = self.config.crop_size
        src = self.images[slots]  # one gather of the whole batch
        b = len(slots)
        p = draw(self.config, seed, 2 * b, src.shape[1], src.shape[2])
        out = np.empty((2 * b, c, c), dtype=np.uint8)
        for v in range(2 * b):
            top, left, h, w = p.crop[v]
            interp = cv2.INTER_AREA if h > c and w > c else cv2.INTER_LINEAR
            view = cv2.resize(src[v % b, top:top + h, left:left + w], (c, c), interpolation=interp)
            if p.window[v] > 1:
                w = int(p.window[v])
                view = cv2.GaussianBlur(view, (w, w), sigmaX=float(p.sigma[v]), borderType=cv2.BORDER_REFLECT_101)
            if p.flip[v]:
                cv2.flip(view, 1, dst=out[v])
            else:
                out[v] = view
        views = torch.from_numpy(out).unsqueeze(1)
        # for a CPU training device the float end runs here, in parallel workers; for a GPU, on the GPU
        return finish(views, p, self.config, noise_seed) if self.finish_here else views


def _init_worker(_):
    try:
        import cv2
        cv2.setNumThreads(1)  # one worker per core; OpenCV's own thread pool would oversubscribe
    except ImportError:
        pass


@contextlib.contextmanager
def _opencv_fork_safe():
    """Stop OpenCV's thread pool in this process while workers are forked: a child that resizes an inherited pool
    (setNumThreads in _init_worker) waits forever on the parent's idle threads, which it does not have."""
    cv2 = sys.modules.get("cv2")
    threads = cv2.getNumThreads() if cv2 is not None else None
    if threads is not None:
        cv2.setNumThreads(1)
    try:
        yield
    finally:
        if threads is not None:
            cv2.setNumThreads(threads)


class _CpuLoader:
    """Shared DataLoader plumbing: the sampler's batches for the current epoch become work items."""

    def __init__(self, dataset, sampler: EpochSampler, num_workers: int | None, out_device: torch.device,
                 batched: bool):
        self.sampler, self.out_device, self.batched = sampler, out_device, batched
        self.epoch, self.start_batch = 0, 0
        workers = (os.cpu_count() or 1) if num_workers is None else num_workers
        opts = dict(num_workers=workers, pin_memory=out_device.type == "cuda", worker_init_fn=_init_worker)
        if workers > 0:
            opts.update(persistent_workers=True, prefetch_factor=4 if batched else 2,
                        multiprocessing_context="fork")
        if batched:
            self.loader = DataLoader(dataset, batch_size=None, sampler=self._Items(self), **opts)
        else:
            self.loader = DataLoader(dataset, batch_sampler=self._Items(self), **opts)

    class _Items:
        # holds the loader weakly: a loader <-> DataLoader cycle would leave the DataLoader iterator to the cyclic GC,
        # which may close its queues before it stops the workers (each then waits out a 5 s join, with errors), and
        # even fork a dropped loader's iterator into the next loader's workers
        def __init__(self, owner):
            self.owner = weakref.ref(owner)

        def __len__(self):
            return len(self.owner().sampler) - self.owner().start_batch

        def __iter__(self):
            # the work items are listed up front: a generator suspended in the DataLoader would hold the loader
            o = self.owner()
            batches = enumerate(o.sampler.batches(o.epoch)[o.start_batch:], start=o.start_batch)
            if o.batched:
                return iter([(slots, o._key(j), o._key(j, 1)) for j, slots in batches])
            return iter([[(o.epoch, int(s)) for s in slots] for _, slots in batches])

    def _key(self, j: int, *extra: int) -> int:
        return key(self.sampler.seed, self.sampler.rank, self.epoch, j, *extra)

    def __len__(self) -> int:
        return len(self.sampler)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def _epoch_iter(self):
        """The DataLoader's iterator for this epoch (the first one forks the persistent workers)."""
        if self.loader.num_workers == 0:
            return iter(self.loader)
        with _opencv_fork_safe():
            return iter(self.loader)

    def close(self) -> None:
        """Stop the worker processes now (they are persistent across epochs)."""
        it = getattr(self.loader, "_iterator", None)  # DataLoader keeps its persistent-worker iterator here
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
        self.loader._iterator = None


class SeedLoader(_CpuLoader):
    def __init__(self, store, sampler, config, *, num_workers=None, out_device=torch.device("cpu")):
        super().__init__(_SeedViews(store.images, config, sampler.seed), sampler, num_workers, out_device, False)

    def __iter__(self):
        for v1, v2 in self._epoch_iter():
            yield v1.to(self.out_device, non_blocking=True), v2.to(self.out_device, non_blocking=True)
        self.start_batch = 0


class FastCpuLoader(_CpuLoader):
    def __init__(self, store, sampler, config, *, num_workers=None, out_device=torch.device("cpu")):
        views = _FastViews(store.images, config)
        views.finish_here = out_device.type == "cpu"
        super().__init__(views, sampler, num_workers, out_device, True)
        self.config, self.size, self.finish_here = config, store.size, views.finish_here

    def __iter__(self):
        for j, x in enumerate(self._epoch_iter(), start=self.start_batch):
            b = x.shape[0] // 2
            if not self.finish_here:
                p = draw(self.config, self._key(j), 2 * b, self.size, self.size)
                x = finish(x.to(self.out_device, non_blocking=True), p, self.config, self._key(j, 1))
            yield x[:b], x[b:]
        self.start_batch = 0
