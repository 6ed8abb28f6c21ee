"""The pixel recipe: raw float32 values -> per-image normalization -> Lanczos resize in float -> one rounding to uint8.

Normalizing on the raw values before quantizing keeps every gray level a 12-bit scan has (PIL's `convert("L")` on a
16-bit PNG divides by 256 first and keeps a few dozen). The resize runs in PIL mode `F` (float32), so the only
rounding in the whole recipe is the last line of `to_uint8`.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

NORMALIZE = ("minmax", "percentile")
FIT = ("stretch", "pad", "crop")
PERCENTILES = (0.5, 99.5)


def normalize(x: np.ndarray, method: str = "minmax") -> tuple[np.ndarray, bool]:
    """Map raw values to [0, 255] float32 per image. Returns (image, constant); a constant image becomes zeros."""
    if method == "minmax":
        lo, hi = float(x.min()), float(x.max())
    elif method == "percentile":
        lo, hi = (float(v) for v in np.percentile(x, PERCENTILES))
    else:
        raise ValueError(f"unknown normalization {method!r}: choose one of {', '.join(NORMALIZE)}")
    if hi <= lo:
        return np.zeros_like(x, dtype=np.float32), True
    y = (x - np.float32(lo)) * np.float32(255.0 / (hi - lo))
    if method == "percentile":
        np.clip(y, 0.0, 255.0, out=y)
    return y.astype(np.float32, copy=False), False


def resize(x: np.ndarray, size: int, fit: str = "stretch") -> np.ndarray:
    """Lanczos-resize a float32 (H, W) image to (size, size).

    stretch: ignore the aspect ratio (the seed's behaviour); crop: centre square crop, then resize;
    pad: fit the longer side and pad the rest with zeros (black), centred.
    """
    if fit not in FIT:
        raise ValueError(f"unknown fit {fit!r}: choose one of {', '.join(FIT)}")
    h, w = x.shape
    img = Image.fromarray(np.ascontiguousarray(x, dtype=np.float32))
    if fit == "stretch":
        return np.asarray(img.resize((size, size), Image.Resampling.LANCZOS))
    if fit == "crop":
        s = min(h, w)
        left, top = (w - s) / 2, (h - s) / 2
        box = (left, top, left + s, top + s)
        return np.asarray(img.resize((size, size), Image.Resampling.LANCZOS, box=box))
    scale = size / max(h, w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    out = np.zeros((size, size), dtype=np.float32)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top:top + nh, left:left + nw] = np.asarray(img.resize((nw, nh), Image.Resampling.LANCZOS))
    return out


def to_uint8(raw: np.ndarray, size: int = 256, *, normalize_method: str = "minmax",
             fit: str = "stretch") -> tuple[np.ndarray, bool]:
    """The whole recipe for one decoded image: returns (uint8 (size, size), constant flag)."""
    x, constant = normalize(raw, normalize_method)
    if constant:
        return np.zeros((size, size), dtype=np.uint8), True
    y = resize(x, size, fit)
    return np.clip(np.rint(y), 0, 255).astype(np.uint8), False
