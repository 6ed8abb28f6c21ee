"""The pixel recipe: raw float32 values -> per-image normalization -> Lanczos resize in float -> one rounding to uint8.

Normalizing on the raw values before quantizing keeps every gray level a 12-bit scan has (PIL's `convert("L")` on a
16-bit PNG clips to 255 in current Pillow, or divides by 256 in older ones, and keeps a few dozen levels at best).
The resize runs in PIL mode `F` (float32), so the only rounding in the whole recipe is the last line of `to_uint8`.

Min-max normalization is affine and Lanczos weights sum to one, so `to_uint8` resizes the raw values first and maps
the small result: the same image (up to float32 rounding) for a fraction of the full-resolution work. Percentile
normalization clips, which does not commute with the resize, so it clips the full image first.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

NORMALIZE = ("minmax", "percentile")
FIT = ("stretch", "pad", "crop")
PERCENTILES = (0.5, 99.5)


def value_range(x: np.ndarray | Image.Image, method: str = "minmax") -> tuple[float, float]:
    """(lo, hi) of the raw values that map to 0 and 255."""
    if method == "minmax":
        if isinstance(x, Image.Image):
            return tuple(float(v) for v in x.getextrema())
        return float(x.min()), float(x.max())
    if method == "percentile":
        lo, hi = np.percentile(np.asarray(x), PERCENTILES)
        return float(lo), float(hi)
    raise ValueError(f"unknown normalization {method!r}: choose one of {', '.join(NORMALIZE)}")


def normalize(x: np.ndarray, method: str = "minmax") -> tuple[np.ndarray, bool]:
    """Map raw values to [0, 255] float32 per image. Returns (image, constant); a constant image becomes zeros."""
    lo, hi = value_range(x, method)
    if hi <= lo:
        return np.zeros(np.shape(x), dtype=np.float32), True
    y = np.subtract(x, np.float32(lo), dtype=np.float32)
    y *= np.float32(255.0 / (hi - lo))
    if method == "percentile":
        np.clip(y, 0.0, 255.0, out=y)
    return y, False


def resize(x: np.ndarray | Image.Image, size: int, fit: str = "stretch", *, fill: float = 0.0) -> np.ndarray:
    """Lanczos-resize a float32 (H, W) image (an array or a PIL 'F' image) to a (size, size) float32 array.

    stretch: ignore the aspect ratio (the seed's behaviour); crop: centre square crop, then resize;
    pad: fit the longer side and pad the rest with `fill` (0 = black once normalized), centred.
    """
    if fit not in FIT:
        raise ValueError(f"unknown fit {fit!r}: choose one of {', '.join(FIT)}")
    img = x if isinstance(x, Image.Image) else Image.fromarray(np.ascontiguousarray(x, dtype=np.float32))
    w, h = img.size
    if fit == "stretch":
        return np.asarray(img.resize((size, size), Image.Resampling.LANCZOS))
    if fit == "crop":
        s = min(h, w)
        left, top = (w - s) / 2, (h - s) / 2
        box = (left, top, left + s, top + s)
        return np.asarray(img.resize((size, size), Image.Resampling.LANCZOS, box=box))
    scale = size / max(h, w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    out = np.full((size, size), fill, dtype=np.float32)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top:top + nh, left:left + nw] = np.asarray(img.resize((nw, nh), Image.Resampling.LANCZOS))
    return out


def to_uint8(raw: np.ndarray | Image.Image, size: int = 256, *, normalize_method: str = "minmax",
             fit: str = "stretch") -> tuple[np.ndarray, bool]:
    """The whole recipe for one decoded image (array or PIL 'F' image): returns (uint8 (size, size), constant)."""
    if normalize_method == "percentile":  # clip at full resolution, then resize
        x, constant = normalize(np.asarray(raw, dtype=np.float32), normalize_method)
        y = None if constant else resize(x, size, fit)
    else:  # affine: resize the raw values, then map the (size, size) result
        lo, hi = value_range(raw, normalize_method)
        constant = hi <= lo
        y = None if constant else resize(raw, size, fit, fill=lo)
        if y is not None:
            y = (y - np.float32(lo)) * np.float32(255.0 / (hi - lo))
    if constant:
        return np.zeros((size, size), dtype=np.uint8), True
    return np.clip(np.rint(y), 0, 255).astype(np.uint8), False
