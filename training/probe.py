"""python -m training.probe --store STORE --encoder ENCODER: did pretraining learn anything?

Frozen 2048-d (resnet50) or 512-d (resnet18) features of every labelled image, then a linear probe (L2-regularised
logistic regression, full-batch L-BFGS on standardised features) and a kNN vote (k=20, cosine: the majority's
accuracy, and the AUC of the fraction of positive neighbours), trained on one
group of patients and tested on another: the manifest's split where it has one (NIH's official lists), else 80/20
by a hash of the patient id. The task is binary: images with --label against images with no label (NIH's
'No Finding'); images with other labels only are left out. `--compare-random` runs the same probe on a randomly
initialised encoder of the same architecture, the baseline that pretraining must beat.

--encoder takes an encoder.pt or a training checkpoint (checkpoint.pt, or a run folder: its backbone is used).
--views / --datasets / --split probe a subset of the store (with --split, which leaves one split, the 80/20
patient hash divides it). A test split too small for its figures to mean anything (fewer than 50 images, or
fewer than 10 of a class) is warned about, on stderr and in the results' `warnings`.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger("training.probe")
MIN_TEST, MIN_CLASS = 50, 10


def infer_arch(state: dict) -> str:
    """resnet18/34/50/101 from a backbone state_dict (block type and the number of blocks in layer3)."""
    blocks = len({k.split(".")[1] for k in state if k.startswith("layer3.")})
    bottleneck = any(k.endswith("conv3.weight") for k in state)
    arch = {(False, 2): "resnet18", (False, 6): "resnet34", (True, 6): "resnet50", (True, 23): "resnet101"}
    if (bottleneck, blocks) not in arch:
        raise ValueError("the encoder's state_dict is not a ResNet 18/34/50/101 backbone: pass --arch")
    return arch[(bottleneck, blocks)]


def select(manifest: list[dict], label: str | None, subset=None) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
    """(label, slots, y, is_test) for the binary task `label` vs no finding, split by patient; `subset` (a
    pipelines.subset.Subset) keeps only its rows."""
    keep = range(len(manifest)) if subset is None or subset.everything else \
        [i for i, r in enumerate(manifest) if subset.matches(r)]
    if not keep:
        raise ValueError(f"{subset.describe()} selects no image of this store")
    by_hash = subset is not None and subset.split is not None  # one split left: divide it by patient
    counts = Counter(l for i in keep for l in manifest[i]["labels"].split("|") if l)
    if not counts:
        raise ValueError("the store's manifest has no labels: a probe needs a labelled store (e.g. --dataset nih)")
    label = label or ("Nodule" if "Nodule" in counts else counts.most_common(1)[0][0])
    if label not in counts:
        raise ValueError(f"no image carries the label {label!r}; labels here: {', '.join(sorted(counts))}")
    slots, y, test = [], [], []
    for i in keep:
        r = manifest[i]
        labels = set(filter(None, r["labels"].split("|")))
        if labels and label not in labels:
            continue
        slots.append(i)
        y.append(label in labels)
        if r["split"] in ("train", "test") and not by_hash:
            test.append(r["split"] == "test")
        else:
            test.append(patient_fold(r["patient_id"]) == 0)
    return label, np.array(slots), np.array(y, dtype=np.int64), np.array(test)


def patient_fold(patient_id: str, folds: int = 5) -> int:
    """Which of `folds` groups a patient falls in, by a hash of the id: fold 0 is the test split where the
    manifest has none (so every image of a patient lands on the same side)."""
    return int(hashlib.sha1(patient_id.encode()).hexdigest(), 16) % folds


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


def knn(xtr, ytr, xte, yte, k: int = 20) -> dict:
    """A k-nearest-neighbour vote (cosine similarity of the features): accuracy of the majority, and the AUC of
    the fraction of positive neighbours as the score (threshold-free, so less noisy on small test splits)."""
    sim = F.normalize(xte, dim=1) @ F.normalize(xtr, dim=1).T
    votes = ytr[sim.topk(min(k, len(ytr)), dim=1).indices].float().mean(1)
    return {"accuracy": float(((votes > 0.5).long() == yte).float().mean()), "auc": auc(votes, yte)}


def auc(score: torch.Tensor, y: torch.Tensor) -> float:
    """Area under the ROC curve: the probability that a positive outranks a negative (ties count half)."""
    pos, neg = score[y == 1], score[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float((diff > 0).float().mean() + 0.5 * (diff == 0).float().mean())


def small_test_warnings(y_test: np.ndarray, label: str) -> list[str]:
    """Why the test split's figures may mean little: too few images, or too few of a class."""
    pos = int(y_test.sum())
    out = []
    if len(y_test) < MIN_TEST:
        out.append(f"the test split has {len(y_test)} images (fewer than {MIN_TEST})")
    for name, n in ((label, pos), ("no finding", len(y_test) - pos)):
        if n < MIN_CLASS:
            out.append(f"the test split has {n} '{name}' images (fewer than {MIN_CLASS})")
    return out


