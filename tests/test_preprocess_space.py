"""A full disk is a one-line error, never SIGBUS or a hang: space is reserved before any pixel is written.

The store is written to a small tmpfs mounted for the test (skipped, with the reason, where mounting is not
allowed). The runs are subprocesses with two workers, so a SIGBUS or a hang would show as a signal or a timeout.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from preprocess.store import PARTIAL
from preprocess.synthetic import generate

REPO = Path(__file__).resolve().parents[1]
N, SIZE = 40, 256  # 40 slots of 64 KiB: 2.5 MiB of staging images


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("space")
    generate(base, N, "nih", size=64, workers=1)
    (base / "images" / "zz_bad.png").write_text("not an image")  # a reject: finalize compacts into a new file
    return base / "images"


@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / "small_fs"
    mnt.mkdir()

    def mount(size: str, *options: str) -> None:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join([*options, f"size={size}"]), "tmpfs",
                               str(mnt)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip() or done.returncode}): the "
                        f"full-disk checks need root with CAP_SYS_ADMIN")
    yield mnt, mount
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _run(images: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "preprocess", str(images), "--out", str(out), "--size", str(SIZE),
                           "--workers", "2", "--no-progress"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_no_room_for_the_images_is_a_one_line_error_at_the_start(images, small_fs):
    mnt, mount = small_fs
    mount("1m")
    done = _run(images, mnt / "store")
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: not enough free space for the 41 staging images: it needs 2.6 MiB")
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "free some space or choose another --out" in done.stderr
    assert not (mnt / "store").exists(), "a failed start left something behind"


def test_no_room_to_compact_is_an_error_then_the_rerun_finishes(images, small_fs, tmp_path):
    mnt, mount = small_fs
    mount("4m")  # the staging images fit, the compacted copy beside them does not
    out = mnt / "store"
    done = _run(images, out)
    assert done.returncode == 2, done.stderr
    assert "error: not enough free space for the 40 compacted images" in done.stderr
    assert "rerun the same command to finish" in done.stderr and "Traceback" not in done.stderr
    assert (out / PARTIAL / "plan.json").exists() and not (out / "store.json").exists()

    mount("16m", "remount")
    done = _run(images, out)
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stderr and f"{N + 1} were done before resuming" in done.stdout
    clean = tmp_path / "clean"
    assert _run(images, clean).returncode == 0
    for name in ("images.npy", "manifest.csv", "rejects.csv"):
        assert (out / name).read_bytes() == (clean / name).read_bytes(), name
    assert np.load(out / "images.npy").shape == (N, SIZE, SIZE)
    shutil.rmtree(out)
