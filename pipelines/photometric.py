"""The float end of the DALI and OpenCV loaders, in torch on the training device: jitter, noise, normalize.

Input: uint8 views (V, 1, H, W) that were cropped, flipped and blurred (in uint8, by DALI or OpenCV). Here, in
float32 and in one place for every such loader:
  - ColorJitter as torchvision defines it: contrast blends with the view's own mean (c*x + (1-c)*mean), brightness
    scales (b*x), then clamp to [0, 1]. Both are linear, so they commute with each other and with the blur the seed
    applies after them; only the clamp's position differs from the seed's order.
  - Gaussian noise of the view's std on [0, 1] intensities, in float (noise on uint8 would quantize it), from a
    torch generator seeded by the batch key, so a resumed run redraws the same noise. Not clamped, as the seed.
  - Normalize with the config's mean/std.
"""
from __future__ import annotations

import torch

from pipelines.config import AugmentConfig
from pipelines.params import ViewParams


def _per_view(values, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.float32).view(-1, 1, 1, 1).to(device, non_blocking=True)


def finish(views: torch.Tensor, params: ViewParams, config: AugmentConfig, seed: int) -> torch.Tensor:
    """uint8 (V, 1, H, W) -> normalized float32 (V, 1, H, W) on the same device."""
    device = views.device
    x = views.to(torch.float32).mul_(1 / 255)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = x.sub_(mean).mul_(_per_view(params.contrast, device)).add_(mean)
    x = x.mul_(_per_view(params.brightness, device)).clamp_(0.0, 1.0)
    if config.noise_std > 0 and config.noise_p > 0:
        gen = torch.Generator(device=device)
        gen.manual_seed(seed)
        noise = torch.randn(x.shape, generator=gen, device=device, dtype=torch.float32)
        x = x.add_(noise.mul_(_per_view(params.noise, device)))
    return x.sub_(config.mean).div_(config.std)
