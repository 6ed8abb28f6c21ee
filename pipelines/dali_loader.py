"""The DALI loader: external_source over the store, the views of every image made by one DALI graph, on the GPU
(or DALI's CPU backend).

Per batch, the host only gathers the batch's slots from the memmap (page cache -> one (B, S, S, 1) array) and draws
the per-view parameters (`pipelines.params`), handed to DALI as per-sample argument inputs. The whole augmentation
chain then runs as DALI operators (`pipelines.dali_graph`: crop + resize + flip, ColorJitter, blur, noise,
normalize), and the views come out float32, normalized, on DALI's device. The noise is keyed per batch, so a resumed
run redraws it exactly (how, and why not pipeline checkpointing: `pipelines.dali_graph`).

`float_end="torch"` keeps the earlier split: DALI crops, resizes, flips and blurs in uint8 and the float end runs on
the training device (`pipelines.photometric`, ColorJitter with one clamp). It is kept because it is measured faster
on DALI's CPU backend: 1.8x the images per core of the graph (`python -m benchmarks.loader_throughput
--torch-float-end`, docs/BENCHMARKS.md); on a GPU the graph is the default and the float end is only an option.

Feeding: a batch-mode callback that gathers the whole batch in one fancy-index read of the memmap, measured against
parallel external source (a per-sample callback in worker processes, handed over through shared memory) by
`python -m benchmarks.feed_modes`: 73,236 against 56,032 images/s on 2 cores (batch 256, feed only). One gather is a
single copy of 16 MiB from the page cache per batch, cheaper than per-sample IPC and shared-memory copies, and it
keeps the sampler, epoch and parameter state in one process. Where the host gather is what limits dali-gpu, the
GPU-resident store removes it.

With `resident=True` the whole store is copied once to GPU memory (112k images are 7.3 GB) and the callback hands
DALI a batch gathered on the GPU: no host work per batch beyond drawing parameters (see `_feed_images` for streams).
"""
from __future__ import annotations

import os
import weakref

import numpy as np
import torch

from pipelines import dali_graph
from pipelines.config import AugmentConfig
from pipelines.params import draw_groups
from pipelines.photometric import finish
from pipelines.sampler import EpochSampler, key

FLOAT_ENDS = ("graph", "torch")

def _pipeline(feed_images, feed_params, *, batch_size, config, device, resident, num_threads, device_id,
              float_end, stream=None):
    from nvidia.dali import fn, pipeline_def, types

    names = dali_graph.ARGS if float_end == "graph" else dali_graph.UINT8_ARGS
    n_args = len(names)

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id, prefetch_queue_depth=2)
    def views():
        # stream: where a resident batch is gathered (DaliLoader._feed_images); DALI copies it in on that stream
        images = fn.external_source(source=feed_images, batch=True, layout="HWC", dtype=types.UINT8, ndim=3,
                                    device="gpu" if resident else "cpu", cuda_stream=stream)
        params = fn.external_source(source=feed_params, batch=True, num_outputs=config.n_views * n_args,
                                    dtype=dali_graph.arg_types(names) * config.n_views)
        if device == "gpu" and not resident:
            images = images.gpu()
        sizes = [g.size for g in config.groups for _ in range(g.count)]
        out = []
        for v, size in enumerate(sizes):
            args = params[v * n_args:(v + 1) * n_args]
            out.append(dali_graph.view(images, args, size, config) if float_end == "graph" else
                       dali_graph.uint8_view(images, args, size))
        return tuple(out)

    return views()


