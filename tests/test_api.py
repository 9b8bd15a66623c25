"""The public API (create / load), the model-directory format and the first CLI commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import wssl_zoo
from wssl_zoo import fileio, modelio
from wssl_zoo.api import WeightsNotPublishedError
from wssl_zoo.cli import SUBCOMMANDS, Subcommand, build_parser, main, register_subcommand
from wssl_zoo.fileio import sha256_file
from wssl_zoo.modelio import load_model_dir, load_weights_file, save_model_dir
from wssl_zoo.registry import UnknownModelError

REPO = Path(__file__).resolve().parent.parent


def _randomise_bn(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics, so that a lost buffer changes the eval-mode output."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
    return model


def _saved_resnet18(folder: Path, stem: str = "imagenet", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = _randomise_bn(wssl_zoo.create("resnet18", stem=stem))
    save_model_dir(folder, model, arch="resnet18", stem=stem, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3),
                   img_size=224 if stem == "imagenet" else 32)
    return model


@pytest.mark.parametrize("stem,size", [("imagenet", 64), ("cifar", 32)])
def test_create_save_load_gives_identical_outputs(tmp_path, stem, size):
    model = _saved_resnet18(tmp_path / "m", stem)
    assert not model.training
    loaded = wssl_zoo.load(tmp_path / "m")
    assert not loaded.training and type(loaded) is type(model)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x)
        assert expected.shape == (2, 512)
        assert torch.equal(loaded(x), expected)
        assert torch.equal(wssl_zoo.load(str(tmp_path / "m" / "model.safetensors"))(x), expected)
    assert loaded.pretrained_cfg["mean"] == [0.5, 0.4, 0.3]
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]


def test_config_json_is_timms_format(tmp_path):
    _saved_resnet18(tmp_path / "in", "imagenet")
    cfg = json.loads((tmp_path / "in" / "config.json").read_text())
    assert {k: cfg[k] for k in ("architecture", "num_classes", "num_features", "global_pool")} == {
        "architecture": "resnet18", "num_classes": 0, "num_features": 512, "global_pool": "avg"}
    # this checkpoint only: our eval's bilinear resize, no hub id / url / tag / test size of timm's default
    assert cfg["pretrained_cfg"] == {"input_size": [3, 224, 224], "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3],
                                     "crop_pct": 0.875, "interpolation": "bilinear", "num_classes": 0,
                                     "crop_mode": "center", "custom_load": False, "fixed_input_size": False,
                                     "pool_size": [7, 7], "first_conv": "conv1", "classifier": "fc"}
    assert cfg["wssl_zoo"] == {"format_version": 1, "architecture": "resnet18", "stem": "imagenet"}
    _saved_resnet18(tmp_path / "c10", "cifar")
    cfg = json.loads((tmp_path / "c10" / "config.json").read_text())
    assert cfg["pretrained_cfg"]["crop_pct"] == 1.0 and cfg["pretrained_cfg"]["interpolation"] == "bilinear"
    assert cfg["pretrained_cfg"]["input_size"] == [3, 32, 32] and cfg["wssl_zoo"]["stem"] == "cifar"


def test_config_json_is_byte_for_byte_what_timms_save_for_hf_writes(tmp_path):
    import timm
    from timm.models._hub import save_for_hf

    model = _saved_resnet18(tmp_path / "ours", "imagenet")
    # the same weights saved by timm itself from a model carrying our pretrained_cfg
    theirs = timm.create_model("local-dir:" + str(tmp_path / "ours"), pretrained=True, num_classes=0)
    assert torch.equal(theirs.state_dict()["conv1.weight"], model.state_dict()["conv1.weight"])
    ours = json.loads((tmp_path / "ours" / "config.json").read_text())
    save_for_hf(theirs, str(tmp_path / "timm"), model_config={"wssl_zoo": ours["wssl_zoo"]}, safe_serialization=True)
    assert (tmp_path / "timm" / "config.json").read_bytes() == (tmp_path / "ours" / "config.json").read_bytes()


def test_loaded_model_carries_only_this_checkpoints_cfg_and_timm_resolves_its_size(tmp_path):
    import timm.data

    _saved_resnet18(tmp_path / "c10", "cifar")
    cfg = wssl_zoo.load(tmp_path / "c10").pretrained_cfg
    assert not {"hf_hub_id", "url", "tag", "test_input_size", "license", "origin_url"} & set(cfg)
    data = timm.data.resolve_data_config(model=wssl_zoo.load(tmp_path / "c10"))
    assert tuple(data["input_size"]) == (3, 32, 32) and data["interpolation"] == "bilinear" and data["crop_pct"] == 1.0


def test_files_are_written_with_the_mode_open_gives_under_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        _saved_resnet18(tmp_path / "m", "imagenet")
        fileio.atomic_write_bytes(tmp_path / "r.json", b"{}")
        os.umask(0o027)
        fileio.atomic_write_bytes(tmp_path / "g.json", b"{}")
    finally:
        os.umask(old)
    for name in ("config.json", "model.safetensors"):
        assert (tmp_path / "m" / name).stat().st_mode & 0o777 == 0o644, name
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "g.json").stat().st_mode & 0o777 == 0o640


def test_safetensors_file_holds_timm_keys_and_pt_metadata(tmp_path):
    from safetensors import safe_open

    model = _saved_resnet18(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}
        assert set(f.keys()) == set(model.state_dict())
    assert "conv1.weight" in model.state_dict() and "layer4.1.bn2.running_var" in model.state_dict()


def test_projector_and_extra_meta(tmp_path):
    from safetensors.torch import load_file

    model = wssl_zoo.create("resnet18")
    projector = torch.nn.Sequential(torch.nn.Linear(512, 16), torch.nn.BatchNorm1d(16), torch.nn.Linear(16, 8))
    save_model_dir(tmp_path, model, arch="resnet18", stem="imagenet", mean=(0.5,) * 3, std=(0.5,) * 3, img_size=32,
                   projector=projector, extra_meta={"method": "intl", "epochs": 2})
    assert set(load_file(str(tmp_path / "projector.safetensors"))) == set(projector.state_dict())
    assert json.loads((tmp_path / "config.json").read_text())["wssl_zoo"] == {
        "format_version": 1, "architecture": "resnet18", "stem": "imagenet", "method": "intl", "epochs": 2}
    with pytest.raises(ValueError, match=r"extra_meta may not set \['stem'\]"):
        save_model_dir(tmp_path / "x", model, arch="resnet18", stem="imagenet", mean=(0.5,) * 3, std=(0.5,) * 3,
                       img_size=32, extra_meta={"stem": "cifar"})
    with pytest.raises(ValueError, match="extra_meta is not JSON-serialisable"):
        save_model_dir(tmp_path / "y", model, arch="resnet18", stem="imagenet", mean=(0.5,) * 3, std=(0.5,) * 3,
                       img_size=32, extra_meta={"when": object()})
    assert not (tmp_path / "y").exists()  # checked before anything was written


def test_timm_loads_our_directory_directly(tmp_path):
    import timm

    model = _saved_resnet18(tmp_path, "imagenet", seed=3)
    plain = timm.create_model("resnet18", pretrained=True, num_classes=0,
                              pretrained_cfg_overlay=dict(file=str(tmp_path / "model.safetensors"))).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(plain(x), model(x))


@pytest.mark.parametrize("arch, stem, meta", [("resnet18", "cifar_pad2", True), ("test_vit", "imagenet", True),
                                              ("test_efficientnet", "imagenet", True),
                                              # non-persistent relative-position indices: built the ordinary way
                                              ("test_coatnet", "imagenet", False)])
def test_loading_skips_the_random_init_and_gives_the_ordinary_network(arch, stem, meta):
    """modelio.build_loaded (load_weights_file, convert, projectors) builds on the meta device where
    a state dict sets every tensor: no random number is drawn, and every parameter and buffer
    (non-persistent ones included) and the output are those of the ordinary build + load."""
    from wssl_zoo.encoders import create_backbone

    torch.manual_seed(0)
    state = _randomise_bn(create_backbone(arch, stem)).state_dict()
    ordinary = create_backbone(arch, stem).eval()
    ordinary.load_state_dict(state)
    rng = torch.random.get_rng_state()
    loaded = modelio.build_loaded(lambda: create_backbone(arch, stem), state, "the test's state").eval()
    assert torch.equal(torch.random.get_rng_state(), rng) is meta  # meta: no init drawn
    want = dict(ordinary.named_parameters()) | dict(ordinary.named_buffers())
    got = dict(loaded.named_parameters()) | dict(loaded.named_buffers())
    assert want.keys() == got.keys()
    for name, tensor in want.items():
        assert got[name].device.type == "cpu" and torch.equal(got[name], tensor), name
    size = 32 if stem != "imagenet" else ordinary.pretrained_cfg["input_size"][-1]
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert torch.equal(loaded(x), ordinary(x))


def test_a_network_loaded_without_its_init_still_refuses_a_wrong_state():
    from wssl_zoo.encoders import create_backbone

    state = create_backbone("test_resnet").state_dict()
    del state["fc.weight" if "fc.weight" in state else next(iter(state))]
    with pytest.raises(ValueError, match="the test's state does not match the architecture: missing keys"):
        modelio.build_loaded(lambda: create_backbone("test_resnet"), state, "the test's state")


def test_strict_loading_lists_missing_unexpected_and_mis_shaped_keys(tmp_path):
    from safetensors.torch import load_file, save_file

    _saved_resnet18(tmp_path)
    weights = tmp_path / "model.safetensors"
    state = load_file(str(weights))
    state["head.fc.weight"] = torch.zeros(10, 512)
    del state["layer1.0.conv1.weight"], state["bn1.running_mean"]
    state["fc.bias"] = torch.zeros(3)
    save_file(state, str(weights))
    with pytest.raises(ValueError) as info:
        load_model_dir(tmp_path)
    msg = str(info.value)
    assert msg.startswith(f"{weights} does not match the architecture")
    assert "missing keys ['bn1.running_mean', 'layer1.0.conv1.weight']" in msg
    assert "unexpected keys ['fc.bias', 'head.fc.weight']" in msg


def test_stem_mismatch_is_a_shape_error(tmp_path):
    _saved_resnet18(tmp_path, "cifar")  # 3x3 conv1 weights...
    with pytest.raises(ValueError, match=r"shape mismatches \['conv1.weight: file \(64, 3, 3, 3\) vs model \(64, 3, 7, 7\)'\]"):
        load_weights_file(tmp_path / "model.safetensors", "resnet18", "imagenet")  # ...into the 7x7 stem
    assert isinstance(load_weights_file(tmp_path / "model.safetensors", "resnet18", "cifar"), torch.nn.Module)


def test_non_finite_weights_are_refused_by_name(tmp_path):
    from safetensors.torch import load_file, save_file

    _saved_resnet18(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    state["layer2.0.bn1.running_var"][5] = float("nan")
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"tensor 'layer2.0.bn1.running_var' holds NaN or Inf; refusing to load"):
        wssl_zoo.load(tmp_path)
    bad = wssl_zoo.create("resnet18")
    with torch.no_grad():
        bad.fc = torch.nn.Identity()
        bad.layer3[0].conv2.weight[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"refusing to save .*model.safetensors: tensor 'layer3.0.conv2.weight' holds NaN or Inf"):
        save_model_dir(tmp_path / "bad", bad, arch="resnet18", stem="imagenet", mean=(0.5,) * 3, std=(0.5,) * 3, img_size=32)
    assert not (tmp_path / "bad" / "model.safetensors").exists()


def test_atomic_writes_leave_no_temporary_files(tmp_path, monkeypatch):
    _saved_resnet18(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    before = (tmp_path / "model.safetensors").read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(fileio.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        _saved_resnet18(tmp_path, seed=9)
    assert (tmp_path / "model.safetensors").read_bytes() == before  # the old file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]


def test_loading_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such model directory"):
        wssl_zoo.load(str(tmp_path / "nothing" / "here"))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="not a model directory or a .safetensors file"):
        wssl_zoo.load(tmp_path / "notes.txt")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model_dir(tmp_path)
    model = wssl_zoo.create("resnet18")
    bare = tmp_path / "bare"
    save_model_dir(bare, model, arch="resnet18", stem="imagenet", mean=(0.5,) * 3, std=(0.5,) * 3, img_size=32)
    (bare / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"no config.json beside it .*load_weights_file\(path, arch, stem\)"):
        wssl_zoo.load(bare / "model.safetensors")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(load_weights_file(bare / "model.safetensors", "resnet18")(x), model(x))
    (bare / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_weights_file(bare / "model.safetensors", "resnet18")


def test_newer_format_version_is_refused(tmp_path):
    _saved_resnet18(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["wssl_zoo"]["format_version"] = 2
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="format_version 2 is newer than this wssl-zoo reads"):
        load_model_dir(tmp_path)


def test_sha256_file_streams(tmp_path):
    import hashlib

    data = os.urandom(3000)
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f", chunk=1024) == hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------ create / load by name


def test_create_by_registry_name_alias_and_timm_name():
    m = wssl_zoo.create("cwrgp_r18_c10")
    assert not m.training and m.conv1.kernel_size == (3, 3) and m.num_features == 512
    assert wssl_zoo.create("cwrgp_r18_c10", stem="imagenet").conv1.kernel_size == (7, 7)
    assert wssl_zoo.create("resnet18").conv1.kernel_size == (7, 7)
    with pytest.raises(UnknownModelError, match="closest: intl_r50"):
        wssl_zoo.create("intl_r5")


@pytest.mark.parametrize("name", ["wmse_resnet50", "cwrgp_r50", "intl_r50", "wmse_r18_c10", "cwrgp_resnet18_cifar10", "intl_r18_c10"])
def test_registered_but_unpublished_weights_say_how_to_make_them(name, unpublished_registry):
    entry = wssl_zoo.get_entry(name)
    with pytest.raises(WeightsNotPublishedError) as info:
        wssl_zoo.load(name)
    msg = str(info.value)
    assert isinstance(info.value, ValueError)
    assert f"the weights of '{entry.name}' are not published yet" in msg
    assert f"wssl-zoo pretrain --recipe {entry.recipe} --data ROOT --out runs/{entry.name}" in msg
    assert f"wssl_zoo.load('runs/{entry.name}')" in msg
    if entry.official["url"]:
        assert entry.official["url"] in msg


def test_unpublished_error_says_how_to_convert_the_authors_checkpoint(unpublished_registry):
    with pytest.raises(WeightsNotPublishedError, match=r"wssl-zoo convert --from official-cwrgp CKPT --entry cwrgp_resnet50 --out runs/cwrgp_resnet50"):
        wssl_zoo.load("cwrgp_r50")


def test_unknown_name_lists_close_names():
    with pytest.raises(UnknownModelError, match=r"unknown model 'intl_resnet5'; closest: intl_resnet50"):
        wssl_zoo.load("intl_resnet5")
    with pytest.raises(FileNotFoundError, match="no such model directory or file"):
        wssl_zoo.load("runs/intl_resnet5")


# ------------------------------------------------------------------ CLI


def test_cli_list(capsys, unpublished_registry):
    assert main(["list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("| model | aliases | method | arch (stem) | trained on | epochs | paper linear top-1 | weights |")
    rows = {line.split("|")[1].strip(" `"): line for line in out[2:]}
    assert set(rows) == set(wssl_zoo.list_models())
    assert "| intl | resnet50 (imagenet) | imagenet | 800 | 76.60 (reported by the authors) | not published yet |" in rows["intl_resnet50"]
    assert "| 71.00 (reported by the authors) |" in rows["cwrgp_resnet50"] and "`cwrgp_r50`" in rows["cwrgp_resnet50"]
    assert "| not reported |" in rows["wmse_resnet50"]
    assert main(["list", "--method", "wmse"]) == 0
    assert "intl" not in capsys.readouterr().out


def test_cli_list_and_info_of_published_entries(capsys, published_registry):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "not published yet" not in out
    assert "| [wssl-zoo/intl_resnet50](https://huggingface.co/wssl-zoo/intl_resnet50) |" in out
    assert main(["info", "intl_r50"]) == 0
    out = capsys.readouterr().out
    assert "weights published: yes" in out and f"@ {'c' * 40}" in out
    assert f"model.safetensors: sha256 {'ab' * 32}, 1,000 bytes" in out


def test_cli_info_shows_every_field_without_downloading(capsys, monkeypatch, unpublished_registry):
    def no_download(*args, **kwargs):
        raise AssertionError("info must not download")

    monkeypatch.setattr("huggingface_hub.hf_hub_download", no_download)
    assert main(["info", "cwrgp_r50"]) == 0
    out = capsys.readouterr().out
    e = wssl_zoo.get_entry("cwrgp_r50")
    for text in (e.name, e.variant, e.description, e.recipe, "cov_stop_epoch=100", "'cov_weight': 0.01",
                 "weights published: no", "model.safetensors: sha256 (empty until published)",
                 e.official["url"], "linear_top1 on imagenet, 100 ep: 69.7  [reported by the authors;",
                 "@inproceedings{weng2022investigation", str(e.path)):
        assert text in out, text
    assert main(["info", "wmse_r50"]) == 0
    assert "paper results: none registered" in capsys.readouterr().out


def test_cli_errors_are_one_line_with_status_2(capsys):
    assert main(["info", "nope_model"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    assert captured.err.startswith("wssl-zoo info: error: unknown model 'nope_model'")
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2


def test_subcommands_register_by_name():
    names = [c.name for c in SUBCOMMANDS]
    assert {"list", "info"} <= set(names) and len(names) == len(set(names))
    with pytest.raises(ValueError, match="'list' is already registered"):
        register_subcommand(Subcommand("list", "again", lambda p: None, lambda a: 0))
    assert build_parser().parse_args(["info", "x"]).name == "x"


def test_python_dash_m_runs_the_cli():
    result = subprocess.run([sys.executable, "-m", "wssl_zoo", "info", "intl_r18_c10"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "intl_resnet18_cifar10" in result.stdout and "92.6" in result.stdout


def test_random_init_is_drawn_once_for_resolve_and_build(monkeypatch):
    """resolve() draws the random backbone to hash it; the first build() hands that one out
    instead of drawing it again; later builds draw identical copies."""
    from wssl_zoo import encoders
    from wssl_zoo.modelio import tensor_sha256
    from wssl_zoo.weights import resolve

    calls = []
    real = encoders.create_backbone
    monkeypatch.setattr(encoders, "create_backbone", lambda *a, **k: calls.append(a) or real(*a, **k))
    weights = resolve("random:resnet18:cifar:32", seed=3)
    first = weights.build()
    assert len(calls) == 1
    second = weights.build()
    assert len(calls) == 2 and second is not first
    assert tensor_sha256(first) == tensor_sha256(second) == weights.weights_sha256
    assert not first.training and not second.training


def test_one_load_of_a_model_directory_hashes_its_weights_once_and_reads_its_config_once(tmp_path, monkeypatch):
    """The resolved-weights handle is what gets passed around: it keeps the hash and the config it read."""
    _saved_resnet18(tmp_path / "m")
    calls = {"hash": [], "config": []}
    real_hash, real_config = fileio.sha256_file, modelio.read_config
    monkeypatch.setattr(fileio, "sha256_file", lambda path, *a: (calls["hash"].append(Path(path).name), real_hash(path, *a))[1])
    monkeypatch.setattr(modelio, "read_config", lambda folder: (calls["config"].append(1), real_config(folder))[1])
    from wssl_zoo.weights import resolve

    weights = resolve(tmp_path / "m")
    weights.build()
    assert (weights.weights_sha256, weights.recipe) == (real_hash(tmp_path / "m" / "model.safetensors"), None)
    assert calls == {"hash": ["model.safetensors"], "config": [1]}
