"""The CPU loaders' reused shared-memory output buffers (pipelines.buffers): reused when the caller lets a batch go,
never while it still holds one."""
from __future__ import annotations

import torch

from tests.pipelines_fixtures import config_for, epoch_batches, loader, phantom_store  # noqa: F401 (fixture)


def test_buffers_are_reused_but_never_under_a_held_batch(phantom_store):  # noqa: F811
    ld = loader(phantom_store, "opencv", 2, config_for(phantom_store, 32))
    assert ld.pool is not None and len(ld) > len(ld.pool.tensors)  # more batches than buffers

    # a caller that lets each batch go: the batches come from the pool's few buffers
    ld.set_epoch(0)
    copies, buffers = [], set()
    for v1, v2 in ld:
        buffers.add(v1.untyped_storage().data_ptr())
        copies.append(torch.cat([v1, v2]))
    pool = {t.untyped_storage().data_ptr() for t in ld.pool.tensors}
    assert buffers <= pool and len(buffers) < len(copies)

    # a caller that keeps every batch: no two share memory, and each is what the first pass saw
    ld.set_epoch(0)
    held = list(ld)
    assert len({v1.untyped_storage().data_ptr() for v1, _ in held}) == len(held)
    for (v1, v2), want in zip(held, copies, strict=True):
        assert torch.equal(torch.cat([v1, v2]), want)

    # once let go, the buffers serve again, and the epoch's batches are still the same
    del held
    assert [torch.equal(a, b) for a, b in zip(epoch_batches(ld, 0), copies, strict=True)] == [True] * len(copies)


def test_an_abandoned_epoch_frees_its_buffers(phantom_store):  # noqa: F811
    """Items still in flight when an epoch is dropped are drained by the next one; their buffers come back."""
    ld = loader(phantom_store, "opencv", 2, config_for(phantom_store, 32))
    full = epoch_batches(ld, 1)
    for _ in range(3):
        epoch_batches(ld, 0, limit=1)
    got = epoch_batches(ld, 1)
    assert all(torch.equal(a, b) for a, b in zip(got, full, strict=True))
    assert not ld.pool._in_flight
