"""The embedded default, as a new user runs it: `python -m training.pretrain` in an empty folder builds the demo
store, trains, says where everything went, and the loss falls. The default suite runs it for 20 of its 60 steps
(every other setting is the demo's own: its store, profile and run folder); the exact command, all 60 steps, is
marked slow (about 45 s on an idle 2-core Zen 4, 3-4 minutes on a 2-vCPU Zen 3)."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest


@pytest.mark.parametrize("extra", [pytest.param([], id="as-is", marks=pytest.mark.slow),
                                   pytest.param(["--steps", "20", "--log-every", "5"], id="20-steps")])
def test_embedded_default_runs_end_to_end_with_a_falling_loss(tmp_path, extra):
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "training.pretrain", *extra], cwd=tmp_path, capture_output=True,
                          text=True, timeout=1800)  # generous: a loaded shared machine
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "data" / "demo" / "store" / "store.json").exists()
    run = tmp_path / "runs" / "demo"
    for name in ("checkpoint.pt", "encoder.pt", "metrics.jsonl"):
        assert (run / name).exists() and str(run / name).endswith(name) and f"runs/demo/{name}" in proc.stdout
    losses = [json.loads(l)["loss"] for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) >= 4
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2 - 0.2, losses
    assert "resnet18" in proc.stderr and "-> runs/demo" in proc.stderr  # the demo profile, into its own folder
    print(f"embedded default {extra or 'as-is'}: {seconds:.0f} s, loss {losses[0]:.3f} -> {losses[-1]:.3f}")
