"""Bad inputs never stop a run: each is rejected with its reason (or handled as documented), every good image is stored.

One folder holds synthetic NIH images plus one of each kind of bad file, and an NIH label table that lists them
all (so each is rejected for its own fault, not for a missing row), lists two files that do not exist, and misses
one good image. It is preprocessed with one worker (in-process) and with two (forked), and compared with a clean
run over the good files alone.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from preprocess.__main__ import main
from preprocess.synthetic import generate

SIZE = 64  # stored side; the colour tests are 64 px, so their pixels are stored unresampled
BANDS = [(0, 0, 0), (255, 0, 0), (0, 255, 0), (255, 255, 255)]  # black, red, green, white: 16 px each
BAND_LUMA = [0, 76, 150, 255]  # round(255 * 0.299), round(255 * 0.587): min-max leaves them as they are
REJECTED = {  # file -> what its reason must say
    "truncated.png": "truncated or corrupt PNG",
    "empty.png": "empty file",
    "text.png": "unsupported file type",
    "tiny.png": "image too small: 1x1",
    "j2k.dcm": "cannot decode DICOM pixel data (JPEG 2000",
    "multiframe.dcm": "multi-frame DICOM (2 frames)",
    "bomb.dcm": "decompression bomb: 20000x20000x1 DICOM",
    "bomb.png": "decompression bomb",
    "bomb_over_limit.png": "decompression bomb",
    "broken_link.png": "unreadable: No such file or directory",
    "fifo.png": "not a regular file",
    "unlisted.png": "no row in the nih metadata CSV",
}
MISSING = ["gone_1.png", "gone_2.png"]  # rows in the CSV, no file


def _bands(mode: str) -> Image.Image:
    rgb = np.repeat(np.array(BANDS, dtype=np.uint8), 16, axis=0)[None].repeat(64, axis=0)  # (64, 64, 3)
    if mode == "RGB":
        return Image.fromarray(rgb)
    if mode == "RGBA":
        alpha = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (64, 1))[..., None]  # must be ignored
        return Image.fromarray(np.concatenate([rgb, alpha], axis=-1))
    img = Image.new("P", (64, 64))
    img.putpalette([v for colour in [BANDS[1], BANDS[3], BANDS[0], BANDS[2]] for v in colour])  # shuffled order
    img.putdata(np.repeat([2, 0, 3, 1], 16)[None].repeat(64, axis=0).ravel().tolist())
    return img


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG that claims width x height (8-bit gray) with a few rows of data: costs nothing to write."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(width + 1)))
                     + chunk(b"IEND", b""))


def _dicom(path: Path, transfer_syntax, pixel_data: bytes, *, frames: int = 1, encapsulated: bool = False,
           side: int = 64, palette: bool = False) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows = ds.Columns = side
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if palette:  # 8-bit indices into a 16-bit colour table: the BANDS colours, shuffled as in the PNG palette
        ds.PhotometricInterpretation = "PALETTE COLOR"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        table = np.array([BANDS[1], BANDS[3], BANDS[0], BANDS[2]] + [(0, 0, 0)] * 252, dtype=np.uint16) * 257
        for k, colour in enumerate(("Red", "Green", "Blue")):
            setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
            setattr(ds, f"{colour}PaletteColorLookupTableData", table[:, k].tobytes())
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = encapsulate([pixel_data]) if encapsulated else pixel_data
    if encapsulated:
        ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)


@contextlib.contextmanager
def _deadline(seconds: int):
    """Fail, rather than hang, if a bad file (a FIFO) blocks the run."""
    def expire(signum, frame):
        raise TimeoutError(f"the run took over {seconds} s: a bad input blocks it")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _csv_row(name: str) -> str:
    return f"{name},No Finding,0,99999,40,F,PA,2500,2048,0.168,0.168\n"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """(good-only folder, good + bad folder, their CSV): the same good files in both."""
    from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless

    base = tmp_path_factory.mktemp("bad_inputs")
    gen = base / "gen"
    csv_path = generate(gen, 10, "nih", size=96, workers=1)
    good = base / "good" / "images"
    shutil.copytree(gen / "images", good)
    Image.new("L", (64, 64), color=117).save(good / "constant.png")
    for mode in ("RGB", "RGBA", "P"):
        _bands(mode).save(good / f"colour_{mode.lower()}.png")
    _dicom(good / "colour_palette.dcm", ExplicitVRLittleEndian,
           np.repeat([2, 0, 3, 1], 16)[None].repeat(64, axis=0).astype(np.uint8).tobytes(), palette=True)
    good_names = sorted(p.name for p in good.iterdir())

    dirty = base / "dirty" / "images"
    shutil.copytree(good, dirty)
    some = sorted(dirty.glob("0*.png"))[0]
    data = some.read_bytes()
    (dirty / "truncated.png").write_bytes(data[: len(data) * 6 // 10])
    (dirty / "empty.png").write_bytes(b"")
    (dirty / "text.png").write_text("not an image, whatever the name says\n")
    Image.new("L", (1, 1), color=9).save(dirty / "tiny.png")
    _dicom(dirty / "j2k.dcm", JPEG2000Lossless, b"\x00garbage!" * 40, encapsulated=True)
    _dicom(dirty / "bomb.dcm", ExplicitVRLittleEndian, bytes(64), side=20_000)  # rejected before decoding
    _dicom(dirty / "multiframe.dcm", ExplicitVRLittleEndian, np.arange(2 * 64 * 64, dtype=np.uint16).tobytes(),
           frames=2)
    _png_header_only(dirty / "bomb.png", 30_000, 30_000)  # over twice PIL's limit: an error at open
    _png_header_only(dirty / "bomb_over_limit.png", 10_000, 10_000)  # over the limit: PIL only warns
    os.symlink(dirty / "no_such_target.png", dirty / "broken_link.png")  # unreadable, even for root
    os.mkfifo(dirty / "fifo.png")  # open() would block forever
    shutil.copy(some, dirty / "unlisted.png")

    table = base / "Data_Entry_2017.csv"
    listed = [n for n in good_names if not n.startswith("0")] + [n for n in REJECTED if n != "unlisted.png"]
    table.write_text(csv_path.read_text() + "".join(_csv_row(n) for n in listed + MISSING))
    return base / "good", base / "dirty", table, good_names


@pytest.fixture(scope="module")
def clean(folders, tmp_path_factory, read_store):
    good, _, table, _ = folders
    out = tmp_path_factory.mktemp("clean") / "store"
    assert main([str(good), "--out", str(out), "--dataset", "nih", "--metadata", str(table), "--size", str(SIZE),
                 "--workers", "1", "--no-progress"]) == 0
    return read_store(out)


@pytest.fixture(scope="module", params=[1, 2], ids=["workers1", "workers2"])
def dirty(request, folders, tmp_path_factory, read_store):
    _, dirty_dir, table, _ = folders
    out = tmp_path_factory.mktemp(f"dirty{request.param}") / "store"
    with _deadline(60):
        rc = main([str(dirty_dir), "--out", str(out), "--dataset", "nih", "--metadata", str(table),
                   "--size", str(SIZE), "--workers", str(request.param), "--no-progress"])
    assert rc == 0, "a run over bad files must complete"
    s = read_store(out)
    s.reasons = {r["path"].removeprefix("images/"): r["reason"] for r in s.rejects}
    s.by_path = {row["path"].removeprefix("images/"): row for row in s.manifest}
    return s


@pytest.mark.parametrize("name", sorted(REJECTED))
def test_bad_file_is_rejected_with_its_reason(dirty, name):
    assert name in dirty.reasons, f"{name} was not rejected (rejects: {sorted(dirty.reasons)})"
    assert REJECTED[name] in dirty.reasons[name]
    assert name not in dirty.by_path
    assert "\n" not in dirty.reasons[name] and " at 0x" not in dirty.reasons[name]


def test_only_the_bad_files_are_rejected_and_counted(dirty):
    assert sorted(dirty.reasons) == sorted(REJECTED)
    counts = dirty.meta["counts"]
    assert counts["rejected"] == len(REJECTED) and counts["written"] == len(dirty.manifest)
    assert counts["listed_missing"] == len(MISSING)  # CSV rows whose file is absent: counted, not fatal
    assert counts["unlisted"] == 1 and counts["constant"] == 1


def test_every_good_image_is_stored_as_in_a_clean_run(dirty, clean, folders):
    good_names = folders[3]
    assert [row["path"] for row in clean.manifest] == [f"images/{n}" for n in good_names] and clean.rejects == []
    assert [row["path"] for row in dirty.manifest] == [f"images/{n}" for n in good_names]  # same slots, same order
    assert np.array_equal(dirty.images, clean.images)
    for a, b in zip(dirty.manifest, clean.manifest):
        assert a == b


def test_constant_image_is_stored_as_zeros_and_flagged(dirty):
    row = dirty.by_path["constant.png"]
    assert row["flags"] == "constant"
    assert not dirty.images[int(row["index"])].any()
    assert all(r["flags"] == "" for r in dirty.manifest if r["path"] != "images/constant.png")


@pytest.mark.parametrize("name", ["colour_rgb.png", "colour_rgba.png", "colour_p.png", "colour_palette.dcm"])
def test_colour_image_is_stored_as_luminance(dirty, name):
    img = dirty.images[int(dirty.by_path[name]["index"])]
    assert img.shape == (SIZE, SIZE)
    expected = np.repeat(np.array(BAND_LUMA, dtype=np.uint8), 16)[None].repeat(64, axis=0)
    assert np.array_equal(img, expected), f"band values {img[0, ::16].tolist()}, expected {BAND_LUMA}"
