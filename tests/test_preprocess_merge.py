"""python -m preprocess.merge: finished stores concatenated into one, as a single build over their inputs would be.

- Two NIH stores (folders a/ and b/, one CSV with the official split lists) merged: byte-identical images.npy and
  manifest.csv to one build over both folders, the same mean/std (measured over the result), the same rejects.
- An NIH and a PadChest store merged: every row keeps its dataset, view, labels and split (what `--views`,
  `--datasets` and `--split` select on); a rerun is "nothing to do".
- The one-command form (`--and` starts another input group with its own --dataset and --metadata) builds the
  same store as the merge of the groups built alone.
- Stores of different recipes are refused, naming what differs; a damaged input is refused, naming its slots.
- Killed (a real SIGKILL, sent by the merge to itself after its second chunk): the same command resumes and ends
  byte-identical to an uninterrupted merge.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest

from preprocess import __main__ as build_cli
from preprocess import merge as merge_cli
from preprocess.staging import Staging
from preprocess.store import PARTIAL, open_store
from preprocess.synthetic import generate

FILES = ("images.npy", "manifest.csv")


def _build(out: Path, *argv) -> Path:
    assert build_cli.main([*map(str, argv), "--out", str(out), "--size", "32", "--workers", "1",
                           "--no-progress"]) == 0
    return out


def _rows(store: Path) -> list[dict]:
    with open(store / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def _rejects(store: Path) -> list[tuple]:
    with open(store / "rejects.csv", newline="") as f:
        return sorted((r["path"], r["reason"]) for r in csv.DictReader(f))


@pytest.fixture(scope="module")
def two_nih(tmp_path_factory):
    """(root with a/ and b/ of NIH phantoms and a broken file each, the CSV, store of a/, store of b/)."""
    base = tmp_path_factory.mktemp("merge")
    csv_path = generate(base / "gen", 40, "nih", size=64, workers=1)
    names = sorted(os.listdir(base / "gen" / "images"))
    (base / "gen" / "train_val_list.txt").write_text("\n".join(names[::2]) + "\n")
    (base / "gen" / "test_list.txt").write_text("\n".join(names[1::2]) + "\n")
    root = base / "data"
    for part, chosen in (("a", names[:25]), ("b", names[25:])):
        (root / part).mkdir(parents=True)
        for n in chosen:
            shutil.copy(base / "gen" / "images" / n, root / part / n)
        (root / part / f"broken_{part}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(20))
    nih = ["--dataset", "nih", "--metadata", csv_path]
    a = _build(base / "store_a", root / "a", *nih)
    b = _build(base / "store_b", root / "b", *nih)
    return root, csv_path, a, b, base


def test_merge_of_two_stores_equals_one_build_over_both_inputs(two_nih, tmp_path, capsys):
    root, csv_path, a, b, _ = two_nih
    both = _build(tmp_path / "both", root / "a", root / "b", "--dataset", "nih", "--metadata", csv_path)
    merged = tmp_path / "merged"
    assert merge_cli.main([str(a), str(b), "--out", str(merged), "--no-progress"]) == 0
    for name in FILES:
        assert (merged / name).read_bytes() == (both / name).read_bytes(), name
    assert _rejects(merged) == _rejects(both) and len(_rejects(merged)) == 2
    m, s = (json.loads((p / "store.json").read_text()) for p in (merged, both))
    assert (m["n"], m["mean"], m["std"], m["checksums"], m["manifest"]) == \
        (s["n"], s["mean"], s["std"], s["checksums"], s["manifest"])
    assert {r["split"] for r in _rows(merged)} == {"train", "test"}
    assert len(open_store(merged)) == 40
    capsys.readouterr()
    assert merge_cli.main([str(a), str(b), "--out", str(merged), "--no-progress"]) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_merged_nih_and_padchest_keep_dataset_view_and_split_per_row(two_nih, tmp_path):
    root, csv_path, a, _, base = two_nih
    pc_csv = generate(tmp_path / "pc", 12, "padchest", size=64, workers=1)
    pc = _build(tmp_path / "store_pc", tmp_path / "pc" / "images", "--dataset", "padchest", "--metadata", pc_csv)
    merged = tmp_path / "merged"
    assert merge_cli.main([str(a), str(pc), "--out", str(merged), "--no-progress"]) == 0
    rows, expected = _rows(merged), _rows(a) + _rows(pc)
    assert len(rows) == len(expected) == 25 + 12
    for i, (row, src) in enumerate(zip(rows, expected)):
        assert int(row["index"]) == i
        assert {k: row[k] for k in ("dataset", "patient_id", "view", "labels", "split", "flags")} == \
            {k: src[k] for k in ("dataset", "patient_id", "view", "labels", "split", "flags")}
        assert row["path"].endswith(src["path"])
    assert [r["dataset"] for r in rows] == ["nih"] * 25 + ["padchest"] * 12
    assert {r["view"] for r in rows[25:]} - {"PA", "L", "AP"} == set()
    images = np.load(merged / "images.npy")
    assert np.array_equal(images[:25], np.load(a / "images.npy")) and np.array_equal(images[25:],
                                                                                      np.load(pc / "images.npy"))
    meta = json.loads((merged / "store.json").read_text())
    assert meta["dataset"] == "nih+padchest" and meta["mean"] == pytest.approx(images.mean() / 255, abs=1e-12)


def test_one_command_with_two_groups_equals_the_merge_of_their_stores(two_nih, tmp_path):
    root, csv_path, a, _, _ = two_nih
    pc_csv = generate(tmp_path / "pc", 12, "padchest", size=64, workers=1)
    pc = _build(tmp_path / "store_pc", tmp_path / "pc" / "images", "--dataset", "padchest", "--metadata", pc_csv)
    merged = tmp_path / "merged"
    assert merge_cli.main([str(a), str(pc), "--out", str(merged), "--no-progress"]) == 0
    one = _build(tmp_path / "one", root / "a", "--dataset", "nih", "--metadata", csv_path,
                 "--and", tmp_path / "pc" / "images", "--dataset", "padchest", "--metadata", pc_csv)
    assert _rows(one) != [] and [r["dataset"] for r in _rows(one)] == ["nih"] * 25 + ["padchest"] * 12
    for name in ("images.npy",):
        assert (one / name).read_bytes() == (merged / name).read_bytes()
    strip = [{k: v for k, v in r.items() if k != "path"} for r in _rows(one)]
    assert strip == [{k: v for k, v in r.items() if k != "path"} for r in _rows(merged)]
    assert [r["path"] for r in _rows(one)] == [r["path"] for r in _rows(merged)]
    assert json.loads((one / "store.json").read_text())["dataset"] == "nih+padchest"


def test_stores_of_other_recipes_or_damaged_ones_are_refused(two_nih, tmp_path, capsys):
    root, csv_path, a, _, _ = two_nih
    other = tmp_path / "other"
    assert build_cli.main([str(root / "b"), "--out", str(other), "--size", "32", "--normalize", "percentile",
                           "--workers", "1", "--no-progress"]) == 0
    capsys.readouterr()
    assert merge_cli.main([str(a), str(other), "--out", str(tmp_path / "m"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: the stores disagree on normalization: {a} has minmax, {other} has percentile")
    damaged = tmp_path / "damaged"
    shutil.copytree(a, damaged)
    with open(damaged / "images.npy", "r+b") as f:
        f.seek(-5, 2)
        f.write(b"\xff\x00\xff\x00\xff")
    assert merge_cli.main([str(damaged), "--out", str(tmp_path / "m2"), "--no-progress"]) == 2
    assert f"{damaged} is damaged at slots 0-24 (their checksum differs)" in capsys.readouterr().err


def test_a_killed_merge_resumes_to_the_same_store(two_nih, tmp_path, capsys):
    _, _, a, b, _ = two_nih
    argv = [str(a), str(b), "--out", str(tmp_path / "merged"), "--no-progress"]
    clean = tmp_path / "clean"
    assert merge_cli.main([str(a), str(b), "--out", str(clean), "--no-progress"]) == 0
    pid = os.fork()
    if pid == 0:  # the child merges and SIGKILLs itself right after recording its first chunk
        try:
            real = Staging.record

            def record(self, start, results):
                real(self, start, results)
                os.kill(os.getpid(), signal.SIGKILL)
            Staging.record = record
            merge_cli.main(argv)
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    out = tmp_path / "merged"
    assert len(list((out / PARTIAL / "done").glob("*.json"))) == 1 and not (out / "store.json").exists()
    capsys.readouterr()
    assert merge_cli.main(argv) == 0
    captured = capsys.readouterr()
    assert "resuming the partial merge" in captured.err and "25 were done before resuming" in captured.out
    for name in (*FILES, "rejects.csv"):
        assert (out / name).read_bytes() == (clean / name).read_bytes(), name
