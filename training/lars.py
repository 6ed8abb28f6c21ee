"""LARS (You et al. 2017) as SimCLR and BYOL use it for ResNet50 pretraining.

Per parameter w with gradient g, in a group with learning rate lr, momentum m, weight decay wd, trust
coefficient eta:

    u = g + wd * w
    trust = eta * ||w|| / ||u||      (1 when ||w|| or ||u|| is 0)
    v <- m * v + lr * trust * u
    w <- w - v

This is the "classic momentum" form of google-research/simclr's ``lars_optimizer.py`` (also BYOL's): the
learning rate enters the momentum buffer, so a schedule changes the step size of new gradients only. Biases and
normalisation parameters (every parameter with ndim <= 1) get neither weight decay nor the trust ratio
(``exclude_bias_and_norm``; SimCLR Appendix B.1, BYOL Section 3.3), i.e. they take plain momentum SGD steps.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import nn
from torch.optim import Optimizer


class LARS(Optimizer):
    """Layer-wise adaptive rate scaling with momentum.

    Args:
        params: parameters or param groups (dicts); each group may override lr, momentum, weight_decay, eta and
            exclude_bias_and_norm.
        lr: the (already batch-scaled) learning rate; a scheduler may change ``group["lr"]`` every step.
        momentum: m in [0, 1).
        weight_decay: wd >= 0, added to the gradient before the trust ratio.
        eta: the trust coefficient (1e-3 in SimCLR and BYOL).
        exclude_bias_and_norm: skip weight decay and the trust ratio for parameters with ndim <= 1.
    """

    def __init__(
        self,
        params: Iterable[nn.Parameter] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 0.001,
        exclude_bias_and_norm: bool = True,
    ) -> None:
        if lr < 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if eta <= 0:
            raise ValueError(f"eta (the trust coefficient) must be > 0, got {eta}; SimCLR and BYOL use 1e-3")
        defaults = dict(
            lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, exclude_bias_and_norm=exclude_bias_and_norm
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One update of every parameter that has a gradient; returns ``closure()`` when given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("LARS does not support sparse gradients")
                update = p.grad
                adapt = not (group["exclude_bias_and_norm"] and p.ndim <= 1)
                if adapt and group["weight_decay"] != 0:
                    update = update.add(p, alpha=group["weight_decay"])
                if adapt:
                    update = update * trust_ratio(p, update, group["eta"])
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(group["momentum"]).add_(update, alpha=group["lr"])
                p.sub_(buf)
        return loss


def trust_ratio(w: torch.Tensor, update: torch.Tensor, eta: float) -> torch.Tensor:
    """eta * ||w|| / ||update|| as a 0-d tensor (no host sync), or 1 where either norm is 0."""
    w_norm = torch.linalg.vector_norm(w)
    u_norm = torch.linalg.vector_norm(update)
    one = torch.ones_like(w_norm)
    return torch.where((w_norm > 0) & (u_norm > 0), eta * w_norm / u_norm.clamp_min(1e-30), one)


def param_groups_for(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two param groups: weights (ndim > 1) with ``weight_decay``; biases and norm parameters without.

    Only trainable parameters are included: ``model.trainable_parameters()`` when the model has it (every SSL
    method in ``training.methods`` does; BYOL's EMA target is left out), else those with ``requires_grad``.
    Under DDP pass ``ddp_model.module``. The groups also work for torch.optim.SGD/AdamW (the extra key
    ``exclude_bias_and_norm`` is ignored there). Empty groups are dropped.
    """
    if hasattr(model, "trainable_parameters"):
        params = list(model.trainable_parameters())
    else:
        params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0, "exclude_bias_and_norm": True},
    ]
    return [g for g in groups if g["params"]]
