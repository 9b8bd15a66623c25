"""detection.export: the strict timm -> detectron2 map, proved by a reference ResNet with
detectron2's parameter names loaded strictly from the exported pickle."""

from __future__ import annotations

import pickle

import pytest
import torch
import yaml
from torch import nn
from torch.nn import functional as F

from detection import export
from wssl_zoo.weights import ResolvedWeights


class D2Conv(nn.Conv2d):
    """detectron2.layers.Conv2d: a conv that owns its norm (``conv.norm``) and applies it."""

    def __init__(self, cin, cout, k, stride=1, padding=0):
        super().__init__(cin, cout, k, stride=stride, padding=padding, bias=False)
        self.norm = nn.BatchNorm2d(cout)

    def forward(self, x):
        return self.norm(super().forward(x))


class Stem(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = D2Conv(3, 64, 7, 2, 3)

    def forward(self, x):
        return F.max_pool2d(F.relu(self.conv1(x)), kernel_size=3, stride=2, padding=1)


class Bottleneck(nn.Module):
    """detectron2 BottleneckBlock with STRIDE_IN_1X1 False (the stride in the 3x3 conv)."""

    def __init__(self, cin, mid, cout, stride):
        super().__init__()
        self.shortcut = D2Conv(cin, cout, 1, stride) if (cin != cout or stride != 1) else None
        self.conv1 = D2Conv(cin, mid, 1)
        self.conv2 = D2Conv(mid, mid, 3, stride, 1)
        self.conv3 = D2Conv(mid, cout, 1)

    def forward(self, x):
        out = F.relu(self.conv2(F.relu(self.conv1(x))))
        out = self.conv3(out)
        return F.relu(out + (self.shortcut(x) if self.shortcut is not None else x))


class Basic(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.shortcut = D2Conv(cin, cout, 1, stride) if (cin != cout or stride != 1) else None
        self.conv1 = D2Conv(cin, cout, 3, stride, 1)
        self.conv2 = D2Conv(cout, cout, 3, 1, 1)

    def forward(self, x):
        out = self.conv2(F.relu(self.conv1(x)))
        return F.relu(out + (self.shortcut(x) if self.shortcut is not None else x))


class D2ResNet(nn.Module):
    """Parameter names as detectron2's ResNet: stem.conv1(.norm), res2..res5.{i}.conv*/shortcut."""

    def __init__(self, depth):
        super().__init__()
        self.stem = Stem()
        blocks = {18: [2, 2, 2, 2], 50: [3, 4, 6, 3]}[depth]
        cin = 64
        for i, n in enumerate(blocks):
            stage = []
            for j in range(n):
                stride = 2 if (j == 0 and i > 0) else 1
                if depth == 50:
                    mid, cout = 64 * 2 ** i, 256 * 2 ** i
                    stage.append(Bottleneck(cin, mid, cout, stride))
                else:
                    cout = 64 * 2 ** i
                    stage.append(Basic(cin, cout, stride))
                cin = cout
            setattr(self, f"res{i + 2}", nn.Sequential(*stage))

    def forward(self, x):
        x = self.stem(x)
        for i in range(2, 6):
            x = getattr(self, f"res{i}")(x)
        return x


def _timm_backbone(arch):
    import wssl_zoo

    torch.manual_seed(0)
    model = wssl_zoo.create(arch)
    with torch.no_grad():  # non-trivial norms, so a swapped mean/var or weight/bias would show
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _weights(label, arch, stem, mean, std):
    """The resolved-weights handle of an in-memory backbone (what export_detectron2 reads of it)."""
    return ResolvedWeights(spec=label, kind="local", label=label, arch=arch, stem=stem, method=None, img_size=224,
                           weights_sha256="0" * 64, mean=mean, std=std)


def _load_pickle(path):
    with open(path, "rb") as fh:
        return pickle.load(fh)


@pytest.mark.parametrize("arch,depth", [("resnet50", 50), ("resnet18", 18)])
def test_export_features_match_timm(tmp_path, arch, depth):
    model = _timm_backbone(arch)
    info = _weights("test", arch, "imagenet", (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    out, side = export.export_detectron2(model, info, tmp_path / "w.pkl", layout="backbone")
    data = _load_pickle(out)
    assert data["__author__"] == "wssl-zoo" and data["matching_heuristics"] is True
    ref = D2ResNet(depth).eval()
    state = {k: torch.as_tensor(v) for k, v in data["model"].items()}
    own = {k for k in ref.state_dict() if not k.endswith("num_batches_tracked")}
    assert set(state) == own  # exhaustive both ways
    ref.load_state_dict(state, strict=False)  # strict on every named tensor above; counters aside
    torch.manual_seed(1)
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        expected = model.forward_features(x)
        got = ref(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    frag = yaml.safe_load(side.read_text())
    assert frag["INPUT"]["FORMAT"] == "RGB"
    assert frag["MODEL"]["RESNETS"]["STRIDE_IN_1X1"] is False
    assert frag["MODEL"]["RESNETS"]["DEPTH"] == depth
    assert frag["MODEL"]["PIXEL_MEAN"] == pytest.approx([127.5, 102.0, 76.5])
    assert frag["MODEL"]["PIXEL_STD"] == pytest.approx([51.0, 63.75, 76.5])


def test_c4_and_fpn_layouts_are_exact_detectron2_names(tmp_path):
    model = _timm_backbone("resnet18")
    info = _weights("t", "resnet18", "imagenet", (0.5,) * 3, (0.25,) * 3)
    ref = D2ResNet(18)
    names = {k for k in ref.state_dict() if not k.endswith("num_batches_tracked")}
    out, _ = export.export_detectron2(model, info, tmp_path / "c4.pkl", layout="c4")
    c4 = _load_pickle(out)
    assert c4["matching_heuristics"] is False
    # GeneralizedRCNN + Res5ROIHeads: stem/res2-4 under backbone., res5 under roi_heads.
    expected = {(f"roi_heads.{k}" if k.startswith("res5.") else f"backbone.{k}") for k in names}
    assert set(c4["model"]) == expected
    out, _ = export.export_detectron2(model, info, tmp_path / "fpn.pkl", layout="fpn")
    assert set(_load_pickle(out)["model"]) == {f"backbone.bottom_up.{k}" for k in names}


def test_unmapped_key_fails_naming_it():
    state = _timm_backbone("resnet18").state_dict()
    state["layer2.0.se.fc1.weight"] = torch.zeros(4, 4)
    with pytest.raises(export.ExportError, match=r"layer2\.0\.se\.fc1\.weight"):
        export.timm_to_detectron2(state)


def test_missing_key_fails_naming_it():
    state = _timm_backbone("resnet18").state_dict()
    del state["layer3.1.bn2.running_var"]
    with pytest.raises(export.ExportError, match=r"res4\.1\.conv2\.norm\.running_var"):
        export.timm_to_detectron2(state)
    state = _timm_backbone("resnet18").state_dict()
    del state["layer1.0.conv1.weight"]
    with pytest.raises(export.ExportError, match=r"res2\.0\.conv1\.weight"):
        export.timm_to_detectron2(state)


def test_num_batches_tracked_dropped_and_each_key_once():
    state = _timm_backbone("resnet50").state_dict()
    d2 = export.timm_to_detectron2(state)
    assert len(d2) == len([k for k in state if not k.endswith("num_batches_tracked")])
    assert not any("num_batches_tracked" in k for k in d2)


def test_non_imagenet_stem_refused(tmp_path):
    import wssl_zoo

    model = wssl_zoo.create("resnet18", stem="cifar")
    info = _weights("c", "resnet18", "cifar", (0.5,) * 3, (0.25,) * 3)
    with pytest.raises(export.ExportError, match="stem 'cifar'"):
        export.export_detectron2(model, info, tmp_path / "x.pkl")


def test_cli_exports_model_dir(tmp_path, capsys):
    import wssl_zoo
    from wssl_zoo.modelio import save_model_dir

    model = wssl_zoo.create("resnet18")
    save_model_dir(tmp_path / "m", model, arch="resnet18", stem="imagenet", mean=(0.4, 0.4, 0.4),
                   std=(0.2, 0.2, 0.2), img_size=224)
    rc = export.main(["--model", str(tmp_path / "m"), "--format", "detectron2", "--out", str(tmp_path / "o.pkl")])
    assert rc == 0
    data = _load_pickle(tmp_path / "o.pkl")
    assert data["wssl_zoo"]["weights_sha256"] and data["wssl_zoo"]["depth"] == 18
    assert (tmp_path / "o.yaml").is_file()
    assert export.main(["--model", str(tmp_path / "nope"), "--out", str(tmp_path / "p.pkl")]) == 2
    assert "nope" in capsys.readouterr().err
