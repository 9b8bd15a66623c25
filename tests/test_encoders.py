"""timm backbones with the papers' stems, the projectors, and SSLModel's forward passes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from wssl_zoo.encoders import SSLModel, create_backbone, momentum_at
from wssl_zoo.heads import Projector, build_projector, intl_projector, wmse_projector
from wssl_zoo.losses import CWRGPLoss, INTLLoss, WMSELoss


def test_cifar_stem_is_3x3_stride1_without_maxpool():
    m = create_backbone("resnet18", "cifar")
    assert m.conv1.kernel_size == (3, 3) and m.conv1.stride == (1, 1) and m.conv1.bias is None
    assert isinstance(m.maxpool, nn.Identity)
    assert m.forward_features(torch.randn(2, 3, 32, 32)).shape == (2, 512, 4, 4)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 512) and m.num_features == 512


def test_small_stem_keeps_maxpool_and_imagenet_stem_is_timm():
    small = create_backbone("resnet18", "small")
    assert small.conv1.stride == (1, 1) and isinstance(small.maxpool, nn.MaxPool2d)
    plain = create_backbone("resnet18")
    assert plain.conv1.kernel_size == (7, 7)
    import timm

    assert set(plain.state_dict()) == set(timm.create_model("resnet18", num_classes=0).state_dict())


def test_bad_arch_and_stem_errors():
    with pytest.raises(ValueError, match=r"unknown timm architecture 'resnet181'.*resnet18"):
        create_backbone("resnet181")
    with pytest.raises(ValueError, match=r"unknown stem 'tiny'"):
        create_backbone("resnet18", "tiny")
    with pytest.raises(ValueError, match=r"'cifar' stem is defined for ResNet-style .*'vit_tiny_patch16_224'"):
        create_backbone("vit_tiny_patch16_224", "cifar")


def test_projector_presets_follow_the_papers():
    w = wmse_projector(512)
    assert [type(m).__name__ for m in w] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert w[0].bias is not None and w[-1].out_features == 64
    i = intl_projector(2048)
    assert len([m for m in i if isinstance(m, nn.Linear)]) == 3
    assert i[0].bias is None and i[3].bias is None and i[-1].bias is not None and i[-1].out_features == 8192
    c = build_projector("cwrgp", 2048, num_layers=3, hidden_dim=2048, out_dim=1024)
    assert c[-1].out_features == 1024
    with pytest.raises(ValueError, match="unknown method 'simclr'"):
        build_projector("simclr", 10)
    with pytest.raises(ValueError, match="hidden_dim must be a positive integer"):
        Projector(4, 0, 4)


class _Record(nn.Module):
    def forward(self, views):
        self.views = views
        return sum(v.sum() for v in views)


def _tiny_model(loss, momentum=None, head_on_concat=None):
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(12, 8))
    backbone.num_features = 8
    return SSLModel(backbone, Projector(8, 16, 4, 2), loss, momentum=momentum, head_on_concat=head_on_concat)


def test_head_runs_on_concatenated_views_for_wmse_and_per_crop_for_intl():
    torch.manual_seed(0)
    views = [torch.randn(5, 3, 2, 2) for _ in range(3)]
    for concat in (True, False):
        model = _tiny_model(_Record(), head_on_concat=concat).train()
        model(views)
        feats = [model.backbone(v) for v in views]
        expected = list(model.projector(torch.cat(feats)).split(5)) if concat else [model.projector(f) for f in feats]
        for got, want in zip(model.loss.views, expected):
            torch.testing.assert_close(got, want)
    assert _tiny_model(WMSELoss(w_size=4)).head_on_concat and _tiny_model(CWRGPLoss()).head_on_concat
    assert not _tiny_model(INTLLoss()).head_on_concat


def test_momentum_encoder_gets_no_gradient_and_ema_math():
    torch.manual_seed(0)
    model = _tiny_model(INTLLoss(momentum=True), momentum=0.9)
    views = [torch.randn(8, 3, 2, 2) for _ in range(3)]
    model(views).backward()
    assert all(p.grad is None for p in model.momentum_backbone.parameters())
    assert any(p.grad is not None for p in model.backbone.parameters())
    q = model.backbone[1].weight.detach().clone()
    with torch.no_grad():
        model.backbone[1].weight.add_(1.0)
    k_before = model.momentum_backbone[1].weight.clone()
    model.update_momentum(0.75)
    torch.testing.assert_close(model.momentum_backbone[1].weight, 0.75 * k_before + 0.25 * (q + 1.0))
    assert momentum_at(0, 100, 0.996) == pytest.approx(0.996) and momentum_at(100, 100, 0.996) == pytest.approx(1.0)


def test_sslmodel_needs_two_views():
    with pytest.raises(ValueError, match="at least 2 view batches"):
        _tiny_model(_Record())([torch.randn(2, 3, 2, 2)])


def test_real_losses_train_a_resnet_end_to_end():
    torch.manual_seed(0)
    backbone = create_backbone("resnet18", "cifar")
    model = SSLModel(backbone, wmse_projector(512, 64, 16), WMSELoss(w_size=32))
    loss = model([torch.randn(32, 3, 16, 16), torch.randn(32, 3, 16, 16)])
    loss.backward()
    assert backbone.conv1.weight.grad is not None and torch.isfinite(loss)
