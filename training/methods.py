"""SSL methods (SimCLR, BYOL, VICReg, multi-crop SimCLR) behind one interface, for the training loop.

Every method is an ``nn.Module`` with:

- ``forward(view1, view2, *small_views) -> loss``: views (B, 1, H, W), as a loader yields them (the two large views
  first, then any small ones: ``AugmentConfig.small_views``); a scalar tensor. SimCLR, BYOL and VICReg use the two
  large views and ignore the rest; multi-crop SimCLR uses them all.
- ``backbone``: the encoder (``training.model.build_backbone``); save ``method.backbone.state_dict()``.
- ``update_target(step, total_steps)``: call after each ``optimizer.step()``; a no-op except for BYOL.
- ``trainable_parameters()``: what the optimizer gets (``training.lars.param_groups_for`` uses it).
- ``recipe``: class attribute, the paper's ResNet50 optimizer recipe (a dict; copy it before changing it).
  ``lr = base_lr * global_batch / 256`` when ``lr_scaling == "linear/256"``.

The two views go through the network in two passes (as BYOL's and VICReg's reference code), so BatchNorm
statistics are per view. Under DDP, convert BatchNorm with ``nn.SyncBatchNorm.convert_sync_batchnorm(method)``
(all three papers use global/synchronised BN), then wrap; reach the interface through ``ddp.module``.
"""

from __future__ import annotations

import copy
import inspect
import math
from typing import Any

import torch
from torch import Tensor, nn

from training.losses import byol_loss, nt_xent_loss, vicreg_loss
from training.model import mlp

# Shared by all three papers: LARS (trust coefficient 1e-3, momentum 0.9, no decay/adaptation for biases and
# norm parameters), lr = base_lr * global_batch / 256, 10 warmup epochs.
_LARS_RECIPE: dict[str, Any] = {
    "optimizer": "lars",
    "lr_scaling": "linear/256",
    "momentum": 0.9,
    "eta": 1e-3,
    "exclude_bias_and_norm": True,
    "warmup_epochs": 10,
}


