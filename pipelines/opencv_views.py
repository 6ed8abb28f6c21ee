"""The opencv loader's work for one batch, in a DataLoader worker: the same parameter draws as the DALI loader
(`pipelines.params`), written for speed on one core.

Per view, everything stays in a few cache-sized buffers:
  - the crop window resized to the crop size in uint8 (INTER_AREA when shrinking, as torchvision's antialias;
    bilinear when enlarging), then flipped (a flip commutes with the symmetric blur);
  - `float_views` (CPU training device): the blur as one separable filter from uint8 straight to float32, with the
    jitter and normalization folded into it (kernel scaled, offset as the filter's delta; `photometric.affine`),
    then the clamp and Gaussian noise from OpenCV's generator, seeded per batch. Same distributions as
    `photometric.finish`, with the blur kept in float rather than rounded to uint8.
  - `uint8_views` (GPU training device): the blur in uint8, the float end left to `photometric.finish` on the GPU.
OpenCV's `GaussianBlur` on uint8 is its bit-exact fixed-point path, 3-4x slower here than `sepFilter2D`.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

from pipelines.config import AugmentConfig
from pipelines.params import ViewParams
from pipelines.photometric import finish_view


def _crop_resize_flip(src: np.ndarray, p: ViewParams, v: int, c: int, tmp: np.ndarray, out: np.ndarray) -> None:
    top, left, h, w = (int(k) for k in p.crop[v])
    interp = cv2.INTER_AREA if h > c and w > c else cv2.INTER_LINEAR
    if p.flip[v]:
        cv2.resize(src[top:top + h, left:left + w], (c, c), dst=tmp, interpolation=interp)
        cv2.flip(tmp, 1, dst=out)
    else:
        cv2.resize(src[top:top + h, left:left + w], (c, c), dst=out, interpolation=interp)


def _kernel(p: ViewParams, v: int) -> np.ndarray | None:
    w = int(p.window[v])
    return cv2.getGaussianKernel(w, float(p.sigma[v]), cv2.CV_32F) if w > 1 else None


def uint8_views(src: np.ndarray, p: ViewParams, c: int) -> np.ndarray:
    """(B, S, S) uint8 sources, kB views' params -> (kB, c, c) uint8 views: crop, resize, flip, blur."""
    b, n = len(src), len(p.flip)
    out = np.empty((n, c, c), dtype=np.uint8)
    tmp, view = np.empty((c, c), np.uint8), np.empty((c, c), np.uint8)
    for v in range(n):
        k = _kernel(p, v)
        _crop_resize_flip(src[v % b], p, v, c, tmp, view if k is not None else out[v])
        if k is not None:
            cv2.sepFilter2D(view, -1, k, k, dst=out[v], borderType=cv2.BORDER_REFLECT_101)
    return out


def float_views(src: np.ndarray, p: ViewParams, config: AugmentConfig, seed: int, out: np.ndarray) -> None:
    """(B, S, S) uint8 sources -> normalized float32 views written into `out` (kB, c, c), c = config.crop_size."""
    b, c = len(src), config.crop_size
    tmp, view = np.empty((c, c), np.uint8), np.empty((c, c), np.uint8)
    noise = np.empty((c, c), np.float32)
    cv2.setRNGSeed(seed % 2**31)
    for v in range(len(p.flip)):
        _crop_resize_flip(src[v % b], p, v, c, tmp, view)
        finish_view(view, p, v, config, out[v], noise, kernel=_kernel(p, v))


def batch(images, slots: np.ndarray, p: ViewParams, config: AugmentConfig, noise_seed: int | None,
          out: torch.Tensor | None = None) -> torch.Tensor:
    """One work item: gather the batch from the memmap, then (kB, 1, c, c) views: normalized float32 written into
    `out` when `noise_seed` is given (finished here), else uint8 in a new tensor. `images` may be the gathered
    (B, S, S) batch itself (then `slots` is None)."""
    src = images if slots is None else images[slots]  # one gather of the whole batch
    if noise_seed is None:
        return torch.from_numpy(uint8_views(src, p, config.crop_size)).unsqueeze(1)
    float_views(src, p, config, noise_seed, out.numpy()[:, 0])
    return out