def evaluate(encoder, store, label=None, size: int = 224, subset=None) -> dict:
    label, slots, y, test = select(store.manifest, label, subset)
    if test.all() or not test.any():
        raise ValueError("the patient split left no train or no test images: use a larger store")
    warnings = small_test_warnings(y[test], label)
    if warnings:
        log.warning("%s: its accuracy and AUC may mean little; use a larger store", "; ".join(warnings))
    x = features(encoder, store.images, slots, store.mean, store.std, size)
    y = torch.from_numpy(y)
    tr, te = torch.from_numpy(~test), torch.from_numpy(test)
    res, near = linear_probe(x[tr], y[tr], x[te], y[te]), knn(x[tr], y[tr], x[te], y[te])
    return {"label": label, "train": int(tr.sum()), "test": int(te.sum()),
            "test_positive_frac": float(y[te].float().mean()), "linear_accuracy": res["accuracy"],
            "linear_auc": res["auc"], "knn_accuracy": near["accuracy"], "knn_auc": near["auc"],
            "warnings": warnings}


def load_encoder(path: Path, arch: str | None):
    """(backbone, arch) from an encoder.pt or a training checkpoint; one-line ValueErrors for a file that is
    neither, or an --arch that does not fit."""
    from training import checkpoint as ckpt
    from training.model import BACKBONES, build_backbone
    path = Path(path)
    obj = ckpt.read(path / ckpt.CHECKPOINT if path.is_dir() else path, what="encoder")
    if isinstance(obj, dict) and obj.get("format") == ckpt.FORMAT:
        saved = ckpt.load(path)  # verified
        state = {k[len("backbone."):]: v for k, v in saved["method"].items() if k.startswith("backbone.")}
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state = obj
    else:
        raise ValueError(f"{path} is neither an encoder.pt nor a checkpoint written by training.pretrain")
    try:
        found = infer_arch(state)
    except ValueError:
        raise ValueError(f"{path} holds no ResNet 18/34/50/101 backbone (keys {', '.join(list(state)[:3])}, ...)"
                         ) from None
    if arch is not None and arch != found:
        if arch not in BACKBONES:
            raise ValueError(f"--arch {arch}: choose one of {', '.join(sorted(BACKBONES))}")
        raise ValueError(f"--arch {arch} does not fit {path}: it holds a {found} backbone (leave --arch out)")
    encoder, _ = build_backbone(found)
    encoder.load_state_dict(state)
    return encoder, found


def main(argv=None) -> int:
    from pipelines.subset import add_arguments, from_args
    from preprocess.store import open_store
    from training.model import build_backbone

    p = argparse.ArgumentParser(prog="python -m training.probe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", type=Path, required=True, help="a labelled store")
    p.add_argument("--encoder", type=Path, required=True,
                   help="encoder.pt written by training.pretrain, or a checkpoint.pt / run folder")
    p.add_argument("--label", help="positive class (default: Nodule if present, else the most common label)")
    p.add_argument("--arch", help="backbone (default: inferred from the encoder; given, it must match)")
    p.add_argument("--image-size", type=int, default=224, help="images are resized to this (default: 224)")
    add_arguments(p)
    p.add_argument("--compare-random", action="store_true", help="also probe a randomly initialised encoder")
    p.add_argument("--seed", type=int, default=0, help="seed of the random encoder (default: 0)")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.image_size < 8:
        p.error("argument --image-size: must be an integer >= 8")
    logging.basicConfig(format="warning: %(message)s")
    try:
        store = open_store(args.store)
        subset = from_args(args)
        encoder, arch = load_encoder(args.encoder, args.arch)
        results = {"encoder": str(args.encoder), "arch": arch, "subset": subset.describe(),
                   "pretrained": evaluate(encoder, store, args.label, args.image_size, subset)}
        if args.compare_random:
            torch.manual_seed(args.seed)
            results["random_init"] = evaluate(build_backbone(arch)[0], store, args.label, args.image_size, subset)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    print(json.dumps(results, indent=1))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
