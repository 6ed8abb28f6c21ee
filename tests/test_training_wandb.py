"""Weights & Biases, offline (skipped where wandb is not installed; it is an optional extra): the run id is saved
with the checkpoint and a resume continues the same W&B run; --wandb-project and --run-name reach it; online
without an API key is one line before anything is written."""
from __future__ import annotations

import pytest

from tests.training_fixtures import tiny_store  # noqa: F401  (fixture)
from training import checkpoint as ckpt
from training.pretrain import main

wandb = pytest.importorskip("wandb")
pytestmark = pytest.mark.filterwarnings("ignore")


def run(store, out, *extra) -> int:
    return main(["--store", str(store.root), "--arch", "resnet18", "--batch-size", "8", "--crop-size", "32",
                 "--out", str(out), "--workers", "0", "--threads", "1", "--steps", "4", "--log-every", "1",
                 "--wandb-mode", "offline", "--wandb-project", "resume-check", "--run-name", "two-parts",
                 *map(str, extra)])


def test_two_offline_resumes_continue_one_wandb_run(tiny_store, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    ids = []
    for extra in (("--stop-after", 1), ("--stop-after", 1, "--resume"), ("--resume",)):
        assert run(tiny_store, out, *extra) == 0
        ids.append(ckpt.load(out)["run_id"])
    assert len(set(ids)) == 1
    dirs = sorted((out / "wandb").glob("offline-run-*"))  # one per invocation (named to the second: may share)
    assert dirs and all(d.name.endswith(f"-{ids[0]}") for d in dirs), [d.name for d in dirs]
    logs = "".join((d / "logs" / "debug.log").read_text() for d in dirs)
    assert f"finishing run resume-check/{ids[0]}" in logs  # --wandb-project reached W&B


def test_run_name_and_id_reach_wandb(tmp_path, monkeypatch):
    from training.logs import RunLog
    monkeypatch.setenv("WANDB_SILENT", "true")
    log = RunLog(tmp_path, wandb_mode="offline", project="p", run_name="my-run", run_id="abc123")
    try:
        assert (log.wandb.name, log.wandb.id, log.wandb.project) == ("my-run", "abc123", "p")
    finally:
        log.close()


def test_online_without_an_api_key_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    for var in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.chdir(tmp_path)
    assert main(["--wandb-mode", "online", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "needs a W&B API key" in err and "wandb login" in err and "\n" not in err
    assert [p.name for p in tmp_path.iterdir()] == []
