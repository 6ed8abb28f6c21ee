"""AugmentConfig: the one description of the two-view augmentation that every loader reads.

Defaults are the seed's table (DESIGN.md, "Contracts"):

| augmentation        | default                                  |
|---------------------|------------------------------------------|
| random resized crop | scale (0.08, 1.0), ratio (3/4, 4/3), to 224 |
| horizontal flip     | p = 0.5                                  |
| brightness/contrast | 0.8 each: factors uniform in [0.2, 1.8]  |
| Gaussian blur       | kernel 23, sigma uniform in (0.1, 2.0), every view (p = 1) |
| Gaussian noise      | std 0.1 on [0, 1] intensities, every view |
| normalize           | the store's measured mean/std (0.518 / 0.254 when absent) |

View groups: the two large views above (`crop_size`, `scale`) come first; `small_views` adds groups of smaller views
(multi-crop, Caron et al. 2020, SwAV Section 3.2: 2 x 224 at scale (0.14, 1) plus 6 x 96 at (0.05, 0.14)), each with
its own count, output size and crop scale range, and the same photometric chain. Every loader then yields a tuple
of view tensors, large ones first, group by group. The default (no small views) is today's pair.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

SEED_MEAN, SEED_STD = 0.518, 0.254


@dataclass(frozen=True)
class ViewGroup:
    """`count` views of `size` px, crops of an area fraction uniform in `scale` (the ratio range is the config's)."""

    count: int
    size: int
    scale: tuple[float, float]

    @classmethod
    def parse(cls, text: str) -> "ViewGroup":
        """'6x96:0.05,0.14' -> ViewGroup(6, 96, (0.05, 0.14))."""
        try:
            count, rest = text.split("x", 1)
            size, scale = rest.split(":", 1)
            lo, hi = (float(v) for v in scale.split(","))
            return cls(int(count), int(size), (lo, hi))
        except ValueError:
            raise ValueError(f"view group {text!r}: write COUNTxSIZE:LO,HI, e.g. 6x96:0.05,0.14") from None


@dataclass(frozen=True)
class AugmentConfig:
    crop_size: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    brightness: float = 0.8
    contrast: float = 0.8
    jitter_p: float = 1.0
    blur_kernel: int = 23
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_p: float = 1.0
    noise_std: float = 0.1
    noise_p: float = 1.0
    mean: float = SEED_MEAN
    std: float = SEED_STD
    small_views: tuple[ViewGroup, ...] = ()

    @property
    def groups(self) -> tuple[ViewGroup, ...]:
        """Every view group, the two large views first."""
        return (ViewGroup(2, self.crop_size, self.scale), *self.small_views)

    @property
    def n_views(self) -> int:
        return sum(g.count for g in self.groups)

    def for_group(self, g: int) -> "AugmentConfig":
        """This config with group g's output size and scale, and no small views: what one group's draws read."""
        group = self.groups[g]
        return replace(self, crop_size=group.size, scale=group.scale, small_views=())

    def __post_init__(self):
        object.__setattr__(self, "small_views", tuple(self.small_views))
        problems = []
        for g in self.small_views:
            if not isinstance(g, ViewGroup) or g.count < 1 or not 8 <= g.size <= self.crop_size or \
                    not 0 < g.scale[0] <= g.scale[1] <= 1:
                problems.append(f"small view group {g} (use ViewGroup(count >= 1, 8 <= size <= crop_size, "
                                "0 < lo <= hi <= 1))")
        if self.crop_size < 8:
            problems.append(f"crop_size={self.crop_size} (use >= 8)")
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            problems.append(f"scale={self.scale} (use 0 < lo <= hi <= 1)")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            problems.append(f"ratio={self.ratio} (use 0 < lo <= hi)")
        if self.blur_kernel < 1 or self.blur_kernel % 2 == 0:
            problems.append(f"blur_kernel={self.blur_kernel} (use an odd number >= 1)")
        if not 0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            problems.append(f"blur_sigma={self.blur_sigma} (use 0 < lo <= hi)")
        if not (0 <= self.brightness < 1 and 0 <= self.contrast < 1):
            problems.append("brightness and contrast must be in [0, 1): factors are drawn from [1-x, 1+x]")
        for name in ("flip_p", "jitter_p", "blur_p", "noise_p"):
            if not 0 <= getattr(self, name) <= 1:
                problems.append(f"{name}={getattr(self, name)} (a probability, use 0..1)")
        if self.noise_std < 0 or not self.std > 0 or not math.isfinite(self.mean):
            problems.append("noise_std must be >= 0, std > 0 and mean finite")
        if problems:
            raise ValueError("invalid AugmentConfig: " + "; ".join(problems))

    @classmethod
    def for_store(cls, store, **overrides) -> "AugmentConfig":
        """The defaults with the store's measured mean/std (the seed's constants when the store has none)."""
        mean, std = store.meta.get("mean"), store.meta.get("std")
        stats = {}
        if isinstance(mean, (int, float)) and isinstance(std, (int, float)) and std > 0 and math.isfinite(mean):
            stats = {"mean": float(mean), "std": float(std)}
        return cls(**{**stats, **overrides})

