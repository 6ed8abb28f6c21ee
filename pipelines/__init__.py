"""Augmented views over the store (two large ones, plus any multi-crop groups): DALI (GPU or CPU backend), the seed's
torchvision chain, an OpenCV chain."""
from pipelines.config import AugmentConfig, ViewGroup
from pipelines.factory import KINDS, best_kind, build_loader
from pipelines.sampler import EpochSampler
from pipelines.subset import Subset

__all__ = ["AugmentConfig", "ViewGroup", "EpochSampler", "KINDS", "Subset", "best_kind", "build_loader"]
