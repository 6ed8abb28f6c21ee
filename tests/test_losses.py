"""Losses, LARS and BYOL's EMA against independent references (naive loops, hand computations)."""

from __future__ import annotations

import io
import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from training.lars import LARS, param_groups_for
from training.losses import byol_loss, gather_with_grad, nt_xent_loss, vicreg_loss
from training.methods import BYOL

# ----------------------------------------------------------------------------------------------------------------
# References, written per anchor / per dimension with Python loops and explicit softmax.


def nt_xent_reference(z1, z2, temperature, anchors=None):
    """Mean over the anchors (image indices; both views of each) of -log(exp(s_pos/t) / sum_{k != a} exp(s_ak/t))."""
    n = z1.shape[0]
    emb = [z1[i] / torch.sqrt((z1[i] ** 2).sum()) for i in range(n)]
    emb += [z2[i] / torch.sqrt((z2[i] ** 2).sum()) for i in range(n)]
    anchors = range(n) if anchors is None else anchors
    terms = []
    for i in anchors:
        for a, pos in ((i, i + n), (i + n, i)):
            denominator = sum(torch.exp(torch.dot(emb[a], emb[k]) / temperature) for k in range(2 * n) if k != a)
            numerator = torch.exp(torch.dot(emb[a], emb[pos]) / temperature)
            terms.append(-torch.log(numerator / denominator))
    return sum(terms) / len(terms)


def byol_reference(p, z):
    total = 0.0
    for i in range(p.shape[0]):
        cos = (p[i] * z[i]).sum() / (torch.sqrt((p[i] ** 2).sum()) * torch.sqrt((z[i] ** 2).sum()))
        total = total + 2 - 2 * cos
    return total / p.shape[0]


def vicreg_reference(z1, z2, z1_all, z2_all, sim=25.0, std=25.0, cov=1.0, eps=1e-4):
    """Invariance on the local (B, D) pair; variance and covariance on the full (N, D) batches, per dimension."""
    b, d = z1.shape
    invariance = sum((z1[i, j] - z2[i, j]) ** 2 for i in range(b) for j in range(d)) / (b * d)

    def var_cov(z):
        n = z.shape[0]
        mean = [sum(z[i, j] for i in range(n)) / n for j in range(d)]
        hinge = 0.0
        for j in range(d):
            variance = sum((z[i, j] - mean[j]) ** 2 for i in range(n)) / (n - 1)
            hinge = hinge + torch.clamp(1 - torch.sqrt(variance + eps), min=0)
        off = 0.0
        for j in range(d):
            for k in range(d):
                if j != k:
                    c = sum((z[i, j] - mean[j]) * (z[i, k] - mean[k]) for i in range(n)) / (n - 1)
                    off = off + c**2
        return hinge / d, off / d

    v1, c1 = var_cov(z1_all)
    v2, c2 = var_cov(z2_all)
    return sim * invariance + std * (v1 + v2) / 2 + cov * (c1 + c2)


def _pair(b, d, seed, scale=None):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(b, d, generator=g, dtype=torch.float64)
    z2 = z1 + 0.5 * torch.randn(b, d, generator=g, dtype=torch.float64)
    if scale is not None:  # some dimensions below the variance hinge, some above
        z1, z2 = z1 * scale, z2 * scale
    return z1.requires_grad_(), z2.requires_grad_()


def _grads(loss, inputs, retain_graph=False):
    return torch.autograd.grad(loss, inputs, retain_graph=retain_graph)


# ----------------------------------------------------------------------------------------------------------------
# Single process.


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_nt_xent_matches_reference_value_and_gradient(temperature):
    z1, z2 = _pair(5, 7, seed=0)
    loss = nt_xent_loss(z1, z2, temperature)
    ref = nt_xent_reference(z1, z2, temperature)
    torch.testing.assert_close(loss, ref)
    for g, g_ref in zip(_grads(loss, (z1, z2)), _grads(ref, (z1, z2))):
        torch.testing.assert_close(g, g_ref)


