"""Converters from the authors' checkpoint layouts, on checkpoints built here in each layout."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import wssl_zoo
from wssl_zoo.cli import main
from wssl_zoo.convert import ConversionError, convert_checkpoint, read_checkpoint

from builders import authors_resnet, dataparallel_state, head, intl_ckpt, prefixed


def feats(model: nn.Module, size: int) -> torch.Tensor:
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        return model.eval()(x)


def cwrgp_imagenet_ckpt(backbone, projection):
    return {"epoch": 200, "arch": "resnet18", "state_dict": {**prefixed(backbone, "module.model."),
                                                             **prefixed(projection, "module.head.")}}


def test_intl_ddp_layout_converts_with_projector_and_provenance(tmp_path):
    backbone, projection = authors_resnet("resnet18", "imagenet", 0), head(512, 64, 32, False, 1)
    torch.save(intl_ckpt(backbone, projection), tmp_path / "ckpt.pth.tar")
    prov = convert_checkpoint("official-intl", tmp_path / "ckpt.pth.tar", tmp_path / "out")
    loaded = wssl_zoo.load(tmp_path / "out")
    assert torch.allclose(feats(loaded, 64), feats(backbone, 64), atol=1e-5, rtol=1e-5)
    assert prov["arch"] == "resnet18" and prov["stem"] == "imagenet" and prov["prefixes"]["backbone"] == "module.backbone."
    assert prov["projector"] == dict(num_layers=2, hidden_dim=64, out_dim=32, hidden_bias=False, last_bias=True, batch_norm=True)
    assert prov["feature_check"]["max_abs_diff"] <= 1e-9
    from safetensors.torch import load_file

    proj = load_file(tmp_path / "out" / "projector.safetensors")
    assert torch.equal(proj["3.weight"], projection[3].weight) and "0.bias" not in proj
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["pretrained_cfg"]["mean"] == [0.485, 0.456, 0.406] and config["wssl_zoo"]["converted_from"] == "official-intl"
    assert json.loads((tmp_path / "out" / "convert.json").read_text())["source_sha256"] == prov["source_sha256"]


def test_intl_m_takes_the_online_branch_by_default_and_the_momentum_one_on_request(tmp_path):
    online, online_head = authors_resnet("resnet18", "imagenet", 0), head(512, 64, 32, False, 1)
    ema, ema_head = authors_resnet("resnet18", "imagenet", 5), head(512, 64, 32, False, 6)
    torch.save(intl_ckpt(online, online_head, (ema, ema_head)), tmp_path / "m.pth.tar")
    prov = convert_checkpoint("official-intl", tmp_path / "m.pth.tar", tmp_path / "online")
    assert torch.allclose(feats(wssl_zoo.load(tmp_path / "online"), 64), feats(online, 64), atol=1e-5)
    assert len(prov["dropped_keys"]) == len(ema.state_dict()) + len(ema_head.state_dict())
    assert all(k.startswith("module.momentum_") for k in prov["dropped_keys"])
    convert_checkpoint("official-intl", tmp_path / "m.pth.tar", tmp_path / "ema", branch="momentum")
    assert torch.allclose(feats(wssl_zoo.load(tmp_path / "ema"), 64), feats(ema, 64), atol=1e-5)
    with pytest.raises(ConversionError, match="no momentum encoder"):
        torch.save(intl_ckpt(online, online_head), tmp_path / "plain.pth.tar")
        convert_checkpoint("official-intl", tmp_path / "plain.pth.tar", tmp_path / "x", branch="momentum")


def test_cwrgp_imagenet_ddp_layout(tmp_path):
    backbone, projection = authors_resnet("resnet18", "imagenet", 2), head(512, 64, 48, True, 3)
    torch.save(cwrgp_imagenet_ckpt(backbone, projection), tmp_path / "checkpoint_0199.pth.tar")
    prov = convert_checkpoint("official-cwrgp", tmp_path / "checkpoint_0199.pth.tar", tmp_path / "out")
    assert prov["prefixes"] == {"backbone": "module.model.", "projector": "module.head."}
    assert torch.allclose(feats(wssl_zoo.load(tmp_path / "out"), 64), feats(backbone, 64), atol=1e-5)


@pytest.mark.parametrize("layout", ["official-wmse", "official-cwrgp"])
def test_dataparallel_layout_of_the_small_data_code_with_the_cifar_stem(tmp_path, layout):
    backbone, projection = authors_resnet("resnet18", "cifar", 4), head(512, 64, 16, True, 5)
    torch.save(dataparallel_state(backbone, projection), tmp_path / "model.pt")
    with pytest.raises(ConversionError, match="pass --stem cifar"):
        convert_checkpoint(layout, tmp_path / "model.pt", tmp_path / "out")
    prov = convert_checkpoint(layout, tmp_path / "model.pt", tmp_path / "out", stem="cifar", dataset="cifar10")
    assert prov["prefixes"]["backbone"] == "model.module."
    loaded = wssl_zoo.load(tmp_path / "out")
    assert torch.allclose(feats(loaded, 32), feats(backbone, 32), atol=1e-5)
    mean_std = json.loads((tmp_path / "out" / "config.json").read_text())["pretrained_cfg"]
    assert mean_std["std"] == [0.2023, 0.1994, 0.201] and mean_std["input_size"] == [3, 32, 32]


def test_resnet50_with_a_registry_entry_sets_preprocessing_and_checks_the_arch(tmp_path):
    backbone = authors_resnet("resnet50", "imagenet", 8)
    torch.save(cwrgp_imagenet_ckpt(backbone, head(2048, 64, 32, True, 9)), tmp_path / "r50.pth.tar")
    prov = convert_checkpoint("official-cwrgp", tmp_path / "r50.pth.tar", tmp_path / "out", entry="cwrgp_r50")
    assert prov["entry"] == "cwrgp_resnet50" and prov["arch"] == "resnet50"
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["wssl_zoo"]["registry_name"] == "cwrgp_resnet50" and config["pretrained_cfg"]["input_size"] == [3, 224, 224]
    assert torch.allclose(feats(wssl_zoo.load(tmp_path / "out"), 64), feats(backbone, 64), atol=1e-4)
    with pytest.raises(ConversionError, match="not the requested resnet18"):
        convert_checkpoint("official-cwrgp", tmp_path / "r50.pth.tar", tmp_path / "o2", arch="resnet18")
    with pytest.raises(ConversionError, match="--entry intl_resnet50 is a intl model"):
        convert_checkpoint("official-cwrgp", tmp_path / "r50.pth.tar", tmp_path / "o3", entry="intl_resnet50")


def test_every_key_must_be_accounted_for(tmp_path):
    backbone, projection = authors_resnet("resnet18", "imagenet", 0), head(512, 64, 32, False, 1)
    ckpt = intl_ckpt(backbone, projection)
    ckpt["state_dict"]["module.classifier.weight"] = torch.zeros(10, 512)
    torch.save(ckpt, tmp_path / "extra.pth")
    with pytest.raises(ConversionError, match=r"extra.pth: keys that are neither backbone nor projector.*module.classifier.weight"):
        convert_checkpoint("official-intl", tmp_path / "extra.pth", tmp_path / "out")
    ckpt = intl_ckpt(backbone, projection)
    del ckpt["state_dict"]["module.backbone.layer3.1.bn2.running_var"]
    torch.save(ckpt, tmp_path / "missing.pth")
    with pytest.raises(ConversionError, match=r"missing keys \['layer3.1.bn2.running_var'\]"):
        convert_checkpoint("official-intl", tmp_path / "missing.pth", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    torch.save(dataparallel_state(backbone, projection), tmp_path / "wrong.pth")
    with pytest.raises(ConversionError, match="no backbone tensors: expected keys starting with one of.*look like --from official-cwrgp or official-wmse"):
        convert_checkpoint("official-intl", tmp_path / "wrong.pth", tmp_path / "out")


def test_a_checkpoint_with_arbitrary_pickled_objects_is_refused(tmp_path):
    import argparse

    torch.save({"state_dict": {}, "cfg": argparse.Namespace(lr=0.1)}, tmp_path / "pickled.pth")
    with pytest.raises(ConversionError, match="pickled.pth: not readable as a weights-only torch checkpoint"):
        read_checkpoint(tmp_path / "pickled.pth")
    with pytest.raises(FileNotFoundError, match="no such checkpoint file"):
        read_checkpoint(tmp_path / "absent.pth")


def test_a_bare_torchvision_state_dict(tmp_path):
    backbone = authors_resnet("resnet18", "imagenet", 3)
    torch.save(backbone.state_dict(), tmp_path / "bare.pth")
    prov = convert_checkpoint("official-intl", tmp_path / "bare.pth", tmp_path / "out")
    assert prov["prefixes"] == {"backbone": ""} and prov["projector"] is None
    assert not (tmp_path / "out" / "projector.safetensors").exists()
    assert torch.allclose(feats(wssl_zoo.load(tmp_path / "out"), 64), feats(backbone, 64), atol=1e-5)


def test_cli_convert_then_publish_dry_run(tmp_path, capsys, monkeypatch):
    backbone, projection = authors_resnet("resnet18", "cifar", 0), head(512, 64, 32, False, 1)
    torch.save(intl_ckpt(backbone, projection), tmp_path / "ckpt.pth.tar")
    out = tmp_path / "intl_r18"
    assert main(["convert", "--from", "official-intl", str(tmp_path / "ckpt.pth.tar"), "--entry", "intl_r18_c10",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "features equal the authors' torchvision resnet18" in text
    assert f"next: wssl-zoo publish {out} --repo ORG/NAME  (registry entry intl_resnet18_cifar10)" in text
    assert main(["publish", str(out), "--repo", "someone/intl_r18", "--dry-run", "--staging", str(tmp_path / "st")]) == 0
    text = capsys.readouterr().out
    assert "intl_resnet18_cifar10" in text and (tmp_path / "st" / "convert.json").is_file()
    readme = (tmp_path / "st" / "README.md").read_text()
    front = readme.split("\n---\n")[0]
    # the cifar stem is no timm architecture; converted authors' weights keep the authors' terms
    assert readme.startswith("---\n") and "library_name" not in front and "\nlicense: other\n" in front
    assert "# intl_resnet18_cifar10" in readme and "Converted from the authors' checkpoint `ckpt.pth.tar`" in readme
    assert main(["convert", "--from", "official-intl", str(tmp_path / "nope.pth"), "--out", str(out)]) == 2
    assert "no such checkpoint file" in capsys.readouterr().err
