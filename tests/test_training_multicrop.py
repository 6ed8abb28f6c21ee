"""Multi-crop SimCLR learns: the same check as tests/test_training_learning.py (kNN AUC of frozen features,
cross-validated over patient folds, against the run's own random initialisation), with two large views and four
small ones (SwAV's multi-crop scaled down to the test's 32 px views: 2 x 32 at scale (0.3, 1) and 4 x 16 at
(0.05, 0.3)). And two gloo ranks training multi-crop SimCLR under torchrun cover every selected slot once per epoch,
as the two-view run does. Both marked slow: the learning check takes minutes a seed on a 2-core machine.

The verdict is the median over seeds 0, 1 and 2 (a median over a few short runs, one of the statistics issue 16
names as fair), with every seed's loss falling. One seed alone does not hold on every processor: seed 2 (the one
whose random init is strongest) gave +0.17 on an Intel Xeon and +0.03 (linear AUC below random init's) on a Zen 5,
reproduced there by a second run; a run of 300 steps diverges between processors, and multi-crop's runs spread
more than the two-view check's. Measured (this test's settings, kNN AUC pretrained vs random init, margin;
linear AUC margin; the Zen 5 rows of 2026-12-03):

| processor, kernels                 | seed 0               | seed 1               | seed 2               | median |
|------------------------------------|----------------------|----------------------|----------------------|--------|
| Zen 3 (AVX2), native, 2 threads    | .708/.548 +.16; +.09 |                      |                      |        |
| Zen 4 (AVX-512), native            |                      | .784/.569 +.22; +.13 |                      |        |
| Intel Xeon (AVX-512, AMX), native  |                      |                      | .821/.654 +.17; +.04 |        |
| Zen 5 (AVX-512), native, 2 threads | .848/.548 +.30; +.15 | .784/.569 +.22; +.13 | .683/.654 +.03; -.08 | +.22   |
| Zen 5, ATEN default, OMP 1 thread  | .760/.547 +.21; +.13 | .739/.570 +.17; +.13 | .808/.653 +.15; +.02 | +.17   |
| Zen 5, Zen 3 kernels, OMP 1 thread | .762/.548 +.21; +.12 | .702/.569 +.13; +.01 | .813/.654 +.16; +.02 | +.16   |

"Zen 3 kernels" is ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 (about 10.5 min a seed on one thread, against
about 2 min natively). The losses printed fell by 0.7 or more (5.40-5.44 -> 4.69-4.71). The test asks for a median
kNN margin of +0.10 or more (the lowest median measured: +0.16), a median linear AUC margin above zero, and every
seed's loss falling by 0.3. Before choosing the median, two recipes were tried on the Zen 5's seed 2: small views of
24 px at (0.1, 0.3) lifted it only to +0.12, two small views of 16 px to +0.09.
"""
from __future__ import annotations

import json
import statistics
import subprocess

import pytest
import torch

from tests.test_training_ddp import PA, env, torchrun
from tests.test_training_learning import KNN_MARGIN, cross_validated
from tests.training_fixtures import coded_nih_store, labelled_store  # noqa: F401  (fixture)
from training import pretrain
from training.model import build_backbone

SEEDS = (0, 1, 2)
MULTI_CROP_AUG = ["blur_sigma=0.1,0.5", "scale=0.3,1", "noise_std=0.02", "small_views=4x16:0.05,0.3"]


def multicrop_run(store, out, seed: int) -> dict:
    """Train multi-crop SimCLR from seed, and probe it and its random initialisation."""
    aug = [a for item in MULTI_CROP_AUG for a in ("--aug", item)]
    assert pretrain.main(["--store", str(store.root), "--arch", "resnet18", "--batch-size", "64",
                          "--crop-size", "32", "--steps", "300", "--lr-scaling", "sqrt", "--loader", "opencv",
                          "--method", "multicrop-simclr", "--seed", str(seed), "--out", str(out),
                          "--wandb-mode", "disabled", "--log-every", "50", "--checkpoint-every", "1000",
                          "--no-progress", *aug]) == 0
    trained, _ = build_backbone("resnet18")
    trained.load_state_dict(torch.load(out / "encoder.pt", weights_only=True))
    torch.manual_seed(seed)  # the run's own starting point
    pre, rnd = cross_validated(trained, store), cross_validated(build_backbone("resnet18")[0], store)
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"seed": seed, "pretrained": pre, "random_init": rnd, "loss": [losses[0], losses[-1]]}


@pytest.mark.slow
def test_multicrop_simclr_beats_random_init_in_the_median_of_three_seeds(labelled_store, tmp_path):  # noqa: F811
    runs = [multicrop_run(labelled_store, tmp_path / f"seed{seed}", seed) for seed in SEEDS]
    print("\n".join(json.dumps(run) for run in runs))  # every seed's figures, for the record (pytest -s)
    assert all(run["loss"][1] < run["loss"][0] - 0.3 for run in runs), runs
    knn = [r["pretrained"]["knn_auc"] - r["random_init"]["knn_auc"] for r in runs]
    linear = [r["pretrained"]["linear_auc"] - r["random_init"]["linear_auc"] for r in runs]
    assert statistics.median(knn) >= KNN_MARGIN, runs
    assert statistics.median(linear) > 0, runs


@pytest.mark.slow  # a torchrun of two ranks (about 20 s here)
def test_two_gloo_ranks_cover_the_slots_with_small_views(coded_nih_store, tmp_path):  # noqa: F811
    per_epoch, steps = len(PA) // (4 * 2), 2 * (len(PA) // (4 * 2))
    cmd = torchrun(coded_nih_store, tmp_path, steps, "--views", "PA", "--method", "multicrop-simclr",
                   "--aug", "small_views=2x16:0.05,0.3")
    proc = subprocess.run(cmd, env=env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [len(r["batches"]) for r in ranks] == [steps, steps]
    for e in range(2):
        slots = [s for r in ranks for b in r["batches"][e * per_epoch:(e + 1) * per_epoch] for s in b]
        assert sorted(slots) == PA
