"""python -m benchmarks.gpu_phases PHASE ...: one phase of benchmarks/gpu_check.sh. Every result is appended to
SUMMARY (one JSON object per line: phase, item, status ok|skipped|failed|timeout, figures) as soon as it is
measured, so a phase cut short keeps what it finished; SIGTERM (what `timeout` sends) marks the item in progress
`timeout` and exits 124. Checkpoints and stores go under --work, never into --out.

Phases, in the check's order: preflight (versions, imports, a one-batch smoke test of dali-gpu), store, loader,
train, pytest, long (a pretrain, then the worker sweep).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path

PHASES = ("preflight", "store", "loader", "train", "pytest", "long")
NEEDED = ("numpy", "torch", "torchvision", "cv2", "PIL", "psutil", "matplotlib", "tqdm", "pynvml", "pytest",
          "nvidia.dali")
SMOKE_SEED, SMOKE_IMAGES = 17, 16


class Stopped(BaseException):
    """SIGTERM arrived: the phase's time is up."""


class Summary:
    def __init__(self, path: Path, phase: str):
        self.path, self.phase = path, phase

    def write(self, item: str, status: str, **figures) -> dict:
        line = {"phase": self.phase, "item": item, "status": status, **figures}
        with open(self.path, "a") as f:  # one line per write, closed at once: a kill loses nothing written
            f.write(json.dumps(line, default=str) + "\n")
        print(f"summary: {json.dumps(line, default=str)}", flush=True)
        return line

    def measure(self, item: str, fn, **extra) -> dict:
        """Run fn() -> dict of figures (or {"skipped": reason}); write its line whatever happens; return it."""
        t0 = time.perf_counter()
        try:
            res = fn()
        except Stopped:
            self.write(item, "timeout", seconds=round(time.perf_counter() - t0, 2), **extra)
            raise
        except Exception as e:
            traceback.print_exc()
            return self.write(item, "failed", error=f"{type(e).__name__}: {e}", **extra)
        status = "skipped" if "skipped" in res else res.pop("status", "ok")
        res = {("reason" if k == "skipped" else k): v for k, v in res.items()}
        return self.write(item, status, seconds=round(time.perf_counter() - t0, 2), **extra, **res)


def _preflight(a, s):
    _versions(a, s)
    _smoke(a, s)


