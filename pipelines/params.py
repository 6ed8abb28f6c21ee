"""Per-view random augmentation parameters, drawn in NumPy from one key, for the DALI and OpenCV loaders.

Drawing the parameters here (and handing them to DALI as per-sample argument inputs) rather than inside DALI's
random operators means: the CPU and GPU backends of DALI and the OpenCV loader draw from the same distributions in
the same code; a run is repeatable from (seed, rank, epoch, batch); and a resumed run redraws exactly the same
augmentations (DALI's own RNG state cannot be saved in a checkpoint).

The distributions are torchvision's, as in the seed: RandomResizedCrop.get_params (uniform area fraction, log-uniform
aspect ratio, 10 attempts, then a centre crop clamped to the ratio range), flip with p, ColorJitter factors uniform
in [1-x, 1+x] and
brightness before contrast with p = 1/2 (ColorJitter's random order), GaussianBlur sigma uniform in the range.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipelines.config import AugmentConfig

NO_BLUR_SIGMA = 1e-6  # a window of this sigma is the identity: how "blur not applied" is expressed per sample
ATTEMPTS = 10
TRUNCATE = 4.0  # blur windows end at 4 sigma (scipy's default): the mass beyond is 6e-5, far below a gray level


@dataclass
class ViewParams:
    """Parameters of n views. crop: (n, 4) int (top, left, height, width) in source pixels."""

    crop: np.ndarray
    flip: np.ndarray        # (n,) bool
    brightness: np.ndarray  # (n,) float32 factor (1 = unchanged)
    contrast: np.ndarray    # (n,) float32 factor (1 = unchanged)
    sigma: np.ndarray       # (n,) float32 blur sigma (NO_BLUR_SIGMA = no blur)
    window: np.ndarray      # (n,) int32 odd blur window: the config's kernel, cut at 4 sigma (1 = no blur)
    noise: np.ndarray       # (n,) float32: noise std on [0, 1] intensities for this view (0 = none)
    brightness_first: np.ndarray  # (n,) bool: ColorJitter's order for this view (torchvision permutes its steps)

    def roi(self) -> tuple[np.ndarray, np.ndarray]:
        """DALI resize ROI (start, end) in (y, x) float32; end < start in x flips the view horizontally."""
        top, left, h, w = (self.crop[:, k].astype(np.float32) for k in range(4))
        x0 = np.where(self.flip, left + w, left)
        x1 = np.where(self.flip, left, left + w)
        return np.stack([top, x0], 1), np.stack([top + h, x1], 1)


def crop_windows(rng: np.random.Generator, n: int, height: int, width: int, scale, ratio) -> np.ndarray:
    """torchvision RandomResizedCrop.get_params for n views at once: (n, 4) int (top, left, h, w)."""
    area = height * width
    target = area * rng.uniform(scale[0], scale[1], (n, ATTEMPTS))
    aspect = np.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]), (n, ATTEMPTS)))
    w = np.rint(np.sqrt(target * aspect)).astype(np.int64)
    h = np.rint(np.sqrt(target / aspect)).astype(np.int64)
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = ok.argmax(1)
    rows = np.arange(n)
    h, w, found = h[rows, first], w[rows, first], ok[rows, first]
    # fallback (no attempt fitted): the largest centred crop within the ratio range, as torchvision
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fh, fw = height, int(round(height * max(ratio)))
    else:
        fw, fh = width, height
    h, w = np.where(found, h, fh), np.where(found, w, fw)
    top = np.floor(rng.random(n) * (height - h + 1)).astype(np.int64)
    left = np.floor(rng.random(n) * (width - w + 1)).astype(np.int64)
    top, left = np.where(found, top, (height - h) // 2), np.where(found, left, (width - w) // 2)
    return np.stack([top, left, h, w], 1)


def draw(config: AugmentConfig, seed: int, n: int, height: int, width: int) -> ViewParams:
    """Parameters for n views of (height, width) sources, a pure function of `seed`."""
    rng = np.random.default_rng(seed)
    c = config

    crop = crop_windows(rng, n, height, width, c.scale, c.ratio)
    flip = rng.random(n) < c.flip_p
    brightness = rng.uniform(max(0.0, 1 - c.brightness), 1 + c.brightness, n)
    contrast = rng.uniform(max(0.0, 1 - c.contrast), 1 + c.contrast, n)
    jitter = rng.random(n) < c.jitter_p  # one coin for the whole ColorJitter, as RandomApply(ColorJitter)
    brightness = np.where(jitter, brightness, 1.0).astype(np.float32)
    contrast = np.where(jitter, contrast, 1.0).astype(np.float32)
    sigma = rng.uniform(c.blur_sigma[0], c.blur_sigma[1], n)
    sigma = np.where(rng.random(n) < c.blur_p, sigma, NO_BLUR_SIGMA).astype(np.float32)
    noise = np.where(rng.random(n) < c.noise_p, c.noise_std, 0.0).astype(np.float32)
    brightness_first = rng.random(n) < 0.5  # drawn last: the draws above are those of the earlier releases
    return ViewParams(crop=crop, flip=flip, brightness=brightness, contrast=contrast, sigma=sigma,
                      window=blur_window(sigma, c.blur_kernel), noise=noise, brightness_first=brightness_first)


def draw_groups(config: AugmentConfig, key_of, b: int, height: int, width: int) -> list[ViewParams]:
    """Parameters of every view group of a batch of b images: group g's count * b views (view k of image i at
    k * b + i). `key_of(*extra)` is the batch's key with `extra` appended: group 0 (the large views) draws from
    key_of() as before groups existed, group g > 0 from key_of(2, g), with its own size and scale."""
    return [draw(config.for_group(g), key_of(2, g) if g else key_of(), group.count * b, height, width)
            for g, group in enumerate(config.groups)]


def blur_window(sigma: np.ndarray, kernel: int) -> np.ndarray:
    """The blur window per view: the configured kernel (the seed's 23 taps), or fewer where the Gaussian is already
    zero to 6e-5 of its mass (beyond 4 sigma). Same result, up to rounding, for a fraction of the work:
    sigma 1 needs 9 taps, not 23."""
    return np.minimum(kernel, 2 * np.ceil(TRUNCATE * sigma).astype(np.int32) + 1).astype(np.int32)
