"""Damage is refused in one line: store.json, images.npy and manifest.csv are checked on open; verify reads pixels.

One small store (150 slots of 16 px: three checksum chunks, 64 + 64 + 22 slots) is built once and copied for each
case; each case damages the copy as a user's mistake or a failing disk would, and checks the one-line refusal (from
open_store, from the manifest's first read, or from `python -m preprocess.verify`).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from preprocess.store import open_store
from preprocess.verify import main as verify

REPO = Path(__file__).resolve().parents[1]
N, SIZE = 150, 16


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    from preprocess.__main__ import main
    base = tmp_path_factory.mktemp("damage")
    rng = np.random.default_rng(0)
    (base / "in").mkdir()
    for i in range(N):
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)).save(base / "in" / f"img{i:03d}.png")
    assert main([str(base / "in"), "--out", str(base / "store"), "--size", str(SIZE), "--min-side", "8",
                 "--workers", "1", "--no-progress"]) == 0
    return base / "store"


@pytest.fixture
def store(built, tmp_path) -> Path:
    out = tmp_path / "store"
    shutil.copytree(built, out)
    return out


def _meta(store: Path) -> dict:
    return json.loads((store / "store.json").read_text())


def _refused(store: Path, pattern: str) -> str:
    with pytest.raises((ValueError, FileNotFoundError), match=pattern) as e:
        open_store(store)
    message = str(e.value)
    assert "\n" not in message and ("--overwrite" in message or "build one" in message), message
    return message


def test_the_intact_store_opens_and_verifies(store, capsys):
    s = open_store(store)
    assert len(s) == N and len(s.manifest) == N
    assert verify([str(store), "--no-progress"]) == 0
    assert f"intact ({N} images in 3 chunks" in capsys.readouterr().out


def test_opening_reads_no_pixels(store):
    io_path = Path(f"/proc/{os.getpid()}/io")
    if not io_path.exists():
        pytest.skip("/proc/PID/io is absent: cannot count the bytes a call reads")

    def rchar() -> int:
        return int(next(line for line in io_path.read_text().splitlines() if line.startswith("rchar")).split()[1])
    before = rchar()
    open_store(store)
    read = rchar() - before
    assert read < (store / "store.json").stat().st_size + 1024 < N * SIZE * SIZE // 4, read


@pytest.mark.parametrize("how, pattern", [
    ("deleted", "manifest.csv is missing"),
    ("emptied", r"manifest.csv does not match store.json \(it is empty\)"),
    ("rows 5-12 removed", r"manifest.csv does not match store.json \(it has 142 rows, store.json says 150\)"),
    ("a folder", "manifest.csv is not a file"),
])
def test_a_damaged_manifest_is_refused_on_open(store, how, pattern):
    path = store / "manifest.csv"
    lines = path.read_text().splitlines(keepends=True)
    path.unlink()
    if how == "emptied":
        path.write_text("")
    elif how == "rows 5-12 removed":
        path.write_text("".join(lines[:6] + lines[14:]))
    elif how == "a folder":
        path.mkdir()
    _refused(store, pattern)


def test_an_edited_manifest_of_the_same_size_is_refused_when_read(store):
    path = store / "manifest.csv"
    lines = path.read_text().splitlines(keepends=True)
    lines[6], lines[7] = lines[7], lines[6]  # slots 5 and 6 swapped: same bytes, wrong order
    path.write_text("".join(lines))
    s = open_store(store)  # the size matches: open stays O(1)
    with pytest.raises(ValueError, match=r"was changed after the store was built \(row 6 is not slot 5.*--overwrite"):
        s.manifest


@pytest.mark.parametrize("content, pattern", [
    ("[1, 2, 3]", r"store.json is damaged \(it holds a list, not an object\)"),
    ("drop n", r"store.json is damaged \(no 'n'\)"),
    ("n as text", r"store.json is damaged \('n' is str '150'\)"),
    ("mean as null", r"store.json is damaged \('mean' is NoneType"),
    ("checksums cut", r"store.json is damaged \('checksums' does not hold ceil"),
    ('{"format_version": 2, "n": ', r"store.json is damaged \(Expecting value"),
    ("format 99", "is store format 99, this code reads 2"),
])
def test_a_damaged_store_json_is_refused(store, content, pattern):
    meta = _meta(store)
    if content == "drop n":
        meta.pop("n")
    elif content == "n as text":
        meta["n"] = str(meta["n"])
    elif content == "mean as null":
        meta["mean"] = None
    elif content == "checksums cut":
        meta["checksums"]["chunks"].pop()
    elif content == "format 99":
        meta["format_version"] = 99
    text = json.dumps(meta) if content in ("drop n", "n as text", "mean as null", "checksums cut",
                                           "format 99") else content
    (store / "store.json").write_text(text)
    _refused(store, pattern)


@pytest.mark.parametrize("name", ["store.json", "images.npy"])
def test_a_folder_in_place_of_a_file_is_refused(store, name):
    (store / name).unlink()
    (store / name).mkdir()
    _refused(store, f"{name} is not a file")


@pytest.mark.parametrize("keep", [0, 50, 4000], ids=["empty", "in-header", "short-data"])
def test_a_truncated_images_npy_is_refused(store, keep):
    os.truncate(store / "images.npy", keep)
    _refused(store, "truncated or damaged")


def test_bytes_appended_to_images_npy_are_refused(store):
    with open(store / "images.npy", "ab") as f:
        f.write(b"\0" * 7)
    _refused(store, r"images.npy has extra bytes \(damaged\): 38535 bytes, its header says 38528")


def test_the_header_message_names_what_differs(store):
    meta = _meta(store)
    (store / "store.json").write_text(json.dumps({**meta, "n": 151, "checksums": {**meta["checksums"]}}))
    _refused(store, r"holds shape \(150, 16, 16\), store.json says \(151, 16, 16\)")
    (store / "store.json").write_text(json.dumps(meta))
    np.save(store / "images.npy", np.asfortranarray(np.zeros((N, SIZE, SIZE), dtype=np.uint8)))
    msg = _refused(store, "holds Fortran order, the store is C order")
    assert "shape" not in msg and "dtype" not in msg  # only what differs
    np.save(store / "images.npy", np.zeros((N, SIZE, SIZE), dtype=np.float32))
    _refused(store, "holds dtype float32, store.json says uint8")


def test_verify_names_the_slots_of_a_flipped_byte(store, capsys):
    images = np.load(store / "images.npy", mmap_mode="r")
    offset = images.offset + 70 * SIZE * SIZE + 123  # a byte of slot 70: chunk 1 (slots 64-127)
    del images
    with open(store / "images.npy", "r+b") as f:
        f.seek(offset)
        value = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([value ^ 0x10]))
    assert len(open_store(store)) == N  # opening does not read pixels: it cannot see this
    assert verify([str(store), "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert captured.out.splitlines() == ["damaged: slots 64-127 (checksum differs): img064.png, img065.png, "
                                         "img066.png, ..."]
    assert captured.err.startswith(f"error: {store}: 64 slots in 1 damaged chunk(s): rebuild the store")


def test_verify_of_a_store_that_does_not_open_is_one_line(store):
    (store / "manifest.csv").unlink()
    done = subprocess.run([sys.executable, "-m", "preprocess.verify", str(store)], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "manifest.csv is missing" in done.stderr


def test_the_writer_refuses_a_damaged_finished_store_in_one_line(store, capsys):
    from preprocess.__main__ import main
    (store / "store.json").write_text("[1, 2, 3]")
    rc = main([str(store.parent / "nowhere"), "--out", str(store), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err


def test_missing_store_json_is_refused(store, tmp_path):
    (store / "store.json").unlink()
    _refused(store, "no store.json, so it is not a store")
    _refused(tmp_path / "nowhere", "no store at")
