"""Archives as inputs: .tar.gz, .tar and .zip are read in place, member by member, and give the folder's store.

- The same images as a folder, a .tar.gz, a plain .tar, a .zip, and archives inside an input folder: stores whose
  images agree pixel for pixel per source (the member's basename), with the labels the NIH CSV gives them, and
  `ARCHIVE/member/path` as the manifest's path. Streaming each archive in one worker and fanning one archive's
  members out to all workers give byte-identical stores.
- A corrupt member (not an image; a bad CRC) and a truncated archive (.tar.gz, .tar and .zip cut at 60%) are
  rejected with reasons naming the archive and member; every member before the damage is stored.
- kill -9 in the middle of an archive, then the same command: byte-identical to an uninterrupted build, in both
  ways of reading (a subprocess over 320 members of 512 px, so that the kill lands mid-archive).
"""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from preprocess import __main__ as cli
from preprocess.store import PARTIAL
from preprocess.synthetic import generate

REPO = Path(__file__).resolve().parents[1]


def _tar(path: Path, members: list[tuple[str, bytes]], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _zip(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return path


@pytest.fixture(scope="module")
def nih(tmp_path_factory):
    """(folder of 30 NIH phantoms, their CSV, [(member name, bytes)] as the NIH tarballs name them)."""
    base = tmp_path_factory.mktemp("archives")
    csv = generate(base / "gen", 30, "nih", size=96, workers=1)
    images = base / "gen" / "images"
    return images, csv, [(f"images/{p.name}", p.read_bytes()) for p in sorted(images.iterdir())]


def _build(inputs, csv: Path, out: Path, *extra) -> dict[str, tuple]:
    assert cli.main([*map(str, inputs), "--out", str(out), "--dataset", "nih", "--metadata", str(csv),
                     "--size", "48", "--no-progress", *extra]) == 0
    return _by_source(out)


def _by_source(out: Path) -> dict[str, tuple]:
    """basename -> (pixels, manifest row less index and path) of a built store; also its rejects under ''."""
    images = np.load(out / "images.npy")
    with open(out / "manifest.csv") as f:
        import csv as csv_module
        rows = list(csv_module.DictReader(f))
    return {r["path"].rsplit("/", 1)[-1]: (images[int(r["index"])], {k: v for k, v in r.items()
                                                                      if k not in ("index", "path")}, r["path"])
            for r in rows}


def _same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        assert np.array_equal(a[name][0], b[name][0]), name
        assert a[name][1] == b[name][1], name


def test_folder_tar_gz_tar_and_zip_give_the_same_images_per_source(nih, tmp_path):
    images, csv, members = nih
    folder = _build([images], csv, tmp_path / "folder", "--workers", "1")
    assert len(folder) == 30 and {v[1]["dataset"] for v in folder.values()} == {"nih"}
    gz = _build([_tar(tmp_path / "images_001.tar.gz", members)], csv, tmp_path / "gz", "--workers", "2")
    _same(gz, folder)
    assert {v[2] for v in gz.values()} == {f"images_001.tar.gz/{name}" for name, _ in members}
    _same(_build([_tar(tmp_path / "plain.tar", members, "w")], csv, tmp_path / "tar", "--workers", "2"), folder)
    _same(_build([_zip(tmp_path / "0.zip", members)], csv, tmp_path / "zip", "--workers", "2"), folder)

    inside = tmp_path / "downloads"  # archives found inside an input folder, with loose files beside them
    inside.mkdir()
    _tar(inside / "images_001.tgz", members[:10])
    _zip(inside / "images_002.zip", members[10:20])
    for name, data in members[20:]:
        (inside / name.rsplit("/", 1)[-1]).write_bytes(data)
    mixed = _build([inside], csv, tmp_path / "mixed", "--workers", "2")
    _same(mixed, folder)
    assert sum(v[2].startswith("images_001.tgz/images/") for v in mixed.values()) == 10


def test_per_archive_and_fan_out_reading_give_byte_identical_stores(nih, tmp_path):
    images, csv, members = nih
    archives = [_tar(tmp_path / f"images_{k:03d}.tar.gz", members[k * 10:(k + 1) * 10]) for k in range(3)]
    stores = {}
    for mode in ("per-archive", "fan-out"):
        _build(archives, csv, tmp_path / mode, "--workers", "2", "--archive-reading", mode)
        stores[mode] = {n: (tmp_path / mode / n).read_bytes() for n in ("images.npy", "manifest.csv", "rejects.csv")}
    assert stores["per-archive"] == stores["fan-out"]


def test_corrupt_members_and_truncated_archives_are_rejected_and_the_rest_kept(nih, tmp_path):
    images, csv, members = nih
    folder = _build([images], csv, tmp_path / "folder", "--workers", "1")
    names = [n for n, _ in members]
    d = tmp_path / "in"
    d.mkdir()
    bad = [("images/00000001_000.png", b"not an image at all")] + members[1:10]  # listed in the CSV: decoded
    _tar(d / "a_bad_member.tar.gz", bad)
    zpath = _zip(d / "b_bad_crc.zip", members[10:14])
    with zipfile.ZipFile(zpath) as zf:
        info = zf.getinfo(names[11])
        start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data = bytearray(zpath.read_bytes())
    data[start + info.compress_size // 2] ^= 0xFF  # flip a byte inside the member's deflated data
    zpath.write_bytes(bytes(data))
    for suffix, maker, part in ((".tar.gz", _tar, members[14:20]), (".zip", _zip, members[20:25]),
                                (".tar", lambda p, m: _tar(p, m, "w"), members[25:30])):
        path = maker(d / f"c_cut{suffix}", part)
        raw = path.read_bytes()
        path.write_bytes(raw[: len(raw) * 6 // 10])
    rc = cli.main([str(d), "--out", str(tmp_path / "store"), "--dataset", "nih", "--metadata", str(csv),
                   "--size", "48", "--workers", "2", "--no-progress"])
    assert rc == 0
    stored = _by_source(tmp_path / "store")
    with open(tmp_path / "store" / "rejects.csv") as f:
        import csv as csv_module
        reasons = {r["path"]: r["reason"] for r in csv_module.DictReader(f)}
    assert reasons["a_bad_member.tar.gz/images/00000001_000.png"].startswith("unsupported file type")
    assert reasons[f"b_bad_crc.zip/{names[11]}"].startswith("unreadable archive member: BadZipFile: Bad CRC-32")
    for suffix in (".tar.gz", ".zip", ".tar"):
        assert reasons[f"c_cut{suffix}"].startswith("truncated or corrupt"), reasons
    assert reasons["c_cut.zip"].startswith("truncated or corrupt zip archive (BadZipFile") and \
        "recovered from their local headers" in reasons["c_cut.zip"]
    assert all("\n" not in r for r in reasons.values())
    for name in stored:  # what was kept is what the folder build stored
        assert np.array_equal(stored[name][0], folder[name][0]) and stored[name][1] == folder[name][1], name
    paths = {p for _, _, p in stored.values()}
    assert sum(p.startswith("a_bad_member.tar.gz/") for p in paths) == 9
    assert sum(p.startswith("b_bad_crc.zip/") for p in paths) == 3
    for prefix, part in (("c_cut.tar.gz", members[14:20]), ("c_cut.zip", members[20:25]),
                         ("c_cut.tar", members[25:30])):
        kept = [n for n, _ in part if f"{prefix}/{n}" in paths]
        assert len(kept) >= 2 and kept == [n for n, _ in part][:len(kept)], prefix  # all before the cut
        assert f"{prefix}/{part[len(kept)][0]}" in reasons, prefix  # the member cut through: rejected by name


# --------------------------------------------------------------------- kill -9 mid-archive, in a subprocess
@pytest.fixture(scope="module")
def big_archives(tmp_path_factory) -> list[Path]:
    """Two .tar.gz of 160 members each: 20 distinct 512 px phantoms under 16 names each (cheap to make, each
    member still decoded at full cost)."""
    base = tmp_path_factory.mktemp("big_archives")
    generate(base / "gen", 20, "nih", size=512, workers=2)
    distinct = [p.read_bytes() for p in sorted((base / "gen" / "images").iterdir())]
    return [_tar(base / f"images_{a:03d}.tar.gz", [(f"images/{a}_{i:04d}.png", distinct[i % 20])
                                                    for i in range(160)]) for a in (1, 2)]


def _command(archives: list[Path], out: Path, mode: str) -> list[str]:
    return [sys.executable, "-m", "preprocess", *map(str, archives), "--out", str(out), "--workers", "2",
            "--archive-reading", mode, "--no-progress"]


def _recorded(out: Path) -> int:
    return len(list((out / PARTIAL / "done").glob("chunk-*.json")))


@pytest.fixture(scope="module")
def clean_big(big_archives, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clean_big_archives") / "store"
    done = subprocess.run(_command(big_archives, out, "per-archive"), cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return out


@pytest.mark.parametrize("mode", ["per-archive", "fan-out"])
def test_kill_9_mid_archive_then_rerun_is_byte_identical(mode, big_archives, clean_big, tmp_path):
    out = tmp_path / "store"
    command = _command(big_archives, out, mode)
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while _recorded(out) < 2:
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.communicate()}"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    recorded = _recorded(out)
    assert 2 <= recorded < 10, "the kill did not land mid-archive"
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "resuming" in done.stderr, done.stderr
    assert f"for {320 - 32 * recorded} images" in done.stdout  # the recorded members were not decoded again
    for name in ("images.npy", "manifest.csv", "rejects.csv"):
        assert (out / name).read_bytes() == (clean_big / name).read_bytes(), name
    a, b = (json.loads((p / "store.json").read_text()) for p in (out, clean_big))
    assert {**a, "command": ""} == {**b, "command": ""}
    shutil.rmtree(out)
