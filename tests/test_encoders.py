"""timm backbones with the papers' stems, the projectors, and SSLModel's forward passes."""

from __future__ import annotations

import math

import pytest
import timm
import torch
from torch import nn

from wssl_zoo.encoders import STEMS, SSLModel, create_backbone, momentum_at
from wssl_zoo.heads import PROJECTORS, Projector, build_projector, cwrgp_projector, intl_projector, wmse_projector

# ----------------------------------------------------------------------------- backbones


def test_imagenet_and_cifar_stems_of_resnet18():
    x = torch.randn(2, 3, 32, 32)
    plain = create_backbone("resnet18")
    assert plain.conv1.kernel_size == (7, 7) and plain.conv1.stride == (2, 2)
    assert isinstance(plain.maxpool, nn.MaxPool2d)
    assert plain.forward_features(x).shape == (2, 512, 1, 1)  # 32 px / 32
    assert plain.wssl_stem == "imagenet" and plain.wssl_arch == "resnet18"

    cifar = create_backbone("resnet18", "cifar")
    c1 = cifar.conv1
    assert isinstance(c1, nn.Conv2d) and c1.kernel_size == (3, 3) and c1.stride == (1, 1)
    assert c1.padding == (1, 1) and c1.bias is None and (c1.in_channels, c1.out_channels) == (3, 64)
    assert isinstance(cifar.maxpool, nn.Identity)
    assert cifar.forward_features(x).shape == (2, 512, 4, 4)  # 32 px / 8: only layers 2-4 downsample
    assert cifar(x).shape == (2, 512) and cifar.num_features == 512 and cifar.wssl_stem == "cifar"
    assert [f["reduction"] for f in cifar.feature_info] == [1, 1, 2, 4, 8]


def test_small_stem_keeps_the_maxpool():
    small = create_backbone("resnet18", "small")
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, nn.MaxPool2d)
    assert small.forward_features(torch.randn(2, 3, 32, 32)).shape == (2, 512, 2, 2)


def test_key_names_are_timms():
    reference = timm.create_model("resnet18", pretrained=False, num_classes=0).state_dict()
    plain = create_backbone("resnet18").state_dict()
    assert list(plain) == list(reference)
    timm.create_model("resnet18", pretrained=False, num_classes=0).load_state_dict(plain)  # strict
    cifar = create_backbone("resnet18", "cifar").state_dict()
    assert list(cifar) == list(reference)  # same names; conv1.weight has the 3x3 shape
    assert cifar["conv1.weight"].shape == (64, 3, 3, 3) and reference["conv1.weight"].shape == (64, 3, 7, 7)


def test_deep_stem_replaces_only_its_first_conv():
    reference = timm.create_model("resnet18d", pretrained=False, num_classes=0)
    model = create_backbone("resnet18d", "cifar")
    first = model.conv1[0]
    assert first.stride == (1, 1) and first.kernel_size == (3, 3) and first.bias is None
    assert (first.in_channels, first.out_channels) == (reference.conv1[0].in_channels, reference.conv1[0].out_channels)
    assert model.conv1[3] is not None and model.conv1[3].stride == (1, 1)
    assert list(model.state_dict()) == list(reference.state_dict())
    assert model.forward_features(torch.randn(2, 3, 32, 32)).shape == (2, 512, 4, 4)


def test_timm_kwargs_pass_through():
    model = create_backbone("resnet18", "cifar", in_chans=1)
    assert model.conv1.in_channels == 1
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 512)


def test_unknown_arch_lists_close_timm_names():
    with pytest.raises(ValueError, match=r"unknown timm architecture 'resnet181'.*resnet18") as info:
        create_backbone("resnet181")
    assert "closest timm names" in str(info.value)
    with pytest.raises(ValueError, match=r"unknown timm architecture 'resnet_50'.*resnet50"):
        create_backbone("resnet_50")


def test_unknown_stem_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown stem 'tiny'") as info:
        create_backbone("resnet18", "tiny")
    for stem in STEMS:
        assert repr(stem) in str(info.value)


