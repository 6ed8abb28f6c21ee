"""preprocess on real radiographs (../shared/data/real): gray levels of a 16-bit scan, DICOM vs PNG, JPEG vs the seed.

One store is built from the whole folder (8 Kermany JPEGs, the RG1 chest as a 16-bit PNG and as MONOCHROME1
DICOM) at the default 256 px, with two workers, and every check reads it.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image

from preprocess.__main__ import main

SIZE = 256


def seed_recipe(img: Image.Image, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """The seed's recipe: float min-max to [0, 1] -> (x*255).astype(uint8) -> Lanczos resize in uint8.

    Returns (the 8-bit image it resizes, the resized result)."""
    x = np.asarray(img).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a constant image: 0/0, as in the seed
        x = (x - x.min()) / (x.max() - x.min())
        quantized = np.nan_to_num(x * 255).astype(np.uint8)
    return quantized, np.asarray(Image.fromarray(quantized).resize((size, size), Image.Resampling.LANCZOS))


@pytest.fixture(scope="module")
def real_store(tmp_path_factory, real_data, read_store):
    real = real_data
    out = tmp_path_factory.mktemp("real") / "store"
    assert main([str(real), "--out", str(out), "--workers", "2", "--no-progress"]) == 0
    s = read_store(out)
    s.by_path = {row["path"]: s.images[int(row["index"])] for row in s.manifest}
    s.real = real
    return s


def test_real_folder_is_stored_whole(real_store):
    assert real_store.rejects == []
    assert real_store.images.shape == (10, SIZE, SIZE) and real_store.images.dtype == np.uint8
    assert set(real_store.by_path) == {"rg1_chest_pa_16bit.png", "rg1_chest_pa_cr.dcm"} | {
        f"kermany/{p.name}" for p in (real_store.real / "kermany").glob("*.jpeg")}


def test_16bit_png_keeps_gray_levels_that_8bit_first_routes_lose(real_store):
    png = real_store.real / "rg1_chest_pa_16bit.png"
    ours = real_store.by_path["rg1_chest_pa_16bit.png"]
    ours_levels = len(np.unique(ours))
    assert ours_levels >= 250, f"only {ours_levels} gray levels stored from a 25,084-level scan"

    with Image.open(png) as img:
        assert img.mode == "I;16"
        raw = np.asarray(img)
        via_convert_l = img.convert("L")  # this Pillow clips I;16 to 255 (older ones divided by 256)
    via_div256 = Image.fromarray((raw // 256).astype(np.uint8))
    # The 8-bit-first routes lose their levels when they quantize, before the resize (which only blends the
    # survivors): count the levels of the 8-bit image each route resizes.
    levels_l = len(np.unique(seed_recipe(via_convert_l)[0]))
    levels_256 = len(np.unique(seed_recipe(via_div256)[0]))
    print(f"gray levels: ours {ours_levels}; convert('L') first {levels_l}; //256 first {levels_256}")
    assert levels_l <= 2, f"convert('L') route kept {levels_l} levels"  # clipped: one flat image
    assert levels_256 <= ours_levels // 2, f"//256 route kept {levels_256} levels"  # 101 here
    # the same levels through our normalization, before its only rounding: all 256 survive
    from preprocess.decode import decode
    from preprocess.pixels import normalize
    x, constant = normalize(decode(png))
    assert not constant and len(np.unique(np.rint(x))) == 256


def test_dicom_monochrome1_matches_the_16bit_png(real_store):
    import pydicom
    ds = pydicom.dcmread(real_store.real / "rg1_chest_pa_cr.dcm", stop_before_pixels=True)
    assert ds.PhotometricInterpretation == "MONOCHROME1"  # so the inversion is exercised
    dcm = real_store.by_path["rg1_chest_pa_cr.dcm"].astype(np.float64)
    png = real_store.by_path["rg1_chest_pa_16bit.png"].astype(np.float64)
    mad = np.abs(dcm - png).mean()
    assert mad <= 1.0, f"DICOM and PNG of the same image differ by {mad:.3f} gray levels on average"
    assert np.corrcoef(dcm.ravel(), png.ravel())[0, 1] > 0.99  # not inverted against each other


def test_kermany_jpegs_match_the_seed_recipe(real_store):
    jpegs = sorted((real_store.real / "kermany").glob("*.jpeg"))
    assert len(jpegs) == 8
    for path in jpegs:
        with Image.open(path) as img:
            assert img.mode == "L"
            _, seed = seed_recipe(img)
        ours = real_store.by_path[f"kermany/{path.name}"]
        mad = np.abs(ours.astype(np.float64) - seed).mean()
        assert mad <= 1.0, f"{path.name}: {mad:.3f} gray levels from the seed's recipe"
