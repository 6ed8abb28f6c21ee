"""python -m training.probe --store STORE --encoder ENCODER: did pretraining learn anything?

Frozen 2048-d (resnet50) or 512-d (resnet18) features of every labelled image, then a linear probe (L2-regularised
logistic regression, full-batch L-BFGS on standardised features) and a kNN vote (k=20, cosine), trained on one
group of patients and tested on another: the manifest's split where it has one (NIH's official lists), else 80/20
by a hash of the patient id. The task is binary: images with --label against images with no label (NIH's
'No Finding'); images with other labels only are left out. `--compare-random` runs the same probe on a randomly
initialised encoder of the same architecture, the baseline that pretraining must beat.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def infer_arch(state: dict) -> str:
    """resnet18/34/50/101 from a backbone state_dict (block type and the number of blocks in layer3)."""
    blocks = len({k.split(".")[1] for k in state if k.startswith("layer3.")})
    bottleneck = any(k.endswith("conv3.weight") for k in state)
    arch = {(False, 2): "resnet18", (False, 6): "resnet34", (True, 6): "resnet50", (True, 23): "resnet101"}
    if (bottleneck, blocks) not in arch:
        raise ValueError("the encoder's state_dict is not a ResNet 18/34/50/101 backbone: pass --arch")
    return arch[(bottleneck, blocks)]


def select(manifest: list[dict], label: str | None) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
    """(label, slots, y, is_test) for the binary task `label` vs no finding, split by patient."""
    counts = Counter(l for r in manifest for l in r["labels"].split("|") if l)
    if not counts:
        raise ValueError("the store's manifest has no labels: a probe needs a labelled store (e.g. --dataset nih)")
    label = label or ("Nodule" if "Nodule" in counts else counts.most_common(1)[0][0])
    if label not in counts:
        raise ValueError(f"no image carries the label {label!r}; labels here: {', '.join(sorted(counts))}")
    slots, y, test = [], [], []
    for i, r in enumerate(manifest):
        labels = set(filter(None, r["labels"].split("|")))
        if labels and label not in labels:
            continue
        slots.append(i)
        y.append(label in labels)
        if r["split"] in ("train", "test"):
            test.append(r["split"] == "test")
        else:
            test.append(int(hashlib.sha1(r["patient_id"].encode()).hexdigest(), 16) % 5 == 0)
    return label, np.array(slots), np.array(y, dtype=np.int64), np.array(test)


@torch.no_grad()
def features(encoder, images, slots, mean, std, size: int, batch: int = 64) -> torch.Tensor:
    encoder.eval()
    out = []
    for s in range(0, len(slots), batch):
        x = torch.from_numpy(np.asarray(images[np.sort(slots[s:s + batch])])).float().unsqueeze(1) / 255
        order = np.argsort(np.argsort(slots[s:s + batch]))  # back from sorted (memmap-friendly) to given order
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[order]
        out.append(encoder((x - mean) / std).float())
    return torch.cat(out)


def linear_probe(xtr, ytr, xte, yte, wd: float = 1e-3) -> dict:
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    w = torch.zeros(xtr.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(xtr @ w + b, ytr.float()) + wd * w.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        score = xte @ w + b
    return {"accuracy": float(((score > 0).long() == yte).float().mean()), "auc": auc(score, yte)}


def knn(xtr, ytr, xte, yte, k: int = 20) -> float:
    sim = F.normalize(xte, dim=1) @ F.normalize(xtr, dim=1).T
    votes = ytr[sim.topk(min(k, len(ytr)), dim=1).indices].float().mean(1)
    return float(((votes > 0.5).long() == yte).float().mean())


def auc(score: torch.Tensor, y: torch.Tensor) -> float:
    """Area under the ROC curve: the probability that a positive outranks a negative (ties count half)."""
    pos, neg = score[y == 1], score[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float((diff > 0).float().mean() + 0.5 * (diff == 0).float().mean())


def evaluate(encoder, store, label=None, size: int = 224) -> dict:
    label, slots, y, test = select(store.manifest, label)
    if test.all() or not test.any():
        raise ValueError("the patient split left no train or no test images: use a larger store")
    x = features(encoder, store.images, slots, store.mean, store.std, size)
    y = torch.from_numpy(y)
    tr, te = torch.from_numpy(~test), torch.from_numpy(test)
    res = linear_probe(x[tr], y[tr], x[te], y[te])
    return {"label": label, "train": int(tr.sum()), "test": int(te.sum()),
            "test_positive_frac": float(y[te].float().mean()), "linear_accuracy": res["accuracy"],
            "linear_auc": res["auc"], "knn_accuracy": knn(x[tr], y[tr], x[te], y[te])}


def main(argv=None) -> int:
    from preprocess.store import open_store
    from training.checkpoint import load
    from training.model import build_backbone

    p = argparse.ArgumentParser(prog="python -m training.probe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", type=Path, required=True, help="a labelled store")
    p.add_argument("--encoder", type=Path, required=True, help="encoder.pt written by training.pretrain")
    p.add_argument("--label", help="positive class (default: Nodule if present, else the most common label)")
    p.add_argument("--arch", help="backbone (default: inferred from the encoder)")
    p.add_argument("--image-size", type=int, default=224, help="images are resized to this (default: 224)")
    p.add_argument("--compare-random", action="store_true", help="also probe a randomly initialised encoder")
    p.add_argument("--seed", type=int, default=0, help="seed of the random encoder (default: 0)")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    args = p.parse_args(argv)
    try:
        store = open_store(args.store)
        state = load(args.encoder)
        arch = args.arch or infer_arch(state)
        encoder, _ = build_backbone(arch)
        encoder.load_state_dict(state)
        results = {"encoder": str(args.encoder), "arch": arch,
                   "pretrained": evaluate(encoder, store, args.label, args.image_size)}
        if args.compare_random:
            torch.manual_seed(args.seed)
            results["random_init"] = evaluate(build_backbone(arch)[0], store, args.label, args.image_size)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(results, indent=1))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
