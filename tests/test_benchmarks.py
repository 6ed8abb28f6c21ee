"""The loader benchmark runs side by side on this machine and writes a JSON that validates against its schema:
every loader has every figure or a skip reason; GPU figures are null (never a made-up zero) without a GPU."""
from __future__ import annotations

import json

import pytest
import torch

from benchmarks import loader_throughput, report
from tests.training_fixtures import tiny_store  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def doc(tiny_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    rc = loader_throughput.main(["--store", str(tiny_store.root), "--loaders", "torchvision,opencv,dali-cpu,dali-gpu",
                                 "--mode", "both", "--batch-size", "8", "--steps", "3", "--min-seconds", "0",
                                 "--warmup", "1",
                                 "--workers", "1", "--arch", "resnet18", "--crop-size", "32", "--out", str(out)])
    assert rc == 0
    assert (out / "loader_throughput.png").stat().st_size > 0
    return json.loads((out / "loader_throughput.json").read_text())


def test_json_validates_against_the_schema(doc):
    jsonschema = pytest.importorskip("jsonschema")  # a test dependency, absent on the GPU machine
    jsonschema.validate(doc, report.SCHEMA)
    got = {(r["mode"], r["loader"]) for r in doc["results"]}
    assert got == {(m, k) for m in ("loader", "train") for k in ("torchvision", "opencv", "dali-cpu", "dali-gpu")} \
        | {("train", "ceiling")}


def test_schema_rejects_a_result_missing_a_figure(doc):
    jsonschema = pytest.importorskip("jsonschema")  # a test dependency, absent on the GPU machine
    broken = json.loads(json.dumps(doc))
    row = next(r for r in broken["results"] if "skipped" not in r)
    del row["step_ms_p95"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, report.SCHEMA)


def test_ratios_are_measured_side_by_side(doc):
    for mode in ("loader", "train"):
        rows = {r["loader"]: r for r in doc["results"] if r["mode"] == mode and "skipped" not in r}
        base = rows["torchvision"]["images_per_s"]
        for r in rows.values():
            assert r["ratio_vs_torchvision"] == pytest.approx(r["images_per_s"] / base)
            assert r["images_per_s"] > 0 and r["step_ms_p95"] >= r["step_ms_p50"] > 0
    train = {r["loader"]: r for r in doc["results"] if r["mode"] == "train" and "skipped" not in r}
    assert train["ceiling"]["ratio_to_ceiling"] == pytest.approx(1.0)
    assert all(0 <= r["data_wait_frac"] <= 1 for r in train.values())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the figures of a machine without a GPU")
def test_without_a_gpu_gpu_figures_are_null_and_dali_gpu_is_skipped(doc):
    assert doc["machine"]["gpu_name"] is None
    for r in doc["results"]:
        if r["loader"] == "dali-gpu":
            assert "CUDA" in r["skipped"]
        else:
            assert r["gpu_util_mean"] is None and r["gpu_mem_used_max_mib"] is None
