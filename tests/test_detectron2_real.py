"""The detectron2 path against detectron2's own code (its pure-Python part, CPU): the config defaults and
merging, the export loaded by DetectionCheckpointer into build_model, detection.d2_register under
detectron2's own DefaultTrainer / default_setup, and the detectron2 backend (iterations, overrides,
preemption). Marked ``detectron2``: skipped where detectron2 is not installed (.ci/install_detectron2.sh
installs it), failed instead when CI=true (tests/conftest.py)."""

from __future__ import annotations

import inspect
import json
import pickle
import re

import numpy as np
import pytest
import torch

from detection import configs

from builders import FPN_FAST, make_coco, sigterm_when

try:
    import detectron2 as d2
    from detectron2.config import get_cfg
except ImportError:  # tests/conftest.py skips (or, in CI, fails) every test of this module
    d2 = get_cfg = None

pytestmark = pytest.mark.detectron2


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

    import detection.d2_register  # noqa: F401  (MoCo's Res5ROIHeadsExtraNorm, which the C4 protocols name)
    from detection.export import export_detectron2, load_backbone

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
    from detection import train

    coco = make_coco(tmp_path / "coco", n=4, size=96)
    sets = FPN_FAST + ["INPUT.MAX_SIZE_TRAIN=160", "INPUT.MAX_SIZE_TEST=160", "SOLVER.CHECKPOINT_PERIOD=1000",
                       "MODEL.RESNETS.NORM=naiveSyncBN", "MODEL.ROI_HEADS.SCORE_THRESH_TEST=0.0", "MODEL.ROI_HEADS.NUM_CLASSES=2",  # detections for COCOeval
            "TEST.PRECISE_BN.NUM_ITER=2"]  # the protocol's PreciseBN hook runs, over 2 batches instead of 200 (11 s)
    record = tmp_path / "rec.json"
    trailing = ["MODEL.ROI_HEADS.NUM_CLASSES", "2", "TEST.PRECISE_BN.NUM_ITER", "2"]  # as detectron2's tools take them
    rc = train.main(["--model", "random:resnet18", "--config", "coco_R_50_FPN_1x", "--coco-root", str(coco),
                     "--out", str(tmp_path / "run"), "--backend", "detectron2", "--max-iter", "2",
                     "--ims-per-batch", "2", "--num-workers", "0", "--record", str(record)]
                    + [a for s in sets[:-2] for a in ("--set", s)] + trailing)
    assert rc == 0
    rec = json.loads(record.read_text())
    assert rec["protocol"]["backend"] == "detectron2" and rec["protocol"]["max_iter"] == 2
    assert rec["protocol"]["precision"] == "float32"
    assert rec["command"].endswith("MODEL.ROI_HEADS.NUM_CLASSES 2 TEST.PRECISE_BN.NUM_ITER 2")
    assert "bbox_AP" in rec["metrics"] and "segm_AP" in rec["metrics"]
    assert (tmp_path / "run" / "model_final.pth").is_file()
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.json").read_text().splitlines()]
    training = [x for x in lines if "total_loss" in x]  # the last line is the evaluation's (iteration 2)
    assert training[-1]["iteration"] == 1 and np.isfinite(training[-1]["total_loss"])
    assert "bbox/AP" in lines[-1]


