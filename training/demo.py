"""The embedded default: a small synthetic labelled store under ./data/demo, built on first use.

`python -m training.pretrain` with no --store trains on it with a profile that finishes in minutes on a laptop-class
CPU (resnet18, small crops) or shows the real thing on a GPU (resnet50, 224 crops, bf16).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

DEMO_ROOT = Path("data/demo")
DEMO_IMAGES = 512
CPU_PROFILE = {"arch": "resnet18", "batch_size": 32, "steps": 60, "crop_size": 96, "checkpoint_every": 30,
               "log_every": 10}
GPU_PROFILE = {"arch": "resnet50", "batch_size": 128, "steps": 60, "crop_size": 224, "checkpoint_every": 30,
               "log_every": 10}


def profile() -> dict:
    return dict(GPU_PROFILE if torch.cuda.is_available() else CPU_PROFILE)


def ensure_store(root: Path = DEMO_ROOT, n: int = DEMO_IMAGES) -> Path:
    """The demo store's path, generating phantoms and preprocessing them if it does not exist yet."""
    from preprocess.__main__ import main as preprocess_main
    from preprocess.synthetic import generate

    store = root / "store"
    if (store / "store.json").exists():
        return store
    raw = root / "raw"
    csv = raw / "Data_Entry_2017.csv"
    if not csv.exists():
        print(f"demo: generating {n} synthetic chest phantoms in {raw} (once)", file=sys.stderr)
        csv = generate(raw, n, "nih", seed=0, size=512)
    print(f"demo: preprocessing them into the store {store}", file=sys.stderr)
    rc = preprocess_main([str(raw / "images"), "--dataset", "nih", "--metadata", str(csv), "--out", str(store),
                          "--size", "256"])
    if rc != 0:
        raise RuntimeError(f"building the demo store failed (exit {rc}); delete {root} and retry")
    return store
