"""benchmarks.preprocess_throughput runs end to end on a few small images and reports every method and ratio."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from benchmarks import preprocess_throughput as bench
from preprocess.build import process_one
from preprocess.synthetic import generate


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    base = tmp_path_factory.mktemp("bench")
    generate(base, 6, "nih", size=128, workers=1)
    return base / "images"


def test_benchmark_reports_all_methods_and_ratios(images, tmp_path, capsys):
    out = tmp_path / "result.json"
    assert bench.main(["--inputs", str(images), "--size", "64", "--workers-list", "1,2", "--repeats", "1",
                       "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| method | workers | images/s | images/s per core | per core vs seed | vs 1 worker |" in printed
    result = json.loads(out.read_text())
    rows = {(r["method"], r["workers"]): r for r in result["rows"]}
    assert set(rows) == {(m, w) for m in ("seed", "ours", "ours-cli") for w in (1, 2)}
    for (method, w), r in rows.items():
        assert r["images"] == 6 and len(r["seconds"]) == 1 and r["images_per_s"] > 0
        assert r["per_core"] == pytest.approx(r["images_per_s"] / w)
        assert r["cpu_ms_per_image"] == pytest.approx(1000 * r["cpu_seconds"][0] / 6) and r["cpu_ms_per_image"] > 0
        assert len(r["other_programs_cores"]) == 1 and r["other_programs_cores"][0] >= 0
        if method != "seed":
            assert r["per_core_vs_seed"] == pytest.approx(r["per_core"] / rows[("seed", w)]["per_core"])
        if w == 2:
            assert r["scaling"] == pytest.approx(r["images_per_s"] / rows[(method, 1)]["images_per_s"])
    assert set(result["stages_ms_per_image"]) == {"ours", "seed"}


def test_seed_recipe_is_the_seeds(images, tmp_path):
    src = sorted(images.glob("*.png"))[0]
    bench.seed_one((str(src), str(tmp_path / "s.png"), 64))
    x = np.asarray(Image.open(src)).astype(np.float32)
    x = (x - x.min()) / (x.max() - x.min())
    want = np.asarray(Image.fromarray((x * 255).astype(np.uint8)).resize((64, 64), Image.LANCZOS))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "s.png")), want)
    ours, _ = process_one(str(src), {"min_side": 32, "size": 64, "normalize": "minmax", "fit": "stretch"})
    assert np.abs(ours.astype(float) - want).mean() <= 1.0  # the two recipes agree to within a gray level


@pytest.mark.parametrize("argv", [["--methods", "seed,fast"], ["--repeats", "0"], ["--workers-list", "0"],
                                  ["--inputs", "/no/such/folder"]])
def test_benchmark_bad_flags_exit_2(argv):
    with pytest.raises(SystemExit) as e:
        bench.parse_args(argv)
    assert e.value.code == 2


@pytest.mark.slow
def test_archives_benchmark_end_to_end_at_a_small_n(tmp_path, capsys):
    """The NIH-scale archives benchmark at N = 3,000 (3 archives): every build runs, the stores are identical."""
    from benchmarks import preprocess_archives
    out = tmp_path / "archives.json"
    assert preprocess_archives.main(["--n", "3000", "--archives", "3", "--png-size", "64", "--size", "64",
                                     "--work", str(tmp_path / "work"), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["runs"]) == {"archives", "extracted", "fan-out", "killed", "resumed", "one archive"}
    assert all(all(v.values()) for v in result["same"].values()) and len(result["same"]) == 3
    killed, resumed = result["runs"]["killed"], result["runs"]["resumed"]
    assert killed["returncode"] == -9 and 0 < killed["chunks_recorded"] < killed["chunks"]
    assert 0 < resumed["done_before"] < 3000
    assert resumed["decoded"] == 3000 - resumed["done_before"]
    assert "| archives | 3000 |" in capsys.readouterr().out