@pytest.mark.parametrize("arch", ["vit_tiny_patch16_224", "mobilenetv3_small_050"])
def test_cifar_stem_on_a_non_resnet_names_arch_and_stem(arch):
    with pytest.raises(ValueError, match=rf"'cifar' stem is not defined for timm architecture '{arch}'"):
        create_backbone(arch, "cifar")


def test_cifar_stem_refuses_a_learned_stem_pool():
    with pytest.raises(ValueError, match=r"'cifar' stem .*'resnet18'.*learned conv"):
        create_backbone("resnet18", "cifar", replace_stem_pool=True)


@pytest.mark.parametrize("kwargs", [dict(num_classes=10), dict(pretrained=True), dict(features_only=True),
                                    dict(global_pool="")])
def test_kwargs_that_break_pooled_features_are_refused(kwargs):
    with pytest.raises(ValueError, match="create_backbone\\('resnet18'\\)"):
        create_backbone("resnet18", **kwargs)


# ----------------------------------------------------------------------------- projectors


def _layer_types(head: nn.Module) -> list[str]:
    return [type(m).__name__ for m in head]


def test_wmse_and_cwrgp_presets():
    w = wmse_projector(512)
    assert _layer_types(w) == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert (w[0].in_features, w[0].out_features, w[3].out_features) == (512, 1024, 64)
    assert w[0].bias is not None and w[3].bias is not None
    c = cwrgp_projector(512)
    assert _layer_types(c) == _layer_types(w) and c[3].out_features == 512 and c[0].bias is not None
    big = build_projector("cwrgp", 2048, num_layers=3, hidden_dim=2048, out_dim=1024)
    assert _layer_types(big) == ["Linear", "BatchNorm1d", "ReLU"] * 2 + ["Linear"]
    assert [m.out_features for m in big if isinstance(m, nn.Linear)] == [2048, 2048, 1024]


def test_intl_preset_has_no_hidden_bias():
    head = intl_projector(64, hidden_dim=32, out_dim=16)  # the 8192 default is too big for a unit test
    assert _layer_types(head) == ["Linear", "BatchNorm1d", "ReLU"] * 2 + ["Linear"]
    linears = [m for m in head if isinstance(m, nn.Linear)]
    assert [m.bias is None for m in linears] == [True, True, False]
    assert head(torch.randn(4, 64)).shape == (4, 16)
    import inspect

    defaults = {k: v.default for k, v in inspect.signature(intl_projector).parameters.items() if k != "in_dim"}
    assert defaults == dict(hidden_dim=8192, out_dim=8192, num_layers=3)


def test_projector_keys_flags_and_edge_cases():
    head = Projector(8, 16, 4, 2)
    assert list(head.state_dict()) == ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean",
                                       "1.running_var", "1.num_batches_tracked", "3.weight", "3.bias"]
    single = Projector(8, 16, 4, 1, last_bias=False)
    assert _layer_types(single) == ["Linear"] and single[0].bias is None and single[0].in_features == 8
    no_bn = Projector(8, 16, 4, 3, batch_norm=False)
    assert _layer_types(no_bn) == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]
    with pytest.raises(ValueError, match="hidden_dim must be a positive integer"):
        Projector(4, 0, 4)
    with pytest.raises(ValueError, match="num_layers must be a positive integer"):
        Projector(4, 4, 4, 0)


def test_build_projector_table_and_errors():
    assert set(PROJECTORS) == {"wmse", "cwrgp", "intl"}
    assert build_projector("wmse", 32, hidden_dim=8)[-1].out_features == 64
    with pytest.raises(ValueError, match=r"unknown method 'simclr'.*'cwrgp', 'intl', 'wmse'"):
        build_projector("simclr", 10)
    with pytest.raises(ValueError, match=r"unknown override\(s\) \['width'\]"):
        build_projector("wmse", 10, width=3)


# ----------------------------------------------------------------------------- SSLModel


class _Record(nn.Module):
    """A stand-in loss: remembers the embeddings it got, returns their sum."""

    def forward(self, views):
        self.views = views
        return sum(v.sum() for v in views)


class WMSELoss(_Record):  # declares its method like the real classes: SSLModel derives head_on_concat from it
    method = "wmse"


class INTLLoss(_Record):
    method = "intl"

    def __init__(self, momentum: bool = False):
        super().__init__()
        self.momentum = momentum


