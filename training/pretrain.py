"""python -m training.pretrain: self-supervised pretraining of a ResNet (1-channel stem) fed by the loaders.

Run with no arguments for the embedded demo: a small synthetic store under ./data/demo (built once), resnet18 on CPU
or resnet50 on a GPU, a few dozen steps on the fastest loader measured for the machine (dali-gpu, else opencv).

Optimizer and schedule: each method's paper recipe for ResNet50 (training/methods.py `recipe`): LARS (momentum 0.9,
trust coefficient 1e-3, no weight decay or adaptation for biases and norm parameters), lr = base_lr x global
batch / 256 (SimCLR base 0.3, wd 1e-6; BYOL 0.2, wd 1.5e-6; VICReg 0.2, wd 1e-6), linear warmup over the first
10% of the steps (the papers' 10 of 100 epochs), then cosine decay to 0. `--lr-scaling sqrt` (lr = 0.075 x
sqrt(batch), SimCLR Appendix B.1) suits small batches. On CUDA: bf16 autocast and channels_last; on CPU: float32.

Runs that survive a cluster: an --out that holds a run needs --resume (continue) or --overwrite (start again).
SIGTERM (a preemption) or Ctrl-C finish the current step, write a checkpoint there and exit 143 / 130; the same
command plus --resume then continues step for step. Checkpoints also every --checkpoint-every steps and every
--checkpoint-minutes. --resume refuses a command that would change the run (batch size, steps, store, ...),
listing the differences, unless --allow-changes; --config RUN/args.json reuses a run's flags.

Exit status: 0 done (or stopped by --stop-after), 1 the run failed (non-finite loss, a loader worker died), 2 a
usage error (nothing written), 130 / 143 stopped by SIGINT / SIGTERM with a checkpoint.

Multi-GPU: torchrun --nproc-per-node N -m training.pretrain --store ... (NCCL; gloo on CPU).
"""
from __future__ import annotations

import os

# let torch's OpenMP threads sleep, not spin, while they wait for each other: read once, when torch is first
# imported (so it acts for `python -m training.pretrain`); training/build.py `thread_plan` has the measured cost
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json  # noqa: E402
import secrets  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from training import checkpoint as ckpt  # noqa: E402
from training import demo, distributed, runs  # noqa: E402
from training.logs import RunLog, check_wandb  # noqa: E402
from training.loop import NonFiniteLoss, train  # noqa: E402
from training.options import NOT_FROM_CONFIG, parse_args  # noqa: E402
from training.preempt import StopSignal  # noqa: E402


def _plain(d: dict) -> dict:
    return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


def _saved_args(args) -> dict:
    return _plain({k: v for k, v in vars(args).items() if k not in NOT_FROM_CONFIG})


