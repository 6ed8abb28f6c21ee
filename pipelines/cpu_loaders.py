"""The CPU loaders, in torch DataLoader workers over the memmap (forked workers share its page cache).

`SeedLoader` ("torchvision"): exactly the seed's transform list on PIL images, two views per image. Each image's
RNG is seeded from (seed, epoch, slot), so the result does not depend on which worker ran it.

`FastCpuLoader` ("opencv"): the same distributions written for speed (`pipelines.opencv_views`), with the same
parameter draws as the DALI loader (`pipelines.params`). For a CPU training device the workers make finished float
views; for a GPU they send uint8 views and the float end runs on the GPU (`pipelines.photometric`).

Both share the plumbing, so they differ only by the augmentation: a work item is a whole batch (one gather from the
memmap), written view by view into an output buffer that is reused (`pipelines.buffers`), and the workers give
freed memory back to the system at once (`_init_worker`), so what they hold privately stays small and does not
grow with the store.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import weakref

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
# at the top, not in seed_transform: a first import inside a loader's constructor leaves cyclic garbage (frames)
# that keeps the loader, and so its worker processes, alive until the next garbage collection
from torchvision import transforms as T

from pipelines import opencv_views
from pipelines.buffers import BufferPool
from pipelines.config import AugmentConfig
from pipelines.params import draw_groups
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


class _Views(Dataset):
    """A work item is (epoch, batch index, store slots, output buffer or None): it returns the batch's views, one
    (count * B, 1, size, size) tensor per view group (view 1 of every image, then view 2, ...), or (buffer, rows)
    when they were written into a pool buffer (the default config: one group, so one tensor)."""

    def __init__(self, images, config: AugmentConfig, sampler: EpochSampler, float_out: bool):
        self.images, self.config, self.float_out, self.pool = images, config, float_out, None
        self.seed, self.rank = sampler.seed, sampler.rank

    def __len__(self):
        return len(self.images)

    def __getitem__(self, item):
        epoch, j, slots, buf = item
        if buf is not None:
            out = self.pool.tensors[buf][:2 * len(slots)]
            self.make(epoch, j, slots, [out])
            return buf, len(out)  # the main process reads the buffer it shares with this worker
        outs = [None] * len(self.config.groups)
        if self.float_out:  # no pool buffer: shared memory in a worker, so nothing is copied on hand-over
            outs = [torch.empty((g.count * len(slots), 1, g.size, g.size), dtype=torch.float32)
                    for g in self.config.groups]
            if torch.utils.data.get_worker_info() is not None:
                outs = [o.share_memory_() for o in outs]
        got = self.make(epoch, j, slots, outs)
        return got[0] if len(got) == 1 else tuple(got)

    def key(self, epoch: int, j: int, *extra: int) -> int:
        return key(self.seed, self.rank, epoch, j, *extra)


class _SeedViews(_Views):
    def __init__(self, images, config: AugmentConfig, sampler: EpochSampler):
        super().__init__(images, config, sampler, True)
        self.transforms = [seed_transform(config.for_group(g)) for g in range(len(config.groups))]

    def make(self, epoch, j, slots, outs):
        b = len(slots)
        for i, slot in enumerate(slots):
            img = Image.fromarray(np.asarray(self.images[slot]))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(key(self.seed, epoch, int(slot)))
                for transform, group, out in zip(self.transforms, self.config.groups, outs):
                    for k in range(group.count):  # views drawn in order: the large pair first, as the seed's
                        out[k * b + i] = transform(img)
        return outs


class _FastViews(_Views):
    def make(self, epoch, j, slots, outs):
        draws = draw_groups(self.config, lambda *extra: self.key(epoch, j, *extra), len(slots),
                            self.images.shape[1], self.images.shape[2])
        src = self.images[slots]  # one gather of the whole batch, for every group
        # for a CPU training device the float end runs here, in parallel workers; for a GPU, on the GPU
        return [opencv_views.batch(src, None, p, self.config.for_group(g),
                                   self.key(epoch, j, 1, *([g] if g else [])) if self.float_out else None, out=out)
                for g, (p, out) in enumerate(zip(draws, outs))]


def _init_worker(_):
    _give_back_freed_memory()
    cv2.setNumThreads(1)  # one worker per core; OpenCV's own thread pool would oversubscribe


def _give_back_freed_memory() -> None:
    """glibc keeps freed memory for reuse and, after the first large free, serves even large blocks from its heap,
    so a worker keeps the peak of its working buffers (a batch of per-view tensors: 23 MiB per torchvision worker at
    batch 32, measured) as private memory for good. A fixed 128 KiB threshold maps every larger block on its own and
    unmaps it when freed."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return  # not glibc: nothing to tune
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024)
    libc.mallopt(M_TRIM_THRESHOLD, 128 * 1024)


@contextlib.contextmanager
def _opencv_fork_safe():
    """Stop OpenCV's thread pool in this process while workers are forked: a child that resizes an inherited pool
    (setNumThreads in _init_worker) waits forever on the parent's idle threads, which it does not have."""
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(threads)


