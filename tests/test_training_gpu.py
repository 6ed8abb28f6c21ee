"""The training loop on a GPU (skipped cleanly without CUDA): bf16 autocast, channels_last, the dali-gpu loader with
and without the GPU-resident store, NVML utilisation in the logs, resume step for step."""
from __future__ import annotations

import json

import pytest
import torch

from tests.training_fixtures import tiny_store  # noqa: F401  (fixture)
from training.pretrain import main

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def run(store, out, *extra) -> int:
    return main(["--store", str(store.root), "--arch", "resnet18", "--batch-size", "8", "--crop-size", "64",
                 "--loader", "dali-gpu", "--out", str(out), "--wandb-mode", "disabled", "--log-every", "1",
                 *map(str, extra)])


@pytest.mark.parametrize("resident", [False, True])
def test_dali_gpu_training_logs_finite_losses_and_gpu_utilisation(tiny_store, tmp_path, resident):
    assert run(tiny_store, tmp_path, "--steps", 8, *(["--resident"] if resident else [])) == 0
    recs = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(recs) == 8 and all(r["loss"] is not None for r in recs)
    assert any(r["gpu_util"] is not None for r in recs)  # NVML was read (may be None only if NVML is absent)


def test_an_explicit_gpu_index_is_used(tiny_store, tmp_path):
    assert run(tiny_store, tmp_path, "--steps", 2, "--device", "cuda:0") == 0
    assert "cuda:0" in (tmp_path / "args.json").read_text()


def test_gpu_resume_matches_uninterrupted_run(tiny_store, tmp_path):
    common = ("--steps", 6, "--checkpoint-every", 100)
    assert run(tiny_store, tmp_path / "whole", *common) == 0
    assert run(tiny_store, tmp_path / "parts", *common, "--stop-after", 3) == 0
    assert run(tiny_store, tmp_path / "parts", *common, "--resume") == 0
    whole, parts = ([json.loads(l)["loss"] for l in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
                    for d in ("whole", "parts"))
    assert parts == pytest.approx(whole, rel=2e-2)  # bf16 kernels on a GPU need not be bitwise repeatable
