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
    """uint8 (V, 1, H, W) -> normalized float32 (V, 1, H, W) on the same device.

    Jitter and normalization are one per-view affine map (then the clamp, in normalized units), so the whole float
    end is four passes over the views plus the noise: x = clamp(x * a + o) + noise * s.
    """
    device, m, sd = views.device, config.mean, config.std
    x = views.to(torch.float32)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)  # the view's mean, 0..255, for the contrast blend
    b, c = _per_view(params.brightness, device), _per_view(params.contrast, device)
    # b * (c * x + (1 - c) * mean) / 255, then (. - m) / sd
    x = x.mul_(b * c / (255 * sd)).add_((b * (1 - c) * mean / 255 - m) / sd)
    x = x.clamp_(-m / sd, (1 - m) / sd)
    if config.noise_std > 0 and config.noise_p > 0:
        gen = torch.Generator(device=device)
        gen.manual_seed(seed)
        noise = torch.randn(x.shape, generator=gen, device=device, dtype=torch.float32)
        x = x.addcmul_(noise, _per_view(params.noise / sd, device))
    return x
