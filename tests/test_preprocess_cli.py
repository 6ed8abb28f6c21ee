"""python -m preprocess: --help works; bad paths and flags give a clear error and exit code 2, never a traceback."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from preprocess.__main__ import main

REPO = Path(__file__).resolve().parents[1]


def test_help_lists_every_flag_with_its_default(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: python -m preprocess")
    for flag in ("--out", "--dataset", "--metadata", "--size", "--normalize", "--fit", "--min-side", "--workers",
                 "--overwrite", "--preview", "--no-progress", "--train-list", "--test-list"):
        assert flag in text
    text = " ".join(text.split())  # argparse wraps lines
    for default in ("(default: 256)", "(default: minmax", "(default: stretch", "(default: 32)", "(default: all"):
        assert default in text


def test_help_as_a_command():
    done = subprocess.run([sys.executable, "-m", "preprocess", "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and "usage: python -m preprocess" in done.stdout


@pytest.fixture
def image_dir(tmp_path) -> Path:
    d = tmp_path / "imgs"
    d.mkdir()
    Image.new("L", (40, 40), color=3).save(d / "a.png")
    return d


CASES = {  # name -> (argv after the inputs, what the error must say); {d} is the image folder, {t} tmp_path
    "missing input": (["{t}/nope", "--out", "{t}/s"], "input not found"),
    "missing metadata": (["{d}", "--out", "{t}/s", "--dataset", "nih", "--metadata", "{t}/no.csv"], "does not exist"),
    "metadata not a CSV": (["{d}", "--out", "{t}/s", "--dataset", "nih", "--metadata", "{d}/a.png"],
                           "not a readable UTF-8 CSV"),
    "metadata of the other dataset": (["{d}", "--out", "{t}/s", "--dataset", "padchest", "--metadata", "{t}/nih.csv"],
                                      "did you mean --dataset nih"),
    "out is a file": (["{d}", "--out", "{d}/a.png"], "is a file, not a folder"),
    "out is a file, --overwrite": (["{d}", "--out", "{d}/a.png", "--overwrite"], "is a file, not a folder"),
    "empty folder": (["{t}/empty", "--out", "{t}/s"], "no usable input files"),
    "missing split list": (["{d}", "--out", "{t}/s", "--dataset", "nih", "--metadata", "{t}/nih.csv",
                            "--test-list", "{t}/none.txt"], "--test-list"),
}


def _argv(template: list[str], d: Path, t: Path) -> list[str]:
    (t / "empty").mkdir(exist_ok=True)
    (t / "nih.csv").write_text("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
                               "View Position\na.png,No Finding,0,1,30,F,PA\n")
    return [a.format(d=d, t=t) for a in template]


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_paths_exit_2_with_a_clear_message(case, image_dir, tmp_path, capsys):
    template, message = CASES[case]
    rc = main(_argv(template, image_dir, tmp_path) + ["--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


@pytest.mark.parametrize("argv, message", [
    (["{d}", "--out", "{t}/s", "--dataset", "nih"], "--dataset nih needs --metadata"),
    (["{d}", "--out", "{t}/s", "--size", "4"], "--size must be >= 8"),
    (["{d}", "--out", "{t}/s", "--workers", "0"], "--workers"),
    (["{d}", "--out", "{t}/s", "--normalize", "zscore"], "invalid choice"),
    (["{d}"], "--out"),
])
def test_bad_flags_exit_2(argv, message, image_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(_argv(argv, image_dir, tmp_path))
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_as_a_command_bad_path_is_one_line_not_a_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "preprocess", str(tmp_path / "nope"), "--out", str(tmp_path / "s")],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: input not found: {tmp_path / 'nope'}"


@pytest.mark.parametrize("case", ["decoded", "no metadata rows"])
def test_a_0_image_run_exits_1_with_reasons_and_leaves_nothing_that_blocks(case, image_dir, tmp_path, capsys):
    from preprocess.store import open_store
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_text("text")
    (bad / "y.png").write_text("more text")
    Image.new("L", (4, 4)).save(bad / "tiny.png")
    out = tmp_path / "s"
    _argv([], image_dir, tmp_path)  # writes tmp_path/nih.csv, which lists none of the bad files
    extra = ["--dataset", "nih", "--metadata", str(tmp_path / "nih.csv")] if case == "no metadata rows" else []
    rc = main([str(bad), "--out", str(out), "--no-progress", *extra])
    err = capsys.readouterr().err.splitlines()[-1] + "\n"
    assert rc == 1 and "Traceback" not in err
    expected = ("3 rejected: 3 no row in the nih metadata CSV" if extra else
                "3 rejected: 2 unsupported file type, 1 image too small")
    assert err.startswith(f"error: no image could be used ({expected}); see {out / 'rejects.csv'}; nothing was stored")
    assert sorted(p.name for p in out.iterdir()) == ["rejects.csv"]  # the reasons, and no store, no lock
    with pytest.raises(FileNotFoundError, match="not a store"):
        open_store(out)  # what a trainer sees
    assert main([str(image_dir), "--out", str(out), "--min-side", "8", "--no-progress"]) == 0  # no --overwrite
    assert len(open_store(out)) == 1
