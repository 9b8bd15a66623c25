"""detection.configs: every shipped config loads and matches the papers' protocols (through detectron2's
defaults: the real ones where detectron2 is installed, the checked snapshot elsewhere)."""

from __future__ import annotations

import pytest

from detection import configs


@pytest.mark.parametrize("path", configs.shipped_configs(), ids=lambda p: p.stem)
def test_every_shipped_config_loads(path):
    cfg = configs.load_config(path)
    s = configs.to_torchvision(cfg)
    # MoCo's normalisation settings and the wssl-zoo input settings, everywhere.
    assert cfg["MODEL"]["RESNETS"]["NORM"] == "SyncBN"
    assert cfg["MODEL"]["BACKBONE"]["FREEZE_AT"] == 0
    assert cfg["MODEL"]["RESNETS"]["STRIDE_IN_1X1"] is False
    assert cfg["INPUT"]["FORMAT"] == "RGB"
    assert cfg["MODEL"]["PIXEL_MEAN"] == pytest.approx([123.675, 116.28, 103.53])
    assert cfg["MODEL"]["PIXEL_STD"] == pytest.approx([58.395, 57.12, 57.375])
    assert s.ims_per_batch == 16 and s.base_lr == 0.02 and s.warmup_factor == 0.001


@pytest.mark.parametrize("name,arch,mask,max_iter,steps,warmup,mins,classes", [
    ("coco_R_50_C4_1x", "C4", True, 90000, (60000, 80000), 1000, tuple(range(640, 801, 32)), 80),
    ("coco_R_50_C4_2x", "C4", True, 180000, (120000, 160000), 1000, tuple(range(640, 801, 32)), 80),
    ("voc_R_50_C4_24k", "C4", False, 24000, (18000, 22000), 100, tuple(range(480, 801, 32)), 20),
    ("coco_R_50_FPN_1x", "FPN", True, 90000, (60000, 80000), 1000, tuple(range(640, 801, 32)), 80),
])
def test_protocols(name, arch, mask, max_iter, steps, warmup, mins, classes):
    cfg = configs.load_config(name)
    s = configs.to_torchvision(cfg)
    assert (s.arch, s.mask_on, s.max_iter, s.steps, s.warmup_iters, s.min_size_train, s.num_classes) == (
        arch, mask, max_iter, steps, warmup, mins, classes)
    assert s.extra_norm == (arch == "C4")
    assert cfg["_NAME"] == name


def test_unknown_key_names_key_and_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text('_BASE_: "%s"\nSOLVER:\n  MAX_ITERS: 10\n' % configs.config_path("coco_R_50_C4_1x"))
    with pytest.raises(configs.ConfigError, match=r"bad\.yaml.*SOLVER\.MAX_ITERS"):
        configs.load_config(bad)


def test_bad_value_and_overrides():
    with pytest.raises(configs.ConfigError, match="MODEL.RESNETS.NORM"):  # detectron2 has no such norm
        configs.load_config("coco_R_50_C4_1x", ["MODEL.RESNETS.NORM=XN"])
    gn = configs.load_config("coco_R_50_C4_1x", ["MODEL.RESNETS.NORM=GN"])  # detectron2 has it, torchvision not
    with pytest.raises(configs.ConfigError, match="MODEL.RESNETS.NORM 'GN'.*use --backend detectron2"):
        configs.to_torchvision(gn)
    for norm in configs.NORMS:  # every norm detectron2 accepts loads; BN variants map onto the torchvision ones
        cfg = configs.load_config("coco_R_50_C4_1x", [f"MODEL.RESNETS.NORM={norm}"] if norm else
                                  ["MODEL.RESNETS.NORM=''"])
        assert cfg["MODEL"]["RESNETS"]["NORM"] == norm
    assert configs.to_torchvision(configs.load_config("coco_R_50_C4_1x", ["MODEL.RESNETS.NORM=naiveSyncBN"])).norm == "SyncBN"
    with pytest.raises(configs.ConfigError, match=r"Type mismatch.*SOLVER\.MAX_ITER"):
        configs.load_config("coco_R_50_C4_1x", ["SOLVER.MAX_ITER=many"])
    with pytest.raises(configs.ConfigError, match="unknown config key 'SOLVER.NOPE'"):
        configs.load_config("coco_R_50_C4_1x", ["SOLVER.NOPE=1"])
    cfg = configs.load_config("coco_R_50_C4_1x", ["SOLVER.BASE_LR=0.01", "INPUT.MIN_SIZE_TRAIN=(96, 128)"])
    assert cfg["SOLVER"]["BASE_LR"] == 0.01 and cfg["INPUT"]["MIN_SIZE_TRAIN"] == (96, 128)
    with pytest.raises(configs.ConfigError, match="no such file or protocol"):
        configs.load_config("coco_R_50_C4_9x")


def test_lr_schedule_is_detectron2s():
    s = configs.to_torchvision(configs.load_config("voc_R_50_C4_24k"))
    assert s.lr_at(0) == pytest.approx(0.02 * 0.001)
    assert s.lr_at(50) == pytest.approx(0.02 * (0.001 * 0.5 + 0.5))
    assert s.lr_at(100) == pytest.approx(0.02)
    assert s.lr_at(17999) == pytest.approx(0.02)
    assert s.lr_at(18000) == pytest.approx(0.002)
    assert s.lr_at(22000) == pytest.approx(0.0002)