class DaliLoader:
    """Iterates tuples of views, float32 (B, 1, size, size) normalized, on `out_device`: the config's view groups in
    order, large views first ((view1, view2) by default)."""

    def __init__(self, store, sampler: EpochSampler, config: AugmentConfig, *, device: str = "gpu",
                 num_threads: int | None = None, out_device: torch.device | None = None, resident: bool = False,
                 float_end: str = "graph"):
        if resident and device != "gpu":
            raise ValueError("a GPU-resident store needs the dali-gpu loader")
        if float_end not in FLOAT_ENDS:
            raise ValueError(f"float_end={float_end!r}: choose one of {', '.join(FLOAT_ENDS)}")
        if float_end == "graph":
            dali_graph.check_random_state()
        self.float_end = float_end
        self.store, self.sampler, self.config = store, sampler, config
        self.device = device
        self.device_id = None if device == "cpu" else (torch.cuda.current_device() if out_device is None
                                                         or out_device.index is None else out_device.index)
        self.out_device = out_device or (torch.device("cuda", self.device_id) if device == "gpu" else
                                         torch.device("cpu"))
        cores = os.cpu_count() or 1
        self.num_threads = num_threads or (cores if device == "cpu" else min(4, cores))
        self.resident = None
        if resident:
            with torch.cuda.device(self.device_id):
                self.resident = torch.empty(store.images.shape, dtype=torch.uint8, device="cuda")
                for s in range(0, len(store), 4096):  # in blocks: no second host copy of a 7 GB store
                    self.resident[s:s + 4096].copy_(torch.from_numpy(np.asarray(store.images[s:s + 4096])))
                self._stream = torch.cuda.Stream()
                self._stream.wait_stream(torch.cuda.current_stream())  # gathers start after the copies in (on the GPU)
        self.epoch, self.start_batch = 0, 0
        self._iterator, self._finished_epoch = None, True

    def __len__(self) -> int:
        return len(self.sampler)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Next iteration runs `epoch`, from batch `start_batch` (to resume mid-epoch)."""
        self.epoch, self.start_batch = epoch, start_batch

    def close(self) -> None:
        """Release the DALI pipeline (its threads and buffers) now."""
        self._iterator, self._finished_epoch = None, True

    def _key(self, j: int, *extra: int) -> int:
        return key(self.sampler.seed, self.sampler.rank, self.epoch, j, *extra)

    # -- external_source callbacks: each keeps its own position; DALI calls both once per iteration
    def _feed_images(self):
        if self._img_pos >= len(self._batches):
            raise StopIteration
        idx = self._batches[self._img_pos]
        self._img_pos += 1
        if self.resident is None:
            return self.store.images[idx][..., None]
        # Resident: the batch is gathered on the loader's own stream, and DALI is handed that stream too
        # (external_source's cuda_stream, `_build`): DALI queues its copy of the batch into its own buffer on it, and
        # its own work waits for that copy through an event, so the host never waits for the GPU here. The memory is
        # safe until the copy is done: the returned tensor is dropped just after DALI queued the copy, and torch's
        # caching allocator hands a freed block only to later work on the stream it was allocated on, this one,
        # which runs after the copy.
        with torch.cuda.stream(self._stream):
            # to the store's GPU, not .cuda(): the current device may be another one (rank > 0 of a node)
            idx = torch.from_numpy(idx).to(self.resident.device, non_blocking=True)
            return self.resident.index_select(0, idx).unsqueeze(-1)

    def _feed_params(self):
        if self._par_pos >= len(self._batches):
            raise StopIteration
        j = self.start_batch + self._par_pos
        self._par_pos += 1
        b = len(self._batches[j - self.start_batch])
        draws = draw_groups(self.config, lambda *extra: self._key(j, *extra), b, self.store.size, self.store.size)
        names = dali_graph.ARGS
        if self.float_end == "torch":
            self._params[j], names = draws, dali_graph.UINT8_ARGS
        out, v = (), 0
        for p, group in zip(draws, self.config.groups):
            for k in range(group.count):
                out += dali_graph.view_arguments(p, slice(k * b, (k + 1) * b), self.config, self._key(j, 1, v), names)
                v += 1
        return out

    def _build(self):
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        # the callbacks hold the loader weakly: a pipeline <-> loader cycle would leave the pipeline to the cyclic
        # GC, which may then run DALI's shutdown inside a forked DataLoader worker and hang it
        ref = weakref.ref(self)
        pipe = _pipeline(lambda: ref()._feed_images(), lambda: ref()._feed_params(),
                         batch_size=self.sampler.batch_size, config=self.config, device=self.device,
                         resident=self.resident is not None, num_threads=self.num_threads, device_id=self.device_id,
                         float_end=self.float_end, stream=self._stream if self.resident is not None else None)
        pipe.build()
        return DALIGenericIterator([pipe], [f"view{v}" for v in range(self.config.n_views)], auto_reset=False,
                                   prepare_first_batch=False, last_batch_policy=LastBatchPolicy.PARTIAL)

    def _torch_float_end(self, views, draws, j):
        """uint8 views of every group -> finished float views (`pipelines.photometric`), group by group."""
        out, first, b = [], 0, views[0].shape[0]
        for g, (p, group) in enumerate(zip(draws, self.config.groups)):
            seed = self._key(j, 1, g) if g else self._key(j, 1)
            x = finish(torch.cat(views[first:first + group.count]), p, self.config, seed)
            out += [x[k * b:(k + 1) * b] for k in range(group.count)]
            first += group.count
        return out

    def __iter__(self):
        self._batches = self.sampler.batches(self.epoch)[self.start_batch:]
        self._img_pos = self._par_pos = 0
        self._params = {}
        if self._iterator is None or not self._finished_epoch:
            self._iterator = None  # a DALI iterator cannot drop prefetched batches of an abandoned epoch: rebuild
            self._iterator = self._build()
        else:
            self._iterator.reset()
        self._finished_epoch = False
        j = self.start_batch
        for out in self._iterator:
            # (B, H, W, 1) -> (B, 1, H, W): with C = 1, HWC is already NCHW
            views = [out[0][f"view{v}"].to(self.out_device, non_blocking=True) for v in range(self.config.n_views)]
            views = [x.reshape(x.shape[0], 1, x.shape[1], x.shape[2]) for x in views]
            if self.float_end == "torch":
                views = self._torch_float_end(views, self._params.pop(j), j)
            j += 1
            yield tuple(views)
        self._finished_epoch = True
        self.start_batch = 0
