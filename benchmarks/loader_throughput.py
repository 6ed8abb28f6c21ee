"""python -m benchmarks.loader_throughput: every loader over the same store and AugmentConfig, side by side.

Per loader: a warm-up stage, then a timed stage with a device synchronize around it (nanoGPT's bench.py). Figures:
images/s (a pair of views counts as one image), step time p50/p95 (time between consecutive batches), CPU use of
the whole process tree (cores busy), GPU utilisation and memory sampled by NVML in a background thread (null
without a GPU, never a made-up zero), private memory of the loader's worker processes, time to the first batch,
and the ratio to the torchvision baseline. `--mode train` runs the real training step (training/step.py) on each
batch and adds the fraction of time spent waiting for data and the ratio to the synthetic-input ceiling: the same
step fed one fixed, already augmented batch on the device. A loader that cannot run here is reported as skipped
with the reason. `--torch-float-end` adds the DALI loaders with the float end after DALI (`float_end="torch"`:
jitter, noise and normalize in torch/OpenCV) beside the whole chain in the DALI graph. Output:
DIR/loader_throughput.json, DIR/loader_throughput.png, and a Markdown table.

  python -m benchmarks.loader_throughput --loaders torchvision,opencv,dali-cpu --mode both --out benchmarks/results/cpu
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import measure, report

MODES = ("loader", "train")


def parse_args(argv=None):
    from pipelines import KINDS
    from pipelines.subset import add_arguments, from_args
    p = argparse.ArgumentParser(prog="python -m benchmarks.loader_throughput", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--store", type=Path, help="store folder (default: the demo store under ./data/demo, built if missing)")
    add_arguments(p)
    a("--loaders", default=",".join(KINDS), help=f"comma-separated loader kinds (default: {','.join(KINDS)})")
    a("--mode", choices=(*MODES, "both"), default="loader", help="loader alone, with a training step, or both "
                                                                  "(default: loader)")
    a("--batch-size", type=int, default=256, help="batch size (default: 256)")
    a("--steps", type=int, default=50, help="timed batches per loader, at least (default: 50)")
    a("--min-seconds", type=float, default=3.0, help="the timed stage lasts at least this long, in more batches if "
                                                     "needed, so that CPU readings are exact (default: 3)")
    a("--warmup", type=int, default=10, help="untimed batches first (default: 10; the CPU loaders take at least "
                                            "4 x workers + 2, to get past their prefetch queue)")
    a("--workers", type=int, default=os.cpu_count(), help=f"CPU workers / DALI threads (default: all cores, "
                                                           f"here {os.cpu_count()})")
    a("--arch", default="resnet50", help="backbone for --mode train (default: resnet50)")
    a("--method", default="simclr", help="SSL method for --mode train (default: simclr)")
    a("--crop-size", type=int, default=224, help="view size (default: 224)")
    a("--resident", action="store_true", help="also run dali-gpu with the GPU-resident store")
    a("--torch-float-end", action="store_true", help="also run the DALI loaders with float_end='torch' (DALI "
                                                     "crops and blurs, jitter/noise/normalize run after it), beside "
                                                     "the whole chain in the DALI graph")
    a("--sweep-workers", action="store_true", help="also images/s against CPU workers 1..all for the CPU loaders")
    a("--out", type=Path, default=Path("benchmarks/results/latest"), help="output folder (default: "
                                                                          "benchmarks/results/latest)")
    args = p.parse_args(argv)
    args.select = from_args(args)
    args.loaders = [k.strip() for k in args.loaders.split(",") if k.strip()]
    unknown = [k for k in args.loaders if k not in KINDS]
    if unknown:
        p.error(f"unknown loader(s) {', '.join(unknown)}: choose from {', '.join(KINDS)}")
    if min(args.batch_size, args.steps, args.workers) < 1 or args.warmup < 0:
        p.error("--batch-size, --steps and --workers must be >= 1, --warmup >= 0")
    return args


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def endless(loader):
    for epoch in itertools.count():
        loader.set_epoch(epoch)
        yield from loader


def make_step(args, device):
    from training.lars import LARS, param_groups_for
    from training.methods import build_method
    from training.model import build_backbone
    from training.step import TrainStep
    torch.manual_seed(0)
    backbone, dim = build_backbone(args.arch)
    method = build_method(args.method, backbone, dim).to(device)
    if device.type == "cuda":
        method = method.to(memory_format=torch.channels_last)
    opt = LARS(param_groups_for(method, method.recipe["weight_decay"]), lr=0.1, momentum=0.9, eta=1e-3)
    step, counter = TrainStep(method, method, opt, device), itertools.count()
    return lambda views: step(views, next(counter), 10**9, 0.1)  # a constant lr: the step's cost is what counts


def timed(batches, args, device, step_fn, gpu) -> dict:
    """Warm up, then time `args.steps` batches; `batches` yields views, `step_fn(views)` consumes them."""
    for _ in range(args.warmup):
        step_fn(next(batches))
    sync(device)
    if gpu:
        gpu.reset()
    pids = measure.worker_pids()
    mem0 = measure.private_dirty_mib(pids)  # before the CPU reading: reading smaps costs CPU time
    cpu0 = measure.cpu_seconds()
    stamps, wait = [time.perf_counter()], 0.0
    # at least --steps batches and at least --min-seconds: a fast loader's CPU reading (the kernel counts CPU time
    # in 10 ms ticks) needs a stage of seconds, not the 0.1 s that 20 opencv batches take
    while len(stamps) <= args.steps or stamps[-1] - stamps[0] < args.min_seconds:
        t = time.perf_counter()
        views = next(batches)
        wait += time.perf_counter() - t
        step_fn(views)
        stamps.append(time.perf_counter())
    sync(device)
    wall, cpu = time.perf_counter() - stamps[0], measure.cpu_used(cpu0, measure.cpu_seconds())
    steps_ms = np.diff(stamps) * 1000
    g = gpu.summary() if gpu else {}
    mem1 = measure.private_dirty_mib(pids)
    n = len(stamps) - 1
    return {"images_per_s": n * args.batch_size / wall, "timed_batches": n,
            "step_ms_p50": float(np.percentile(steps_ms, 50)),
            "step_ms_p95": float(np.percentile(steps_ms, 95)), "seconds": wall,
            "cpu_cores_busy": cpu / wall,
            "gpu_util_mean": g.get("gpu_util_mean"), "gpu_util_p10": g.get("gpu_util_p10"),
            "gpu_mem_used_max_mib": g.get("gpu_mem_used_max_mib"),
            "worker_processes": len(pids), "workers_private_dirty_mib": mem1,
            "workers_private_growth_mib": mem1 - mem0, "data_wait_frac": wait / wall}


def run_one(store, kind, mode, args, device, gpu, step_fn=None, resident=False, float_end="graph") -> dict:
    from pipelines import AugmentConfig, build_loader
    name = kind + (" (resident)" if resident else "") + (" (torch float end)" if float_end == "torch" else "")
    t0 = time.perf_counter()
    try:
        loader = build_loader(store, kind, args.batch_size, config=AugmentConfig.for_store(store,
                              crop_size=args.crop_size), num_workers=args.workers, device=device, resident=resident,
                              select=args.select, float_end=float_end)
        batches = endless(loader)
        first = next(batches)
    except ValueError as e:
        return {"mode": mode, "loader": name, "skipped": str(e)}
    ttfb = time.perf_counter() - t0
    consume = step_fn if mode == "train" else (lambda views: None)
    # warm up past the DataLoader's prefetch queue (up to 4 batches per worker): otherwise the timed stage would
    # partly consume batches made before it started
    if kind in ("torchvision", "opencv"):
        args = argparse.Namespace(**{**vars(args), "warmup": max(args.warmup, 4 * args.workers + 2)})
    res = timed(itertools.chain([first], batches), args, device, consume, gpu)
    batches.close()
    loader.close()  # stop its workers now, not when the garbage collector gets to them (maybe in a forked child)
    res.update(mode=mode, loader=name, time_to_first_batch_s=ttfb, workers=args.workers)
    if mode == "loader":
        res.pop("data_wait_frac")
    return res


def ceiling(store, args, device, step_fn, gpu) -> dict:
    """The training step fed one fixed, already augmented batch on the device: what a free loader would allow."""
    from pipelines import AugmentConfig, build_loader
    config = AugmentConfig.for_store(store, crop_size=args.crop_size)
    loader = build_loader(store, "dali-cpu" if "dali-cpu" in args.loaders else "opencv", args.batch_size,
                          config=config, num_workers=args.workers, device=device, select=args.select)
    fixed = [v.clone() for v in next(iter(loader))]
    loader.close()
    res = timed(itertools.repeat(fixed), args, device, step_fn, gpu)
    res.update(mode="train", loader="ceiling", time_to_first_batch_s=0.0, workers=0)
    return res


def sweep(store, args, device) -> list[dict]:
    """images/s of each CPU loader (loader mode) with 1, 2, 4, ... up to all cores."""
    cores = os.cpu_count() or 1
    counts = sorted({1, cores, *(2 ** i for i in range(1, cores.bit_length()) if 2 ** i < cores)})
    out = []
    for kind in (k for k in args.loaders if k in ("torchvision", "opencv", "dali-cpu")):
        for n in counts:
            one = argparse.Namespace(**{**vars(args), "workers": n})
            r = run_one(store, kind, "loader", one, device, None)
            out.append({"loader": kind, "workers": n, "images_per_s": r.get("images_per_s"),
                        "cpu_cores_busy": r.get("cpu_cores_busy"), "skipped": r.get("skipped")})
            print(f"sweep {kind} workers={n}: {r.get('images_per_s', 0):.1f} images/s", file=sys.stderr)
    return out


def main(argv=None) -> int:
    from preprocess.store import open_store
    from training.gpu_monitor import GpuMonitor
    args = parse_args(argv)
    if args.store is None:
        from training.demo import ensure_store
        args.store = ensure_store()
    try:
        store = open_store(args.store)
        from pipelines.subset import select_slots
        selected = select_slots(store, args.select)  # a selection that keeps nothing: one line now, not per loader
        if selected is not None and len(selected) < args.batch_size:
            raise ValueError(f"{args.select.describe()} leaves {len(selected)} images, fewer than one batch of "
                             f"{args.batch_size}: widen the selection or lower --batch-size")
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = GpuMonitor(device).start() if device.type == "cuda" else None  # torch's GPU, by UUID
    modes = MODES if args.mode == "both" else (args.mode,)
    runs = [(k, False, "graph") for k in args.loaders]
    if args.resident and "dali-gpu" in args.loaders:
        runs.append(("dali-gpu", True, "graph"))
    if args.torch_float_end:
        runs += [(k, False, "torch") for k in args.loaders if k.startswith("dali")]
    results = []
    for mode in modes:
        step_fn = make_step(args, device) if mode == "train" else None
        if mode == "train":
            results.append(ceiling(store, args, device, step_fn, gpu))
            print(report.line(results[-1]), file=sys.stderr)
        for kind, resident, float_end in runs:
            results.append(run_one(store, kind, mode, args, device, gpu, step_fn, resident, float_end))
            print(report.line(results[-1]), file=sys.stderr)
    swept = sweep(store, args, device) if args.sweep_workers else []
    if gpu:
        gpu.close()
    doc = report.assemble(args, store, results, swept, measure.machine([sys.executable, "-m",
                          "benchmarks.loader_throughput", *(sys.argv[1:] if argv is None else argv)]))
    doc["settings"]["subset"] = args.select.describe()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "loader_throughput.json").write_text(json.dumps(doc, indent=1))
    report.chart(doc, args.out / "loader_throughput.png")
    print(report.table(doc))
    print(f"\nwrote {args.out / 'loader_throughput.json'} and {args.out / 'loader_throughput.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
