"""preprocess.metadata: the real NIH and PadChest tables parse completely; the quirks are handled on small CSVs."""
from __future__ import annotations

import csv
import dataclasses
import gzip
import io
from pathlib import Path

import pytest

from preprocess.metadata import Record, folder_record, load_metadata

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "metadata"
NIH_CSV = DATA / "Data_Entry_2017_v2020.csv.gz"
PADCHEST_CSV = DATA / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz"

NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
NIH_ROWS = [
    "00000001_000.png,Cardiomegaly,0,1,57,M,PA,2682,2749,0.143,0.143",
    "00000001_001.png,Effusion|Cardiomegaly|Effusion,1,1,58,M,PA,2894,2729,0.143,0.143",
    "00000002_000.png,No Finding,0,2,80,M,AP,2500,2048,0.171,0.171",
    "00000003_000.png,Hernia,0,3,81,F,PA,2582,2991,0.143,0.143",
    "00000001_000.png,Mass,9,99,1,F,AP,1,1,0.1,0.1",  # a duplicate basename: the first row wins
]
PADCHEST_FIELDS = ["", "ImageID", "ImageDir", "PatientID", "Projection", "Labels"]


def _write(path: Path, text: str) -> Path:
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8", newline="") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8", newline="")
    return path


def _nih_csv(path: Path, header: str = NIH_HEADER, rows=NIH_ROWS) -> Path:
    return _write(path, "\n".join([header, *rows]) + "\n")


def _padchest_csv(path: Path, rows) -> Path:
    text = io.StringIO()
    w = csv.writer(text, lineterminator="\n")
    w.writerow(PADCHEST_FIELDS)
    for i, (image, patient, projection, labels) in enumerate(rows):
        w.writerow([i, image, 0, patient, projection, labels])
    return _write(path, text.getvalue())


# ---------------------------------------------------------------------------------------------- the real tables


def _need(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"../shared/data is absent ({path} not found): the real-metadata checks need it")
    return path


@pytest.fixture(scope="module")
def nih():
    return load_metadata("nih", _need(NIH_CSV))


@pytest.fixture(scope="module")
def padchest():
    return load_metadata("padchest", _need(PADCHEST_CSV))


def _check_labels_clean(meta):
    for rec in meta.values():
        assert rec.labels == tuple(sorted(set(rec.labels)))
        for label in rec.labels:
            assert label and label == label.strip(), rec


def test_real_nih_parses_completely(nih):
    assert len(nih) == 112_120 and nih.stats["rows"] == 112_120
    assert nih.stats["duplicates"] == nih.stats["malformed_rows"] == 0
    assert len({r.patient_id for r in nih.values()}) == 30_805
    assert {r.view for r in nih.values()} == {"PA", "AP"}
    assert {r.dataset for r in nih.values()} == {"nih"}
    labels = {label for r in nih.values() for label in r.labels}
    assert len(labels) == 14 and "Pleural_Thickening" in labels and "No Finding" not in labels
    assert nih.stats["no_labels"] == sum(not r.labels for r in nih.values()) == 60_361  # the 'No Finding' rows
    assert nih.stats["split_none"] == 112_120  # the split lists are not shipped next to this CSV
    _check_labels_clean(nih)
    assert nih.get("00000001_001.png") == Record("nih", "1", "PA", ("Cardiomegaly", "Emphysema"), "")


def test_real_padchest_parses_completely(padchest):
    assert len(padchest) == 160_861 and padchest.stats["rows"] == 160_861
    assert padchest.stats["duplicates"] == padchest.stats["malformed_rows"] == 0
    assert padchest.stats["unparseable_labels"] == 0
    assert padchest.stats["missing_labels"] == 103  # cells reading 'nan'
    # 51,167 rows labelled only 'normal' (or 'normal' and '') plus the 103 'nan' rows
    assert padchest.stats["no_labels"] == sum(not r.labels for r in padchest.values()) == 51_270
    assert len({r.patient_id for r in padchest.values()}) == 67_625
    assert {r.view for r in padchest.values()} == {"PA", "L", "AP_horizontal", "AP", "COSTAL", "EXCLUDE", "UNK"}
    assert {r.split for r in padchest.values()} == {""}
    labels = {label for r in padchest.values() for label in r.labels}
    assert "normal" not in labels and "" not in labels and "COPD signs" in labels
    _check_labels_clean(padchest)
    first = padchest["135803415504923515076821959678074435083_fzis7d.png"]
    assert first.view == "L" and first.patient_id == "313572750430997347502932654319389875966"
    assert first.labels == ("chronic changes", "ground glass pattern", "kyphosis", "pseudonodule",
                            "pulmonary fibrosis")


# ------------------------------------------------------------------------------------------ synthetic NIH tables


@pytest.mark.parametrize("name", ["Data_Entry_2017.csv", "Data_Entry_2017.csv.gz"])
def test_nih_plain_and_gz(tmp_path, name):
    meta = load_metadata("nih", _nih_csv(tmp_path / name))
    assert len(meta) == 4 and meta.stats["rows"] == 5 and meta.stats["duplicates"] == 1
    assert meta["00000001_000.png"] == Record("nih", "1", "PA", ("Cardiomegaly",), "")  # first row kept
    assert meta["00000001_001.png"].labels == ("Cardiomegaly", "Effusion")
    assert meta["00000002_000.png"].labels == () and meta["00000002_000.png"].view == "AP"
    assert meta.get("absent.png") is None and meta.records is meta


