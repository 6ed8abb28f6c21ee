"""Build a run's parts from its arguments: store, loader, model (DDP-wrapped when distributed), optimizer.

The optimizer follows the method's paper recipe (training/methods.py `recipe`): LARS with momentum 0.9, trust
coefficient 1e-3, no weight decay or adaptation for biases and norm parameters, and a peak learning rate of
base_lr x global batch / 256 (or base_lr x sqrt(global batch) with --lr-scaling sqrt, SimCLR Appendix B.1).
"""
from __future__ import annotations

import math

import torch

from training import distributed


def parse_overrides(items: list[str]) -> dict:
    """--aug FIELD=VALUE items -> AugmentConfig keyword arguments (a comma makes a pair)."""
    from dataclasses import fields

    from pipelines import AugmentConfig
    known = {f.name for f in fields(AugmentConfig)} - {"crop_size"}
    out = {}
    for item in items:
        name, _, value = item.partition("=")
        if name not in known or not value:
            raise ValueError(f"--aug {item!r}: use FIELD=VALUE with FIELD one of {', '.join(sorted(known))}")
        nums = tuple(float(v) for v in value.split(","))
        out[name] = nums if len(nums) > 1 else (int(nums[0]) if name == "blur_kernel" else nums[0])
    return out


def setup(args, d: distributed.Dist):
    from pipelines import AugmentConfig, best_kind, build_loader
    from preprocess.store import open_store
    from training.lars import LARS, param_groups_for
    from training.methods import build_method
    from training.model import build_backbone

    store = open_store(args.store)
    args.loader = args.loader or best_kind()
    config = AugmentConfig.for_store(store, crop_size=args.crop_size, **parse_overrides(args.aug))
    loader = build_loader(store, args.loader, args.batch_size, config=config, seed=args.seed, rank=d.rank,
                          world_size=d.world_size, num_workers=args.workers, device=d.device, resident=args.resident)
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
    return loader, method, model, opt, peak