def test_d2_register_needs_detectron2_only(tmp_path):
    """The import line for detectron2's own tools registers the C4 head and imports nothing of wssl-zoo."""
    import sys

    import warm

    code = ("import sys, detection.d2_register as r; from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY; "
            "assert ROI_HEADS_REGISTRY.get('Res5ROIHeadsExtraNorm') is r.Res5ROIHeadsExtraNorm; "
            "import detection.d2_register; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('wssl_zoo', 'eval')))")
    proc = warm.run([sys.executable, "-c", code], cwd=configs.CONFIG_DIR.parent.parent, capture_output=True, text=True,
                    timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.slow
def test_stock_default_trainer_runs_a_c4_protocol_after_the_register_import(shared_data_dir, tmp_path):
    """What detectron2's tools/train_net.py does (default_argument_parser, get_cfg, merge_from_file,
    merge_from_list, default_setup, DefaultTrainer), on coco_R_50_C4_1x with real COCO images, after
    ``import detection.d2_register``: the config's Res5ROIHeadsExtraNorm is built and trains."""
    import tarfile

    from detectron2.data.datasets import register_coco_instances
    from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup

    import detection.d2_register  # noqa: F401  (the one line a train_net.py needs)
    from detection.data import coco_paths

    archive = shared_data_dir / "coco-tiny.tar.gz"
    if not archive.is_file():
        pytest.skip(f"{archive} not found")
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path, filter="data")
    register_coco_instances("wsslzoo_stock_train", {}, *map(str, coco_paths(tmp_path / "coco-tiny", "train")))
    args = default_argument_parser().parse_args(
        ["--config-file", str(configs.config_path("coco_R_50_C4_1x")), "--num-gpus", "0",
         "MODEL.DEVICE", "cpu", "DATASETS.TRAIN", "('wsslzoo_stock_train',)", "DATASETS.TEST", "()",
         "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2", "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", "1",
         "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "192", "DATALOADER.NUM_WORKERS", "0",
         "MODEL.RPN.POST_NMS_TOPK_TRAIN", "100", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
         "TEST.PRECISE_BN.NUM_ITER", "1", "OUTPUT_DIR", str(tmp_path / "out")])
    cfg = get_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    trainer = DefaultTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert type(trainer.model.roi_heads).__name__ == "Res5ROIHeadsExtraNorm"
    assert isinstance(trainer.model.roi_heads.res5.norm, torch.nn.SyncBatchNorm)  # MODEL.RESNETS.NORM SyncBN
    assert (tmp_path / "out" / "model_final.pth").is_file()
    lines = [json.loads(x) for x in (tmp_path / "out" / "metrics.json").read_text().splitlines()]
    assert lines[-1]["iteration"] == 1 and np.isfinite(lines[-1]["total_loss"])


@pytest.mark.slow
def test_detectron2_backend_stops_on_sigterm_and_resumes(tmp_path):
    """SIGTERM during detectron2's training loop: model_NNNNNNN.pth and last_checkpoint written by
    detectron2's checkpointer, exit status 75, one line with the command that resumes; that command
    continues from there to the end."""
    import os
    import shlex
    import subprocess
    import sys

    import warm
    coco = make_coco(tmp_path / "coco", n=4, size=96)
    out = tmp_path / "run"
    argv = ["--model", "random:resnet18", "--protocol", "coco_R_50_FPN_1x", "--data", str(coco), "--out", str(out),
            "--backend", "detectron2", "--device", "cpu", "--max-iter", "40", "--ims-per-batch", "2", "--workers", "0",
            "--no-record", "--checkpoint-every", "0"]
    argv += [a for s in FPN_FAST + ["INPUT.MAX_SIZE_TRAIN=160", "INPUT.MAX_SIZE_TEST=160"] for a in ("--set", s)]
    argv += ["MODEL.RESNETS.NORM", "naiveSyncBN", "MODEL.ROI_HEADS.NUM_CLASSES", "2", "MODEL.MASK_ON", "False"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    repo = configs.CONFIG_DIR.parent.parent
    proc = warm.popen([sys.executable, "-m", "detection.train", *argv], env=env, cwd=repo, stdout=subprocess.PIPE,
                      stderr=subprocess.PIPE, text=True)
    log = out / "log.txt"
    _, last = sigterm_when(proc, lambda: log.is_file() and "Starting training from iteration 0" in log.read_text())
    found = re.fullmatch(r"detection\.train: stopped by SIGTERM after iteration (\d+) of 40; checkpoint written to "
                         r"(\S+model_(\d{7})\.pth)\. Resume with: (.+)  \(exit status 75\)", last)
    assert found, last
    stopped = int(found[1])
    assert 1 <= stopped < 40 and int(found[3]) == stopped - 1  # detectron2 names it by the last finished iteration
    assert (out / "last_checkpoint").read_text().strip() == f"model_{stopped - 1:07d}.pth"
    command = shlex.split(found[4])
    assert command[-7:] == ["--resume", "MODEL.RESNETS.NORM", "naiveSyncBN", "MODEL.ROI_HEADS.NUM_CLASSES", "2",
                            "MODEL.MASK_ON", "False"]  # before the trailing overrides, so that it parses
    resumed = warm.run([sys.executable, *command[1:]], env=env, cwd=repo, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Starting training from iteration {stopped}" in log.read_text()
    assert (out / "model_final.pth").is_file() and "bbox_AP" in json.loads((out / "eval.json").read_text())["metrics"]