def test_nih_header_variants(tmp_path):
    quoted = NIH_HEADER.replace("Patient Gender", "Patient Sex").replace(
        "OriginalImage[Width,Height]", '"OriginalImage[Width,Height]"')  # 9 header names, 11 values a row
    meta = load_metadata("nih", _nih_csv(tmp_path / "d.csv", header=quoted))
    assert len(meta) == 4 and meta["00000003_000.png"].labels == ("Hernia",)


def test_nih_split_files_next_to_csv(tmp_path):
    path = _nih_csv(tmp_path / "Data_Entry_2017.csv.gz")
    (tmp_path / "train_val_list.txt").write_text("00000001_000.png\n00000001_001.png\n\n")
    (tmp_path / "test_list.txt").write_text("00000002_000.png\n")
    meta = load_metadata("nih", path)
    assert [meta[k].split for k in sorted(meta)] == ["train", "train", "test", ""]
    assert meta.stats["split_train"] == 2 and meta.stats["split_test"] == 1 and meta.stats["split_none"] == 1


def test_nih_split_files_given(tmp_path):
    (tmp_path / "csv").mkdir()
    path = _nih_csv(tmp_path / "csv" / "d.csv")  # no split files next to it
    test = tmp_path / "mine_test.txt"
    test.write_text("00000003_000.png\n")
    meta = load_metadata("nih", path, test_list=test)
    assert meta["00000003_000.png"].split == "test" and meta["00000001_000.png"].split == ""
    with pytest.raises(FileNotFoundError, match="--train-list"):
        load_metadata("nih", path, train_list=tmp_path / "nope.txt")
    train = tmp_path / "mine_train.txt"
    train.write_text("00000003_000.png\n")
    with pytest.raises(ValueError, match="both the train and the test list"):
        load_metadata("nih", path, train_list=train, test_list=test)


# ------------------------------------------------------------------------------------- synthetic PadChest tables


@pytest.mark.parametrize("name", ["pc.csv", "pc.csv.gz"])
def test_padchest_label_quirks(tmp_path, name):
    rows = [
        ("a.png", "p1", "PA", "['', ' nodule']"),
        ("b.png", "p1", "L", ""),
        ("c.png", "p2", "AP", "nan"),
        ("d.png", "p3", "PA", "['pleural effusion', ' nodule"),  # unparseable
        ("e.png", "p3", "PA", "[1, 2]"),  # parses, but not strings: unparseable
        ("f.png", "p4", "PA", "['normal']"),
        ("g.png", "p4", "AP_horizontal", "[' normal', 'cardiomegaly ', ' cardiomegaly', 'aortic elongation']"),
        ("a.png", "p9", "L", "['mass']"),  # duplicate basename
    ]
    meta = load_metadata("padchest", _padchest_csv(tmp_path / name, rows))
    assert meta["a.png"] == Record("padchest", "p1", "PA", ("nodule",), "")
    assert meta["b.png"].labels == meta["c.png"].labels == meta["d.png"].labels == meta["e.png"].labels == ()
    assert meta["f.png"].labels == ()
    assert meta["g.png"].labels == ("aortic elongation", "cardiomegaly") and meta["g.png"].view == "AP_horizontal"
    assert meta.stats == {"rows": 8, "duplicates": 1, "malformed_rows": 0, "unparseable_labels": 2,
                          "missing_labels": 2, "no_labels": 5, "split_none": 7}


# ---------------------------------------------------------------------------------------------------- errors


def test_wrong_format_names_the_dataset(tmp_path):
    pc = _padchest_csv(tmp_path / "pc.csv", [("a.png", "p", "PA", "['nodule']")])
    with pytest.raises(ValueError, match=r"NIH Data_Entry CSV; did you mean --dataset padchest\?"):
        load_metadata("nih", pc)
    nih = _nih_csv(tmp_path / "nih.csv")
    with pytest.raises(ValueError, match=r"'ImageID'.*PadChest.*did you mean --dataset nih\?"):
        load_metadata("padchest", nih)
    other = _write(tmp_path / "other.csv", "path,label\nx.png,1\n")
    with pytest.raises(ValueError, match=r"missing column\(s\).*Image Index.*check --metadata"):
        load_metadata("nih", other)
    with pytest.raises(ValueError, match="missing column"):
        load_metadata("nih", _write(tmp_path / "empty.csv", ""))
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    with pytest.raises(ValueError, match="not a readable UTF-8 CSV"):
        load_metadata("padchest", tmp_path / "image.png")
    (tmp_path / "cut.csv.gz").write_bytes(gzip.compress(NIH_HEADER.encode() * 50)[:40])
    with pytest.raises(ValueError, match="not a readable UTF-8 CSV"):
        load_metadata("nih", tmp_path / "cut.csv.gz")


def test_missing_file_and_flags(tmp_path):
    with pytest.raises(FileNotFoundError, match="--metadata"):
        load_metadata("nih", tmp_path / "Data_Entry_2017.csv")
    with pytest.raises(ValueError, match="--metadata"):
        load_metadata("padchest", None)
    with pytest.raises(ValueError, match=r"nih\|padchest\|folder"):
        load_metadata("chexpert", tmp_path / "x.csv")


def test_folder():
    meta = load_metadata("folder", None)
    assert meta == {} and len(meta) == 0 and meta.get("x.png") is None
    assert folder_record("site_a/p123/scan_01.png") == Record("folder", "scan_01", "", (), "")
    with pytest.raises(dataclasses.FrozenInstanceError):
        folder_record("x.png").view = "PA"
