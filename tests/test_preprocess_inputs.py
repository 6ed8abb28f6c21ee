"""What a run reads is what it says it read: changed inputs stop a resume, and no odd input is taken silently.

- A resume whose inputs changed (a file added, removed or replaced, the metadata CSV edited) refuses with a summary
  and the two ways on; restoring the inputs lets it resume. A finished store refuses a rerun over changed inputs.
- Two images with one basename and one CSV row: both rejected with the reason, never both labelled by that row.
- A file name that is not UTF-8 is stored with an escaped path; a symlink to a folder is followed, or recorded as
  skipped when that folder is read already.
- A deflated DICOM that inflates to gigabytes (the 16000 x 16000 case) is refused without inflating it into memory.
"""
from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from preprocess import __main__ as cli
from preprocess.store import PARTIAL
from preprocess.synthetic import generate

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def nih(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("inputs")
    csv = generate(base / "gen", 12, "nih", size=64, workers=1)
    return base / "gen" / "images", csv


def _argv(images: Path, csv: Path, out: Path) -> list[str]:
    return [str(images), "--out", str(out), "--dataset", "nih", "--metadata", str(csv), "--size", "32",
            "--workers", "1", "--no-progress"]


@pytest.fixture
def stopped(nih, tmp_path, monkeypatch):
    """A copy of the inputs and a build of them stopped before finalize (every chunk recorded)."""
    images, csv = tmp_path / "images", tmp_path / "Data_Entry_2017.csv"
    shutil.copytree(nih[0], images)
    shutil.copy(nih[1], csv)
    out = tmp_path / "store"

    def stop(*args, **kwargs):
        raise KeyboardInterrupt
    with monkeypatch.context() as m:
        m.setattr(cli, "finalize", stop)
        assert cli.main(_argv(images, csv, out)) == 130
    return images, csv, out


@pytest.mark.parametrize("change, summary", [
    ("add", "1 added, 0 removed, 0 changed (e.g. added "),
    ("remove", "0 added, 1 removed, 0 changed (e.g. removed "),
    ("replace", "0 added, 0 removed, 1 changed (e.g. changed "),
    ("edit csv", "the metadata file changed since this partial store was started"),
])
def test_a_resume_over_changed_inputs_refuses_with_a_summary(stopped, change, summary, capsys):
    images, csv, out = stopped
    first, second = sorted(images.iterdir())[:2]
    saved = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (first, second, csv)}
    if change == "add":
        shutil.copy(first, images / "00009999_000.png")
    elif change == "remove":
        first.unlink()
    elif change == "replace":
        shutil.copy(second, first)  # another image under the old name
    else:
        csv.write_text(csv.read_text().replace("No Finding", "Nodule", 1))
    capsys.readouterr()
    assert cli.main(_argv(images, csv, out)) == 2
    err = capsys.readouterr().err
    assert summary in err and "restore the inputs as they were and rerun, or add --overwrite" in err, err
    assert err.count("\n") == 1 and not (out / "store.json").exists() and (out / PARTIAL / "plan.json").exists()

    (images / "00009999_000.png").unlink(missing_ok=True)
    for p, (data, mtime) in saved.items():  # restored: the resume goes on
        p.write_bytes(data)
        os.utime(p, ns=(mtime, mtime))
    assert cli.main(_argv(images, csv, out)) == 0
    assert "resuming" in capsys.readouterr().err


def test_a_finished_store_refuses_a_rerun_over_changed_inputs(stopped, capsys):
    images, csv, out = stopped
    assert cli.main(_argv(images, csv, out)) == 0
    assert cli.main(_argv(images, csv, out)) == 0 and "nothing to do" in capsys.readouterr().out
    shutil.copy(sorted(images.iterdir())[1], sorted(images.iterdir())[0])
    assert cli.main(_argv(images, csv, out)) == 2
    assert "holds a store built from other inputs (input files were added, removed or changed" in \
        capsys.readouterr().err
    assert cli.main(_argv(images, csv, out) + ["--overwrite"]) == 0