class SSLMethod(nn.Module):
    """Shared plumbing: no target network, every parameter trainable."""

    recipe: dict[str, Any] = {}
    backbone: nn.Module

    def target_modules(self) -> tuple[nn.Module, ...]:
        """Modules updated by EMA rather than by the optimizer (none by default)."""
        return ()

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters for the optimizer: all of them, less those of ``target_modules()``."""
        frozen = {id(p) for m in self.target_modules() for p in m.parameters()}
        return [p for p in self.parameters() if id(p) not in frozen and p.requires_grad]

    def update_target(self, step: int, total_steps: int) -> float | None:
        """No target network: nothing to do. Returns None."""
        return None


class SimCLR(SSLMethod):
    """SimCLR (Chen et al. 2020): NT-Xent on projections of two views.

    Projection head 2048-2048-128 (Section 2.3 'Default setting'): Linear-BN-ReLU-Linear-BN, the last BN as in
    google-research/simclr ``model_util.projection_head``. Temperature 0.1: best in Table 5 (l2-normalised,
    4096 examples) and the value of the README's ImageNet ResNet50 command (0.5 there is for CIFAR-10).
    Small batches: Appendix B.1 finds square-root scaling, lr = 0.075 * sqrt(B), better for small batches and short
    schedules; the recipe keeps the paper's default (linear) and gives this as ``small_batch_alternative``.
    """

    recipe = dict(
        _LARS_RECIPE, base_lr=0.3, weight_decay=1e-6, schedule="cosine, no restarts", batch_size=4096, epochs=100,
        temperature=0.1, small_batch_alternative={"base_lr": 0.075, "lr_scaling": "sqrt"},
        paper="SimCLR (Chen et al. 2020), Section 2.3 'Default setting' and Appendix B.1; Table 5 (temperature)",
    )  # fmt: skip

    def __init__(
        self,
        backbone: nn.Module,
        feat_dim: int,
        *,
        proj_hidden_dim: int = 2048,
        proj_out_dim: int = 128,
        temperature: float = 0.1,
        gather: bool = True,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = mlp(feat_dim, proj_hidden_dim, proj_out_dim, last_bn=True)
        self.temperature = temperature
        self.gather = gather

    def forward(self, view1: Tensor, view2: Tensor, *small_views: Tensor) -> Tensor:
        z1 = self.projector(self.backbone(view1))
        z2 = self.projector(self.backbone(view2))
        return nt_xent_loss(z1, z2, self.temperature, gather=self.gather)


class MultiCropSimCLR(SimCLR):
    """SimCLR with multi-crop (Caron et al. 2020, SwAV, Section 3.2 'Multi-crop: augmenting views with smaller
    images', which also applies it to SimCLR): two large views and small ones, the crops of SwAV's ImageNet recipe
    (facebookresearch/swav main_swav.py: 2 x 224 at scale (0.14, 1), 6 x 96 at (0.05, 0.14)):
    ``--aug small_views=6x96:0.05,0.14 --aug scale=0.14,1``.

    As in SwAV (its ``crops_for_assign``: the two large crops), only the large views serve as targets: the loss is
    the mean NT-Xent over the pair of large views and over every (small view, large view) pair; small views are never
    compared with each other. The small views of one
    size go through the network in one pass. Head, temperature and optimizer recipe: SimCLR's. With no small views
    it is SimCLR.
    """

    recipe = dict(SimCLR.recipe, multi_crop="2 x 224 at scale (0.14, 1) + 6 x 96 at (0.05, 0.14)",
                  paper="SwAV (Caron et al. 2020), Section 3.2 (multi-crop) and main_swav.py; SimCLR's recipe")

    def forward(self, view1: Tensor, view2: Tensor, *small_views: Tensor) -> Tensor:
        large = [self.projector(self.backbone(v)) for v in (view1, view2)]
        small: list[Tensor] = []
        for size in dict.fromkeys(v.shape[-1] for v in small_views):  # one pass per size, in order
            same = [v for v in small_views if v.shape[-1] == size]
            small += self.projector(self.backbone(torch.cat(same))).chunk(len(same))
        losses = [nt_xent_loss(large[0], large[1], self.temperature, gather=self.gather)]
        losses += [nt_xent_loss(z, t, self.temperature, gather=self.gather) for z in small for t in large]
        return torch.stack(losses).mean()


class BYOL(SSLMethod):
    """BYOL (Grill et al. 2020): an online network predicts an EMA target network's projection of the other view.

    Projector and predictor: Linear(4096)-BN-ReLU-Linear(256) (Section 3.3). The target (``target_backbone``,
    ``target_projector``) is a deep copy of the online backbone and projector: it is in ``state_dict()`` (a
    checkpoint of this module restores it), its parameters have ``requires_grad=False`` and are left out of
    ``trainable_parameters()``. Its BN layers run in the module's mode (batch statistics in training, as in
    BYOL) and keep their own running statistics. Loss: ``byol_loss(p1, z2') + byol_loss(p2, z1')`` (Eq. 2).
    """

    recipe = dict(
        _LARS_RECIPE, base_lr=0.2, weight_decay=1.5e-6, schedule="cosine, no restarts", batch_size=4096, epochs=1000,
        tau_base=0.996, paper="BYOL (Grill et al. 2020), Section 3.3 'Implementation details' (Optimization)",
    )  # fmt: skip

    def __init__(
        self,
        backbone: nn.Module,
        feat_dim: int,
        *,
        proj_hidden_dim: int = 4096,
        proj_out_dim: int = 256,
        pred_hidden_dim: int = 4096,
        tau_base: float = 0.996,
    ) -> None:
        super().__init__()
        if not 0.0 <= tau_base <= 1.0:
            raise ValueError(f"tau_base must be in [0, 1] (BYOL uses 0.996), got {tau_base}")
        self.backbone = backbone
        self.projector = mlp(feat_dim, proj_hidden_dim, proj_out_dim)
        self.predictor = mlp(proj_out_dim, pred_hidden_dim, proj_out_dim)
        self.target_backbone = copy.deepcopy(backbone).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.tau_base = tau_base

    def target_modules(self) -> tuple[nn.Module, ...]:
        return (self.target_backbone, self.target_projector)

    def forward(self, view1: Tensor, view2: Tensor, *small_views: Tensor) -> Tensor:
        p1 = self.predictor(self.projector(self.backbone(view1)))
        p2 = self.predictor(self.projector(self.backbone(view2)))
        with torch.no_grad():
            t1 = self.target_projector(self.target_backbone(view1))
            t2 = self.target_projector(self.target_backbone(view2))
        return byol_loss(p1, t2) + byol_loss(p2, t1)

    def momentum(self, step: int, total_steps: int) -> float:
        """tau = 1 - (1 - tau_base) * (cos(pi * step / total_steps) + 1) / 2: tau_base at step 0, 1 at the end."""
        if total_steps <= 0:
            raise ValueError(f"total_steps must be > 0 (optimizer steps in the whole run), got {total_steps}")
        progress = min(max(step, 0), total_steps) / total_steps
        return 1 - (1 - self.tau_base) * (math.cos(math.pi * progress) + 1) / 2

    @torch.no_grad()
    def update_target(self, step: int, total_steps: int) -> float:
        """target <- tau * target + (1 - tau) * online, for every parameter; returns tau."""
        tau = self.momentum(step, total_steps)
        for online, target in ((self.backbone, self.target_backbone), (self.projector, self.target_projector)):
            for p_online, p_target in zip(online.parameters(), target.parameters(), strict=True):
                p_target.lerp_(p_online, 1 - tau)
        return tau


class VICReg(SSLMethod):
    """VICReg (Bardes, Ponce & LeCun 2022): variance-invariance-covariance loss on an expander's outputs.

    Expander 8192-8192-8192: (Linear-BN-ReLU) x 2, Linear; coefficients 25/25/1 (Section 4.1, and the defaults
    of facebookresearch/vicreg ``main_vicreg.py``: --mlp 8192-8192-8192 --base-lr 0.2 --wd 1e-6
    --batch-size 2048, 10 warmup epochs, cosine to 0.001 x the peak lr).
    """

    recipe = dict(
        _LARS_RECIPE, base_lr=0.2, weight_decay=1e-6, schedule="cosine to 0.001 x peak", batch_size=2048, epochs=1000,
        paper="VICReg (Bardes et al. 2022), Section 4.1 and Appendix C; facebookresearch/vicreg main_vicreg.py",
    )  # fmt: skip

    def __init__(
        self,
        backbone: nn.Module,
        feat_dim: int,
        *,
        expander_dim: int = 8192,
        expander_layers: int = 3,
        sim_coeff: float = 25.0,
        std_coeff: float = 25.0,
        cov_coeff: float = 1.0,
        gather: bool = True,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.expander = mlp(feat_dim, expander_dim, expander_dim, layers=expander_layers)
        self.coeffs = dict(sim_coeff=sim_coeff, std_coeff=std_coeff, cov_coeff=cov_coeff)
        self.gather = gather

    def forward(self, view1: Tensor, view2: Tensor, *small_views: Tensor) -> Tensor:
        z1 = self.expander(self.backbone(view1))
        z2 = self.expander(self.backbone(view2))
        return vicreg_loss(z1, z2, **self.coeffs, gather=self.gather)


METHODS: dict[str, type[SSLMethod]] = {"simclr": SimCLR, "byol": BYOL, "vicreg": VICReg,
                                       "multicrop-simclr": MultiCropSimCLR}


def build_method(name: str, backbone: nn.Module, feat_dim: int, **overrides: Any) -> SSLMethod:
    """``METHODS[name](backbone, feat_dim, **overrides)``; overrides are the class's keyword-only arguments
    (head sizes, temperature, tau_base, loss coefficients, gather)."""
    key = name.lower()
    if key not in METHODS:
        raise ValueError(f"unknown SSL method {name!r}; choose one of: {', '.join(METHODS)}")
    cls = METHODS[key]
    accepted = [
        p.name for p in inspect.signature(cls.__init__).parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    unknown = sorted(set(overrides) - set(accepted))
    if unknown:
        raise ValueError(f"{key} does not take {', '.join(unknown)}; its overrides are: {', '.join(accepted)}")
    return cls(backbone, feat_dim, **overrides)
