"""Converted checkpoints give the features of the network the authors trained (float64).

The authors' networks are rebuilt here from reading their model files, independently of
wssl_zoo.convert's own reference:

- W-MSE (htdt/self-supervised@d9662c8 model.py:19-29) and CW-RGP (winci-ai/CW-RGP@5bbf6ed
  base/model.py:19-29, ImageNet/model.py:19-26): torchvision's ResNet; for non-ImageNet data conv1
  becomes 3x3/1 padding 1 (model.py:22-23), for CIFAR the max-pool becomes Identity (model.py:24-25).
- INTL (winci-ai/INTL@0aa69af src/resnet.py, src/model.py:16-27): its own ResNet, written out below:
  ``forward`` zero-pads the input by 1 (src/resnet.py:156 ``ConstantPad2d(1, 0.0)``, applied at
  src/resnet.py:276) before conv1 (7x7/2 padding 2, src/resnet.py:174-181); for CIFAR conv1 is replaced
  by 3x3/1 padding 1 and the max-pool by Identity (src/model.py:23-25), the pad staying in ``forward``.
"""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from torch import nn

import wssl_zoo
from wssl_zoo.convert import ConversionError, convert_checkpoint
from wssl_zoo.encoders import create_backbone


# ------------------------------------------------------------------ INTL's ResNet, from src/resnet.py
class _IntlBasic(nn.Module):  # src/resnet.py:24-72: conv3x3-bn-relu-conv3x3-bn, + identity, relu
    expansion = 1

    def __init__(self, cin, planes, stride, downsample):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class _IntlBottleneck(nn.Module):  # src/resnet.py:75-133: 1x1, 3x3 (stride here), 1x1 x4; last_activation relu
    expansion = 4

    def __init__(self, cin, planes, stride, downsample):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class IntlResNet(nn.Module):
    """src/resnet.py:136-290 (+ src/model.py:23-25 when ``cifar``): the pad, the stem, 4 stages, avg-pool."""

    def __init__(self, block, layers, cifar: bool):
        super().__init__()
        self.padding = nn.ConstantPad2d(1, 0.0)  # src/resnet.py:156
        if cifar:  # src/model.py:24-25
            self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        else:  # src/resnet.py:172-184: "change padding 3 -> 2 ... because added a padding layer"
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 2, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
            stride = 1 if i == 0 else 2
            stage = []
            for b in range(blocks):  # src/resnet.py:230-273
                down = None
                if b == 0 and (stride != 1 or cin != planes * block.expansion):
                    down = nn.Sequential(nn.Conv2d(cin, planes * block.expansion, 1, stride, bias=False),
                                         nn.BatchNorm2d(planes * block.expansion))
                stage.append(block(cin, planes, stride if b == 0 else 1, down))
                cin = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))

    def forward(self, x):  # src/resnet.py:275-290
        x = self.maxpool(torch.relu(self.bn1(self.conv1(self.padding(x)))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


def intl_network(arch: str, cifar: bool) -> nn.Module:
    return {"resnet18": lambda: IntlResNet(_IntlBasic, (2, 2, 2, 2), cifar),  # src/resnet.py:292-293
            "resnet50": lambda: IntlResNet(_IntlBottleneck, (3, 4, 6, 3), cifar)}[arch]()  # src/resnet.py:299-300


def wmse_cwrgp_network(arch: str, dataset: str) -> nn.Module:
    """W-MSE model.py:21-27 / CW-RGP base/model.py:21-27 (their "imagenet" / "in100" keeps torchvision's stem)."""
    model = getattr(torchvision.models, arch)(weights=None)
    if dataset not in ("imagenet", "in100"):
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    if dataset in ("cifar10", "cifar100"):
        model.maxpool = nn.Identity()
    model.fc = nn.Identity()
    return model


def randomised(model: nn.Module, seed: int) -> nn.Module:
    """Random weights and BN statistics/affines, so that every tensor matters for the features."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("running_var"):
                t.uniform_(0.5, 1.5)
            elif name.endswith("running_mean") or name.endswith(".bias"):
                t.normal_(0, 0.1)
            elif t.dim() == 1 and t.is_floating_point():  # BN weight
                t.normal_(1.0, 0.1)
            elif t.is_floating_point():
                t.normal_(0, (2.0 / t[0].numel()) ** 0.5)
    return model.double().eval()


def features(model: nn.Module, size: int) -> torch.Tensor:
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    with torch.no_grad():
        return model.double().eval()(x)


# (layout, key prefix, arch, dataset, stem passed to the converter, expected stem, input px)
CASES = [
    ("official-intl", "module.backbone.", "resnet18", "cifar10", None, "cifar_pad2", 32),
    ("official-intl", "module.backbone.", "resnet18", "cifar100", None, "cifar_pad2", 32),
    ("official-intl", "module.backbone.", "resnet50", "imagenet", None, "imagenet", 64),
    ("official-wmse", "model.module.", "resnet18", "cifar10", "cifar", "cifar", 32),
    ("official-wmse", "model.module.", "resnet18", "stl10", "small", "small", 64),
    ("official-cwrgp", "model.module.", "resnet18", "tiny_imagenet", "small", "small", 64),
    ("official-cwrgp", "module.model.", "resnet50", "imagenet", None, "imagenet", 64),
]


@pytest.mark.parametrize("layout, prefix, arch, dataset, stem, expected_stem, size", CASES)
def test_converted_checkpoint_has_the_authors_network_features(tmp_path, layout, prefix, arch, dataset, stem,
                                                               expected_stem, size):
    if layout == "official-intl":
        authors = randomised(intl_network(arch, cifar=dataset.startswith("cifar")), 0)
    else:
        authors = randomised(wmse_cwrgp_network(arch, dataset), 0)
    torch.save({prefix + k: v.float() for k, v in authors.state_dict().items()}, tmp_path / "ckpt.pth")
    prov = convert_checkpoint(layout, tmp_path / "ckpt.pth", tmp_path / "out", stem=stem, dataset=dataset)
    assert prov["stem"] == expected_stem and prov["feature_check"]["max_abs_diff"] <= 1e-9
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["wssl_zoo"]["stem"] == expected_stem
    ours = wssl_zoo.load(tmp_path / "out")
    authors_f32 = authors.float().double()  # the checkpoint holds float32 tensors
    assert torch.allclose(features(ours, size), features(authors_f32, size), rtol=1e-10, atol=1e-10)


def test_intl_cifar_network_is_not_the_plain_cifar_stem():
    """The quirk is real: the same tensors in the corrected ``cifar`` stem give other features."""
    authors = randomised(intl_network("resnet18", cifar=True), 1)
    padded, plain = create_backbone("resnet18", "cifar_pad2"), create_backbone("resnet18", "cifar")
    padded.load_state_dict(authors.state_dict())
    plain.load_state_dict(authors.state_dict())
    assert torch.allclose(features(padded, 32), features(authors, 32), rtol=1e-10, atol=1e-10)
    assert not torch.allclose(features(plain, 32), features(authors, 32), rtol=1e-3, atol=1e-3)
    with torch.no_grad():  # 34 x 34 maps after INTL's stem, 32 x 32 after the corrected one; 5 x 5 / 4 x 4 at the end
        x = torch.zeros(1, 3, 32, 32, dtype=torch.float64)
        assert padded.double().forward_features(x).shape[-1] == 5 and plain.double().forward_features(x).shape[-1] == 4


def test_intl_cifar_recipes_and_entry_default_to_the_authors_stem():
    from wssl_zoo.pretrain.recipes import RECIPES
    from wssl_zoo.registry import get_entry

    assert RECIPES["intl_cifar10"].stem == RECIPES["intl_cifar100"].stem == "cifar_pad2"
    assert get_entry("intl_resnet18_cifar10").stem == "cifar_pad2"
    # the W-MSE / CW-RGP CIFAR networks are torchvision's padding-1 conv
    assert RECIPES["wmse_cifar10"].stem == RECIPES["cwrgp_cifar10"].stem == "cifar"


def test_converter_refuses_a_stem_the_authors_network_does_not_have(tmp_path):
    authors = randomised(intl_network("resnet18", cifar=True), 2)
    torch.save({"module.backbone." + k: v.float() for k, v in authors.state_dict().items()}, tmp_path / "i.pth")
    with pytest.raises(ConversionError, match="cifar_pad2 stem; --stem cifar would change its features"):
        convert_checkpoint("official-intl", tmp_path / "i.pth", tmp_path / "o", stem="cifar", dataset="cifar10")
    tv = randomised(wmse_cwrgp_network("resnet18", "cifar10"), 3)
    torch.save({"model.module." + k: v.float() for k, v in tv.state_dict().items()}, tmp_path / "w.pth")
    with pytest.raises(ConversionError, match="pass --stem cifar or --stem small"):
        convert_checkpoint("official-wmse", tmp_path / "w.pth", tmp_path / "o", stem="cifar_pad2", dataset="cifar10")
