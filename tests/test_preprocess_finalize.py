"""A kill at any instant of finalize leaves a resumable partial store or a finished one, and the rerun finishes it.

Every chunk of a small build is recorded and the run is stopped just before finalize. Then, for k = 1, 2, ..., a
forked child reruns the same command with a real SIGKILL sent to itself just before its k-th file-system step
inside finalize (fsync, rename, unlink, rmdir, fallocate, pwrite: the instants a signal from outside cannot hit
reliably), until a child finishes without reaching step k. After each kill: the store either opens (finished) or
refuses with "rerun the same command"; rerunning the command exits 0, and the result is byte-identical to a
build that was never interrupted. Two builds: one with a rejected file (finalize compacts the kept slots) and one
without (finalize renames the staging file into place).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest

from preprocess import __main__ as cli
from preprocess.store import PARTIAL, open_store
from preprocess.synthetic import generate

STEPS = ("fsync", "replace", "rename", "unlink", "rmdir", "posix_fallocate", "pwrite")
FINAL_FILES = ("images.npy", "manifest.csv", "rejects.csv")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("finalize")
    generate(base / "gen", 20, "nih", size=64, workers=1)
    with_reject = base / "with_reject"
    shutil.copytree(base / "gen" / "images", with_reject)
    (with_reject / "0000_bad.png").write_text("not an image")  # slot 0: every kept slot moves when compacting
    return {"renamed": base / "gen" / "images", "compacted": with_reject}


def _argv(inputs: Path, out: Path) -> list[str]:
    return [str(inputs), "--out", str(out), "--size", "32", "--workers", "1", "--no-progress"]


def _in_child(fn) -> int:
    """Run fn() in a forked child; returns its wait status decoded: -signal, or the exit code."""
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            code = fn()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _killing_finalize(k: int):
    """The CLI's finalize, SIGKILLing this process before its k-th file-system step (k = 0: counting only)."""
    real = cli.finalize
    state = {"active": False, "n": 0}
    for name in STEPS:
        original = getattr(os, name)

        def step(*args, _original=original, **kwargs):
            if state["active"]:
                state["n"] += 1
                if state["n"] == k:
                    os.kill(os.getpid(), signal.SIGKILL)
            return _original(*args, **kwargs)
        setattr(os, name, step)

    def finalize(*args, **kwargs):
        state["active"] = True
        try:
            return real(*args, **kwargs)
        finally:
            state["active"] = False
    return finalize, state


def _stopped_before_finalize(inputs: Path, out: Path, monkeypatch) -> None:
    def stop(*args, **kwargs):
        raise KeyboardInterrupt
    with monkeypatch.context() as m:
        m.setattr(cli, "finalize", stop)
        assert cli.main(_argv(inputs, out)) == 130
    assert (out / PARTIAL / "plan.json").exists() and not (out / "store.json").exists()


def _same_as(out: Path, clean: Path) -> None:
    for name in FINAL_FILES:
        assert (out / name).read_bytes() == (clean / name).read_bytes(), name
    a, b = (json.loads((p / "store.json").read_text()) for p in (out, clean))
    assert {**a, "command": ""} == {**b, "command": ""}
    assert not (out / PARTIAL).exists() and not list(out.glob("*.tmp"))


@pytest.mark.parametrize("case", ["compacted", "renamed"])
def test_a_kill_at_every_step_of_finalize_is_finished_by_a_rerun(case, inputs, tmp_path, monkeypatch, capsys):
    src = inputs[case]
    clean = tmp_path / "clean"
    assert cli.main(_argv(src, clean)) == 0
    stopped = tmp_path / "stopped"
    _stopped_before_finalize(src, stopped, monkeypatch)

    def count() -> int:
        finalize, state = _killing_finalize(0)
        cli.finalize = finalize
        rc = cli.main(_argv(src, tmp_path / "counted"))
        return min(state["n"], 250) if rc == 0 else 251
    shutil.copytree(stopped, tmp_path / "counted")
    steps = _in_child(count)
    assert 10 <= steps < 250, f"finalize took {steps} steps"

    for k in range(1, steps + 2):
        out = tmp_path / f"kill{k}"
        shutil.copytree(stopped, out)

        def killed_at_k() -> int:
            cli.finalize = _killing_finalize(k)[0]
            return cli.main(_argv(src, out))
        status = _in_child(killed_at_k)
        assert status == (-signal.SIGKILL if k <= steps else 0), f"step {k}: child ended with {status}"
        if (out / "store.json").exists():  # finished: it opens and is complete
            assert len(open_store(out)) == len(open_store(clean))
        else:  # resumable: it says so
            with pytest.raises(ValueError, match="rerun the same command to resume it"):
                open_store(out)
        capsys.readouterr()
        rc = cli.main(_argv(src, out))
        err = capsys.readouterr().err
        assert rc == 0, f"kill before step {k} of {steps}: the rerun failed: {err}"
        _same_as(out, clean)
        shutil.rmtree(out)
