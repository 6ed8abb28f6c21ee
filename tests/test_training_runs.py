"""Run folders and the command line (in-process, on the tiny store): a run is never clobbered, a resume that would
change the run is refused with its differences, --config, numbers checked by argparse naming the flag, device and
W&B problems in one line before anything is written, damaged or foreign checkpoints in one line, metrics lines
with their time, plain progress lines where stderr is not a terminal."""
from __future__ import annotations

import json
import shutil
import sys
import zipfile
from datetime import datetime

import pytest
import torch

from pipelines.factory import best_kind
from tests.training_fixtures import tiny_store  # noqa: F401  (fixture)
from training import checkpoint as ckpt
from training.options import parse_args
from training.pretrain import main

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def run(store, out, *extra) -> int:
    return main(["--store", str(store.root), "--arch", "resnet18", "--batch-size", "8", "--crop-size", "32",
                 "--out", str(out), "--wandb-mode", "disabled", "--workers", "0", "--threads", "1",
                 *map(str, extra)])


def records(out) -> list[dict]:
    return [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def finished_run(tiny_store, tmp_path_factory):
    """A run stopped at step 2 of 4 (its checkpoint and encoder.pt), for tests that read or damage its files."""
    out = tmp_path_factory.mktemp("run") / "run"
    assert run(tiny_store, out, "--steps", 4, "--stop-after", 2, "--log-every", 1) == 0
    return out


def test_a_new_run_into_a_run_folder_is_refused_and_overwrite_starts_again(tiny_store, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(tiny_store, out, "--steps", 3, "--log-every", 1) == 0
    err = capsys.readouterr().err
    assert f"loader {best_kind()} " in err  # the main job's default: the fastest loader measured (opencv on CPU)
    before = (out / "metrics.jsonl").read_text()
    assert run(tiny_store, out, "--steps", 2, "--log-every", 1) == 2
    err = capsys.readouterr().err.strip()
    assert "already holds a run" in err and "--resume" in err and "--overwrite" in err and "\n" not in err
    assert ckpt.load(out)["step"] == 3 and (out / "metrics.jsonl").read_text() == before  # nothing touched
    assert run(tiny_store, out, "--steps", 2, "--log-every", 1, "--overwrite") == 0
    assert ckpt.load(out)["step"] == 2 and [r["step"] for r in records(out)] == [1, 2]  # metrics restarted
    # every metrics line carries its wall-clock time and the run's elapsed seconds
    recs = records(out)
    assert all(datetime.fromisoformat(r["time"]).tzinfo is not None for r in recs)
    assert 0 <= recs[0]["elapsed_s"] <= recs[1]["elapsed_s"]
    # stderr is not a terminal here: plain progress lines, no carriage-return bar
    err = capsys.readouterr().err
    assert "step 1/2 epoch 0 loss" in err and "step 2/2" in err and "\r" not in err


def test_another_runs_checkpoint_resumes_only_into_a_folder_without_a_run(finished_run, tiny_store, tmp_path,
                                                                          capsys):
    out = tmp_path / "other"
    assert run(tiny_store, out, "--steps", 3, "--log-every", 1) == 0
    before = {name: (out / name).read_bytes() for name in ("checkpoint.pt", "metrics.jsonl", "args.json")}
    capsys.readouterr()
    assert run(tiny_store, out, "--steps", 4, "--log-every", 1, "--resume", finished_run / ckpt.CHECKPOINT) == 2
    err = capsys.readouterr().err.strip()
    assert "already holds a run" in err and "another run's checkpoint" in err and "\n" not in err, err
    assert {name: (out / name).read_bytes() for name in before} == before  # nothing of the other run touched
    fork = tmp_path / "fork"  # into an empty folder: the run continues there, its own folder untouched
    assert run(tiny_store, fork, "--steps", 4, "--log-every", 1, "--resume", finished_run) == 0
    assert ckpt.load(fork)["step"] == 4 and ckpt.load(finished_run)["step"] == 2
    assert [r["step"] for r in records(fork)] == [3, 4] and not (fork / ".lock").exists()


def test_a_bare_resume_in_an_empty_folder_starts_the_run_with_time_based_checkpoints(tiny_store, tmp_path, capsys,
                                                                                      monkeypatch):
    written, save = [], ckpt.save
    monkeypatch.setattr(ckpt, "save", lambda payload, path: (written.append(payload["step"]), save(payload, path))[1])
    assert run(tiny_store, tmp_path / "new", "--steps", 3, "--resume", "--checkpoint-minutes", 1e-7) == 0
    assert "starts the run" in capsys.readouterr().err and ckpt.load(tmp_path / "new")["step"] == 3
    assert written == [0, 1, 2, 3]  # the start, then every step (each is past the due time), the end once
    assert parse_args([]).checkpoint_minutes == 10  # the default


def test_a_resume_that_changes_the_run_is_refused_with_the_differences(tiny_store, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(tiny_store, out, "--steps", 6, "--stop-after", 2, "--log-every", 1) == 0
    before = (out / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert run(tiny_store, out, "--steps", 6, "--resume", "--batch-size", 4, "--log-every", 1) == 2
    err = capsys.readouterr().err.strip()
    assert "batch_size: 8 -> 4" in err and "--allow-changes" in err and "args.json" in err and "\n" not in err
    assert run(tiny_store, out, "--steps", 9, "--resume", "--seed", 1, "--log-every", 1) == 2
    err = capsys.readouterr().err
    assert "total_steps: 6 -> 9" in err and "seed: 0 -> 1" in err
    assert run(tiny_store, out, "--steps", 6, "--resume", "--aug", "flip_p=0.2", "--log-every", 1) == 2
    assert "augment.flip_p: 0.5 -> 0.2" in capsys.readouterr().err
    assert ckpt.load(out)["step"] == 2 and (out / "metrics.jsonl").read_text() == before
    # harmless changes (log interval, workers, checkpoint interval, --stop-after) are allowed
    assert run(tiny_store, out, "--steps", 6, "--resume", "--log-every", 2, "--workers", 1, "--checkpoint-every", 3,
               "--stop-after", 2) == 0
    assert ckpt.load(out)["step"] == 4
    # --config RUN/args.json resumes with the saved flags; a flag on the command line still wins
    assert main(["--config", str(out / "args.json"), "--resume", "--log-every", "1"]) == 0
    assert ckpt.load(out)["step"] == 6 and [r["step"] for r in records(out)] == [1, 2, 4, 5, 6]
    assert json.loads((out / "args.json").read_text())["log_every"] == 1


def test_a_selection_too_small_to_train_on_is_one_line(tiny_store, tmp_path, capsys):
    n_ap = sum(r["view"] == "AP" for r in tiny_store.manifest)  # 9 of 48
    assert run(tiny_store, tmp_path / "run", "--views", "AP", "--batch-size", n_ap + 1) == 2
    err = capsys.readouterr().err.strip()
    assert f"--views AP leaves {n_ap} of the store's 48 images" in err and "\n" not in err
    assert not (tmp_path / "run").exists()


def test_config_file_gives_defaults_and_the_command_line_wins(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"store": "s", "batch-size": 4, "steps": 7, "views": ["PA"], "resume": "auto",
                               "aug": ["flip_p=0"]}))
    args = parse_args(["--config", str(cfg), "--steps", "9", "--aug", "scale=1,1"])
    assert (args.batch_size, args.steps, args.views, str(args.store)) == (4, 9, ("PA",), "s")
    assert args.resume is None  # per-invocation flags are never taken from a file
    assert args.aug == ["flip_p=0", "scale=1,1"]


@pytest.mark.parametrize("content,says", [({"nosuch": 1}, "unknown flag 'nosuch'"), ({"steps": 0}, "steps"),
                                          ({"method": "moco"}, "not one of"), ([1], "JSON object")])
def test_a_bad_config_file_is_a_usage_error(tmp_path, capsys, content, says):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps(content))
    with pytest.raises(SystemExit) as e:
        parse_args(["--config", str(cfg)])
    assert e.value.code == 2 and says in capsys.readouterr().err


@pytest.mark.parametrize("flag,value", [("--steps", "0"), ("--steps", "-5"), ("--epochs", "0"),
                                        ("--warmup-steps", "-3"), ("--stop-after", "0"), ("--workers", "-1"),
                                        ("--batch-size", "0"), ("--log-every", "0"), ("--checkpoint-every", "0"),
                                        ("--lr", "abc"), ("--lr", "0"), ("--lr", "nan"), ("--crop-size", "0"),
                                        ("--checkpoint-minutes", "-1"), ("--threads", "0"), ("--steps", "1.5")])
def test_bad_numbers_are_refused_naming_the_flag(capsys, flag, value):
    with pytest.raises(SystemExit) as e:
        parse_args([flag, value])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"argument {flag}: must be" in err, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:1", "tpu"])
def test_a_device_that_is_not_there_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys, device):
    monkeypatch.chdir(tmp_path)  # no --store: the demo, which would build ./data/demo
    assert main(["--device", device, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --device") and "\n" not in err
    assert list(tmp_path.iterdir()) == []


def test_wandb_online_without_wandb_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError, as where it is not installed
    monkeypatch.chdir(tmp_path)
    assert main(["--wandb-mode", "online", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "needs wandb" in err and "pip install wandb" in err and "\n" not in err
    assert list(tmp_path.iterdir()) == []


def _damage(path, byte: int) -> None:
    """Overwrite 16 bytes in the middle of the largest tensor stored in a torch zip file."""
    with zipfile.ZipFile(path) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = (int.from_bytes(f.read(2), "little") for _ in range(2))
        f.seek(info.header_offset + 30 + name_len + extra_len + info.file_size // 2)
        f.write(bytes([byte]) * 16)


def _variants(good: dict):
    yield "zeroed", None, "damaged: its contents do not match the checksum"
    yield "0x7f", None, "damaged: its contents do not match the checksum"
    yield "tensor", torch.ones(3), "not a checkpoint written by training.pretrain (it holds a Tensor)"
    yield "list", [1, 2], "not a checkpoint written by training.pretrain (it holds a list)"
    yield "no-rng", {k: v for k, v in good.items() if k != "rng"}, "incomplete (no rng)"
    yield "no-step", {k: v for k, v in good.items() if k != "step"}, "incomplete (no step)"
    yield "truncated", None, "not a readable torch file"
    yield "encoder", None, "not a checkpoint written by training.pretrain"


def test_a_damaged_or_foreign_checkpoint_is_one_line(finished_run, tiny_store, tmp_path, capsys):
    good = torch.load(finished_run / ckpt.CHECKPOINT, weights_only=True)
    for name, obj, says in _variants(good):
        bad = tmp_path / f"{name}.pt"
        if name in ("zeroed", "0x7f"):
            shutil.copy(finished_run / ckpt.CHECKPOINT, bad)
            _damage(bad, 0 if name == "zeroed" else 0x7F)
        elif name == "truncated":
            data = (finished_run / ckpt.CHECKPOINT).read_bytes()
            bad.write_bytes(data[:len(data) // 2])
        elif name == "encoder":  # a backbone's state_dict, not a training checkpoint
            shutil.copy(finished_run / ckpt.ENCODER, bad)
        else:
            torch.save(obj, bad)
        capsys.readouterr()
        assert run(tiny_store, tmp_path / "out", "--steps", 4, "--resume", bad) == 2, name
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and str(bad) in err and says in err and "\n" not in err, (name, err)
        assert not (tmp_path / "out").exists()  # nothing written
    assert ckpt.load(finished_run)["step"] == 2  # the good one still verifies
