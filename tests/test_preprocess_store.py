"""The store a run writes: measured mean/std, store.json last, manifest in slot order, the reader, the preview."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import preprocess.finalize as finalize_module
import preprocess.staging as staging_module
from preprocess.build import process_one
from preprocess.preview import CAPTION
from preprocess.store import open_store
from preprocess.synthetic import generate

N, SIZE = 24, 64
SETTINGS = {"min_side": 32, "size": SIZE, "normalize": "minmax", "fit": "stretch"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("store_inputs")
    generate(base, N, "nih", size=96, workers=1)
    (base / "images" / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    return base / "images"


@pytest.fixture
def built(inputs, tmp_path, monkeypatch, preprocess_cli):
    """A store built with two workers, recording what write_atomic wrote and what was on disk at each write."""
    out = tmp_path / "store"
    writes = []
    original = staging_module.write_atomic

    def spy(path: Path, text: str, **kw) -> None:
        present = {p.name: p.stat().st_size for p in out.iterdir() if p.is_file()}
        writes.append((Path(path).name, present))
        original(path, text, **kw)
    monkeypatch.setattr(staging_module, "write_atomic", spy)
    monkeypatch.setattr(finalize_module, "write_atomic", spy)
    rc, stdout, err = preprocess_cli(inputs, "--out", out, "--size", SIZE, "--workers", "2")
    assert rc == 0, err
    return out, writes, stdout


def test_mean_and_std_are_measured_on_the_stored_pixels(built, read_store):
    out, _, stdout = built
    s = read_store(out)
    x = s.images.astype(np.float64) / 255
    assert s.meta["mean"] == pytest.approx(x.mean(), abs=1e-9)
    assert s.meta["std"] == pytest.approx(x.std(), abs=1e-9)
    assert not 0.517 < s.meta["mean"] < 0.519  # measured, not the seed's constant
    assert f"pixel mean {s.meta['mean']:.4f}, std {s.meta['std']:.4f}" in stdout
    store = open_store(out)
    assert (store.mean, store.std) == (s.meta["mean"], s.meta["std"])


def test_store_json_is_written_last_when_all_else_is_complete(built):
    out, writes, _ = built
    assert writes[-1][0] == "store.json"
    present = writes[-1][1]
    assert present["images.npy"] == 128 + N * SIZE * SIZE  # the final, compacted array (one file rejected)
    assert "manifest.csv" in present and "rejects.csv" in present
    assert all(name != "store.json" for name, _ in writes[:-1])
    assert not (out / ".partial").exists() and not list(out.glob("*.tmp"))
    meta = json.loads((out / "store.json").read_text())
    assert meta["n"] == N and meta["image_size"] == [SIZE, SIZE] and meta["dtype"] == "uint8"
    assert meta["counts"]["written"] == N and meta["counts"]["rejected"] == 1
    assert "python -m preprocess" in meta["command"] and "--size 64" in meta["command"]


def test_manifest_rows_are_the_slots_in_order(built, inputs, read_store):
    out, _, _ = built
    s = read_store(out)
    files = sorted(p.name for p in inputs.glob("0*.png"))
    assert len(s.manifest) == N == len(s.images)
    assert [int(row["index"]) for row in s.manifest] == list(range(N))
    assert [row["path"] for row in s.manifest] == files
    for row in s.manifest:  # slot i holds the file of row i, exactly as the per-image recipe makes it
        img, res = process_one(str(inputs / row["path"]), SETTINGS)
        assert res["ok"] and np.array_equal(s.images[int(row["index"])], img), row["path"]
    assert s.rejects == [{"path": "zz_broken.png", "reason": s.rejects[0]["reason"]}]
    assert s.rejects[0]["reason"].startswith("truncated or corrupt PNG")


def test_reader_gives_a_read_only_memmap_and_the_manifest(built, read_store):
    out, _, _ = built
    store = open_store(out / "store.json")  # the folder, store.json or images.npy all name the store
    assert isinstance(store.images, np.memmap) and not store.images.flags.writeable
    assert store.images.shape == (N, SIZE, SIZE) and store.images.dtype == np.uint8
    assert len(store) == N and store.size == SIZE
    assert store.manifest == read_store(out).manifest
    assert np.array_equal(open_store(out / "images.npy").images, read_store(out).images)


def test_preview_writes_a_contact_sheet(built, inputs, preprocess_cli, tmp_path):
    out, _, _ = built
    sheet = tmp_path / "sheets" / "sheet.png"
    rc, stdout, _ = preprocess_cli(inputs, "--out", out, "--size", SIZE, "--workers", "2", "--preview", sheet)
    assert rc == 0 and "nothing to do" in stdout and f"preview: {sheet}" in stdout
    with Image.open(sheet) as img:
        assert img.format == "PNG" and img.mode == "L"
        assert img.size == (4 * 192, 4 * (192 + CAPTION))  # 16 tiles, 4 x 4
        assert np.asarray(img).std() > 10  # images, not a blank sheet
