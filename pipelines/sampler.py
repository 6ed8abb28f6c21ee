"""The sampler every loader uses: (N, epoch, seed, rank, world size, batch size, drop_last) -> batches of slots.

Epoch e's order is a permutation drawn from (seed, e): the same on every rank, another for every epoch. Batches are
dealt round-robin to ranks, so within an epoch every slot appears exactly once across all ranks; with drop_last the
remainder that does not fill one batch on every rank is dropped (so all ranks take the same number of steps, as DDP
needs). Indices within a batch are sorted: the gather then reads the memmap front to back.

`slots` (a subset, `pipelines.subset`): the permutation runs over positions in that array and is mapped to its
slot indices, so every selected slot appears once per epoch across ranks and no other slot ever does. Without it,
the slots are 0..n-1 and nothing is mapped (the same batches as before subsets existed).

`key(...)` is the one place random streams are derived from, so that every random draw of every loader is a
function of (seed, rank, epoch, batch or slot): runs are repeatable, ranks draw different augmentations, and a
resumed run redraws exactly what an uninterrupted one would have.
"""
from __future__ import annotations

import numpy as np


def key(*parts: int) -> int:
    """A 63-bit seed derived from integers (seed, rank, epoch, ...), well mixed by NumPy's SeedSequence."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class EpochSampler:
    def __init__(self, n: int, batch_size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1,
                 drop_last: bool = True, slots: np.ndarray | None = None):
        if slots is not None:
            slots = np.asarray(slots, dtype=np.int64)
            if len(slots) != n:
                raise ValueError(f"n ({n}) must be the number of slots ({len(slots)})")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if drop_last and n < batch_size * world_size:
            what = f"a selection of {n} images" if slots is not None else f"a store of {n} images"
            raise ValueError(f"{what} cannot fill one batch of {batch_size} on each of {world_size} "
                             "ranks: lower --batch-size or use a larger store")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size, self.drop_last, self.slots = rank, world_size, drop_last, slots

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        if self.drop_last:
            return self.n // (self.batch_size * self.world_size)
        shard = len(range(self.rank, self.n, self.world_size))
        return -(-shard // self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng(key(self.seed, epoch, 0x5A4D)).permutation(self.n)

    def batches(self, epoch: int) -> list[np.ndarray]:
        """This rank's batches for `epoch`, each a sorted int64 array of slot indices."""
        perm = self.order(epoch)
        if self.slots is not None:
            perm = self.slots[perm]
        b, w = self.batch_size, self.world_size
        if self.drop_last:
            steps = len(self)
            return [np.sort(perm[(j * w + self.rank) * b:(j * w + self.rank + 1) * b]) for j in range(steps)]
        shard = perm[self.rank::w]
        return [np.sort(shard[s:s + b]) for s in range(0, len(shard), b)]
