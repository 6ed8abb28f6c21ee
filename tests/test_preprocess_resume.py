"""Interrupted runs resume to a byte-identical store; a second writer is refused; a dead worker stops the run.

The kill -9, Ctrl-C, second-writer and killed-worker checks run `python -m preprocess` as a subprocess (two real
processes where two runs compete) over a few hundred 1024 px images (25 distinct synthetic phantoms, hard-linked
under 600 names so that writing them is cheap while decoding each still costs the full price), stop it (or its
worker) once some chunks are recorded, rerun the same command, and compare the files with a clean run's. The
other checks use a small store built in-process.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from preprocess import __main__ as cli
from preprocess.build import CHUNK
from preprocess.store import PARTIAL, open_store
from preprocess.synthetic import generate

REPO = Path(__file__).resolve().parents[1]
N_FILES, N_DISTINCT = 600, 25  # 25 is coprime to CHUNK: a chunk written to the wrong slots shows
FINAL_FILES = ("images.npy", "manifest.csv", "rejects.csv")


@pytest.fixture(scope="module")
def big_inputs(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("resume")
    generate(base / "gen", N_DISTINCT, "nih", size=1024, workers=2)
    bases = sorted((base / "gen" / "images").glob("*.png"))
    inputs = base / "inputs"
    inputs.mkdir()
    for i in range(N_FILES):
        os.link(bases[i % N_DISTINCT], inputs / f"img_{i:04d}.png")
    (inputs / "notes.png").write_text("not an image\n")  # one reject, so the store is compacted at the end
    return inputs


def _command(inputs: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "preprocess", str(inputs), "--out", str(out), "--workers", "2", "--no-progress"]


@pytest.fixture(scope="module")
def clean_big(big_inputs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clean_big") / "store"
    done = subprocess.run(_command(big_inputs, out), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return out


def _chunks_recorded(out: Path) -> int:
    return len(list((out / PARTIAL / "done").glob("chunk-*.json")))


def _stop_midway(command: list[str], out: Path, sig: int) -> tuple[subprocess.Popen, list[psutil.Process]]:
    """Start the command, wait until two chunks are recorded, send `sig`; return the process and its workers."""
    # a shell starts background jobs with SIGINT ignored, and Python keeps an inherited SIG_IGN: give the child the
    # default disposition, as a terminal would, so that Python turns SIGINT into KeyboardInterrupt
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while _chunks_recorded(out) < 2:
        assert proc.poll() is None, f"the run ended before it could be interrupted: {proc.communicate()}"
        assert time.monotonic() < deadline, "no chunk recorded in 120 s"
        time.sleep(0.01)
    workers = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    return proc, workers


def _all_gone(procs: list[psutil.Process], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in procs):
                return True
        except psutil.NoSuchProcess:
            continue
        time.sleep(0.05)
    return False


def _assert_identical(out: Path, clean: Path) -> None:
    for name in FINAL_FILES:
        assert (out / name).read_bytes() == (clean / name).read_bytes(), f"{name} differs from the clean run's"
    a, b = (json.loads((p / "store.json").read_text()) for p in (out, clean))
    a.pop("command"), b.pop("command")
    assert a == b
    assert not (out / PARTIAL).exists()


def _resume(command: list[str], out: Path) -> str:
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "resuming the partial store" in done.stderr
    assert "were done before resuming" in done.stdout
    return done.stdout


def test_kill_9_midway_then_rerun_is_byte_identical(big_inputs, clean_big, tmp_path):
    out = tmp_path / "store"
    command = _command(big_inputs, out)
    proc, workers = _stop_midway(command, out, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    assert len(workers) == 2 and _all_gone(workers), "workers outlived a killed parent"
    recorded = _chunks_recorded(out)
    assert 2 <= recorded < -(-(N_FILES + 1) // CHUNK), "the kill did not land mid-run"
    assert not (out / "store.json").exists()
    assert (out / ".lock").read_text().strip() == str(proc.pid)  # a stale lock: it must not block the rerun
    with pytest.raises(ValueError, match="rerun the same command") as e:
        open_store(out)
    assert str(out) in str(e.value) and "python -m preprocess" in str(e.value)

    _resume(command, out)
    _assert_identical(out, clean_big)
    store = open_store(out)
    assert len(store) == N_FILES and store.images.shape[1:] == (256, 256)


def test_ctrl_c_midway_then_rerun_is_byte_identical(big_inputs, clean_big, tmp_path):
    out = tmp_path / "store"
    command = _command(big_inputs, out)
    proc, workers = _stop_midway(command, out, signal.SIGINT)
    _, err = proc.communicate()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "run the same command again to resume" in err
    assert "Traceback" not in err
    assert _all_gone(workers), "workers outlived a Ctrl-C"
    assert not (out / "store.json").exists() and _chunks_recorded(out) >= 2
    _resume(command, out)
    _assert_identical(out, clean_big)


def test_a_second_writer_is_refused_at_once_and_the_first_finishes_intact(big_inputs, clean_big, tmp_path):
    out = tmp_path / "store"
    command = _command(big_inputs, out)
    first = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while _chunks_recorded(out) < 1:
        assert first.poll() is None and time.monotonic() < deadline, "the first run ended before a chunk"
        time.sleep(0.01)
    second = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
    _, err = first.communicate(timeout=300)
    assert second.returncode == 2
    assert second.stderr == (f"error: {out} is being written by another run (pid {first.pid}): wait for it to finish,"
                             f" or stop it (kill {first.pid}), then rerun\n")
    assert first.returncode == 0, err
    _assert_identical(out, clean_big)
    assert not (out / ".lock").exists() or (out / ".lock").read_text().strip() == str(first.pid)


def test_a_killed_worker_stops_the_run_with_the_cause_and_it_resumes(big_inputs, clean_big, tmp_path):
    out = tmp_path / "store"
    command = _command(big_inputs, out)
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while _chunks_recorded(out) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be hit"
        time.sleep(0.01)
    workers = psutil.Process(proc.pid).children(recursive=True)
    assert len(workers) == 2
    os.kill(workers[0].pid, signal.SIGKILL)  # what the OOM killer does
    _, err = proc.communicate(timeout=60)  # it must not hang
    assert proc.returncode == 1
    assert err.startswith(f"error: worker pid {workers[0].pid} was killed by signal 9 (SIGKILL): out of memory?")
    assert "run the same command again to resume" in err and "Traceback" not in err
    assert _all_gone(workers), "the other worker outlived the stopped run"
    assert not (out / "store.json").exists() and _chunks_recorded(out) >= 2
    _resume(command, out)
    _assert_identical(out, clean_big)


# ---------------------------------------------------------------------------- small stores, built in-process

@pytest.fixture(scope="module")
def small_inputs(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("small")
    generate(base, 40, "nih", size=96, workers=1)
    return base / "images"


def _build(preprocess_cli, inputs: Path, out: Path, *extra) -> tuple[int, str, str]:
    return preprocess_cli(inputs, "--out", out, "--size", "32", "--workers", "1", *extra)


@pytest.fixture
def interrupted(small_inputs, tmp_path, monkeypatch, preprocess_cli) -> Path:
    """A store whose run stopped (Ctrl-C) after every chunk was recorded but before it was finalized."""
    out = tmp_path / "store"

    def stop(*args, **kwargs):
        raise KeyboardInterrupt
    with monkeypatch.context() as m:
        m.setattr(cli, "finalize", stop)
        rc, _, err = _build(preprocess_cli, small_inputs, out)
    assert rc == 130 and "run the same command again" in err
    assert (out / PARTIAL / "plan.json").exists() and not (out / "store.json").exists()
    return out


def test_interrupted_store_refuses_to_open_and_says_rerun(interrupted):
    with pytest.raises(ValueError, match="incomplete .* rerun the same command to resume it") as e:
        open_store(interrupted)
    assert "--size 32" in str(e.value)  # it quotes the command that started it


def test_rerun_with_other_settings_refuses_and_names_overwrite(interrupted, small_inputs, preprocess_cli,
                                                               read_store):
    rc, _, err = preprocess_cli(small_inputs, "--out", interrupted, "--size", "48", "--workers", "1")
    assert rc == 2 and "--overwrite" in err and "size" in err and "Traceback" not in err
    assert not (interrupted / "store.json").exists()  # refused: nothing was touched

    rc, _, _ = preprocess_cli(small_inputs, "--out", interrupted, "--size", "48", "--workers", "1", "--overwrite")
    assert rc == 0
    assert read_store(interrupted).images.shape == (40, 48, 48)  # afresh, at the new size
    assert not (interrupted / PARTIAL).exists()


def test_rerun_of_interrupted_store_matches_a_clean_build(interrupted, small_inputs, tmp_path, preprocess_cli):
    rc, _, err = _build(preprocess_cli, small_inputs, interrupted)
    assert rc == 0 and "resuming" in err
    clean = tmp_path / "clean"
    assert _build(preprocess_cli, small_inputs, clean)[0] == 0
    for name in FINAL_FILES:
        assert (interrupted / name).read_bytes() == (clean / name).read_bytes()


def test_finished_store_rerun(small_inputs, tmp_path, preprocess_cli, read_store):
    out = tmp_path / "store"
    assert _build(preprocess_cli, small_inputs, out)[0] == 0
    before = (out / "images.npy").read_bytes()
    rc, stdout, _ = _build(preprocess_cli, small_inputs, out, "--workers", "2")  # workers may change
    assert rc == 0 and "nothing to do" in stdout
    rc, _, err = preprocess_cli(small_inputs, "--out", out, "--size", "48", "--workers", "1")
    assert rc == 2 and "--overwrite" in err and "size" in err
    rc, _, err = _build(preprocess_cli, small_inputs, out, "--normalize", "percentile")
    assert rc == 2 and "normalize" in err
    assert (out / "images.npy").read_bytes() == before  # refused: untouched
    rc, _, _ = preprocess_cli(small_inputs, "--out", out, "--size", "48", "--workers", "1", "--overwrite")
    assert rc == 0 and read_store(out).images.shape == (40, 48, 48)
