"""Subsets to train on: the slots of a store whose manifest row matches a view, dataset and split selection.

    select = Subset(views=("PA", "AP"), datasets=("nih",), split="train")
    loader = build_loader(store, "opencv", 256, select=select)   # the sampler deals only these slots

One pass over the manifest (`preprocess.store`'s `Store.manifest`, the manifest's only reader) at start, O(N);
nothing per batch: the sampler draws its epoch permutation over the selected slots and maps it to slot indices.
Views and datasets compare case-insensitively (`--views pa` is `PA`); an empty selection field means "any".

The same three flags on every command that reads a store (`add_arguments`, `from_args`):
training.pretrain, training.probe, benchmarks.loader_throughput.
"""
from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass

import numpy as np

SPLITS = ("train", "test")


@dataclass(frozen=True)
class Subset:
    """views / datasets: the manifest values to keep (any when empty); split: 'train', 'test' or None (any)."""

    views: tuple[str, ...] = ()
    datasets: tuple[str, ...] = ()
    split: str | None = None

    def __post_init__(self):
        views, datasets = ((v,) if isinstance(v, str) else v for v in (self.views, self.datasets))  # "PA" is one
        object.__setattr__(self, "views", tuple(v.strip().upper() for v in views if v.strip()))
        object.__setattr__(self, "datasets", tuple(d.strip().lower() for d in datasets if d.strip()))
        if self.split is not None and self.split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)} (or None for any), got {self.split!r}")

    @property
    def everything(self) -> bool:
        return not self.views and not self.datasets and self.split is None

    def describe(self) -> str:
        """The selection as the flags that make it, e.g. '--views PA,AP --split train'."""
        parts = [f"--views {','.join(self.views)}" if self.views else "",
                 f"--datasets {','.join(self.datasets)}" if self.datasets else "",
                 f"--split {self.split}" if self.split else ""]
        return " ".join(p for p in parts if p) or "the whole store"

    def matches(self, row: dict) -> bool:
        return ((not self.views or row["view"].strip().upper() in self.views)
                and (not self.datasets or row["dataset"].strip().lower() in self.datasets)
                and (self.split is None or row["split"] == self.split))


def select_slots(store, subset: Subset | None) -> np.ndarray | None:
    """The sorted int64 slot indices `subset` keeps (None when it keeps everything: no manifest read at all).

    Raises ValueError, naming what the store holds, when the selection keeps nothing."""
    if subset is None or subset.everything:
        return None
    rows = store.manifest
    slots = np.fromiter((i for i, r in enumerate(rows) if subset.matches(r)), dtype=np.int64)
    if len(slots) == 0:
        raise ValueError(f"{subset.describe()} selects no image of the {len(rows)} in {store.root}; it holds "
                         f"{_census(rows)}")
    return slots


def _census(rows: list[dict]) -> str:
    def show(col, label):
        counts = Counter(r[col] or "(none)" for r in rows)
        return f"{label} " + ", ".join(f"{k} ({n})" for k, n in sorted(counts.items()))
    return "; ".join((show("view", "views"), show("dataset", "datasets"), show("split", "splits")))


def _names(text: str) -> tuple[str, ...]:
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of names, got {text!r}")
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--views, --datasets, --split, as every command that reads a store spells them."""
    a = parser.add_argument
    a("--views", type=_names, default=None, metavar="V[,V]",
      help="train on these views only (the manifest's view column, e.g. PA,AP; default: all)")
    a("--datasets", type=_names, default=None, metavar="D[,D]",
      help="these datasets only (the manifest's dataset column, e.g. nih,padchest; default: all)")
    a("--split", choices=SPLITS, default=None, help="the official train or test split only (default: all)")


def from_args(args: argparse.Namespace) -> Subset:
    return Subset(views=tuple(args.views or ()), datasets=tuple(args.datasets or ()), split=args.split)
