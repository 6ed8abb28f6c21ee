"""torchrun with two gloo processes on CPU: the ranks step in lockstep and cover the epoch exactly once together."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.training_fixtures import CODED_N, WHOLE_IMAGE_AUG, coded_store  # noqa: F401  (fixture)

WORKER = Path(__file__).with_name("ddp_worker.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_cover_the_epoch_once_in_lockstep(coded_store, tmp_path):
    batch, world = 4, 2
    steps = CODED_N // (batch * world)  # one epoch
    aug = [a for item in WHOLE_IMAGE_AUG for a in ("--aug", item)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(world), "--master-port", str(free_port()),
           str(WORKER), "--store", str(coded_store.root), "--arch", "resnet18", "--batch-size", str(batch),
           "--crop-size", "32", "--steps", str(steps), "--loader", "opencv", "--workers", "0", "--device", "cpu",
           "--out", str(tmp_path / "run"), "--wandb-mode", "disabled", "--log-every", "1", *aug]
    env = {**os.environ, "DDP_RECORD_DIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]
    assert [r["rc"] for r in ranks] == [0, 0]
    assert [len(r["batches"]) for r in ranks] == [steps, steps]  # the same number of steps on both ranks
    slots = [s for r in ranks for b in r["batches"] for s in b]
    assert sorted(slots) == list(range(CODED_N))  # every slot exactly once across the two ranks
    assert not set(s for b in ranks[0]["batches"] for s in b) & set(s for b in ranks[1]["batches"] for s in b)
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == steps  # rank 0 logs alone
