"""The float end of the DALI and OpenCV loaders: jitter, noise, normalize, in one place for every such loader.

Input: uint8 views (V, 1, H, W) that were cropped, flipped and blurred (in uint8, by DALI or OpenCV). Here, in
float32:
  - ColorJitter as torchvision defines it: contrast blends with the view's own mean (c*x + (1-c)*mean), brightness
    scales (b*x), then clamp to [0, 1]. Both are linear, so they commute with each other and with the blur the seed
    applies after them; only the clamp's position differs from the seed's order.
  - Gaussian noise of the view's std on [0, 1] intensities, in float (noise on uint8 would quantize it), from a
    generator seeded by the batch key, so a resumed run redraws the same noise. Not clamped, as the seed.
  - Normalize with the config's mean/std.
On a GPU this is batched torch (`finish_torch`). On a CPU it is OpenCV per view (`finish_cpu`, `finish_view`),
2-4x less CPU time than the same maths in batched torch: each view stays in cache, and OpenCV's Gaussian
generator is the fastest here. The opencv loader calls `finish_view` with the blur folded in.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

from pipelines.config import AugmentConfig
from pipelines.params import ViewParams


def _per_view(values, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.float32).view(-1, 1, 1, 1).to(device, non_blocking=True)


def affine(brightness, contrast, mean, config: AugmentConfig):
    """Jitter and normalization as one map per view, on 0..255 values: normalized = clamp(x * scale + offset, lo, hi).

    b * (c * x + (1 - c) * mean) / 255, then (. - m) / sd; the clamp to [0, 1] intensities, in normalized units.
    Elementwise, so it takes NumPy arrays or torch tensors (per-view factors, per-view mean of the 0..255 view).
    """
    m, sd = config.mean, config.std
    scale = brightness * contrast / (255 * sd)
    offset = (brightness * (1 - contrast) * mean / 255 - m) / sd
    return scale, offset, -m / sd, (1 - m) / sd


def finish(views: torch.Tensor, params: ViewParams, config: AugmentConfig, seed: int) -> torch.Tensor:
    """uint8 (V, 1, H, W) -> normalized float32 (V, 1, H, W) on the same device: OpenCV per view on a CPU, batched
    torch elsewhere. The noise is seeded by `seed` either way (a different generator on each)."""
    if views.device.type == "cpu":
        return finish_cpu(views, params, config, seed)
    return finish_torch(views, params, config, seed)


def finish_torch(views: torch.Tensor, params: ViewParams, config: AugmentConfig, seed: int) -> torch.Tensor:
    """Batched: four passes over the views plus the noise, x = clamp(x * scale + offset, lo, hi) + noise * s."""
    device = views.device
    x = views.to(torch.float32)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)  # the view's mean, 0..255, for the contrast blend
    b, c = _per_view(params.brightness, device), _per_view(params.contrast, device)
    scale, offset, lo, hi = affine(b, c, mean, config)
    x = x.mul_(scale).add_(offset).clamp_(lo, hi)
    if config.noise_std > 0 and config.noise_p > 0:
        gen = torch.Generator(device=device)
        gen.manual_seed(seed)
        noise = torch.randn(x.shape, generator=gen, device=device, dtype=torch.float32)
        x = x.addcmul_(noise, _per_view(params.noise / config.std, device))
    return x


def finish_cpu(views: torch.Tensor, params: ViewParams, config: AugmentConfig, seed: int) -> torch.Tensor:
    """Per view, while it is in cache: one lookup table (jitter, normalize and clamp) and OpenCV's Gaussian
    generator, the fastest here (79 us per 224 px view against 124 for torch.randn)."""
    out = torch.empty(views.shape, dtype=torch.float32)
    u8, f32 = views.numpy()[:, 0], out.numpy()[:, 0]
    noise = np.empty(u8.shape[1:], np.float32)
    cv2.setRNGSeed(seed % 2**31)
    for v in range(len(u8)):
        finish_view(u8[v], params, v, config, f32[v], noise)
    return out


def finish_view(view: np.ndarray, p: ViewParams, v: int, config: AugmentConfig, out: np.ndarray,
                noise: np.ndarray, kernel: np.ndarray | None = None) -> None:
    """View v (H, W) uint8 -> normalized float32 into `out`, noise drawn from OpenCV's generator (seeded by the
    caller). With `kernel`, the blur is done here too, from uint8 straight to float: one separable filter with the
    jitter and normalization folded in (kernel scaled, offset as the filter's delta), then the clamp."""
    scale, offset, lo, hi = affine(float(p.brightness[v]), float(p.contrast[v]), cv2.mean(view)[0], config)
    if kernel is not None:
        cv2.sepFilter2D(view, cv2.CV_32F, kernel * scale, kernel, dst=out, delta=offset,
                        borderType=cv2.BORDER_REFLECT_101)
        np.clip(out, lo, hi, out=out)
    else:
        lut = np.clip(np.arange(256, dtype=np.float32) * scale + offset, lo, hi).astype(np.float32)
        cv2.LUT(view, lut, dst=out)
    if p.noise[v] > 0:
        cv2.randn(noise, 0.0, float(p.noise[v]) / config.std)
        cv2.add(out, noise, dst=out)
