"""Build a run's parts from its arguments: store, loader, model (DDP-wrapped when distributed), optimizer.

The optimizer follows the method's paper recipe (training/methods.py `recipe`): LARS with momentum 0.9, trust
coefficient 1e-3, no weight decay or adaptation for biases and norm parameters, and a peak learning rate of
base_lr x global batch / 256 (or base_lr x sqrt(global batch) with --lr-scaling sqrt, SimCLR Appendix B.1).

Threads (`thread_plan`): the cores this process may use (its CPU affinity, which SLURM and taskset set), shared
by the ranks on the node, are split between torch's intra-op threads and the loader's workers or DALI threads, so
that together they do not ask for more than there are.
"""
from __future__ import annotations

import math
import os
from types import SimpleNamespace

import torch

from training import distributed


def parse_overrides(items: list[str]) -> dict:
    """--aug FIELD=VALUE items -> AugmentConfig keyword arguments (a comma makes a pair). small_views takes view
    groups COUNTxSIZE:LO,HI separated by '+', e.g. small_views=6x96:0.05,0.14."""
    from dataclasses import fields

    from pipelines import AugmentConfig
    from pipelines.config import ViewGroup
    known = {f.name for f in fields(AugmentConfig)} - {"crop_size"}
    out = {}
    for item in items:
        name, _, value = item.partition("=")
        if name not in known or not value:
            raise ValueError(f"--aug {item!r}: use FIELD=VALUE with FIELD one of {', '.join(sorted(known))}")
        if name == "small_views":
            out[name] = tuple(ViewGroup.parse(g) for g in value.split("+"))
            continue
        pair = isinstance(getattr(AugmentConfig(), name), tuple)
        try:
            nums = tuple(float(v) for v in value.split(","))
        except ValueError:
            nums = ()
        if len(nums) != (2 if pair else 1):
            raise ValueError(f"--aug {item!r}: {name} takes {'two numbers, LO,HI' if pair else 'one number'}")
        out[name] = nums if pair else (int(nums[0]) if name == "blur_kernel" else nums[0])
    return out


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def thread_plan(kind: str, device: str, workers: int | None, threads: int | None, cores: int,
                ranks_here: int = 1) -> tuple[int, int]:
    """(loader workers or DALI threads, torch threads) for one rank, from the cores it shares with the other
    ranks on its node, so that the two together ask for no more cores than the rank has.

    Why it matters: torch's OpenMP threads wait for each other at the end of every parallel region, spinning by
    default, so a thread that loses its core stalls the others. Measured on this 2-core machine under load 7-9,
    20 demo steps: 2 torch threads with OpenMP's default (active) waiting took 236 s wall and 122 s of CPU; with
    passive waiting (OMP_WAIT_POLICY=PASSIVE, which training.pretrain sets unless it is set already) 86-93 s, as
    fast as 1 thread plus 1 worker (95-100 s).

    On a CPU training device the network is the work and the loader needs little (opencv makes the demo's 64
    views in a few ms, against a step of hundreds): up to 2 cores, no worker (the batch is made in the main
    process, between steps) and torch every core; beyond, or for dali-cpu (whose views are always made in its own
    threads), one worker or thread and torch the rest. On a GPU torch's host
    threads have little to do (2) and the loader gets the rest (DALI on a GPU: up to 4 threads). --workers and
    --threads, where given, are kept (`setup` passes OMP_NUM_THREADS as --threads when the flag is not given:
    a cluster's cpus-per-task, or a test emulating a smaller machine)."""
    share = max(1, cores // max(1, ranks_here))
    dali = kind.startswith("dali")  # DALI needs a thread of its own (0 would mean all cores to it)
    if device == "cpu":
        workers = (1 if dali or share > 2 else 0) if workers is None else max(workers, int(dali))
        return workers, threads or max(1, share - workers)
    if workers is None:
        workers = max(1, min(4, share - 1)) if kind == "dali-gpu" else max(1, share - 2)
    return workers, threads or max(1, min(2, share - workers))


def _omp_threads() -> int | None:
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def setup(args, d: distributed.Dist):
    from pipelines import AugmentConfig, best_kind, build_loader
    from pipelines.subset import from_args
    from preprocess.store import open_store
    from training.lars import LARS, param_groups_for
    from training.methods import build_method
    from training.model import build_backbone

    store = open_store(args.store)
    args.loader = args.loader or best_kind()
    config = AugmentConfig.for_store(store, crop_size=args.crop_size, **parse_overrides(args.aug))
    workers, threads = thread_plan(args.loader, d.device.type, args.workers, args.threads or _omp_threads(),
                                   usable_cores(), d.local_world_size)
    torch.set_num_threads(threads)
    select = from_args(args)
    loader = build_loader(store, args.loader, args.batch_size, config=config, seed=args.seed, rank=d.rank,
                          world_size=d.world_size, num_workers=workers, device=d.device, resident=args.resident,
                          select=select)
    torch.manual_seed(args.seed)  # the same initial weights on every rank
    backbone, feat_dim = build_backbone(args.arch)
    method = build_method(args.method, backbone, feat_dim).to(d.device)
    if d.device.type == "cuda":
        method = method.to(memory_format=torch.channels_last)
    model = method
    if d.world_size > 1:
        if d.device.type == "cuda":
            method = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method)
        model = torch.nn.parallel.DistributedDataParallel(
            method, device_ids=[d.local_rank] if d.device.type == "cuda" else None)
    if args.compile:
        model = torch.compile(model)
    recipe = method.recipe
    batch = args.batch_size * d.world_size
    base = args.lr if args.lr is not None else (0.075 if args.lr_scaling == "sqrt" else recipe["base_lr"])
    peak = base * (math.sqrt(batch) if args.lr_scaling == "sqrt" else batch / 256)
    opt = LARS(param_groups_for(method, recipe["weight_decay"]), lr=peak, momentum=recipe["momentum"],
               eta=recipe["eta"])
    return SimpleNamespace(store=store, config=config, select=select, loader=loader, method=method, model=model,
                           opt=opt, peak=peak, workers=workers, threads=threads)