def _tiny_backbone() -> nn.Module:
    # BatchNorm in the backbone makes per-view versus concatenated batches distinguishable
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.BatchNorm1d(8))
    backbone.num_features = 8
    return backbone


def _tiny_model(loss, momentum=None, head_on_concat=None) -> SSLModel:
    return SSLModel(_tiny_backbone(), Projector(8, 16, 4, 2), loss, momentum=momentum,
                    head_on_concat=head_on_concat)


def _count_calls(module: nn.Module) -> list[int]:
    calls = []
    module.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape[0]))
    return calls


@pytest.mark.parametrize("concat", [True, False])
def test_backbone_per_view_and_projector_on_concat_or_per_crop(concat):
    torch.manual_seed(0)
    views = [torch.randn(5, 3, 2, 2) for _ in range(3)]
    model = _tiny_model(_Record(), head_on_concat=concat).train()
    backbone_calls, head_calls = _count_calls(model.backbone), _count_calls(model.projector)
    model(views)
    assert backbone_calls == [5, 5, 5]  # one call per view: BN statistics per view
    assert head_calls == ([15] if concat else [5, 5, 5])
    # the same computation by hand; the BatchNorm in the head makes the two choices differ
    with torch.no_grad():
        feats = [model.backbone(v) for v in views]
        concat_out = list(model.projector(torch.cat(feats)).split(5))
        per_crop_out = [model.projector(f) for f in feats]
    expected, other = (concat_out, per_crop_out) if concat else (per_crop_out, concat_out)
    assert len(model.loss.views) == 3
    for got, want, wrong in zip(model.loss.views, expected, other):
        torch.testing.assert_close(got, want)
        assert not torch.allclose(got, wrong, atol=1e-4)


def test_head_on_concat_default_follows_the_loss():
    assert _tiny_model(WMSELoss()).head_on_concat is True
    assert _tiny_model(INTLLoss()).head_on_concat is False
    assert _tiny_model(_Record(), head_on_concat=False).head_on_concat is False
    hooked = _Record()
    hooked.head_on_concat = False
    assert _tiny_model(hooked).head_on_concat is False
    with pytest.raises(ValueError, match=r"_Record loss .*pass head_on_concat"):
        _tiny_model(_Record())


def test_real_losses_choose_the_papers_head_placement():
    losses = pytest.importorskip("wssl_zoo.losses")
    assert _tiny_model(losses.WMSELoss(w_size=4)).head_on_concat
    assert _tiny_model(losses.CWRGPLoss()).head_on_concat
    assert not _tiny_model(losses.INTLLoss()).head_on_concat
    assert not _tiny_model(losses.INTLLoss(momentum=True), momentum=0.99).head_on_concat


def test_multi_crop_views_of_different_resolutions():
    torch.manual_seed(0)
    model = SSLModel(create_backbone("resnet18", "cifar"), Projector(512, 16, 8, 2), INTLLoss())
    views = [torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32), torch.randn(4, 3, 16, 16)]
    model(views)
    assert [tuple(v.shape) for v in model.loss.views] == [(4, 8)] * 3


def test_loss_backward_reaches_the_backbone():
    torch.manual_seed(0)
    backbone = create_backbone("resnet18", "cifar")
    model = SSLModel(backbone, wmse_projector(512, 32, 4), WMSELoss())
    loss = model([torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16)])
    loss.backward()
    assert backbone.conv1.weight.grad is not None and backbone.conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.projector.parameters())


def test_real_wmse_loss_trains_a_resnet_end_to_end():
    losses = pytest.importorskip("wssl_zoo.losses")
    torch.manual_seed(0)
    backbone = create_backbone("resnet18", "cifar")
    model = SSLModel(backbone, wmse_projector(512, 32, 4), losses.WMSELoss(w_size=8))
    loss = model([torch.randn(8, 3, 32, 32), torch.randn(8, 3, 32, 32)])
    loss.backward()
    assert torch.isfinite(loss) and backbone.conv1.weight.grad.abs().sum() > 0


