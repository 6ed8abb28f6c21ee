"""The training loop on CPU: resume matches an uninterrupted run, a kill -9 mid-checkpoint keeps the last one, a
non-finite loss stops naming a checkpoint that verified, encoder.pt fits torchvision's resnet50, the schedule, the
logs, the thread plan. (Run folders, flags and damaged checkpoints: test_training_runs.py; signals and killed
processes: test_training_preempt.py.)"""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from tests.training_fixtures import tiny_store  # noqa: F401  (fixture)
from training import checkpoint as ckpt
from training.loop import lr_at
from training.pretrain import main

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def run(store, out, *extra) -> int:
    return main(["--store", str(store.root), "--arch", "resnet18", "--batch-size", "8", "--crop-size", "32",
                 "--out", str(out), "--wandb-mode", "disabled", "--log-every", "1", "--threads", "1",
                 *map(str, extra)])


def losses(out) -> list[float]:
    return [json.loads(l)["loss"] for l in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("loader", ["dali-cpu", "opencv"])
def test_resumed_run_matches_uninterrupted_run_step_for_step(tiny_store, tmp_path, loader):
    # 48 images / batch 8 = 6 batches per epoch: 8 steps cross an epoch boundary, the stop falls mid-epoch
    common = ("--loader", loader, "--workers", "1", "--steps", 8, "--checkpoint-every", 100)
    assert run(tiny_store, tmp_path / "whole", *common) == 0
    assert run(tiny_store, tmp_path / "parts", *common, "--stop-after", 3) == 0
    assert torch.load(tmp_path / "parts" / ckpt.CHECKPOINT, weights_only=True)["step"] == 3
    assert run(tiny_store, tmp_path / "parts", *common, "--resume") == 0
    whole, parts = losses(tmp_path / "whole"), losses(tmp_path / "parts")
    assert len(whole) == len(parts) == 8
    assert parts == pytest.approx(whole, rel=1e-5, abs=1e-6)
    a = torch.load(tmp_path / "whole" / ckpt.ENCODER, weights_only=True)
    b = torch.load(tmp_path / "parts" / ckpt.ENCODER, weights_only=True)
    assert all(torch.allclose(a[k].float(), b[k].float(), rtol=1e-4, atol=1e-6) for k in a)


def test_kill_during_checkpoint_write_keeps_the_previous_one(tmp_path):
    path = tmp_path / ckpt.CHECKPOINT
    ckpt.save_atomic({"step": 1, "w": torch.ones(3)}, path)  # save_atomic: any object (ckpt.save adds a checksum)
    child = f"""
import os, signal, torch
from training import checkpoint
def dying_save(obj, f, *a, **k):
    f.write(b"PK\\x03\\x04 half a checkpoint")
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = dying_save
checkpoint.save_atomic({{"step": 2, "w": torch.zeros(3)}}, {str(path)!r})
"""
    proc = subprocess.run([sys.executable, "-c", child])
    assert proc.returncode == -9
    saved = ckpt.read(path)
    assert saved["step"] == 1 and torch.equal(saved["w"], torch.ones(3))


def test_non_finite_loss_stops_with_the_step_and_a_loadable_checkpoint(tiny_store, tmp_path, monkeypatch, capsys):
    from training.methods import SimCLR
    forward, calls = SimCLR.forward, []

    def planted(self, v1, v2):
        calls.append(1)
        loss = forward(self, v1, v2)
        return loss * float("nan") if len(calls) == 4 else loss

    monkeypatch.setattr(SimCLR, "forward", planted)
    rc = run(tiny_store, tmp_path, "--loader", "opencv", "--workers", "0", "--steps", 8, "--checkpoint-every", 2,
             "--log-every", 100)
    err = capsys.readouterr().err
    assert rc == 1
    assert "non-finite at step 4" in err and f"{tmp_path / ckpt.CHECKPOINT} (step 2, verified)" in err
    saved = ckpt.load(tmp_path)
    assert saved["step"] == 2
    assert all(torch.isfinite(v).all() for v in saved["method"].values() if v.is_floating_point())
    assert not (tmp_path / ckpt.ENCODER).exists()


def test_encoder_loads_into_torchvision_resnet50(tiny_store, tmp_path):
    import torchvision
    assert main(["--store", str(tiny_store.root), "--arch", "resnet50", "--batch-size", "4", "--crop-size", "32",
                 "--steps", "1", "--loader", "opencv", "--workers", "0", "--out", str(tmp_path),
                 "--wandb-mode", "disabled"]) == 0
    net = torchvision.models.resnet50()
    net.conv1 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    net.fc = torch.nn.Identity()
    result = net.load_state_dict(torch.load(tmp_path / ckpt.ENCODER, weights_only=True), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert net.eval()(torch.randn(3, 1, 64, 64)).shape == (3, 2048)


def test_schedule_warms_up_linearly_then_decays_to_zero():
    peak, total, warmup = 2.0, 100, 10
    lrs = [lr_at(s, total, peak, warmup) for s in range(total)]
    assert lrs[:10] == pytest.approx([peak * (s + 1) / 10 for s in range(10)])
    assert max(lrs) == pytest.approx(peak) and all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lr_at(total, total, peak, warmup) == pytest.approx(0.0, abs=1e-12)
    assert lrs[55] == pytest.approx(peak * 0.5 * (1 + math.cos(math.pi * 45 / 90)))


def test_store_and_checkpoint_errors_are_one_line(tiny_store, tmp_path, capsys):
    assert run(tiny_store, tmp_path, "--loader", "opencv", "--aug", "nosuch=1") == 2
    assert "--aug" in capsys.readouterr().err
    for bad, says in (("scale=0.5", "two numbers"), ("flip_p=0.2,0.3", "one number"), ("noise_std=x", "one number")):
        assert run(tiny_store, tmp_path, "--loader", "opencv", "--aug", bad) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: --aug '{bad}'") and says in err and "\n" not in err, err
    assert main(["--store", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "no store at" in capsys.readouterr().err
    assert run(tiny_store, tmp_path, "--loader", "opencv", "--resume", str(tmp_path / "missing.pt")) == 2
    assert "no checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_thread_plan_never_asks_for_more_cores_than_the_rank_has(device):
    from training.build import thread_plan
    for cores in range(1, 65):
        for ranks in (1, 2, 4, 8):
            share = max(1, cores // ranks)
            for kind in ("dali-gpu", "dali-cpu", "opencv", "torchvision"):
                workers, threads = thread_plan(kind, device, None, None, cores, ranks)
                assert threads >= 1 and workers >= 0 and (workers >= 1 or device == "cpu")
                assert workers + threads <= max(share, 2), (cores, ranks, kind, workers, threads)
                if share >= 4 and device == "cpu":
                    assert threads >= share - 1  # the network gets the cores
    assert thread_plan("opencv", "cpu", None, None, 2) == (0, 2)  # a small machine: the batch made between steps
    assert thread_plan("dali-cpu", "cpu", None, None, 2) == thread_plan("dali-cpu", "cpu", 0, None, 2) == (1, 1)
    assert thread_plan("opencv", "cpu", 3, None, 16) == (3, 13)  # an explicit --workers is kept
    assert thread_plan("opencv", "cpu", None, 5, 16) == (1, 5)  # and --threads


def test_best_loader_on_this_machine_is_the_fastest_measured():
    from pipelines import best_kind
    from pipelines.factory import dali_available
    assert best_kind() == ("dali-gpu" if torch.cuda.is_available() and dali_available() else "opencv")


def test_wandb_offline_without_wandb_warns_and_logs_json(tmp_path, monkeypatch, caplog):
    from training.logs import RunLog
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError, as where it is not installed
    log = RunLog(tmp_path, wandb_mode="offline")
    log.log({"step": 1, "loss": 1.5, "gpu_util": None})
    log.close()
    assert "wandb is not installed" in caplog.text
    rec = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert {k: rec[k] for k in ("step", "loss", "gpu_util")} == {"step": 1, "loss": 1.5, "gpu_util": None}
    assert set(rec) == {"step", "loss", "gpu_util", "time", "elapsed_s"}
    with pytest.raises(ValueError, match="pip install"):
        RunLog(tmp_path, wandb_mode="online")
