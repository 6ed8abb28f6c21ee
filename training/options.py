"""The command line of training.pretrain: flags, their checks, --config FILE, and the defaults they resolve to.

Every number is checked by argparse, so a bad one is a usage error naming its flag (`--steps: must be an integer
>= 1, got 0`), never a silent default or a traceback. `--config FILE` reads a run's saved arguments (its
args.json, or any JSON object of flag names, with - or _) as defaults; flags given on the command line win.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

METHODS = ("simclr", "byol", "vicreg", "multicrop-simclr")
# per-invocation flags: never taken from a --config file, never compared on --resume
NOT_FROM_CONFIG = ("config", "resume", "overwrite", "allow_changes", "stop_after")
DEFAULTS = {"arch": "resnet50", "batch_size": 256, "crop_size": 224, "checkpoint_every": 1000, "log_every": 20}


def _int_at_least(low: int):
    def check(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        return value
    check.__name__ = f"integer >= {low}"
    return check


def _float_above(low: float, inclusive: bool = False):
    def check(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        if not math.isfinite(value) or value < low or (value == low and not inclusive):
            raise argparse.ArgumentTypeError(f"must be a number {'>=' if inclusive else '>'} {low:g}, got {text}")
        return value
    return check


positive, non_negative = _int_at_least(1), _int_at_least(0)


def parser() -> argparse.ArgumentParser:
    from pipelines import KINDS
    from pipelines.subset import add_arguments
    from training import pretrain
    from training.logs import WANDB_MODES
    p = argparse.ArgumentParser(prog="python -m training.pretrain", description=pretrain.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--config", type=Path, metavar="FILE", help="read flags from a JSON file (a run's args.json, or an object of "
                                                  "flag names): flags on the command line override it")
    a("--store", type=Path, help="store folder (default: the demo store under ./data/demo, built if missing, "
                                 "with the demo profile for every flag not given)")
    add_arguments(p)
    a("--method", choices=METHODS, default="simclr", help="SSL method (default: simclr)")
    a("--arch", default=None, help="backbone: resnet50 (default), resnet18, resnet34, resnet101")
    a("--loader", choices=KINDS, default=None,
      help="loader kind (default: the fastest measured here: dali-gpu on a GPU with DALI, else opencv)")
    a("--batch-size", type=positive, default=None, help="per-rank batch size (default: 256)")
    a("--steps", type=positive, default=None, help="total optimizer steps (default: --epochs x batches per epoch)")
    a("--epochs", type=positive, default=100, help="epochs when --steps is not given (default: 100)")
    a("--lr", type=_float_above(0), default=None, help="base learning rate (default: the method's paper value)")
    a("--lr-scaling", choices=("linear", "sqrt"), default="linear",
      help="lr = base x batch/256 (linear, default) or 0.075 x sqrt(batch) style (sqrt: base x sqrt(batch))")
    a("--warmup-steps", type=non_negative, default=None, help="linear warmup steps (default: 10%% of the steps)")
    a("--crop-size", type=positive, default=None, help="view size in pixels (default: 224)")
    a("--aug", action="append", default=[], metavar="FIELD=VALUE",
      help="override an AugmentConfig field, repeatable, e.g. --aug blur_sigma=0.1,0.5 --aug scale=0.2,1")
    a("--out", type=Path, default=None, help="run folder (default: runs/<method>-<time>; demo: runs/demo)")
    run = p.add_mutually_exclusive_group()
    run.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CKPT",
                     help="continue a run: from CKPT (a checkpoint.pt or run folder), or bare, from --out's "
                          "checkpoint (a new run if --out has none yet, so a requeued job can always pass it)")
    run.add_argument("--overwrite", action="store_true",
                     help="start again in an --out that holds a run: its checkpoint, encoder, args.json and "
                          "metrics.jsonl are removed (default: refuse)")
    a("--allow-changes", action="store_true",
      help="--resume even if flags that change the run's meaning differ from the saved ones (default: refuse, "
           "listing them)")
    a("--stop-after", type=positive, default=None, metavar="N",
      help="stop (with a checkpoint) after N steps in this invocation, e.g. to fit a job's time limit; "
           "the schedule still runs to --steps (default: run to the end)")
    a("--checkpoint-every", type=positive, default=None, help="steps between checkpoints (default: 1000)")
    a("--checkpoint-minutes", type=_float_above(0, inclusive=True), default=10.0,
      help="also checkpoint every this many minutes of wall time, 0 for never (default: 10)")
    a("--log-every", type=positive, default=None, help="steps between log lines (default: 20)")
    a("--no-progress", action="store_true", help="no progress bar: one plain line per log interval instead "
                                                 "(the default where stderr is not a terminal)")
    a("--wandb-mode", choices=WANDB_MODES, default="offline", help="Weights & Biases mode (default: offline; "
                                                                   "a warning if wandb is not installed)")
    a("--wandb-project", default="scarce-cxr", help="W&B project (default: scarce-cxr)")
    a("--run-name", default=None, help="W&B run name (default: the --out folder's name)")
    a("--seed", type=int, default=0, help="seed for model init, sampling and augmentation (default: 0)")
    a("--workers", type=non_negative, default=None,
      help="loader workers / DALI threads (default on a CPU device: 0 up to 2 cores, else 1; on a GPU: the "
           "rank's cores less 2, DALI up to 4; with torch's --threads they never ask for more cores than the rank "
           "has, see training/build.py `thread_plan`)")
    a("--threads", type=positive, default=None,
      help="torch intra-op threads (default: $OMP_NUM_THREADS where set, else the rank's cores less the loader's, "
           "see --workers)")
    a("--device", default=None, metavar="cpu|cuda|cuda:N", help="default: cuda if available (cuda:LOCAL_RANK "
                                                                "under torchrun)")
    a("--resident", action="store_true", help="dali-gpu: copy the whole store to GPU memory once")
    a("--compile", action="store_true", help="torch.compile the model (CUDA)")
    return p


def read_config(p: argparse.ArgumentParser, path: Path) -> dict:
    """A JSON object of flag names -> values, checked against the parser; ArgumentParser.error otherwise."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        p.error(f"--config {path}: cannot read it as JSON ({e})")
    if not isinstance(data, dict):
        p.error(f"--config {path}: expected a JSON object of flag names, got a {type(data).__name__}")
    known = {a.dest: a for a in p._actions}
    out = {}
    for name, value in data.items():
        dest = name.lstrip("-").replace("-", "_")
        if dest not in known or dest == "help":
            p.error(f"--config {path}: unknown flag {name!r}")
        if dest in NOT_FROM_CONFIG or value is None:
            continue
        action = known[dest]
        if action.type is not None and not isinstance(value, (list, bool)):
            try:
                value = action.type(str(value))
            except (argparse.ArgumentTypeError, ValueError) as e:
                p.error(f"--config {path}: {name}: {e}")
        if action.choices is not None and value not in action.choices:
            p.error(f"--config {path}: {name}: {value!r} is not one of {', '.join(map(str, action.choices))}")
        out[dest] = tuple(value) if dest in ("views", "datasets") else value
    return out


def parse_args(argv=None) -> argparse.Namespace:
    from training import demo
    p = parser()
    first, _ = p.parse_known_args(argv)
    if first.config is not None:
        p.set_defaults(**read_config(p, first.config))
    args = p.parse_args(argv)
    defaults = dict(DEFAULTS)
    if args.store is None:
        defaults.update(demo.profile())
        if args.steps is None:
            args.steps = defaults.pop("steps")
        args.out = args.out or Path("runs/demo")
    for k, v in defaults.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    return args
