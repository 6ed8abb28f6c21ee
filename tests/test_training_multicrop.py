"""Multi-crop SimCLR learns: the same check as tests/test_training_learning.py (kNN AUC of frozen features,
cross-validated over patient folds, against the run's own random initialisation), for several seeds, with two large
views and four small ones (SwAV's multi-crop scaled down to the test's 32 px views: 2 x 32 at scale (0.3, 1) and
4 x 16 at (0.05, 0.3)). Marked slow: about 3 minutes a seed on an idle 2-core machine."""
from __future__ import annotations

import json

import pytest
import torch

from tests.test_training_learning import KNN_MARGIN, cross_validated
from tests.training_fixtures import labelled_store  # noqa: F401  (fixture)
from training import pretrain
from training.model import build_backbone

MULTI_CROP_AUG = ["blur_sigma=0.1,0.5", "scale=0.3,1", "noise_std=0.02", "small_views=4x16:0.05,0.3"]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
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
