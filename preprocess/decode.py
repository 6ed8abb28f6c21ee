"""Decode one input file (PNG 8/16-bit, JPEG, DICOM) to float32 raw stored values: a PIL 'F' image or an array.

Nothing is normalized or quantized here: a 16-bit PadChest scan that uses 4,200..18,500 comes back as exactly those
values, so the normalization in `preprocess.pixels` sees every gray level. Colour images become luminance
(ITU-R 601 weights, computed in float), alpha is ignored, a palette is expanded first. DICOM goes through pydicom:
RescaleSlope/Intercept are applied, MONOCHROME1 (white = low value) is inverted to MONOCHROME2 and PALETTE COLOR
goes through its lookup table to luminance.

A file is read from its path, or from bytes already in memory (an archive member: `data=`), never written to disk.
Decompression bombs are refused before any pixel is decoded: PIL's own limit (`Image.MAX_IMAGE_PIXELS`) for PNG
and JPEG; for DICOM the same limit on Rows x Columns x frames, and a deflated DICOM whose dataset would inflate past
`DICOM_MAX_BYTES` is refused after counting its inflated size in a bounded buffer (pydicom inflates it whole).

Anything that cannot be used raises `Rejected` with a one-line reason for `rejects.csv`; callers never see a raw
PIL or pydicom exception.
"""
from __future__ import annotations

import io
import logging
import os
import re
import stat
import warnings
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
DICOM_SUFFIXES = {".dcm", ".dicom"}
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
DEFLATED_DICOM = "1.2.840.10008.1.2.1.99"
INFLATE_STEP = 1 << 20


def dicom_max_bytes() -> int:
    """The most a deflated DICOM dataset may inflate to: PIL's pixel limit at 4 bytes a pixel, plus 16 MiB."""
    return int(Image.MAX_IMAGE_PIXELS or 1 << 40) * 4 + (16 << 20)


class Rejected(Exception):
    """An input that cannot be stored; `str(exc)` is the reason written to rejects.csv."""


def sniff(head: bytes, path: Path) -> str:
    """The format from the first 132 bytes of the file ('png', 'jpeg', 'dicom'), never from the name alone."""
    if head.startswith(PNG_MAGIC):
        return "png"
    if head.startswith(JPEG_MAGIC):
        return "jpeg"
    if head[128:132] == b"DICM" or path.suffix.lower() in DICOM_SUFFIXES:
        return "dicom"
    return "unknown"


def decode_image(path: str | Path, *, min_side: int = 32, data: bytes | None = None) -> Image.Image:
    """Decode `path` (or `data`, the bytes of a file named `path`) to a PIL image of mode 'F' (float32) holding the
    stored values; raise `Rejected` otherwise.

    PIL's own float image, so the resize in `preprocess.pixels` reads it without a NumPy round trip."""
    path = Path(path)
    if data is None:
        try:
            if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block open(); a device never ends
                raise Rejected("not a regular file")
            with open(path, "rb") as f:
                head = f.read(132)
        except OSError as e:
            raise Rejected(f"unreadable: {e.strerror or e}") from None
        source = path
    else:
        head, source = data[:132], io.BytesIO(data)
    if not head:
        raise Rejected("empty file")
    kind = sniff(head, path)
    if kind == "unknown":
        raise Rejected("unsupported file type: content is not PNG, JPEG or DICOM")
    img = _decode_dicom(source, head) if kind == "dicom" else _decode_pil(source, kind)
    if min(img.size) < min_side:
        raise Rejected(f"image too small: {img.width}x{img.height} (minimum side {min_side})")
    return img


def decode(path: str | Path, *, min_side: int = 32, data: bytes | None = None) -> np.ndarray:
    """Decode `path` (or `data`) to float32 (H, W) holding the stored values; raise `Rejected` otherwise."""
    return np.array(decode_image(path, min_side=min_side, data=data), dtype=np.float32)


