"""The detectron2 path against detectron2's own code (its pure-Python part, CPU): the config defaults and
merging, the export loaded by DetectionCheckpointer into build_model, and two iterations of the
detectron2 backend. Skipped where detectron2 is not installed (.ci/install_detectron2.sh installs it)."""

from __future__ import annotations

import inspect
import json
import pickle
import re

import numpy as np
import pytest

d2 = pytest.importorskip("detectron2", reason="detectron2 is not installed (bash .ci/install_detectron2.sh)")

import torch  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402

from detection import configs  # noqa: E402


def test_snapshot_is_detectron2s_get_cfg():
    """The defaults used where detectron2 is absent are exactly get_cfg() of this detectron2."""
    assert configs.SNAPSHOT.read_text() == configs.snapshot_text(get_cfg(), d2.__version__)
    assert configs._plain(configs.snapshot_defaults()) == configs._plain(get_cfg())
    assert configs.detectron2_defaults().__class__.__module__.startswith("detectron2")


@pytest.mark.parametrize("name", configs.PROTOCOLS)
def test_load_config_is_detectron2s_merge_from_file(name):
    cfg = get_cfg()
    cfg.merge_from_file(str(configs.config_path(name)))
    ours = configs.load_config(name)
    assert {k: v for k, v in ours.items() if not k.startswith("_")} == configs._plain(cfg)


def test_norms_are_those_get_norm_accepts():
    from detectron2.layers import batch_norm, get_norm

    source = inspect.getsource(batch_norm.get_norm)
    table = source[source.index("norm = {"):source.index("}[norm]")]
    assert set(configs.NORMS) == {""} | set(re.findall(r'^\s*"(\w+)":', table, re.M))
    for norm in configs.NORMS:
        layer = get_norm(norm, 64)
        assert (layer is None) == (norm == "")
        cfg = configs.load_config("coco_R_50_C4_1x", [f"MODEL.RESNETS.NORM={norm or chr(39) * 2}"])
        assert cfg["MODEL"]["RESNETS"]["NORM"] == norm


@pytest.mark.parametrize("arch,config,layout", [("resnet18", "coco_R_50_FPN_1x", "fpn"),
                                                ("resnet50", "coco_R_50_C4_1x", "c4")])
def test_export_loads_into_build_model_exactly(tmp_path, arch, config, layout):
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from detection.d2_backend import _register_extra_norm
    from detection.export import export_detectron2, load_backbone

    _register_extra_norm()  # MoCo's Res5ROIHeadsExtraNorm, which the C4 protocols name
    backbone, info = load_backbone(f"random:{arch}")
    weights, fragment = export_detectron2(backbone, info, tmp_path / "backbone.pkl", layout=layout)
    cfg = get_cfg()
    cfg.merge_from_file(str(configs.config_path(config)))
    cfg.merge_from_file(str(fragment))
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    exported = pickle.loads(weights.read_bytes())["model"]
    state = model.state_dict()
    assert set(exported) <= set(state), sorted(set(exported) - set(state))[:5]
    before = {k: v.clone() for k, v in state.items()}
    DetectionCheckpointer(model).load(str(weights))
    after = model.state_dict()
    for name, array in exported.items():
        assert torch.equal(after[name], torch.from_numpy(np.asarray(array))), name
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed <= set(exported)
    # The conv1 of the first block is timm's layer1.0.conv1.
    first = "backbone.bottom_up.res2.0.conv1.weight" if layout == "fpn" else "backbone.res2.0.conv1.weight"
    assert torch.equal(after[first], backbone.state_dict()["layer1.0.conv1.weight"])


@pytest.mark.slow
def test_detectron2_backend_two_iterations(tmp_path):
    from test_detection_train import FPN_FAST, make_coco

    from detection import train

    coco = make_coco(tmp_path / "coco", n=4, size=96)
    sets = FPN_FAST + ["INPUT.MAX_SIZE_TRAIN=160", "INPUT.MAX_SIZE_TEST=160", "SOLVER.CHECKPOINT_PERIOD=1000",
                       "MODEL.RESNETS.NORM=naiveSyncBN", "MODEL.ROI_HEADS.SCORE_THRESH_TEST=0.0", "MODEL.ROI_HEADS.NUM_CLASSES=2",  # detections for COCOeval
            "TEST.PRECISE_BN.NUM_ITER=2"]  # the protocol's PreciseBN hook runs, over 2 batches instead of 200 (11 s)
    record = tmp_path / "rec.json"
    rc = train.main(["--model", "random:resnet18", "--config", "coco_R_50_FPN_1x", "--coco-root", str(coco),
                     "--out", str(tmp_path / "run"), "--backend", "detectron2", "--max-iter", "2",
                     "--ims-per-batch", "2", "--num-workers", "0", "--record", str(record)]
                    + [a for s in sets for a in ("--set", s)])
    assert rc == 0
    rec = json.loads(record.read_text())
    assert rec["protocol"]["backend"] == "detectron2" and rec["protocol"]["max_iter"] == 2
    assert "bbox_AP" in rec["metrics"] and "segm_AP" in rec["metrics"]
    assert (tmp_path / "run" / "model_final.pth").is_file()
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.json").read_text().splitlines()]
    training = [x for x in lines if "total_loss" in x]  # the last line is the evaluation's (iteration 2)
    assert training[-1]["iteration"] == 1 and np.isfinite(training[-1]["total_loss"])
    assert "bbox/AP" in lines[-1]
