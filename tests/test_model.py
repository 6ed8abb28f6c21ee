"""Backbone compatibility with torchvision, heads, and every SSL method's forward/backward."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from training.lars import LARS, param_groups_for
from training.methods import METHODS, build_method
from training.model import build_backbone, mlp

SMALL_HEADS = {
    "simclr": dict(proj_hidden_dim=32, proj_out_dim=16),
    "byol": dict(proj_hidden_dim=32, proj_out_dim=16, pred_hidden_dim=32),
    "vicreg": dict(expander_dim=32),
    "multicrop-simclr": dict(proj_hidden_dim=32, proj_out_dim=16),
}


def _torchvision_resnet(constructor):
    net = constructor()
    net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    net.fc = nn.Identity()
    return net


def test_resnet50_backbone_loads_strictly_into_torchvision_and_gives_2048_features():
    torch.manual_seed(0)
    backbone, dim = build_backbone("resnet50")
    assert dim == 2048
    fresh = _torchvision_resnet(torchvision.models.resnet50)
    result = fresh.load_state_dict(backbone.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys

    x = torch.randn(2, 1, 64, 64)
    backbone.eval(), fresh.eval()
    with torch.no_grad():
        features = backbone(x)
        assert features.shape == (2, 2048)
        torch.testing.assert_close(fresh(x), features)


def test_resnet18_backbone_gives_512_features():
    backbone, dim = build_backbone("resnet18")
    assert dim == 512
    _torchvision_resnet(torchvision.models.resnet18).load_state_dict(backbone.state_dict(), strict=True)
    with torch.no_grad():
        assert backbone(torch.randn(2, 1, 64, 64)).shape == (2, 512)


def test_unknown_arch_lists_choices():
    with pytest.raises(ValueError, match="resnet18.*resnet50"):
        build_backbone("vit_b_16")


def test_mlp_layout():
    head = mlp(8, 16, 4, layers=3, last_bn=True)
    kinds = [type(m).__name__ for m in head]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU"] * 2 + ["Linear", "BatchNorm1d"]
    assert head(torch.randn(5, 8)).shape == (5, 4)
    assert [type(m).__name__ for m in mlp(8, 16, 4)] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    with pytest.raises(ValueError, match="layers"):
        mlp(8, 16, 4, layers=0)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_forward_backward_and_step(name):
    torch.manual_seed(0)
    backbone, dim = build_backbone("resnet18")
    method = build_method(name, backbone, dim, **SMALL_HEADS[name])
    assert method.backbone is backbone
    gen = torch.Generator().manual_seed(1)
    view1, view2 = torch.randn(2, 4, 1, 64, 64, generator=gen)

    loss = method(view1, view2)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in method.trainable_parameters())

    recipe = method.recipe
    opt = LARS(param_groups_for(method, recipe["weight_decay"]), lr=recipe["base_lr"] * 4 / 256)
    opt.step()
    method.update_target(step=1, total_steps=10)
    assert torch.isfinite(method(view1, view2))


@pytest.mark.parametrize("name", sorted(METHODS))
def test_recipes_name_their_source(name):
    recipe = METHODS[name].recipe
    assert recipe["optimizer"] == "lars" and recipe["lr_scaling"] == "linear/256"
    assert {"base_lr", "weight_decay", "warmup_epochs", "paper"} <= recipe.keys()


def test_multicrop_simclr_uses_every_view_and_the_others_only_the_large_pair():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    large = list(torch.randn(2, 4, 1, 64, 64, generator=gen))
    small = [t.requires_grad_() for t in torch.randn(3, 4, 1, 32, 32, generator=gen)]
    backbone, dim = build_backbone("resnet18")
    multi = build_method("multicrop-simclr", backbone, dim, **SMALL_HEADS["multicrop-simclr"])
    multi(*large, *small).backward()
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in small)
    with torch.no_grad():  # with no small views it is SimCLR, loss for loss
        simclr = build_method("simclr", backbone, dim, **SMALL_HEADS["simclr"])
        simclr.load_state_dict(multi.state_dict())
        assert torch.allclose(multi(*large), simclr(*large))
        assert torch.equal(simclr(*large), simclr(*large, *small))  # SimCLR ignores the small views
        assert not torch.allclose(multi(*large, *small), multi(*large))


def test_build_method_errors():
    backbone, dim = build_backbone("resnet18")
    with pytest.raises(ValueError, match="simclr, byol, vicreg"):
        build_method("moco", backbone, dim)
    with pytest.raises(ValueError, match="temperature"):
        build_method("byol", backbone, dim, temperature=0.1)
