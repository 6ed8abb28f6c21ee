"""The probe as a user meets it: a tiny test split is warned about, a training checkpoint (or its run folder) is
accepted as --encoder, a wrong --arch or a file that is no encoder is one line, and --views/--split probe a
subset."""
from __future__ import annotations

import json

import pytest
import torch

from tests.training_fixtures import tiny_store  # noqa: F401  (fixture)
from training import checkpoint as ckpt
from training import probe, pretrain

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def trained(tiny_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("probe") / "run"
    assert pretrain.main(["--store", str(tiny_store.root), "--arch", "resnet18", "--batch-size", "8",
                          "--crop-size", "32", "--steps", "1", "--loader", "opencv", "--workers", "0",
                          "--threads", "1", "--out", str(out), "--wandb-mode", "disabled"]) == 0
    return out


def probe_main(store, encoder, capsys, *extra):
    capsys.readouterr()
    rc = probe.main(["--store", str(store.root), "--encoder", str(encoder), "--image-size", "32", *map(str, extra)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_a_tiny_test_split_is_warned_about(tiny_store, trained, capsys, caplog):
    rc, out, _ = probe_main(tiny_store, trained / ckpt.ENCODER, capsys)
    assert rc == 0
    res = json.loads(out)["pretrained"]
    assert res["test"] < 50 and any("fewer than 50" in w for w in res["warnings"])
    assert "may mean little" in caplog.text


def test_a_training_checkpoint_is_accepted_as_the_encoder(tiny_store, trained, capsys):
    _, from_encoder, _ = probe_main(tiny_store, trained / ckpt.ENCODER, capsys)
    for encoder in (trained / ckpt.CHECKPOINT, trained):
        rc, out, err = probe_main(tiny_store, encoder, capsys)
        assert rc == 0, err
        assert json.loads(out)["pretrained"] == json.loads(from_encoder)["pretrained"]  # the same backbone


def test_a_wrong_arch_or_file_is_one_line(tiny_store, trained, tmp_path, capsys):
    rc, _, err = probe_main(tiny_store, trained / ckpt.ENCODER, capsys, "--arch", "resnet50")
    assert rc == 2 and "holds a resnet18 backbone" in err and err.count("\n") == 1
    rc, _, err = probe_main(tiny_store, trained / ckpt.ENCODER, capsys, "--arch", "vgg")
    assert rc == 2 and "choose one of" in err and err.count("\n") == 1
    for name, obj in (("tensor.pt", torch.ones(3)), ("dict.pt", {"a.weight": torch.ones(2)}), ("text.pt", None)):
        path = tmp_path / name
        torch.save(obj, path) if obj is not None else path.write_text("not a torch file")
        rc, _, err = probe_main(tiny_store, path, capsys)
        assert rc == 2 and err.startswith("error: ") and str(path) in err and err.count("\n") == 1, err
    rc, _, err = probe_main(tiny_store, tmp_path / "missing.pt", capsys)
    assert rc == 2 and "no encoder at" in err


def test_a_subset_is_probed(tiny_store, trained, capsys):
    rc, out, err = probe_main(tiny_store, trained / ckpt.ENCODER, capsys, "--views", "PA")
    assert rc == 0, err
    res = json.loads(out)
    probed = [r for r in tiny_store.manifest if r["view"] == "PA" and (not r["labels"] or "Nodule" in r["labels"])]
    assert res["subset"] == "--views PA" and res["pretrained"]["train"] + res["pretrained"]["test"] == len(probed)
    rc, _, err = probe_main(tiny_store, trained / ckpt.ENCODER, capsys, "--views", "XX")
    assert rc == 2 and "--views XX selects no image" in err and err.count("\n") == 1
