"""The encoder (a torchvision ResNet with a 1-channel stem) and the MLP heads the SSL methods put on top of it.

The backbone is a plain torchvision ResNet: ``conv1`` takes one channel (chest X-rays are grayscale) and ``fc`` is
``nn.Identity()``, so ``backbone(x)`` returns the pooled features. Its ``state_dict`` therefore loads, strictly,
into a fresh ``torchvision.models.resnet50()`` given the same two replacements; nothing project-specific is
needed to reuse the pretrained weights downstream (see :func:`build_backbone`).
"""

from __future__ import annotations

from typing import Callable

from torch import nn
from torchvision import models

# arch name -> (torchvision constructor, feature dimension after global average pooling)
BACKBONES: dict[str, tuple[Callable[..., nn.Module], int]] = {
    "resnet18": (models.resnet18, 512),
    "resnet34": (models.resnet34, 512),
    "resnet50": (models.resnet50, 2048),
    "resnet101": (models.resnet101, 2048),
}


def grayscale_stem() -> nn.Conv2d:
    """The 1-channel replacement for torchvision's ``conv1``: same geometry (7x7, stride 2, 64 filters)."""
    return nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)


def build_backbone(arch: str = "resnet50") -> tuple[nn.Module, int]:
    """A randomly initialised torchvision ResNet for 1-channel inputs, without its classifier.

    Args:
        arch: one of ``BACKBONES`` (resnet18, resnet34, resnet50, resnet101).

    Returns:
        ``(model, feature_dim)``. ``model(x)`` maps x: (B, 1, H, W) to features (B, feature_dim);
        feature_dim is 2048 for resnet50/101 and 512 for resnet18/34.

    To reuse the weights elsewhere::

        net = torchvision.models.resnet50()
        net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        net.fc = nn.Identity()
        net.load_state_dict(backbone.state_dict())  # strict: no missing or unexpected keys
    """
    if arch not in BACKBONES:
        raise ValueError(f"unknown arch {arch!r}; choose one of: {', '.join(sorted(BACKBONES))}")
    constructor, feature_dim = BACKBONES[arch]
    model = constructor(weights=None)
    model.conv1 = grayscale_stem()
    # torchvision initialises conv1 with kaiming_normal_(fan_out, relu); do the same for the new stem.
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.fc = nn.Identity()
    return model, feature_dim


def mlp(in_dim: int, hidden_dim: int, out_dim: int, *, layers: int = 2, last_bn: bool = False) -> nn.Sequential:
    """``layers`` Linear layers: (Linear-BN-ReLU) x (layers - 1), then Linear, then BN if ``last_bn``.

    Shapes: (B, in_dim) -> (B, out_dim). A Linear followed by BatchNorm has no bias (the BN shift replaces it),
    as in SimCLR's projection head; the last Linear keeps its bias unless ``last_bn``.
    Examples: SimCLR ``mlp(2048, 2048, 128, last_bn=True)``; BYOL ``mlp(2048, 4096, 256)``;
    VICReg ``mlp(2048, 8192, 8192, layers=3)``.
    """
    if layers < 1:
        raise ValueError(f"layers must be >= 1 (the number of Linear layers), got {layers}")
    for name, dim in (("in_dim", in_dim), ("hidden_dim", hidden_dim), ("out_dim", out_dim)):
        if dim < 1:
            raise ValueError(f"{name} must be a positive integer, got {dim}")
    modules: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers - 1):
        modules += [nn.Linear(dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
        dim = hidden_dim
    modules.append(nn.Linear(dim, out_dim, bias=not last_bn))
    if last_bn:
        modules.append(nn.BatchNorm1d(out_dim))
    return nn.Sequential(*modules)
