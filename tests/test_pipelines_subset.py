"""Subsets to train on (pipelines/subset.py): slots selected from the manifest's view, dataset and split columns;
the sampler deals every selected slot exactly once per epoch across ranks and never another one."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipelines import EpochSampler, Subset, build_loader
from pipelines.subset import select_slots
from preprocess.store import Store
from tests.training_fixtures import (CODED_N, CODED_SPLITS, CODED_VIEWS, WHOLE_IMAGE_AUG,  # noqa: F401 (fixture)
                                     coded_nih_store, decode_views)
from training.build import parse_overrides


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("drop_last", [True, False])
def test_sampler_deals_every_selected_slot_once_per_epoch_and_no_other(world, drop_last):
    slots = np.sort(np.random.default_rng(0).choice(1000, size=137, replace=False))
    b = 5
    for epoch in range(3):
        per_rank = [EpochSampler(len(slots), b, seed=3, rank=r, world_size=world, drop_last=drop_last,
                                 slots=slots).batches(epoch) for r in range(world)]
        seen = np.concatenate([x for batches in per_rank for x in batches])
        assert set(seen.tolist()) <= set(slots.tolist())  # no other slot, ever
        assert len(seen) == len(set(seen.tolist()))  # none twice
        if drop_last:
            assert {len(bs) for bs in per_rank} == {len(slots) // (b * world)}
            assert len(seen) == len(slots) // (b * world) * b * world  # only the remainder dropped
        else:
            assert sorted(seen.tolist()) == slots.tolist()


def _store(rows: list[dict]) -> Store:
    manifest = [{"index": i, "path": f"{i}.png", "patient_id": str(i), "labels": "", "flags": "", **r}
                for i, r in enumerate(rows)]
    return Store(root=Path("/nonexistent/store"), images=np.zeros((len(rows), 8, 8), np.uint8), meta={},
                 _manifest=manifest)


def test_selection_by_view_dataset_and_split():
    store = _store([{"view": v, "dataset": d, "split": s} for v, d, s in [
        ("PA", "nih", "train"), ("AP", "nih", "test"), ("L", "padchest", ""), ("PA", "padchest", ""),
        ("AP_horizontal", "padchest", ""), ("pa", "nih", "train")]])
    assert select_slots(store, None) is None and select_slots(store, Subset()) is None  # nothing read, no mapping
    assert select_slots(store, Subset(views=("PA", "AP"))).tolist() == [0, 1, 3, 5]  # case-insensitive
    assert select_slots(store, Subset(views=("pa",), datasets=("PadChest",))).tolist() == [3]
    assert Subset(views="PA", datasets="nih") == Subset(views=("PA",), datasets=("nih",))  # a bare name is one name
    assert select_slots(store, Subset(datasets=("nih",), split="train")).tolist() == [0, 5]
    assert select_slots(store, Subset(split="test")).tolist() == [1]
    with pytest.raises(ValueError) as e:
        select_slots(store, Subset(views=("LL",)))
    msg = str(e.value)
    assert "--views LL selects no image" in msg and "AP_horizontal (1)" in msg and "padchest (3)" in msg
    assert "\n" not in msg
    with pytest.raises(ValueError, match="split"):
        Subset(split="val")


def test_loader_over_a_selection_yields_only_its_slots_each_once_per_epoch(coded_nih_store):
    from pipelines import AugmentConfig
    config = AugmentConfig.for_store(coded_nih_store, crop_size=64, **parse_overrides(WHOLE_IMAGE_AUG))
    pa = [i for i in range(CODED_N) if CODED_VIEWS[i] == "PA"]  # 16 slots
    loader = build_loader(coded_nih_store, "opencv", 4, config=config, num_workers=0, device="cpu",
                          select=Subset(views=("PA",)))
    assert len(loader) == len(pa) // 4
    for epoch in range(2):
        loader.set_epoch(epoch)
        seen = [s for v1, _ in loader for s in decode_views(v1)]
        assert sorted(seen) == pa
    train_ap = [i for i in range(CODED_N) if CODED_VIEWS[i] == "AP" and CODED_SPLITS[i] == "train"]  # 0,3,...,15
    loader = build_loader(coded_nih_store, "opencv", 2, config=config, num_workers=0, device="cpu",
                          select=Subset(views=("AP",), split="train"))
    loader.set_epoch(0)
    seen = [s for v1, _ in loader for s in decode_views(v1)]
    assert set(seen) <= set(train_ap) and len(seen) == len(set(seen)) == len(train_ap) // 2 * 2


def test_a_selection_too_small_for_one_batch_is_one_line(coded_nih_store):
    from pipelines import AugmentConfig
    config = AugmentConfig.for_store(coded_nih_store, crop_size=32)
    with pytest.raises(ValueError) as e:  # 2 test-split AP slots (18, 21), batch 4
        build_loader(coded_nih_store, "opencv", 4, config=config, num_workers=0, device="cpu",
                     select=Subset(views=("AP",), split="test"))
    msg = str(e.value)
    assert "--views AP --split test leaves 2 of the store's 24 images" in msg and "\n" not in msg


def test_the_loader_benchmark_runs_over_a_selection(coded_nih_store, tmp_path, capsys):
    from benchmarks import loader_throughput
    common = ["--store", str(coded_nih_store.root), "--loaders", "opencv", "--batch-size", "4", "--steps", "2",
              "--min-seconds", "0", "--warmup", "0", "--workers", "1", "--crop-size", "32", "--out", str(tmp_path)]
    assert loader_throughput.main([*common, "--views", "LAT"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--views LAT selects no image" in err and "\n" not in err
    assert loader_throughput.main([*common, "--views", "PA", "--split", "train"]) == 0
    doc = json.loads((tmp_path / "loader_throughput.json").read_text())
    assert doc["settings"]["subset"] == "--views PA --split train" and "skipped" not in doc["results"][0]
