"""Multi-crop SimCLR learns: the same check as tests/test_training_learning.py (kNN AUC of frozen features,
cross-validated over patient folds, against the run's own random initialisation), for several seeds, with two large
views and four small ones (SwAV's multi-crop scaled down to the test's 32 px views: 2 x 32 at scale (0.3, 1) and
4 x 16 at (0.05, 0.3)). Marked slow: minutes a seed on a 2-core machine. And two gloo ranks training multi-crop
SimCLR under torchrun cover every selected slot once per epoch, as the two-view run does.

Measured: seed 0 (2-vCPU Zen 3, idle, about 15 min) kNN AUC 0.708 vs 0.548 for random init (+0.16), linear AUC
0.854 vs 0.761, loss 5.43 -> 4.71; seed 1 (2-core Zen 4, 105 s) kNN AUC 0.784 vs 0.569 (+0.22), linear AUC 0.917 vs
0.786, loss 5.40 -> 4.70; seed 2 (the two-view check's hardest: the strongest random init; Zen 4, 194 s) kNN AUC
0.821 vs 0.654 (+0.17), linear AUC 0.919 vs 0.881, loss 5.42 -> 4.69."""
from __future__ import annotations

import json
import subprocess

import pytest
import torch

from tests.test_training_ddp import PA, env, torchrun
from tests.test_training_learning import KNN_MARGIN, cross_validated
from tests.training_fixtures import coded_nih_store, labelled_store  # noqa: F401  (fixture)
from training import pretrain
from training.model import build_backbone

MULTI_CROP_AUG = ["blur_sigma=0.1,0.5", "scale=0.3,1", "noise_std=0.02", "small_views=4x16:0.05,0.3"]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_multicrop_simclr_beats_random_init(labelled_store, tmp_path, seed):  # noqa: F811
    aug = [a for item in MULTI_CROP_AUG for a in ("--aug", item)]
    run = tmp_path / "run"
    assert pretrain.main(["--store", str(labelled_store.root), "--arch", "resnet18", "--batch-size", "64",
                          "--crop-size", "32", "--steps", "300", "--lr-scaling", "sqrt", "--loader", "opencv",
                          "--method", "multicrop-simclr", "--seed", str(seed), "--out", str(run),
                          "--wandb-mode", "disabled", "--log-every", "50", "--checkpoint-every", "1000",
                          "--no-progress", *aug]) == 0
    trained, _ = build_backbone("resnet18")
    trained.load_state_dict(torch.load(run / "encoder.pt", weights_only=True))
    torch.manual_seed(seed)  # the run's own starting point
    pre, rnd = cross_validated(trained, labelled_store), cross_validated(build_backbone("resnet18")[0],
                                                                         labelled_store)
    print(json.dumps({"seed": seed, "pretrained": pre, "random_init": rnd}))
    assert pre["knn_auc"] >= rnd["knn_auc"] + KNN_MARGIN, (pre, rnd)
    assert pre["linear_auc"] > rnd["linear_auc"], (pre, rnd)
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0] - 0.3


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
