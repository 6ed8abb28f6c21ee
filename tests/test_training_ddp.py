"""torchrun with two gloo processes on CPU: the ranks step in lockstep and, over a `--views PA` subset, cover the
selected slots exactly once per epoch together and never another slot; a SIGTERM to one rank stops both at the
same step, with a checkpoint there."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.training_fixtures import CODED_N, CODED_VIEWS, WHOLE_IMAGE_AUG, coded_nih_store  # noqa: F401 (fixture)
from training import checkpoint as ckpt

WORKER = Path(__file__).with_name("ddp_worker.py")
PA = [i for i in range(CODED_N) if CODED_VIEWS[i] == "PA"]  # 16 of the 24 slots


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(store, tmp_path, steps: int, *extra) -> list:
    aug = [a for item in WHOLE_IMAGE_AUG for a in ("--aug", item)]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
            str(WORKER), "--store", str(store.root), "--arch", "resnet18", "--batch-size", "4", "--crop-size", "32",
            "--steps", str(steps), "--loader", "opencv", "--workers", "0", "--threads", "1", "--device", "cpu",
            "--out", str(tmp_path / "run"), "--wandb-mode", "disabled", "--log-every", "1", *aug, *map(str, extra)]


def env(tmp_path) -> dict:
    return {**os.environ, "DDP_RECORD_DIR": str(tmp_path), "OMP_NUM_THREADS": "1"}


def test_two_gloo_ranks_cover_the_selected_slots_once_per_epoch_in_lockstep(coded_nih_store, tmp_path):
    per_epoch = len(PA) // (4 * 2)  # 2 steps per epoch
    steps = 2 * per_epoch  # two epochs
    proc = subprocess.run(torchrun(coded_nih_store, tmp_path, steps, "--views", "PA"), env=env(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["rc"] for r in ranks] == [0, 0]
    assert [len(r["batches"]) for r in ranks] == [steps, steps]  # the same number of steps on both ranks
    for e in range(2):
        got = [b for r in ranks for b in r["batches"][e * per_epoch:(e + 1) * per_epoch]]
        slots = [s for b in got for s in b]
        assert sorted(slots) == PA  # every PA slot exactly once in the epoch, across the two ranks; no AP slot
        mine = [{s for b in r["batches"][e * per_epoch:(e + 1) * per_epoch] for s in b} for r in ranks]
        assert not mine[0] & mine[1]
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == steps  # rank 0 logs alone


@pytest.mark.slow  # a second torchrun (about 20 s here); the one-process signal tests are in the default run
def test_sigterm_to_one_rank_stops_every_rank_at_the_same_step(coded_nih_store, tmp_path):
    steps = 60
    proc = subprocess.Popen(torchrun(coded_nih_store, tmp_path, steps), env=env(tmp_path),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics, t0 = tmp_path / "run" / "metrics.jsonl", time.monotonic()
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() - t0 < 300
        time.sleep(0.05)
    os.kill(int((tmp_path / "rank1.pid").read_text()), signal.SIGTERM)  # rank 1 only: rank 0 must follow
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0  # torchrun reports its workers' non-zero exit
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["rc"] for r in ranks] == [143, 143], err[-3000:]
    stopped = len(ranks[0]["batches"])
    assert len(ranks[1]["batches"]) == stopped < steps
    assert ckpt.load(tmp_path / "run")["step"] == stopped
    assert len(metrics.read_text().splitlines()) == stopped
    assert f"stopped by SIGTERM at step {stopped}" in err