def _one_line(e: Exception, limit: int = 300) -> str:
    """An exception as one line for rejects.csv: whitespace collapsed, object addresses dropped, capped."""
    text = re.sub(r" at 0x[0-9a-fA-F]+", "", " ".join(str(e).split())) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _decode_pil(path, kind: str) -> Image.Image:
    fmt = {"png": ["PNG"], "jpeg": ["JPEG"]}[kind]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=fmt) as img:
                img.load()
                return _to_float_image(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise Rejected(f"decompression bomb: more pixels than PIL's limit of {Image.MAX_IMAGE_PIXELS}") from None
    except Rejected:
        raise
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError ... for broken files
        raise Rejected(f"truncated or corrupt {kind.upper()}: {_one_line(e)}") from None


def _to_float_image(img: Image.Image) -> Image.Image:
    """Luminance as a mode 'F' image on the stored scale (0..255 for 8-bit, 0..65535 for 16-bit)."""
    mode = img.mode
    if mode in ("L", "I", "F", "1") or mode.startswith("I;16"):
        return img.convert("F")  # exact: every 8- and 16-bit value is a float32
    if mode in ("LA", "La"):
        return img.getchannel("L").convert("F")
    if mode in ("P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "RGBa"):
        rgb = np.asarray(img.convert("RGB"), dtype=np.float32)
        return Image.fromarray(rgb @ LUMA)
    raise Rejected(f"unsupported PIL image mode {mode!r}")


def _check_inflated_size(source) -> None:
    """Refuse a deflated DICOM whose dataset inflates past `dicom_max_bytes()`, counting in 1 MiB steps."""
    from pydicom.filereader import _read_file_meta_info, read_preamble

    fp = open(source, "rb") if isinstance(source, Path) else source
    try:
        fp.seek(0)
        read_preamble(fp, False)
        meta = _read_file_meta_info(fp)
        if str(meta.get("TransferSyntaxUID", "")) != DEFLATED_DICOM:
            return
        z, total, limit = zlib.decompressobj(-zlib.MAX_WBITS), 0, dicom_max_bytes()
        while block := fp.read(INFLATE_STEP):
            while block:
                total += len(z.decompress(block, INFLATE_STEP))
                block = z.unconsumed_tail
                if total > limit:
                    raise Rejected(f"decompression bomb: deflated DICOM inflates to more than {limit >> 20} MiB")
            if z.eof:
                break
    except Rejected:
        raise
    except Exception:  # not readable this way: let pydicom give the reason
        return
    finally:
        if isinstance(source, Path):
            fp.close()
        else:
            fp.seek(0)


def _decode_dicom(source, head: bytes) -> Image.Image:
    import pydicom  # a few hundred ms to import: only when a DICOM is met
    from pydicom.errors import InvalidDicomError

    _check_inflated_size(source)
    try:
        ds = pydicom.dcmread(source, force=head[128:132] != b"DICM")
    except (InvalidDicomError, Exception) as e:
        raise Rejected(f"not a readable DICOM: {_one_line(e)}") from None
    if "PixelData" not in ds:
        raise Rejected("DICOM has no pixel data")
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    pixels = int(getattr(ds, "Rows", 0) or 0) * int(getattr(ds, "Columns", 0) or 0) * max(frames, 1)
    if Image.MAX_IMAGE_PIXELS and pixels > Image.MAX_IMAGE_PIXELS:
        raise Rejected(f"decompression bomb: {ds.Rows}x{ds.Columns}x{frames} DICOM is more pixels than the "
                       f"limit of {Image.MAX_IMAGE_PIXELS}")
    if frames > 1:
        raise Rejected(f"multi-frame DICOM ({frames} frames) is not supported")
    quiet = logging.getLogger("pydicom")  # it logs each failed decoder with a traceback; the reason is kept below
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    photometric = str(getattr(ds, "PhotometricInterpretation", "")).upper()
    try:
        arr = ds.pixel_array
        if photometric == "PALETTE COLOR":  # stored values are indices into a colour table
            from pydicom.pixels import apply_color_lut
            arr = apply_color_lut(arr, ds)
    except Exception as e:
        tsuid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        syntax = getattr(tsuid, "name", str(tsuid))
        raise Rejected(f"cannot decode DICOM pixel data ({syntax}): {_one_line(e)}") from None
    finally:
        quiet.setLevel(level)
    x = arr.astype(np.float32)
    if x.ndim == 3 and x.shape[-1] in (3, 4):
        x = x[..., :3] @ LUMA
    if photometric != "PALETTE COLOR":  # a palette maps to colours, not to a modality scale
        slope = float(getattr(ds, "RescaleSlope", 1) or 1)
        intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
        x = x * np.float32(slope) + np.float32(intercept)
    if x.ndim != 2:
        raise Rejected(f"unexpected pixel array shape {x.shape}")
    if not np.isfinite(x).all():
        raise Rejected("pixel data holds NaN or infinite values")
    if photometric == "MONOCHROME1":
        x = (x.min() + x.max()) - x  # white = low value: flip within the image's own range
    return Image.fromarray(np.ascontiguousarray(x, dtype=np.float32))