def test_two_images_with_one_basename_are_rejected_not_both_labelled(nih, tmp_path, read_store):
    images, csv = nih
    for sub in ("a", "b"):
        shutil.copytree(images, tmp_path / "in" / sub)
    name = sorted(p.name for p in images.iterdir())[0]
    (tmp_path / "in" / "b" / name).write_bytes((images / sorted(os.listdir(images))[1]).read_bytes())
    for other in sorted(os.listdir(images))[1:]:
        (tmp_path / "in" / "b" / other).unlink()
    assert cli.main(_argv(tmp_path / "in", csv, tmp_path / "store")) == 0
    s = read_store(tmp_path / "store")
    reasons = {r["path"]: r["reason"] for r in s.rejects}
    assert set(reasons) == {f"a/{name}", f"b/{name}"}
    assert reasons[f"a/{name}"].startswith(f"duplicate basename: 1 other input(s) are named {name} (b/{name})")
    assert [r["path"] for r in s.manifest] == [f"a/{n}" for n in sorted(os.listdir(images))[1:]]
    assert s.meta["counts"]["duplicate_basenames"] == 2


def test_a_non_utf8_name_is_stored_with_an_escaped_path(nih, tmp_path, preprocess_cli, read_store):
    images = tmp_path / "in"
    images.mkdir()
    src = sorted(nih[0].iterdir())
    shutil.copy(src[0], images / "plain.png")
    shutil.copy(src[0], images / os.fsdecode(b"caf\xe9.png"))  # Latin-1 bytes: not UTF-8
    rc, _, err = preprocess_cli(images, "--out", tmp_path / "store", "--size", "32", "--workers", "1")
    assert rc == 0, err
    s = read_store(tmp_path / "store")
    assert [r["path"] for r in s.manifest] == ["caf\\xe9.png", "plain.png"] and s.rejects == []
    assert np.array_equal(s.images[0], s.images[1])


def test_a_symlink_to_a_folder_is_followed_or_recorded_as_skipped(nih, tmp_path, preprocess_cli, read_store):
    outside = tmp_path / "outside"
    shutil.copytree(nih[0], outside)
    top = tmp_path / "in"
    shutil.copytree(nih[0], top / "real")
    os.symlink(outside, top / "linked")  # another folder: followed
    os.symlink(top / "real", top / "again")  # a folder read already: skipped, and said so
    rc, _, err = preprocess_cli(top, "--out", tmp_path / "store", "--size", "32", "--workers", "1")
    assert rc == 0, err
    s = read_store(tmp_path / "store")
    n = len(os.listdir(nih[0]))
    assert len(s.manifest) == 2 * n
    assert sorted({r["path"].split("/")[0] for r in s.manifest}) == ["linked", "real"]
    assert s.rejects == [{"path": "again", "reason": f"symlink to a folder already read as {top / 'real'}: skipped"}]


def _deflated_dicom_bomb(path: Path, side: int) -> None:
    """A deflated DICOM of side x side 16-bit zeros: a few MB on disk, side*side*2 bytes once inflated."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.filereader import _read_file_meta_info, read_preamble
    from pydicom.uid import DeflatedExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows = ds.Columns = side
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    buf.seek(0)
    read_preamble(buf, False)
    _read_file_meta_info(buf)
    head, body = buf.getvalue()[:buf.tell()], zlib.decompress(buf.read(), -zlib.MAX_WBITS)
    z, n = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS), side * side * 2
    with open(path, "wb") as f:  # the pixel data element, then its zeros, streamed through the compressor
        f.write(head + z.compress(body + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, n)))
        block = bytes(1 << 24)
        for _ in range(n // len(block)):
            f.write(z.compress(block))
        f.write(z.compress(bytes(n % len(block))) + z.flush())


def test_a_deflated_dicom_bomb_is_refused_without_inflating_it(tmp_path):
    pytest.importorskip("pydicom")
    bomb = tmp_path / "bomb.dcm"
    _deflated_dicom_bomb(bomb, 16_000)
    assert bomb.stat().st_size < 4 << 20
    # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across execve, so the child would report pytest's own peak
    probe = ("import sys\nfrom preprocess.decode import Rejected, decode\n"
             "try:\n    decode(sys.argv[1])\nexcept Rejected as e:\n    print(e)\n"
             "print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')) // 1024)\n")
    done = subprocess.run([sys.executable, "-c", probe, str(bomb)], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    reason, peak_mib = done.stdout.splitlines()
    assert reason.startswith("decompression bomb: deflated DICOM inflates to more than"), done.stderr
    assert int(peak_mib) < 300, f"{peak_mib} MiB: the guard inflated it into memory"