def test_nt_xent_closed_form_for_orthogonal_embeddings():
    # z1 == z2, rows orthogonal: positive similarity 1, every negative 0.
    b, t = 4, 0.2
    z = torch.eye(b, 6, dtype=torch.float64) * 3.0
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 2 * b - 2))
    assert nt_xent_loss(z, z.clone(), t).item() == pytest.approx(expected)


def test_nt_xent_rejects_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        nt_xent_loss(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="temperature"):
        nt_xent_loss(torch.randn(4, 3), torch.randn(4, 3), temperature=0.0)


@pytest.mark.parametrize("loss_fn", [nt_xent_loss, byol_loss, vicreg_loss])
def test_losses_compute_in_float32_under_autocast(loss_fn):
    z1, z2 = (t.detach().float() for t in _pair(8, 6, seed=4))
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        loss = loss_fn(z1.bfloat16(), z2.bfloat16())
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, loss_fn(z1.bfloat16().float(), z2.bfloat16().float()))


def test_gather_with_grad_is_identity_without_distributed():
    x = torch.randn(3, 2)
    assert gather_with_grad(x) is x


def test_byol_loss_matches_reference_and_detaches_target():
    p, z = _pair(6, 5, seed=1)
    loss = byol_loss(p, z)
    ref = byol_reference(p, z.detach())
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(_grads(loss, p, retain_graph=True)[0], _grads(ref, p)[0])
    loss.backward()
    assert z.grad is None and p.grad is not None
    assert byol_loss(z.detach(), 2.5 * z.detach()).item() == pytest.approx(0.0, abs=1e-12)


def test_vicreg_matches_reference_value_and_gradient():
    scale = torch.tensor([0.2, 0.5, 1.5, 3.0], dtype=torch.float64)
    z1, z2 = _pair(6, 4, seed=2, scale=scale)
    loss = vicreg_loss(z1, z2)
    ref = vicreg_reference(z1, z2, z1, z2)
    torch.testing.assert_close(loss, ref)
    for g, g_ref in zip(_grads(loss, (z1, z2)), _grads(ref, (z1, z2))):
        torch.testing.assert_close(g, g_ref)


def test_vicreg_needs_two_samples():
    with pytest.raises(ValueError, match="at least 2"):
        vicreg_loss(torch.randn(1, 3), torch.randn(1, 3))


# ----------------------------------------------------------------------------------------------------------------
# Two gloo processes on CPU: gathered losses equal the single-process reference over the concatenated batch.

WORLD, LOCAL_B, DIM, TEMPERATURE = 2, 3, 5, 0.2


def _full_batch():
    scale = torch.tensor([0.3, 0.7, 1.0, 2.0, 4.0], dtype=torch.float64)
    z1, z2 = _pair(WORLD * LOCAL_B, DIM, seed=3, scale=scale)
    return z1.detach(), z2.detach()


