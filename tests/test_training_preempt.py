"""Preemption and killed processes, with real signals to a real `python -m training.pretrain` child (its whole
process group, as a terminal's Ctrl-C or SLURM does, so its loader worker gets the signal too):

- SIGTERM, then SIGINT, mid-run: each finishes its step, checkpoints there, exits 143 / 130; then a kill -9 well
  after the last checkpoint; --resume after each, and the run ends with the losses of an uninterrupted run, step
  for step, and metrics.jsonl has each step exactly once;
- a loader worker killed with SIGKILL (what the OOM killer does): one line naming memory, the checkpoint kept."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from tests.training_fixtures import tiny_store  # noqa: F401  (fixture)
from training import checkpoint as ckpt
from training.pretrain import main

STEPS = 12


def argv(store, out, *extra) -> list[str]:
    # one loader worker process (it must survive the group's signal) and one torch thread (a verdict that does not
    # depend on the machine's load); --checkpoint-every larger than the run: only the signals write checkpoints
    return ["--store", str(store.root), "--arch", "resnet18", "--batch-size", "8", "--crop-size", "32",
            "--loader", "opencv", "--workers", "1", "--threads", "1", "--steps", str(STEPS), "--log-every", "1",
            "--checkpoint-every", "1000", "--out", str(out), "--wandb-mode", "disabled", *map(str, extra)]


def steps_logged(out) -> list[int]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(l)["step"] for l in path.read_text().splitlines() if l.endswith("}")]


def losses(out) -> list[float]:
    return [json.loads(l)["loss"] for l in (out / "metrics.jsonl").read_text().splitlines()]


def spawn(store, out, *extra) -> subprocess.Popen:
    log = open(out.parent / f"{out.name}-{time.monotonic_ns()}.stderr", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "training.pretrain", *argv(store, out, *extra)],
                            stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    proc.log = log
    return proc


def stderr_of(proc) -> str:
    proc.log.seek(0)
    return proc.log.read()


def wait_for_step(proc, out, step: int, timeout: float = 300) -> None:
    t0 = time.monotonic()
    while len(steps_logged(out)) < step:
        assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before step {step}: {stderr_of(proc)}"
        assert time.monotonic() - t0 < timeout, f"no step {step} after {timeout} s"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def uninterrupted(tiny_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "run"
    assert main(argv(tiny_store, out)) == 0
    return losses(out)


def test_sigterm_sigint_and_kill_9_then_resume_give_the_uninterrupted_run(tiny_store, tmp_path, uninterrupted):
    out = tmp_path / "run"
    for sig, rc, extra in ((signal.SIGTERM, 143, ()), (signal.SIGINT, 130, ("--resume",))):
        proc = spawn(tiny_store, out, *extra)
        at = len(steps_logged(out))
        wait_for_step(proc, out, at + 2)
        os.killpg(proc.pid, sig)
        assert proc.wait(timeout=300) == rc, stderr_of(proc)
        err = stderr_of(proc)
        stopped = ckpt.load(out)["step"]
        assert at + 2 <= stopped < STEPS
        assert f"stopped by {sig.name} at step {stopped} of {STEPS}" in err and "--resume" in err, err
        assert "Traceback" not in err, err
        assert steps_logged(out) == list(range(1, stopped + 1))  # the checkpoint is at the last step it logged
    # kill -9: no checkpoint since the SIGINT one, so the lines of the steps after it are trained (and logged) again
    proc = spawn(tiny_store, out, "--resume")
    wait_for_step(proc, out, stopped + 3)
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert ckpt.load(out)["step"] == stopped and len(steps_logged(out)) >= stopped + 3
    assert main(argv(tiny_store, out, "--resume")) == 0
    assert steps_logged(out) == list(range(1, STEPS + 1))  # each step once
    assert losses(out) == pytest.approx(uninterrupted, rel=1e-5, abs=1e-6)


def test_a_second_launch_into_a_running_runs_folder_is_refused_and_the_first_goes_on(tiny_store, tmp_path):
    """Two writers in one folder (a requeued job started while the old one still drains): the second, the same
    command, is refused in one line naming the holder, before it writes anything; the first is not disturbed."""
    out, long = tmp_path / "run", ("--steps", 100000, "--resume")
    first = spawn(tiny_store, out, *long)
    wait_for_step(first, out, 2)
    second = subprocess.run([sys.executable, "-m", "training.pretrain", *argv(tiny_store, out, *long)],
                            capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    at = len(steps_logged(out))
    assert second.returncode == 2, second.stderr[-3000:]
    errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {out} is being written by another run (pid {first.pid}): wait for it to finish, "
                      f"or stop it (kill {first.pid}), then rerun"], second.stderr[-3000:]
    assert "Traceback" not in second.stderr
    wait_for_step(first, out, at + 2)  # still training
    os.killpg(first.pid, signal.SIGTERM)
    assert first.wait(timeout=300) == 143, stderr_of(first)
    stopped = ckpt.load(out)["step"]
    assert steps_logged(out) == list(range(1, stopped + 1)) and stopped >= at + 2
    assert not (out / ".lock").exists()  # the holder removes it when its run ends


def test_a_killed_loader_worker_is_one_line_naming_memory_and_keeps_the_checkpoint(tiny_store, tmp_path):
    out = tmp_path / "run"
    proc = spawn(tiny_store, out, "--checkpoint-every", 2)
    wait_for_step(proc, out, 3)
    workers = psutil.Process(proc.pid).children()
    assert len(workers) == 1
    os.kill(workers[0].pid, signal.SIGKILL)
    assert proc.wait(timeout=300) == 1
    err = stderr_of(proc)
    lines = [l for l in err.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "loader worker died" in lines[0] and "out-of-memory" in lines[0] and "--resume" in lines[0]
    step = ckpt.load(out)["step"]  # still verifies
    assert step >= 2 and step % 2 == 0 and f"(step {step})" in lines[0]
