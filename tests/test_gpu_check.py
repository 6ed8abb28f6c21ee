"""benchmarks/gpu_check.sh --dry-run as the GPU machine would meet it: with pydicom, jsonschema and wandb
unimportable (that machine lacks them; a sitecustomize.py on PYTHONPATH puts a meta-path finder in front that refuses
them). The contract: exit 0, every phase in order with its results and its end line, GPU items skipped with the
reason where there is no GPU, `pytest -m gpu` collected without an error, and an OUT that comes back from the GPU
machine (at most 8 files, none over 16 MiB: no checkpoints)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.gpu_phases import PHASES

REPO = Path(__file__).resolve().parents[1]
REFUSED = ("pydicom", "jsonschema", "wandb")
BLOCKER = f'''import sys

class Refuse:
    """Refuse {REFUSED}, as on the GPU machine where they are not installed."""
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {REFUSED!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (refused, as on the GPU machine)", name=name)
        return None

sys.meta_path.insert(0, Refuse())
'''


def test_dry_run_with_only_the_gpu_machines_packages(tmp_path):
    site, out, work = tmp_path / "site", tmp_path / "out", tmp_path / "work"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{REPO}", "PYTHON": sys.executable, "WORK": str(work)}
    for name in REFUSED:
        r = subprocess.run([sys.executable, "-c", f"import {name}"], env=env, capture_output=True, text=True)
        assert r.returncode != 0 and "refused" in r.stderr, f"{name} is still importable: the check proves nothing"

    r = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run", str(out)], env=env,
                       capture_output=True, text=True, timeout=600)
    log = (out / "check.log").read_text() if (out / "check.log").exists() else ""
    assert r.returncode == 0, f"{r.stdout[-2000:]}\n{r.stderr[-2000:]}\n{log[-4000:]}"
    lines = [json.loads(line) for line in (out / "summary.jsonl").read_text().splitlines()]
    ends = [x for x in lines if x["item"] == "end"]
    assert [x["phase"] for x in ends] == list(PHASES) and all(x["status"] == "ok" for x in ends), ends
    items = {(x["phase"], x["item"]): x for x in lines if x["item"] != "end"}
    assert {p for p, _ in items} == set(PHASES), "a phase without a single result line"
    assert all(x["status"] in ("ok", "skipped") for x in items.values()), [x for x in items.values()
                                                                          if x["status"] not in ("ok", "skipped")]
    assert items["preflight", "versions"]["missing"] == {}
    assert items["loader", "torchvision"]["images_per_s"] > 0 and items["train", "ceiling"]["images_per_s"] > 0
    tests = items["pytest", "pytest -m gpu"]
    assert tests["errors"] == 0 and tests["rc"] in (0, 5), "pytest -m gpu did not collect without those packages"
    if not torch.cuda.is_available():
        gpu = [("preflight", "dali-gpu streamed"), ("preflight", "dali-gpu resident"), ("loader", "dali-gpu"),
               ("loader", "dali-gpu (resident)"), ("train", "dali-gpu")]
        assert all(items[k]["status"] == "skipped" and items[k]["reason"] for k in gpu)
        assert tests["passed"] == 0 and tests["skipped"] > 0
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8 and all(p.stat().st_size <= 16 * 2**20 for p in files), \
        [(p.name, p.stat().st_size) for p in files]
    assert (work / "pretrain" / "checkpoint.pt").exists(), "the pretrain's checkpoint belongs under WORK"
    doc = json.loads((out / "loader_throughput.json").read_text())
    assert {(x["mode"], x["loader"]) for x in doc["results"]} >= {("loader", "opencv"), ("train", "ceiling (end)")}


def _tiny_store_phase(tmp_path):
    """The store phase at a tiny size; returns what the next phase's command needs."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    work, summary = tmp_path / "work", tmp_path / "summary.jsonl"
    common = ["--summary", str(summary), "--out", str(tmp_path / "out"), "--work", str(work), "--base", "16",
              "--slots", "32", "--batch", "4", "--crop", "32", "--workers", "2", "--arch", "resnet18"]
    phase = [sys.executable, "-m", "benchmarks.gpu_phases"]
    assert subprocess.run([*phase, "store", *common], env=env, capture_output=True).returncode == 0
    return env, work, summary, common, phase


@pytest.mark.slow
def test_a_phase_cut_short_keeps_its_lines_and_marks_the_item_in_progress(tmp_path):
    """SIGTERM to the phase's process group, as `timeout` sends it, while the torchvision loader is being timed: the
    lines written before stay, the item in progress is `timeout`, the phase exits 124 and leaves no worker behind."""
    import signal
    import time

    import psutil

    env, work, summary, common, phase = _tiny_store_phase(tmp_path)
    proc = subprocess.Popen([*phase, "loader", *common, "--steps", "10000000", "--min-seconds", "0", "--warmup",
                             "1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while '"item": "dali-gpu"' not in summary.read_text() and time.monotonic() < deadline:  # torchvision is next
        time.sleep(0.2)
    time.sleep(3)  # into torchvision's timed stage (its workers forked)
    os.killpg(proc.pid, signal.SIGTERM)
    out = proc.communicate(timeout=60)[0]
    lines = [json.loads(line) for line in summary.read_text().splitlines()]
    loader = {x["item"]: x["status"] for x in lines if x["phase"] == "loader"}
    assert proc.returncode == 124, out[-3000:]
    assert loader["torchvision"] == "timeout" and "opencv" not in loader, loader
    assert loader["dali-gpu"] in ("skipped", "ok") and [x["phase"] for x in lines][:2] == ["store", "store"]
    time.sleep(1)
    left = [p for p in psutil.process_iter(["cmdline"]) if str(work) in " ".join(p.info["cmdline"] or [])]
    assert not left, f"processes left behind: {[p.info['cmdline'] for p in left]}"


def test_pytest_that_collects_nothing_is_a_failed_phase_item(tmp_path, monkeypatch):
    """`pytest -m gpu` that finds no test (exit 5: the marks or the paths broke) is written as failed, not ok."""
    import argparse

    from benchmarks.gpu_phases import Summary, _pytest

    monkeypatch.chdir(tmp_path)  # no tests/ here: a real pytest process that collects nothing
    summary = tmp_path / "summary.jsonl"
    _pytest(argparse.Namespace(work=tmp_path, marked_modules_only=True), Summary(summary, "pytest"))
    (line,) = [json.loads(x) for x in summary.read_text().splitlines()]
    assert (line["item"], line["status"], line["rc"], line["passed"]) == ("pytest -m gpu", "failed", 5, 0), line


@pytest.mark.slow
def test_a_long_phase_cut_during_its_pretrain_stops_there(tmp_path):
    """SIGTERM to the `long` phase's process group while its pretrain trains: pretrain checkpoints and exits 143,
    the phase writes the pretrain's line as `timeout` with what it measured, runs no sweep and exits 124."""
    import signal
    import time

    env, work, summary, common, phase = _tiny_store_phase(tmp_path)
    proc = subprocess.Popen([*phase, "long", *common, "--pretrain-steps", "1000000"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 180
    while not (work / "pretrain" / "args.json").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(5)  # into the training steps
    os.killpg(proc.pid, signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    lines = [json.loads(line) for line in summary.read_text().splitlines() if '"phase": "long"' in line]
    assert proc.returncode == 124, out[-3000:]
    (line,) = lines  # the pretrain's line only: no sweep after a cut
    assert line["item"].startswith("simclr resnet18") and (line["status"], line["rc"]) == ("timeout", 143), line
    assert (work / "pretrain" / "checkpoint.pt").exists(), "pretrain's own SIGTERM checkpoint"