def _distributed_worker(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        z1, z2 = _full_batch()
        rows = slice(rank * LOCAL_B, (rank + 1) * LOCAL_B)
        results = {}
        for name, fn in (
            ("nt_xent", lambda a, b: nt_xent_loss(a, b, TEMPERATURE)),
            ("vicreg", lambda a, b: vicreg_loss(a, b)),
        ):
            a, b = z1[rows].clone().requires_grad_(), z2[rows].clone().requires_grad_()
            loss = fn(a, b)
            loss.backward()  # gradients from the other rank's loss arrive through all_gather's backward
            results[name] = (loss.detach(), a.grad, b.grad)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available in this build")
def test_gathered_losses_match_single_process_reference(tmp_path):
    mp.spawn(_distributed_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    z1, z2 = (t.clone().requires_grad_() for t in _full_batch())
    local = [range(r * LOCAL_B, (r + 1) * LOCAL_B) for r in range(WORLD)]
    rows = [slice(r.start, r.stop) for r in local]
    references = {
        "nt_xent": [nt_xent_reference(z1, z2, TEMPERATURE, anchors=local[r]) for r in range(WORLD)],
        "vicreg": [vicreg_reference(z1[rows[r]], z2[rows[r]], z1, z2) for r in range(WORLD)],
    }
    for name, per_rank in references.items():
        # The summed loss's gradient w.r.t. rank r's inputs is what rank r receives.
        g1, g2 = _grads(sum(per_rank), (z1, z2))
        for r in range(WORLD):
            loss, grad1, grad2 = results[r][name]
            torch.testing.assert_close(loss, per_rank[r].detach(), msg=f"{name} loss, rank {r}")
            torch.testing.assert_close(grad1, g1[rows[r]], msg=f"{name} grad of view 1, rank {r}")
            torch.testing.assert_close(grad2, g2[rows[r]], msg=f"{name} grad of view 2, rank {r}")


# ----------------------------------------------------------------------------------------------------------------
# LARS.


def _norm(values):
    return math.sqrt(sum(v * v for v in values))


def test_lars_two_steps_match_hand_computation():
    w0, b0 = [1.0, -2.0, 0.5, 3.0], [0.5, -0.25]
    weight = nn.Parameter(torch.tensor(w0, dtype=torch.float64).reshape(2, 2))
    bias = nn.Parameter(torch.tensor(b0, dtype=torch.float64))
    lr, m, wd, eta = 0.5, 0.9, 0.1, 0.01
    opt = LARS([weight, bias], lr=lr, momentum=m, weight_decay=wd, eta=eta)
    grads = [([0.2, 0.1, -0.3, 0.4], [1.0, -2.0]), ([-0.1, 0.5, 0.2, 0.0], [0.5, 0.5])]
    lrs = [lr, lr / 2]  # a scheduler halves the lr before step 2: it scales only the new gradient

    w, b, v_w, v_b = list(w0), list(b0), [0.0] * 4, [0.0] * 2
    for (gw, gb), step_lr in zip(grads, lrs):
        opt.param_groups[0]["lr"] = step_lr
        weight.grad = torch.tensor(gw, dtype=torch.float64).reshape(2, 2)
        bias.grad = torch.tensor(gb, dtype=torch.float64)
        opt.step()
        u = [g + wd * x for g, x in zip(gw, w)]
        trust = eta * _norm(w) / _norm(u)
        v_w = [m * v + step_lr * trust * ui for v, ui in zip(v_w, u)]
        w = [x - v for x, v in zip(w, v_w)]
        v_b = [m * v + step_lr * g for v, g in zip(v_b, gb)]  # bias: no decay, no trust ratio
        b = [x - v for x, v in zip(b, v_b)]
        torch.testing.assert_close(weight.detach().flatten(), torch.tensor(w, dtype=torch.float64))
        torch.testing.assert_close(bias.detach(), torch.tensor(b, dtype=torch.float64))


def test_lars_zero_weight_uses_unit_trust_ratio():
    w = nn.Parameter(torch.zeros(2, 2))
    opt = LARS([w], lr=0.1, weight_decay=0.5)
    w.grad = torch.ones(2, 2)
    opt.step()
    torch.testing.assert_close(w.detach(), torch.full((2, 2), -0.1))


def _tiny_net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))


def _train_step(net, opt, x):
    opt.zero_grad()
    net(x).pow(2).sum().backward()
    opt.step()