def test_momentum_encoder_embeds_the_key_without_gradient():
    torch.manual_seed(0)
    model = _tiny_model(INTLLoss(momentum=True), momentum=0.9).train()
    assert model.base_momentum == 0.9
    assert all(not p.requires_grad for p in model.momentum_backbone.parameters())
    assert all(not p.requires_grad for p in model.momentum_projector.parameters())
    with torch.no_grad():  # make the online encoder differ from its momentum copy
        for p in model.backbone.parameters():
            p.add_(0.5)
    views = [torch.randn(8, 3, 2, 2) for _ in range(3)]
    online_calls, target_calls = _count_calls(model.backbone), _count_calls(model.momentum_backbone)
    model(views).backward()
    assert online_calls == [8, 8] and target_calls == [8]  # key crop views[0], queries views[1:]
    key = model.loss.views[0]
    assert not key.requires_grad and len(model.loss.views) == 3
    with torch.no_grad():
        torch.testing.assert_close(key, model.momentum_projector(model.momentum_backbone(views[0])))
        assert not torch.allclose(key, model.projector(model.backbone(views[0])))
    assert all(p.grad is None for p in model.momentum_backbone.parameters())
    assert all(p.grad is None for p in model.momentum_projector.parameters())
    assert all(p.grad is not None for p in model.backbone.parameters())


def test_update_momentum_math_and_buffers():
    torch.manual_seed(0)
    model = _tiny_model(INTLLoss(momentum=True), momentum=0.9)
    with torch.no_grad():
        model.backbone[1].weight.add_(1.0)
        model.projector[0].weight.mul_(3.0)
        model.backbone[2].running_mean.fill_(7.0)
    q_b, q_p = model.backbone[1].weight.clone(), model.projector[0].weight.clone()
    k_b, k_p = model.momentum_backbone[1].weight.clone(), model.momentum_projector[0].weight.clone()
    model.update_momentum(0.75)
    torch.testing.assert_close(model.momentum_backbone[1].weight, 0.75 * k_b + 0.25 * q_b)
    torch.testing.assert_close(model.momentum_projector[0].weight, 0.75 * k_p + 0.25 * q_p)
    assert torch.all(model.momentum_backbone[2].running_mean == 0)  # buffers stay the momentum encoder's
    model.update_momentum(0.0)
    torch.testing.assert_close(model.momentum_backbone[1].weight, q_b)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        model.update_momentum(1.5)
    with pytest.raises(ValueError, match="momentum="):
        _tiny_model(_Record(), head_on_concat=False).update_momentum(0.9)


def test_momentum_schedule():
    base = 0.996
    assert momentum_at(0, 100, base) == pytest.approx(base)
    assert momentum_at(50, 100, base) == pytest.approx(1 - 0.5 * (1 - base))
    assert momentum_at(100, 100, base) == pytest.approx(1.0)
    assert momentum_at(25, 100, base) == pytest.approx(1 - 0.5 * (1 + math.cos(math.pi / 4)) * (1 - base))


def test_momentum_must_match_the_loss_mode():
    with pytest.raises(ValueError, match=r"momentum=None but INTLLoss\(momentum=True\)"):
        _tiny_model(INTLLoss(momentum=True))
    with pytest.raises(ValueError, match=r"momentum=0.9 but INTLLoss\(momentum=False\)"):
        _tiny_model(INTLLoss(momentum=False), momentum=0.9)
    with pytest.raises(ValueError, match=r"momentum must be a number in \(0, 1\)"):
        _tiny_model(INTLLoss(momentum=True), momentum=1.0)


@pytest.mark.parametrize("views, message", [
    ([torch.randn(2, 3, 2, 2)], "at least 2 view batches, got 1"),
    ([], "at least 2 view batches, got 0"),
    (torch.randn(2, 2, 3, 2, 2), "got a Tensor"),
    ([torch.randn(2, 3, 2, 2), "x"], "view 1 is a str"),
    ([torch.randn(0, 3, 2, 2), torch.randn(0, 3, 2, 2)], "view 0 has shape"),
    ([torch.randn(2, 3, 2, 2), torch.randn(3, 3, 2, 2)], r"same batch size .*\[2, 3\]"),
])
def test_bad_views_are_refused(views, message):
    with pytest.raises(ValueError, match=message):
        _tiny_model(_Record(), head_on_concat=True)(views)