def err(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        distributed.check_device(args.device)
        if os.environ.get("RANK", "0") == "0":
            check_wandb(args.wandb_mode, warn=False)
        if args.out is not None:
            runs.check_folder(args.out, args.resume, args.overwrite)
    except (ValueError, FileNotFoundError) as e:
        err(e)
        return 2
    d = distributed.init(args.device)
    try:
        return _run(args, d)
    except KeyboardInterrupt:  # before the loop, or a second Ctrl-C in it
        print(f"\ninterrupted: nothing more saved; the last checkpoint (if any) is in {args.out}", file=sys.stderr)
        return 130
    finally:
        distributed.shutdown()


def _run(args, d) -> int:
    if args.store is None:
        if d.main:  # one rank builds the demo store, the others wait for it
            demo.ensure_store()
        distributed.barrier()
        args.store = demo.DEMO_ROOT / "store"
    if args.out is None:
        args.out = Path("runs") / f"{args.method}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        seen = runs.stamp(args.out)
        mode = runs.check_folder(args.out, args.resume, args.overwrite)
        saved = ckpt.load(args.out if args.resume == "auto" else args.resume) if mode == "resume" else None
        if args.resume == "auto" and saved is None and d.main:
            print(f"--resume: no checkpoint in {args.out} yet, so this starts the run", file=sys.stderr)
        from training.build import setup
        run = setup(args, d)
    except (ValueError, FileNotFoundError) as e:
        err(e)
        return 2
    total = args.steps or args.epochs * len(run.loader)
    warmup = args.warmup_steps if args.warmup_steps is not None else max(1, round(0.1 * total))
    state = {"step": 0, "epoch": 0, "batch": 0, "total": total, "warmup": warmup}
    sig = runs.signature(args, run.store, run.loader, run.config, run.select, d.world_size, total, warmup, run.peak)
    run_id, elapsed = secrets.token_hex(4), 0.0
    if saved is not None:
        changed = runs.differences(saved.get("signature", {}), sig)
        if changed and not args.allow_changes:
            err(f"--resume would change the run saved in {args.out} ({'; '.join(changed)}): pass the flags it was "
                f"started with (--config {args.out / 'args.json'} reads them), or --allow-changes")
            return 2
        if changed and d.main:
            print(f"warning: resuming with changes (--allow-changes): {'; '.join(changed)}", file=sys.stderr)
        try:
            run.method.load_state_dict(saved["method"])
            run.opt.load_state_dict(saved["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            old = saved.get("args", {})
            err(f"the checkpoint does not fit this model (it was written with --method {old.get('method')} "
                f"--arch {old.get('arch')}): {str(e).splitlines()[0]}")
            return 2
        state.update(step=saved["step"], epoch=saved["epoch"], batch=saved["batch"])
        ckpt.set_rng_state(saved["rng"])
        run_id, elapsed = saved.get("run_id") or run_id, float(saved.get("elapsed_s", 0.0))
    lock = None
    try:
        if d.main:
            lock = runs.claim(args.out, args.resume, args.overwrite, mode, seen)  # released when the run ends
            if mode == "overwrite":
                runs.clear(args.out)
        distributed.barrier()
        log = RunLog(args.out, rank=d.rank, wandb_mode=args.wandb_mode, config={**_saved_args(args), "signature": sig},
                     project=args.wandb_project, run_name=args.run_name or args.out.name, run_id=run_id,
                     resume_step=state["step"] if saved is not None else None, elapsed=elapsed)
    except ValueError as e:
        err(e)
        if lock is not None:
            lock.release()
        return 2
    try:
        return _start(args, d, run, state, log, saved, sig, run_id, total)
    finally:
        if lock is not None:
            lock.release(remove=True)


def _start(args, d, run, state, log, saved, sig, run_id, total) -> int:
    def save(st) -> None:
        if d.main:
            ckpt.save({"method": run.method.state_dict(), "optimizer": run.opt.state_dict(), "step": st["step"],
                       "epoch": st["epoch"], "batch": st["batch"], "rng": ckpt.rng_state(),
                       "args": _saved_args(args), "signature": sig, "run_id": run_id, "elapsed_s": log.elapsed()},
                      args.out / ckpt.CHECKPOINT)

    if saved is None:
        save(state)  # step 0: a run always has a loadable last good checkpoint
    if d.main:
        (args.out / "args.json").write_text(json.dumps(_saved_args(args), indent=1))
        what = "resuming at step {}".format(state["step"]) if saved is not None else "training"
        print(f"{what} {args.method} {args.arch} on {args.store} ({run.select.describe()}: {run.loader.sampler.n} "
              f"images, {len(run.loader)} batches of {args.batch_size} per epoch and rank, {d.world_size} rank(s), "
              f"loader {args.loader} with {run.workers} worker(s), torch {run.threads} thread(s), {d.device}) for "
              f"{total} steps -> {args.out}", file=sys.stderr)
    return _train(args, d, run, state, log, save, total)


def _train(args, d, run, state, log, save, total) -> int:
    path = args.out / ckpt.CHECKPOINT
    try:
        with StopSignal() as stop:
            state = train(args, d, run.loader, run.method, run.model, run.opt, run.peak, state, log, save, stop)
    except NonFiniteLoss as e:
        good = ckpt.verified_step(path)
        last = (f"the last good checkpoint is {path} (step {good}, verified): resume from it with --resume"
                if good is not None else f"no checkpoint in {args.out} verifies: start again with --overwrite")
        err(f"the loss became non-finite at step {e.args[0]}: stopped. {last}; lower --lr or check the data")
        return 1
    except RuntimeError as e:
        if "DataLoader worker" not in str(e):
            raise
        good = ckpt.verified_step(path)
        err(f"a loader worker died ({str(e).splitlines()[0].rstrip('. ')}), most likely killed by the "
            f"out-of-memory killer: lower --workers or --batch-size, or give the job more memory; the last "
            f"checkpoint {path} (step {good}) is kept: resume from it with --resume")
        return 1
    finally:
        log.close()
        if hasattr(run.loader, "close"):
            run.loader.close()  # stop the loader's workers now, whatever ended the loop
    if state.get("stopped_by"):
        name = signal.Signals(state["stopped_by"]).name
        if d.main:
            print(f"stopped by {name} at step {state['step']} of {total}: checkpoint {path}; continue with the "
                  f"same command plus --resume", file=sys.stderr)
        return 128 + int(state["stopped_by"])
    if d.main:
        ckpt.save_atomic(run.method.backbone.state_dict(), args.out / ckpt.ENCODER)
        losses = state.get("losses", [])
        trend = f"; loss {losses[0]:.3f} (first log) -> {losses[-1]:.3f} (last)" if len(losses) > 1 else ""
        status = "done" if state["step"] >= total else f"stopped (resume with --resume to reach {total})"
        print(f"{status}: {state['step']} steps{trend}\n  checkpoint {path}\n  encoder    "
              f"{args.out / ckpt.ENCODER}\n  metrics    {args.out / 'metrics.jsonl'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