def test_lars_state_dict_round_trip():
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    net = _tiny_net(0)
    opt = LARS(param_groups_for(net, weight_decay=1e-2), lr=0.3, eta=0.02)
    for _ in range(2):
        _train_step(net, opt, x)

    restored = _tiny_net(1)
    restored_opt = LARS(param_groups_for(restored, weight_decay=0.0), lr=99.0)
    # Through bytes, as a checkpoint does (a live state_dict shares its momentum buffers with the optimizer).
    buffer = io.BytesIO()
    torch.save({"model": net.state_dict(), "optimizer": opt.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer)
    restored.load_state_dict(checkpoint["model"])
    restored_opt.load_state_dict(checkpoint["optimizer"])
    assert [g["lr"] for g in restored_opt.param_groups] == [0.3, 0.3]
    assert [g["weight_decay"] for g in restored_opt.param_groups] == [1e-2, 0.0]

    _train_step(net, opt, x)
    _train_step(restored, restored_opt, x)
    for a, b in zip(net.parameters(), restored.parameters()):
        torch.testing.assert_close(a, b)


def test_lars_rejects_bad_hyperparameters():
    with pytest.raises(ValueError, match="momentum"):
        LARS([nn.Parameter(torch.zeros(1))], lr=0.1, momentum=1.0)


# ----------------------------------------------------------------------------------------------------------------
# BYOL's target network.


def _tiny_byol(tau_base=0.996):
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return BYOL(encoder, 4, proj_hidden_dim=8, proj_out_dim=6, pred_hidden_dim=8, tau_base=tau_base)


def test_byol_target_is_frozen_checkpointed_and_not_trained():
    byol = _tiny_byol()
    target = list(byol.target_backbone.parameters()) + list(byol.target_projector.parameters())
    assert target and all(not p.requires_grad for p in target)
    trainable = {id(p) for p in byol.trainable_parameters()}
    assert not trainable & {id(p) for p in target}
    assert len(trainable) + len(target) == len(list(byol.parameters()))
    grouped = {id(p) for g in param_groups_for(byol, 1e-6) for p in g["params"]}
    assert grouped == trainable

    keys = byol.state_dict().keys()
    assert any(k.startswith("target_backbone.") for k in keys) and any(k.startswith("target_projector.") for k in keys)

    views = torch.randn(2, 4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    byol(views[0], views[1]).backward()
    assert all(p.grad is None for p in target)
    assert all(p.grad is not None for p in byol.backbone.parameters())


def test_byol_ema_moves_target_by_expected_amount():
    byol = _tiny_byol()
    with torch.no_grad():
        for p in list(byol.backbone.parameters()) + list(byol.projector.parameters()):
            p.add_(torch.randn_like(p))  # online now differs from its copy
    online = [p.detach().clone() for p in list(byol.backbone.parameters()) + list(byol.projector.parameters())]
    before = [p.detach().clone() for p in byol.target_modules()[0].parameters()]
    before += [p.detach().clone() for p in byol.target_modules()[1].parameters()]

    step, total = 250, 1000
    expected_tau = 1 - 0.004 * (math.cos(math.pi / 4) + 1) / 2
    assert byol.update_target(step, total) == pytest.approx(expected_tau)
    after = list(byol.target_backbone.parameters()) + list(byol.target_projector.parameters())
    for t0, o, t1 in zip(before, online, after, strict=True):
        torch.testing.assert_close(t1.detach(), expected_tau * t0 + (1 - expected_tau) * o)
        assert not t1.requires_grad

    # The schedule's ends: tau_base at step 0, 1 (no change) at the last step.
    assert byol.momentum(0, total) == pytest.approx(0.996)
    frozen = [p.detach().clone() for p in after]
    assert byol.update_target(total, total) == pytest.approx(1.0)
    for a, b in zip(frozen, after):
        torch.testing.assert_close(a, b.detach())


def test_byol_target_restored_from_checkpoint():
    byol = _tiny_byol()
    with torch.no_grad():
        for p in byol.backbone.parameters():
            p.add_(1.0)
    byol.update_target(0, 10)
    fresh = _tiny_byol()
    fresh.load_state_dict(byol.state_dict())
    for a, b in zip(fresh.target_backbone.parameters(), byol.target_backbone.parameters()):
        torch.testing.assert_close(a, b)
        assert not a.requires_grad