def _versions(a, s):
    import importlib
    missing = {}
    for name in NEEDED:
        try:
            importlib.import_module(name)
        except Exception as e:
            missing[name] = f"{type(e).__name__}: {e}"
    import torch
    from benchmarks.measure import machine
    from training.gpu_monitor import cuda_identity
    m = machine([])
    m.pop("command")
    s.write("versions", "failed" if missing else "ok", missing=missing, cudnn=torch.backends.cudnn.version(),
            cuda_identity=cuda_identity(), cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"), **m)


def _small_store(root: Path, n: int) -> Path:
    """A store of n synthetic NIH phantoms at 256 px under root/store (made once): synthetic PNGs, preprocess."""
    from preprocess.__main__ import main as preprocess
    from preprocess.synthetic import generate
    if not (root / "store" / "store.json").exists():
        csv = generate(root / "raw", n, "nih", size=256)
        rc = preprocess([str(root / "raw" / "images"), "--dataset", "nih", "--metadata", str(csv), "--out",
                         str(root / "store"), "--overwrite", "--no-progress"])
        if rc:
            raise RuntimeError(f"python -m preprocess exited {rc} (see the log)")
    return root / "store"


def _store(a, s):
    from preprocess.store import open_store
    base, tiled = a.work / "base" / "store", a.work / "store"
    if (tiled / "store.json").exists():
        s.write("tiled", "ok", reused=str(tiled), slots=len(open_store(tiled)))
        return

    def make_base():
        return {"images": len(open_store(_small_store(a.work / "base", a.base))), "px": 256}

    def tile():
        from preprocess.merge import main as merge
        copies = math.ceil(a.slots / a.base)
        rc = merge([str(base)] * copies + ["--out", str(tiled), "--overwrite", "--no-progress"])
        return {"status": "ok" if rc == 0 else "failed", "rc": rc, "slots": a.base * copies, "copies": copies}

    if s.measure("base", make_base)["status"] == "ok":  # 1,024 images: about 2 s on 16 cores
        s.measure("tiled", tile)


def _smoke(a, s):
    import torch
    from pipelines import AugmentConfig, build_loader
    from pipelines.factory import dali_available
    from preprocess.store import open_store
    reason = None if torch.cuda.is_available() else "no CUDA GPU here"
    reason = reason or (None if dali_available() else "DALI is not installed")
    if reason:
        for item in ("dali-gpu streamed", "dali-gpu resident"):
            s.write(item, "skipped", reason=reason)
        return
    store = open_store(_small_store(a.work / "smoke", SMOKE_IMAGES))
    config = AugmentConfig.for_store(store, crop_size=a.crop, noise_std=0.0)  # noise: CPU and CUDA draw differently
    b = SMOKE_IMAGES // 2

    def first(kind, **kw):
        ld = build_loader(store, kind, b, config=config, seed=SMOKE_SEED, num_workers=4, **kw)
        ld.set_epoch(0)
        v1, v2 = next(iter(ld))
        ld.close()
        return torch.cat([v1, v2]).float().cpu()

    want = first("dali-cpu", device="cpu")
    for resident in (False, True):
        def compare():
            d = (first("dali-gpu", resident=resident) - want).abs()
            ok = d.mean().item() < 0.05 and d.max().item() < 1.0  # the bounds of tests/test_pipelines_gpu.py
            return {"status": "ok" if ok else "failed", "mean_abs_diff": d.mean().item(),
                    "max_abs_diff": d.max().item(), "batch": b}
        s.measure(f"dali-gpu {'resident' if resident else 'streamed'}", compare)


def _pytest(a, s):
    xml = a.work / "pytest-gpu.xml"
    xml.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider", f"--junitxml={xml}"]
    if a.marked_modules_only:  # the dry run: collecting every module is 2/3 of this phase's time on 2 cores
        cmd += sorted(str(f) for f in Path("tests").glob("test_*.py") if "mark.gpu" in f.read_text())
    proc = subprocess.Popen(cmd)
    try:
        rc = proc.wait()
    except Stopped:
        proc.terminate()
        proc.wait()
        s.write("pytest -m gpu", "timeout")
        raise
    root = ET.parse(xml).getroot() if xml.exists() else ET.Element("none")  # no report: collection broke
    n = {k: sum(int(t.get(k, 0)) for t in root.iter("testsuite")) for k in ("tests", "failures", "errors",
                                                                            "skipped")}
    failed = [f"{c.get('classname')}::{c.get('name')}" for c in root.iter("testcase")
              if c.find("failure") is not None or c.find("error") is not None]
    # exit 5 is no test collected: the marks broke, a failure
    s.write("pytest -m gpu", "ok" if rc == 0 else "failed", rc=rc, passed=n["tests"] - n["failures"] -
            n["errors"] - n["skipped"], failed=n["failures"], errors=n["errors"], skipped=n["skipped"],
            failed_tests=failed[:20])


def _pretrain(a, s):
    import torch
    from pipelines.factory import best_kind
    from training.pretrain import main as pretrain
    out = a.work / "pretrain"  # checkpoint and encoder (100s of MB): under /tmp, never in OUT
    kind = best_kind()
    argv = ["--store", str(a.work / "store"), "--method", "simclr", "--arch", a.arch, "--loader", kind,
            "--batch-size", str(a.batch), "--crop-size", str(a.crop), "--steps", str(a.pretrain_steps),
            "--workers", str(a.workers), "--log-every", str(max(1, a.pretrain_steps // 12)), "--checkpoint-every",
            "1000000", "--wandb-mode", "disabled", "--no-progress", "--out", str(out), "--overwrite"]
    t0, rc = time.perf_counter(), None
    try:
        rc = pretrain(argv)
    finally:  # also on a Stopped: pretrain itself stops at a step on SIGTERM (exit 143), so this runs either way
        recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()] if \
            (out / "metrics.jsonl").exists() else []
        later = recs[1:] or recs  # the first interval holds cuDNN's autotuning and the loader's start
        def mean(k):
            v = [r[k] for r in later if r.get(k) is not None]
            return sum(v) / len(v) if v else None  # null without a GPU, never a made-up zero
        status = "ok" if rc == 0 else "timeout" if rc in (None, 143) else "failed"
        s.write(f"simclr {a.arch} {kind}", status, rc=rc, steps=recs[-1]["step"] if recs else 0,
                loss_first=recs[0]["loss"] if recs else None, loss_last=recs[-1]["loss"] if recs else None,
                images_per_s=mean("images_per_s"), data_wait_frac=mean("data_wait_frac"),
                gpu_util_mean=mean("gpu_util"), seconds=round(time.perf_counter() - t0, 1),
                checkpoint_mib=round((out / "checkpoint.pt").stat().st_size / 2**20, 1) if
                (out / "checkpoint.pt").exists() else None, cuda=torch.cuda.is_available())
    if rc == 143:  # the phase's time is up (SIGTERM reached pretrain's own handler): nothing more in this phase
        raise Stopped()


def _long(a, s):
    from benchmarks.gpu_timed import sweep
    _pretrain(a, s)
    sweep(a, s)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_phases", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("phase", choices=PHASES)
    a("--summary", type=Path, required=True, help="summary.jsonl to append to")
    a("--out", type=Path, required=True, help="folder for the full benchmark JSON and chart")
    a("--work", type=Path, required=True, help="folder for stores, raw results and checkpoints (not OUT)")
    for flag, kind, default in (("--base", int, 1024), ("--slots", int, 65536), ("--batch", int, 256),
                                ("--crop", int, 224), ("--workers", int, 14), ("--steps", int, 50),
                                ("--warmup", int, 10), ("--min-seconds", float, 3.0), ("--pretrain-steps", int, 300),
                                ("--sweep-batch", int, 64), ("--sweep-steps", int, 10)):
        a(flag, type=kind, default=default, help=f"(default: {default})")
    a("--arch", default="resnet50", help="(default: resnet50)")
    a("--marked-modules-only", action="store_true", help="pytest: collect only the modules that mark gpu tests")
    a("--sweep", default="1,2,4,8,14", help="worker counts of the sweep (default: 1,2,4,8,14)")
    args = p.parse_args(argv)
    args.sweep = [int(x) for x in args.sweep.split(",")]
    return args


def main(argv=None) -> int:
    a = parse_args(argv)
    a.work.mkdir(parents=True, exist_ok=True)

    me = os.getpid()

    def stop(signum, frame):
        if os.getpid() != me:  # a forked worker (pools, DataLoader) inherited this: die as SIGTERM means
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise Stopped()

    signal.signal(signal.SIGTERM, stop)
    try:
        if a.phase in ("loader", "train"):
            from benchmarks import gpu_timed
            getattr(gpu_timed, a.phase)(a, Summary(a.summary, a.phase))
        else:
            globals()["_" + a.phase](a, Summary(a.summary, a.phase))
    except Stopped:
        return 124
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
