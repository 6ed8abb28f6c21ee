"""SSL losses as pure functions: NT-Xent (SimCLR), BYOL's normalised MSE, VICReg.

Shapes: B is the per-rank batch size, D the embedding size, W the world size. Under DistributedDataParallel the
functions that gather (``gather=True``) see every rank's embeddings, with their gradient: ``gather_with_grad``'s
backward sums, into each rank's own embeddings, the gradients that every rank's loss sends them. DDP then averages
parameter gradients over ranks, so the update is that of the loss over the global batch. All ranks must pass the
same B (``all_gather`` needs equal shapes); keep ``drop_last`` on in the sampler.

The losses run in float32 even under autocast: half-precision inputs are upcast and autocast is switched off
inside (a bf16 similarity matrix or 8192 x 8192 covariance loses too many digits).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor


def _world() -> tuple[int, int]:
    """(rank, world_size) of the default process group, or (0, 1) when not running distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _in_float32(loss_fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Run ``loss_fn`` with autocast off, its float16/bfloat16 tensor arguments upcast to float32."""

    @functools.wraps(loss_fn)
    def wrapper(*args: Any, **kwargs: Any) -> Tensor:
        def up(a: Any) -> Any:
            return a.float() if isinstance(a, Tensor) and a.dtype in (torch.float16, torch.bfloat16) else a

        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)]
        device_type = tensors[0].device.type if tensors else "cpu"
        with torch.autocast(device_type=device_type, enabled=False):
            return loss_fn(*map(up, args), **{k: up(v) for k, v in kwargs.items()})

    return wrapper


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` from every rank along dim 0, keeping the autograd graph to every rank's input.

    Args:
        x: (B, ...) on this rank; the same shape on every rank.

    Returns:
        (W * B, ...), rank r's rows at ``[r * B, (r + 1) * B)``; ``x`` itself when not distributed or W == 1.
    """
    _, world_size = _world()
    if world_size == 1:
        return x
    from torch.distributed.nn.functional import all_gather  # imported late: absent from some CPU-only builds

    return torch.cat(all_gather(x), dim=0)


def _check_pair(z1: Tensor, z2: Tensor, min_batch: int = 1) -> None:
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(
            f"expected two (B, D) tensors of the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}; "
            "flatten the projections to (batch, dim) and pass both views with the same batch size"
        )
    if z1.shape[0] < min_batch:
        raise ValueError(f"this loss needs a batch of at least {min_batch}, got {z1.shape[0]}")


@_in_float32
def nt_xent_loss(z1: Tensor, z2: Tensor, temperature: float = 0.1, *, gather: bool = True) -> Tensor:
    """SimCLR's normalized temperature-scaled cross entropy (Chen et al. 2020, Eq. 1).

    Each of the 2B local embeddings is an anchor; its positive is the other view of the same image, its negatives
    all other 2N - 2 embeddings, where N = W * B with ``gather`` under DDP (other ranks' embeddings come with their
    gradient) and N = B otherwise.

    Args:
        z1, z2: (B, D) projections of view 1 and view 2; L2-normalised here.
        temperature: tau > 0 in exp(sim / tau).
        gather: use the negatives of every rank when running distributed.

    Returns:
        Scalar: the mean over the 2B local anchors of -log softmax(positive).
    """
    _check_pair(z1, z2)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 (SimCLR uses 0.1 on ImageNet), got {temperature}")
    z1 = F.normalize(z1, dim=1)
    z2 = F.normalize(z2, dim=1)
    batch = z1.shape[0]
    rank, world_size = _world()
    if gather and world_size > 1:
        all1, all2, offset = gather_with_grad(z1), gather_with_grad(z2), rank * batch
    else:
        all1, all2, offset = z1, z2, 0
    n = all1.shape[0]

    anchors = torch.cat([z1, z2])  # (2B, D): view-1 rows, then view-2 rows
    candidates = torch.cat([all1, all2])  # (2N, D): every view-1 row, then every view-2 row
    logits = anchors @ candidates.T / temperature  # (2B, 2N)

    local = torch.arange(batch, device=z1.device) + offset  # this rank's rows in the gathered view-1 block
    self_col = torch.cat([local, local + n])
    positive_col = torch.cat([local + n, local])
    is_self = torch.zeros_like(logits, dtype=torch.bool)
    is_self[torch.arange(2 * batch, device=z1.device), self_col] = True
    logits = logits.masked_fill(is_self, float("-inf"))
    return F.cross_entropy(logits, positive_col)


@_in_float32
def byol_loss(p: Tensor, z: Tensor) -> Tensor:
    """BYOL's regression loss (Grill et al. 2020, Eq. 2): 2 - 2 cos(p, z), averaged over the batch.

    Args:
        p: (B, D) online prediction for one view.
        z: (B, D) target projection of the other view; detached here (the target gets no gradient).

    Returns:
        Scalar in [0, 4]. The caller symmetrises: ``byol_loss(p1, z2) + byol_loss(p2, z1)``.
    """
    _check_pair(p, z)
    return (2 - 2 * F.cosine_similarity(p, z.detach(), dim=1)).mean()


def invariance_term(z1: Tensor, z2: Tensor) -> Tensor:
    """VICReg's s(Z, Z'): mean squared error between the two views' (B, D) embeddings, over B and D."""
    return F.mse_loss(z1, z2)


def variance_term(z: Tensor, eps: float = 1e-4, gamma: float = 1.0) -> Tensor:
    """VICReg's v(Z): mean over the D dimensions of relu(gamma - sqrt(Var(z_j) + eps)); z: (N, D), N >= 2."""
    std = torch.sqrt(z.var(dim=0) + eps)
    return F.relu(gamma - std).mean()


def covariance_term(z: Tensor) -> Tensor:
    """VICReg's c(Z): sum of the squared off-diagonal entries of the (D, D) covariance of z: (N, D), over D."""
    n, d = z.shape
    z = z - z.mean(dim=0)
    cov = (z.T @ z) / (n - 1)
    return (cov.pow(2).sum() - cov.diagonal().pow(2).sum()) / d


@_in_float32
def vicreg_loss(
    z1: Tensor,
    z2: Tensor,
    *,
    sim_coeff: float = 25.0,
    std_coeff: float = 25.0,
    cov_coeff: float = 1.0,
    eps: float = 1e-4,
    gather: bool = True,
) -> Tensor:
    """VICReg (Bardes et al. 2022, Eq. 6), weighted as in the official implementation.

    loss = sim_coeff * s(Z, Z') + std_coeff * (v(Z) + v(Z')) / 2 + cov_coeff * (c(Z) + c(Z')).
    The paper's Eq. 6 writes v(Z) + v(Z') without the 1/2; facebookresearch/vicreg (main_vicreg.py), with
    whose code the published coefficients 25/25/1 were run, halves it, and so does lightly's VICRegLoss.

    Args:
        z1, z2: (B, D) expander outputs of the two views.
        gather: under DDP the variance and covariance terms use the (W * B, D) embeddings of all ranks (as the
            official FullGatherLayer); the invariance term stays per rank.

    Returns:
        Scalar.
    """
    _check_pair(z1, z2)
    invariance = invariance_term(z1, z2)
    if gather:
        z1, z2 = gather_with_grad(z1), gather_with_grad(z2)
    if z1.shape[0] < 2:
        raise ValueError("VICReg's variance and covariance need at least 2 embeddings per view; raise the batch size")
    variance = (variance_term(z1, eps) + variance_term(z2, eps)) / 2
    covariance = covariance_term(z1) + covariance_term(z2)
    return sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance
