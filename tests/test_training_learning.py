"""Pretraining learns: after a short SimCLR run on CPU, frozen features separate Nodule from No Finding clearly
better than the same encoder's random initialisation (the run's starting point).

What is measured, and why it holds on any CPU (issue 16). One seed gave a +0.24 accuracy margin on the machine that
sized the old test and +0.08 on another machine of the same kind: 600 steps of training diverge between processors
and thread counts (oneDNN and ATen pick vector code by processor; reduction order changes with threads), and the
old statistics were noisy. So:
  - The statistic is the AUC of a kNN vote (k=20, cosine; the fraction of positive neighbours is the score),
    cross-validated over 5 patient folds (every labelled image is a test image once). A random ResNet's features
    already feed a linear classifier well on these phantoms (linear AUC 0.79-0.90 over init seeds 0-9), but their
    neighbourhoods follow brightness and anatomy, not findings (kNN AUC 0.60-0.67 over seeds 0-4); SimCLR's
    invariance to crops and jitter is what makes neighbours share findings, so the kNN margin is the signal of
    learning, the standard SSL monitor (solo-learn, lightly, DINO all report it). The linear AUC must rise too.
  - Smaller and shorter, so that it fits the suite's time: a 64 px store, 32 px views, batch 64, 300 steps
    (0.28 s a step on an idle 2-core Zen 4, about 1 s on a 2-vCPU Zen 3), the opencv loader (the CPU default).
    Features are probed at 96 px (the 64 px store upsampled): at 64 px the weakest seed's margin was +0.12, at 96 px
    +0.21.

Measured with exactly this test's settings, torch 2.14.1, kNN AUC at 96 px over 5 patient folds, on two processors:
rows marked * are this test itself (`LEARNING_CHECK_SEED=S pytest tests/test_training_learning.py -s`, the JSON line
it prints) on a 2-vCPU AMD EPYC Zen 3 (AVX2, no AVX-512); the others ran on 2-core AMD EPYC Zen 4s (AVX-512; the
rows marked + in the session of 2026-12-02) with a harness (the same training command and the same
`cross_validated` on its saved encoders); rows marked # are this test itself on a 2-vCPU Intel Xeon (AVX-512 with
AMX, 2.0 GHz; 160 s a run native, 230-460 s emulated; the session of 2026-12-02, later); rows marked ^ are this
test itself on a 2-core AMD EPYC Zen 5 (family 26, AVX-512; 100 s a run native, 140-290 s emulated; 2026-12-03).
"Zen 3 kernels" is ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2.

| combination                                   | seed | kNN AUC pre / rand  | margin | linear AUC margin |
|-----------------------------------------------|------|---------------------|--------|-------------------|
| Zen 3 native (AVX2), 2 threads *              | 0    | 0.748 / 0.548       | +0.20  | +0.10             |
| Zen 3 native (AVX2), 2 threads *              | 1    | 0.781 / 0.569       | +0.21  | +0.11             |
| Zen 3, ATEN default, OMP 1 thread *           | 1    | 0.864 / 0.569       | +0.29  | +0.16             |
| Zen 3, ATEN default, OMP 1 thread *           | 0    | passed in the emulated full suite (not printed)        |
| Zen 4 native (AVX-512), 2 threads            | 1    | 0.795 / 0.569       | +0.23  |                   |
| Zen 4 native (AVX-512), 2 threads (+ again)  | 2    | 0.861 / 0.654       | +0.21  | +0.04             |
| Zen 4 native (AVX-512), 2 threads +          | 3    | 0.910 / 0.580       | +0.33  | +0.19             |
| Zen 4, OMP_NUM_THREADS=1                      | 0    | 0.822 / 0.548       | +0.27  |                   |
| Zen 4, OMP_NUM_THREADS=1 +                    | 2    | 0.856 / 0.654       | +0.20  | +0.03             |
| Zen 4, ATEN_CPU_CAPABILITY=default, 2 threads | 1    | 0.822 / 0.569       | +0.25  |                   |
| Zen 4, ATEN default, OMP 1 thread +           | 0    | 0.896 / 0.547       | +0.35  | +0.18             |
| Zen 4, ATEN default, OMP 1 thread +           | 2    | 0.823 / 0.653       | +0.17  | +0.04             |
| Zen 4, ONEDNN_MAX_CPU_ISA=AVX2                | 0    | 0.843 / 0.548       | +0.30  |                   |
| Zen 4, ONEDNN_MAX_CPU_ISA=AVX2                | 1    | 0.807 / 0.569       | +0.24  | +0.14             |
| Zen 4, Zen 3 kernels, OMP 1 thread +          | 0    | 0.880 / 0.548       | +0.33  | +0.20             |
| Zen 4, Zen 3 kernels, OMP 1 thread +          | 1    | 0.843 / 0.569       | +0.27  | +0.12             |
| Zen 4, Zen 3 kernels, OMP 1 thread +          | 2    | 0.778 / 0.654       | +0.12  | +0.04             |
| Intel Xeon (AVX-512, AMX) native, 2 threads # | 0    | 0.874 / 0.548       | +0.33  | +0.17             |
| Intel Xeon native, 2 threads #                | 1    | 0.774 / 0.569       | +0.21  | +0.11             |
| Intel Xeon native, 2 threads #                | 2    | 0.855 / 0.654       | +0.20  | +0.06             |
| Intel Xeon, OMP_NUM_THREADS=1 #               | 0    | 0.684 / 0.548       | +0.14  | +0.13             |
| Intel Xeon, ATEN default, OMP 1 thread #      | 2    | 0.823 / 0.654       | +0.17  | +0.06             |
| Intel Xeon, Zen 3 kernels, OMP 1 thread #     | 2    | 0.865 / 0.654       | +0.21  | +0.06             |
| Zen 5 native (AVX-512), 2 threads ^           | 0    | 0.806 / 0.548       | +0.26  | +0.16             |
| Zen 5 native, 2 threads ^                     | 1    | 0.795 / 0.569       | +0.23  | +0.14             |
| Zen 5 native, 2 threads ^                     | 2    | 0.860 / 0.654       | +0.21  | +0.04             |
| Zen 5, OMP_NUM_THREADS=1 ^                    | 0    | 0.822 / 0.548       | +0.27  | +0.16             |
| Zen 5, ATEN default, OMP 1 thread ^           | 0    | 0.896 / 0.547       | +0.35  | +0.18             |
| Zen 5, Zen 3 kernels, OMP 1 thread ^          | 2    | 0.778 / 0.654       | +0.12  | +0.04             |

(At a 64 px probe, ten runs on the Zen 4 over seeds 0-2 and these kernel choices, ATEN_CPU_CAPABILITY=avx2
included, gave kNN margins +0.12 to +0.32 and linear margins +0.05 to +0.16.) The test asks for +0.10 on the kNN
AUC, a linear AUC above random init's, and a falling loss. Every run above passes (29 runs, four processors). The
suite's seed, 0, measured +0.14 to +0.35 (the +0.14 on the Intel Xeon with one thread; +0.20 or more in every other
combination); the lowest of any seed is +0.12 (seed 2, whose random init is the strongest, with Zen 3's kernels on
one thread: 0.778 on both the Zen 4 and the Zen 5, so that kernel path gives the same run on both); the lowest linear
margin is +0.03. Over the 28 printed runs the kNN margin is +0.24 on average, with a spread (standard deviation) of
about 0.065, so the +0.10 asked sits about two spreads below the mean.
Shorter is not robust: seed 2, native Zen 4, gave +0.03 (linear -0.03) after 150 steps, +0.14 after 200 steps and
+0.12 with batch 32 for 300 steps, against +0.21 here. The cost is the time: about 55 s on an idle 2-core Zen 4,
100 s on the 2-core Zen 5, 2 min 40 s on the 2-vCPU Intel Xeon, 5-9 minutes on the 2-vCPU Zen 3 (native,
emulated), where oneDNN's AVX2 backward of layer4's 3x3 convolutions on 1x1 maps takes half of every step (measured
with torch.profiler under ONEDNN_MAX_CPU_ISA=AVX2).
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch

from tests.training_fixtures import labelled_store  # noqa: F401  (fixture)
from training import pretrain, probe
from training.model import build_backbone

# Small images and a short run: the seed's noise (0.1) and blur (sigma up to 2) are tuned for 224 px views; at 32 px
# they would bury a 1-2 px nodule, so they scale down with the view (the crops keep some nodules in both views).
LEARNING_AUG = ["blur_sigma=0.1,0.5", "scale=0.3,1", "noise_std=0.02"]
# LEARNING_CHECK_SEED reproduces the table's other rows; the suite runs seed 0
SEED = int(os.environ.get("LEARNING_CHECK_SEED", "0"))
FOLDS, PROBE_SIZE, KNN_MARGIN = 5, 96, 0.10


def cross_validated(encoder, store) -> dict:
    """Mean linear and kNN AUC over patient folds (each labelled image is a test image once)."""
    _, slots, y, _ = probe.select(store.manifest, "Nodule")
    fold = np.array([probe.patient_fold(store.manifest[i]["patient_id"], FOLDS) for i in slots])
    x = probe.features(encoder, store.images, slots, store.mean, store.std, PROBE_SIZE)
    y = torch.from_numpy(y)
    linear, knn = [], []
    for k in range(FOLDS):
        tr, te = torch.from_numpy(fold != k), torch.from_numpy(fold == k)
        linear.append(probe.linear_probe(x[tr], y[tr], x[te], y[te])["auc"])
        knn.append(probe.knn(x[tr], y[tr], x[te], y[te])["auc"])
    return {"linear_auc": float(np.mean(linear)), "knn_auc": float(np.mean(knn)), "images": len(slots)}


def test_simclr_pretraining_beats_random_init(labelled_store, tmp_path):
    aug = [a for item in LEARNING_AUG for a in ("--aug", item)]
    run = tmp_path / "run"
    assert pretrain.main(["--store", str(labelled_store.root), "--arch", "resnet18", "--batch-size", "64",
                          "--crop-size", "32", "--steps", "300", "--lr-scaling", "sqrt", "--loader", "opencv",
                          "--seed", str(SEED), "--out", str(run), "--wandb-mode", "disabled", "--log-every", "50",
                          "--checkpoint-every", "1000", "--no-progress", *aug]) == 0
    trained, _ = build_backbone("resnet18")
    trained.load_state_dict(torch.load(run / "encoder.pt", weights_only=True))
    torch.manual_seed(SEED)  # the run's own starting point: pretrain seeds torch the same way before building it
    pre, rnd = cross_validated(trained, labelled_store), cross_validated(build_backbone("resnet18")[0],
                                                                         labelled_store)
    print(json.dumps({"pretrained": pre, "random_init": rnd}))  # the figures, for the record (pytest -s)
    assert pre["images"] >= 600
    assert pre["knn_auc"] >= rnd["knn_auc"] + KNN_MARGIN, (pre, rnd)
    assert pre["linear_auc"] > rnd["linear_auc"], (pre, rnd)
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0] - 0.5
