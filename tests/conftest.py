"""Shared fixtures: the real data in ../shared/data (skipped cleanly where absent) and a reader for a built store."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def need_shared(*parts: str) -> Path:
    """The path ../shared/data/PARTS, or a clean skip saying what is missing."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"../shared/data is absent ({path} not found): this check needs the real data")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real radiographs and label tables); skips the test where it is absent."""
    return need_shared()


@pytest.fixture(scope="session")
def real_data(shared_data) -> Path:
    """../shared/data/real: the RG1 chest radiograph (DICOM and 16-bit PNG) and the Kermany JPEGs."""
    return need_shared("real")


def _csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def load_store_files(root: Path) -> SimpleNamespace:
    """Everything a finished store holds, read with plain numpy/csv/json (not through preprocess.store)."""
    root = Path(root)
    return SimpleNamespace(root=root, images=np.load(root / "images.npy"), manifest=_csv_rows(root / "manifest.csv"),
                           rejects=_csv_rows(root / "rejects.csv"), meta=json.loads((root / "store.json").read_text()))


@pytest.fixture(scope="session")
def read_store():
    """`read_store(root)` -> namespace(images, manifest, rejects, meta) of a finished store."""
    return load_store_files


@pytest.fixture
def preprocess_cli(capsys):
    """`preprocess_cli(*argv)` runs `python -m preprocess` in-process -> (exit code, stdout, stderr)."""
    from preprocess.__main__ import main

    def run(*argv) -> tuple[int, str, str]:
        capsys.readouterr()
        rc = main([str(a) for a in argv] + ["--no-progress"])
        out, err = capsys.readouterr()
        return rc, out, err
    return run