class _CpuLoader:
    """Shared DataLoader plumbing: the sampler's batches for the current epoch become work items, one per batch."""

    def __init__(self, views: _Views, sampler: EpochSampler, num_workers: int | None, out_device: torch.device):
        self.sampler, self.out_device, self.config, self.views = sampler, out_device, views.config, views
        self.epoch, self.start_batch = 0, 0
        workers = (os.cpu_count() or 1) if num_workers is None else num_workers
        opts = dict(num_workers=workers, pin_memory=out_device.type == "cuda", worker_init_fn=_init_worker)
        if workers > 0:
            opts.update(persistent_workers=True, prefetch_factor=2, multiprocessing_context="fork")
        self.loader = DataLoader(views, batch_size=None, sampler=self._Items(self), **opts)
        # reused float outputs for a CPU device: in flight (2 per worker), the caller's batch, and slack
        c = views.config.crop_size
        self.pool = views.pool = BufferPool.create(2 * workers + 3, (2 * sampler.batch_size, 1, c, c), torch.float32) \
            if views.float_out and workers > 0 and not views.config.small_views else None  # one view group only

    class _Items:
        # holds the loader weakly: a loader <-> DataLoader cycle would leave the DataLoader iterator to the cyclic GC,
        # which may close its queues before it stops the workers (each then waits out a 5 s join, with errors), and
        # even fork a dropped loader's iterator into the next loader's workers
        def __init__(self, owner):
            self.owner = weakref.ref(owner)

        def __len__(self):
            return len(self.owner().sampler) - self.owner().start_batch

        def __iter__(self):
            return self._work(self.owner)

        @staticmethod
        def _work(owner):
            # a generator, so the epoch's work list is made at the first item, after the DataLoader has forked its
            # workers (a list made before would sit in their copy of the heap); it holds the loader only weakly.
            # An output buffer is chosen as each item is sent, when it is known which earlier batches are let go.
            o = owner()
            epoch, start, pool = o.epoch, o.start_batch, o.pool
            batches = o.sampler.batches(epoch)[start:]
            del o
            for j, slots in enumerate(batches, start=start):
                yield epoch, j, slots, pool.acquire() if pool else None

    def __len__(self) -> int:
        return len(self.sampler)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def _batches(self):
        """(batch index, [one (count * B, 1, size, size) tensor per view group]) for this epoch; the first call
        forks the persistent workers."""
        if self.pool is not None:
            self.pool.reset()  # before iter(): it first drains what an abandoned epoch left in flight
        if self.loader.num_workers == 0:
            it = iter(self.loader)
        else:
            with _opencv_fork_safe():
                it = iter(self.loader)
        for j, x in enumerate(it, start=self.start_batch):
            if isinstance(x, (tuple, list)) and isinstance(x[0], int):  # (buffer, rows), as the DataLoader hands it
                x = self.pool.received(*x)
            groups = [x] if isinstance(x, torch.Tensor) else list(x)
            yield j, [g.to(self.out_device, non_blocking=True) for g in groups]
        self.start_batch = 0

    def _split(self, groups) -> tuple:
        """One tensor per group -> the tuple of views, group by group."""
        b = groups[0].shape[0] // 2
        return tuple(x[k * b:(k + 1) * b] for x, g in zip(groups, self.config.groups) for k in range(g.count))

    def close(self) -> None:
        """Stop the worker processes now (they are persistent across epochs)."""
        it = getattr(self.loader, "_iterator", None)  # DataLoader keeps its persistent-worker iterator here
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
        self.loader._iterator = None


class SeedLoader(_CpuLoader):
    def __init__(self, store, sampler, config, *, num_workers=None, out_device=torch.device("cpu")):
        super().__init__(_SeedViews(store.images, config, sampler), sampler, num_workers, out_device)

    def __iter__(self):
        for _, groups in self._batches():
            yield self._split(groups)


class FastCpuLoader(_CpuLoader):
    def __init__(self, store, sampler, config, *, num_workers=None, out_device=torch.device("cpu"),
                 float_in_workers: bool | None = None):
        # float_in_workers: finish the views in the workers (default: where the training device is the CPU); False
        # sends uint8 views on to be finished on the training device, a GPU's path (the tests run it on a CPU too)
        float_out = out_device.type == "cpu" if float_in_workers is None else float_in_workers
        views = _FastViews(store.images, config, sampler, float_out=float_out)
        super().__init__(views, sampler, num_workers, out_device)
        self.size = store.size

    def __iter__(self):
        for j, groups in self._batches():
            if groups[0].dtype == torch.uint8:  # a GPU device: the float end runs there
                b = groups[0].shape[0] // 2
                draws = draw_groups(self.config, lambda *extra: self.views.key(self.epoch, j, *extra), b, self.size,
                                    self.size)
                groups = [finish(x, p, self.config, self.views.key(self.epoch, j, 1, *([g] if g else [])))
                          for g, (x, p) in enumerate(zip(groups, draws))]
            yield self._split(groups)
