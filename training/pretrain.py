"""python -m training.pretrain: self-supervised pretraining of a ResNet (1-channel stem) fed by the loaders.

Run with no arguments for the embedded demo: a small synthetic store under ./data/demo (built once), resnet18 on CPU
or resnet50 on a GPU, a few dozen steps on the best loader available (dali-gpu, else dali-cpu).

Optimizer and schedule: each method's paper recipe for ResNet50 (training/methods.py `recipe`): LARS (momentum 0.9,
trust coefficient 1e-3, no weight decay or adaptation for biases and norm parameters), lr = base_lr x global
batch / 256 (SimCLR base 0.3, wd 1e-6; BYOL 0.2, wd 1.5e-6; VICReg 0.2, wd 1e-6), linear warmup over the first
10% of the steps (the papers' 10 of 100 epochs), then cosine decay to 0. `--lr-scaling sqrt` (lr = 0.075 x
sqrt(batch), SimCLR Appendix B.1) suits small batches. On CUDA: bf16 autocast and channels_last; on CPU: float32.

Multi-GPU: torchrun --nproc-per-node N -m training.pretrain --store ... (NCCL; gloo on CPU).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from training import checkpoint as ckpt
from training import demo, distributed
from training.build import setup
from training.logs import WANDB_MODES, RunLog
from training.loop import NonFiniteLoss, train

METHODS = ("simclr", "byol", "vicreg")


def parse_args(argv=None) -> argparse.Namespace:
    from pipelines.factory import KINDS
    p = argparse.ArgumentParser(prog="python -m training.pretrain", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--store", type=Path, help="store folder (default: the demo store under ./data/demo, built if missing, "
                                 "with the demo profile for every flag not given)")
    a("--method", choices=METHODS, default="simclr", help="SSL method (default: simclr)")
    a("--arch", default=None, help="backbone: resnet50 (default), resnet18, resnet34, resnet101")
    a("--loader", choices=KINDS, default=None, help="loader kind (default: dali-gpu, else dali-cpu)")
    a("--batch-size", type=int, default=None, help="per-rank batch size (default: 256)")
    a("--steps", type=int, default=None, help="total optimizer steps (default: --epochs x batches per epoch)")
    a("--epochs", type=int, default=100, help="epochs when --steps is not given (default: 100)")
    a("--lr", type=float, default=None, help="base learning rate (default: the method's paper value)")
    a("--lr-scaling", choices=("linear", "sqrt"), default="linear",
      help="lr = base x batch/256 (linear, default) or 0.075 x sqrt(batch) style (sqrt: base x sqrt(batch))")
    a("--warmup-steps", type=int, default=None, help="linear warmup steps (default: 10%% of the steps)")
    a("--crop-size", type=int, default=None, help="view size in pixels (default: 224)")
    a("--aug", action="append", default=[], metavar="FIELD=VALUE",
      help="override an AugmentConfig field, repeatable, e.g. --aug blur_sigma=0.1,0.5 --aug scale=0.2,1")
    a("--out", type=Path, default=None, help="run folder (default: runs/<method>-<time>; demo: runs/demo)")
    a("--resume", nargs="?", const="auto", default=None, metavar="CKPT",
      help="resume from CKPT (a checkpoint.pt or run folder; default when given bare: --out's checkpoint)")
    a("--stop-after", type=int, default=None, metavar="N",
      help="stop (with a checkpoint) after N steps in this invocation, e.g. to fit a job's time limit; "
           "the schedule still runs to --steps (default: run to the end)")
    a("--checkpoint-every", type=int, default=None, help="steps between checkpoints (default: 1000)")
    a("--log-every", type=int, default=None, help="steps between log lines (default: 20)")
    a("--wandb-mode", choices=WANDB_MODES, default="offline", help="Weights & Biases mode (default: offline)")
    a("--seed", type=int, default=0, help="seed for model init, sampling and augmentation (default: 0)")
    a("--workers", type=int, default=None, help="loader workers / DALI threads (default: all cores)")
    a("--device", choices=("cuda", "cpu"), default=None, help="default: cuda if available")
    a("--resident", action="store_true", help="dali-gpu: copy the whole store to GPU memory once")
    a("--compile", action="store_true", help="torch.compile the model (CUDA)")
    args = p.parse_args(argv)
    defaults = {"arch": "resnet50", "batch_size": 256, "crop_size": 224, "checkpoint_every": 1000, "log_every": 20}
    if args.store is None:
        defaults.update(demo.profile())
        if args.steps is None:
            args.steps = defaults.pop("steps")
        args.out = args.out or Path("runs/demo")
    for k, v in defaults.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    for k in ("batch_size", "checkpoint_every", "log_every", "crop_size"):
        if getattr(args, k) < 1:
            p.error(f"--{k.replace('_', '-')} must be >= 1")
    return args


def save(args, d, method, opt, state) -> None:
    if not d.main:
        return
    ckpt.save_atomic({"method": method.state_dict(), "optimizer": opt.state_dict(),
                      "step": state["step"], "epoch": state["epoch"], "batch": state["batch"],
                      "rng": ckpt.rng_state(), "args": _plain(vars(args))}, args.out / ckpt.CHECKPOINT)


def _plain(d: dict) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}


def main(argv=None) -> int:
    args = parse_args(argv)
    d = distributed.init(args.device)
    if args.store is None:
        if d.main:  # one rank builds the demo store, the others wait for it
            demo.ensure_store()
        distributed.barrier()
        args.store = demo.DEMO_ROOT / "store"
    args.out = args.out or Path("runs") / f"{args.method}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        loader, method, model, opt, peak = setup(args, d)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    total = args.steps or args.epochs * len(loader)
    state = {"step": 0, "epoch": 0, "batch": 0, "total": total,
             "warmup": args.warmup_steps if args.warmup_steps is not None else max(1, round(0.1 * total))}
    args.out.mkdir(parents=True, exist_ok=True)
    if args.resume:
        try:
            saved = ckpt.load(args.out if args.resume == "auto" else args.resume, map_location=d.device)
        except (ValueError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        try:
            method.load_state_dict(saved["method"])
            opt.load_state_dict(saved["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            old = saved.get("args", {})
            print(f"error: the checkpoint does not fit this model (it was written with --method {old.get('method')} "
                  f"--arch {old.get('arch')}): {str(e).splitlines()[0]}", file=sys.stderr)
            return 2
        state.update(step=saved["step"], epoch=saved["epoch"], batch=saved["batch"])
        ckpt.set_rng_state(saved["rng"])
    else:
        save(args, d, method, opt, state)  # step 0: a run always has a loadable last good checkpoint
    if d.main:
        (args.out / "args.json").write_text(json.dumps(_plain(vars(args)), indent=1))
        print(f"training {args.method} {args.arch} on {args.store} ({len(loader)} batches of {args.batch_size} "
              f"per epoch and rank, {d.world_size} rank(s), loader {args.loader}, {d.device}) for {total} steps "
              f"-> {args.out}", file=sys.stderr)
    log = RunLog(args.out, rank=d.rank, wandb_mode=args.wandb_mode, config=_plain(vars(args)))
    try:
        state = train(args, d, loader, method, model, opt, peak, state, log,
                      lambda st: save(args, d, method, opt, st))
    except NonFiniteLoss as e:
        print(f"error: the loss became non-finite at step {e.args[0]}: stopped. The last good checkpoint is "
              f"{args.out / ckpt.CHECKPOINT}; lower --lr or check the data, then resume with --resume",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted: resume from the last checkpoint with the same command plus --resume "
              f"({args.out / ckpt.CHECKPOINT})", file=sys.stderr)
        return 130
    finally:
        log.close()
        distributed.shutdown()
    if d.main:
        ckpt.save_atomic(method.backbone.state_dict(), args.out / ckpt.ENCODER)
        losses = state.get("losses", [])
        trend = f"; loss {losses[0]:.3f} (first log) -> {losses[-1]:.3f} (last)" if len(losses) > 1 else ""
        status = "done" if state["step"] >= total else f"stopped (resume with --resume to reach {total})"
        print(f"{status}: {state['step']} steps{trend}\n  checkpoint {args.out / ckpt.CHECKPOINT}\n  encoder    "
              f"{args.out / ckpt.ENCODER}\n  metrics    {args.out / 'metrics.jsonl'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
