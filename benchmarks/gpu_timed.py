"""The timed phases of benchmarks/gpu_check.sh (`python -m benchmarks.gpu_phases loader|train|long`): the loader
benchmark's own measurements (benchmarks/loader_throughput.py: warm-up, timed stage, CPU and NVML readings), one
loader at a time in one process, so that the ratios are side by side. Each result is a summary line as soon as it is
measured, and the full benchmark JSON (OUT/loader_throughput.json, raw rows in WORK/results.jsonl) is rewritten
after each; the chart is drawn at the end of the train phase."""
from __future__ import annotations

import json
import os
import sys

def _bench_args(a, *, workers=None, batch=None, steps=None):
    from benchmarks.loader_throughput import parse_args
    # no dali-cpu in --loaders: the ceiling's fixed batch then comes from opencv (no DALI pipeline built for it)
    return parse_args(["--store", str(a.work / "store"), "--loaders", "dali-gpu,torchvision,opencv",
                       "--batch-size", str(batch or a.batch), "--steps",
                       str(steps or a.steps), "--min-seconds", str(a.min_seconds), "--warmup", str(a.warmup),
                       "--workers", str(workers or a.workers), "--arch", a.arch, "--crop-size", str(a.crop),
                       "--out", str(a.out)])


FIGURES = ("images_per_s", "cpu_cores_busy", "ratio_vs_torchvision", "ratio_to_ceiling", "data_wait_frac",
           "gpu_util_mean", "gpu_util_p10", "gpu_mem_used_max_mib", "step_ms_p50", "step_ms_p95",
           "time_to_first_batch_s", "timed_batches", "workers")


def _runs(a, s, mode: str, runs):
    """Each (name, fn) of `runs` measured in turn; its line as soon as done; the full JSON rewritten after each."""
    import torch
    from benchmarks import report
    from benchmarks.measure import machine
    from preprocess.store import open_store
    store, args = open_store(a.work / "store"), _bench_args(a)
    raw = a.work / "results.jsonl"
    done = [json.loads(line) for line in raw.read_text().splitlines()] if raw.exists() else []
    for name, fn in runs:
        def one():
            r = fn(store, args)
            r["loader"] = name
            done.append(r)
            with open(raw, "a") as f:
                f.write(json.dumps(r) + "\n")
            doc = report.assemble(args, store, [dict(x) for x in done], [], machine([sys.executable, "-m",
                                  "benchmarks.gpu_phases", *sys.argv[1:]]))
            a.out.mkdir(parents=True, exist_ok=True)  # a cut (Stopped) mid-write leaves the last whole file
            tmp = a.out / "loader_throughput.json.tmp"
            tmp.write_text(json.dumps(doc, indent=1))
            os.replace(tmp, a.out / "loader_throughput.json")
            mine = next(x for x in reversed(doc["results"]) if x["loader"] == name and x["mode"] == mode)
            return ({"skipped": r["skipped"]} if "skipped" in r else
                    {k: mine.get(k) for k in FIGURES if k in mine})
        s.measure(name, one)
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    path = a.out / "loader_throughput.json"
    if not path.exists():  # every item failed before its first result: their lines say why
        return None
    doc = json.loads(path.read_text())
    if mode == "train":  # the chart of both modes, once (matplotlib costs seconds); the JSON has it all before
        report.chart(doc, a.out / "loader_throughput.png")
    return doc


def _device_and_monitor():
    import torch
    from training.gpu_monitor import GpuMonitor
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return device, (GpuMonitor(device).start() if device.type == "cuda" else None)


def loader(a, s):
    from benchmarks.loader_throughput import run_one
    device, gpu = _device_and_monitor()
    runs = [(f"{kind}{' (resident)' if res else ''}",
             lambda st, args, kind=kind, res=res: run_one(st, kind, "loader", args, device, gpu, None, res))
            for kind, res in (("dali-gpu", True), ("dali-gpu", False), ("torchvision", False), ("opencv", False))]
    doc = _runs(a, s, "loader", runs)
    rows = [r for r in (doc or {}).get("results", []) if r["mode"] == "loader" and "skipped" not in r]
    s.write("ratios", "ok", x_torchvision={r["loader"]: r["ratio_vs_torchvision"] for r in rows})


def train(a, s):
    from benchmarks.loader_throughput import ceiling, make_step, run_one
    device, gpu = _device_and_monitor()
    args = _bench_args(a)
    step = make_step(args, device)  # ResNet50, bf16 autocast and channels_last on CUDA (training/step.py)
    runs = [("ceiling", lambda st, ar: ceiling(st, ar, device, step, gpu))]
    runs += [(k, lambda st, ar, k=k: run_one(st, k, "train", ar, device, gpu, step)) for k in ("dali-gpu",
                                                                                              "torchvision")]
    runs += [("ceiling (end)", lambda st, ar: ceiling(st, ar, device, step, gpu))]  # did the GPU's clock drift?
    doc = _runs(a, s, "train", runs)
    rows = {r["loader"]: r for r in (doc or {}).get("results", []) if r["mode"] == "train" and "skipped" not in r}
    top = [rows[k]["images_per_s"] for k in ("ceiling", "ceiling (end)") if k in rows]
    s.write("ratios", "ok", ceiling_drift=top[-1] / top[0] if len(top) == 2 else None,
            x_mean_ceiling={k: r["images_per_s"] / (sum(top) / len(top)) for k, r in rows.items()} if top else {})


def sweep(a, s):
    """images/s of the CPU loaders against their worker count (loader mode, a smaller batch)."""
    from benchmarks.loader_throughput import run_one
    from preprocess.store import open_store
    device, _ = _device_and_monitor()
    store = open_store(a.work / "store")
    for kind in ("torchvision", "opencv"):
        for n in a.sweep:
            args = _bench_args(a, workers=n, batch=a.sweep_batch, steps=a.sweep_steps)
            s.measure(f"{kind} workers={n}", lambda: {k: v for k, v in run_one(store, kind, "loader", args, device,
                      None).items() if k in FIGURES or k == "skipped"}, batch=a.sweep_batch)
