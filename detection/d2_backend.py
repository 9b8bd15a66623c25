"""The detectron2 backend: detectron2's own trainer and evaluators on the shipped configs.

Used by ``python -m detection.train --backend detectron2`` when detectron2 is importable. It

1. exports the backbone with :mod:`detection.export` in the layout the config needs (``c4`` for
   Res5ROIHeads configs, ``fpn`` for FPN ones; exact names, ``matching_heuristics: False``);
2. builds the config: detectron2 defaults <- protocol YAML (with its ``_BASE_``) <- the export's
   input settings (RGB, the model's pixel mean/std on 0-255, STRIDE_IN_1X1 False, depth) <-
   ``--max-iter``/``--ims-per-batch``/``--set`` overrides;
3. registers the data (``--coco-root`` as COCO instances, ``--voc-root`` as Pascal VOC);
4. runs ``DefaultTrainer`` under detectron2's ``launch`` (one process per visible GPU), with
   MoCo's ``Res5ROIHeadsExtraNorm`` registered, then COCOEvaluator / PascalVOCDetectionEvaluator;
5. writes the same ``zoo/results`` record as the torchvision backend.

Tested against detectron2's own code by tests/test_detectron2_real.py (two CPU iterations on tiny
images) where detectron2 is installed; ``.ci/install_detectron2.sh`` installs its pure-Python part.
"""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

_REGISTERED = False


def _register_extra_norm() -> None:
    global _REGISTERED
    if _REGISTERED:
        return
    from detectron2.layers import get_norm
    from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, Res5ROIHeads

    if "Res5ROIHeadsExtraNorm" not in ROI_HEADS_REGISTRY:
        @ROI_HEADS_REGISTRY.register()
        class Res5ROIHeadsExtraNorm(Res5ROIHeads):  # noqa: F811 - MoCo: a norm after res5
            """Res5ROIHeads with a norm layer appended to the res5 block (MoCo, He et al. 2020)."""

            def _build_res5_block(self, cfg):
                seq, out_channels = super()._build_res5_block(cfg)
                seq.add_module("norm", get_norm(cfg.MODEL.RESNETS.NORM, out_channels))
                return seq, out_channels
    _REGISTERED = True


def _register_data(args) -> tuple[tuple[str, ...], tuple[str, ...], str]:
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_coco_instances
    from detectron2.data.datasets.pascal_voc import register_pascal_voc

    from .data import coco_paths

    if args.coco_root:
        names = []
        for split in ("train", "val"):
            name = f"wsslzoo_coco_{split}"
            if name not in DatasetCatalog.list():
                ann, images = coco_paths(args.coco_root, split)
                register_coco_instances(name, {}, str(ann), str(images))
            names.append(name)
        return (names[0],), (names[1],), "coco"
    root = Path(args.voc_root)
    train = []
    for year in ("2007", "2012"):
        for base in (root / f"VOC{year}", root / "VOCdevkit" / f"VOC{year}"):
            if base.is_dir():
                name = f"wsslzoo_voc_{year}_trainval"
                if name not in DatasetCatalog.list():
                    register_pascal_voc(name, str(base), "trainval", int(year))
                train.append(name)
                if year == "2007" and "wsslzoo_voc_2007_test" not in DatasetCatalog.list():
                    register_pascal_voc("wsslzoo_voc_2007_test", str(base), "test", 2007)
                break
    return tuple(train), ("wsslzoo_voc_2007_test",), "voc"


def build_cfg(args, weights: Path, fragment: Path):
    from detectron2.config import get_cfg

    from .configs import config_path
    from .job import prepare_config

    ours, suffix = prepare_config(args)  # validates, applies --max-iter/--ims-per-batch/--set
    cfg = get_cfg()
    cfg.merge_from_file(str(config_path(args.config)))
    cfg.merge_from_file(str(fragment))  # input settings of the exported weights
    cfg.MODEL.WEIGHTS = str(weights)
    cfg.SOLVER.MAX_ITER = ours["SOLVER"]["MAX_ITER"]
    cfg.SOLVER.STEPS = tuple(ours["SOLVER"]["STEPS"])
    cfg.SOLVER.WARMUP_ITERS = ours["SOLVER"]["WARMUP_ITERS"]
    cfg.SOLVER.IMS_PER_BATCH = ours["SOLVER"]["IMS_PER_BATCH"]
    cfg.SOLVER.AMP.ENABLED = bool(ours["SOLVER"]["AMP"]["ENABLED"])
    cfg.DATALOADER.NUM_WORKERS = ours["DATALOADER"]["NUM_WORKERS"]
    if args.checkpoint_every is not None:
        cfg.SOLVER.CHECKPOINT_PERIOD = args.checkpoint_every or 10 ** 9
    opts = []
    for item in args.overrides:
        key, value = item.split("=", 1)
        opts += [key.strip(), value]
    if opts:
        cfg.merge_from_list(opts)
    train, test, task = _register_data(args)
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = train, test
    cfg.OUTPUT_DIR = str(Path(args.out))
    cfg.SEED = args.seed
    return cfg, ours, suffix, task


def _worker(cfg, args, eval_only: bool):
    import detectron2.utils.comm as comm
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.engine import DefaultTrainer, default_setup
    from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator

    _register_extra_norm()
    _register_data(args)  # each spawned process needs the registrations

    class Trainer(DefaultTrainer):
        @classmethod
        def build_evaluator(cls, cfg, dataset_name, output_folder=None):
            folder = output_folder or str(Path(cfg.OUTPUT_DIR) / "inference")
            if "voc" in dataset_name:
                return PascalVOCDetectionEvaluator(dataset_name)
            import detectron2._C as ext  # the fast C++ COCOeval only where detectron2 was compiled

            return COCOEvaluator(dataset_name, output_dir=folder, use_fast_impl=hasattr(ext, "InstanceAnnotation"))

    default_setup(cfg, args)
    if eval_only:
        model = Trainer.build_model(cfg)
        weights = args.weights or str(Path(cfg.OUTPUT_DIR) / "model_final.pth")
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(weights, resume=False)
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    res = trainer.train()
    return res if comm.is_main_process() else None


def run(args, argv: list[str]) -> int:
    import torch
    from detectron2.engine import launch

    from .export import export_detectron2, load_backbone
    from .job import PROTOCOL_VERSION, _fingerprint, schedule_label, write_record

    from wssl_zoo.cliargs import device as parse_device

    t0 = time.perf_counter()
    # --device as in every tool: cpu, one named GPU (cuda:N), or auto / cuda: every GPU (detectron2's launcher)
    dev = parse_device(args.device)
    from .job import claim_out

    out = Path(args.out)
    claim_out(args, out)
    backbone, resolved = load_backbone(args.model)
    from .configs import load_config

    layout = "fpn" if load_config(args.config)["MODEL"]["BACKBONE"]["NAME"] == "build_resnet_fpn_backbone" else "c4"
    weights, fragment = export_detectron2(backbone, resolved, out / "backbone_d2.pkl", layout=layout)
    cfg, ours, suffix, task = build_cfg(args, weights, fragment)
    cfg.freeze()
    gpus = 0 if dev.type == "cpu" else (1 if ":" in str(args.device) else torch.cuda.device_count())
    if gpus <= 1:
        cfg.defrost()
        cfg.MODEL.DEVICE = "cpu" if gpus == 0 else str(dev)
        cfg.freeze()
    if gpus <= 1:
        results = _worker(cfg, args, args.eval_only) or {}
        if not args.eval_only:  # DefaultTrainer.train() returns the last evaluation
            results = results or _worker(cfg, args, True) or {}
    else:
        launch(_worker, gpus, num_machines=1, machine_rank=0, dist_url="auto", args=(cfg, args, args.eval_only))
        results = _worker(cfg, args, True) or {}  # the workers' results stay in them: evaluate model_final here
    metrics = {}
    for iou, vals in results.items():
        for name, value in vals.items():
            key = f"{iou}_{name}"
            metrics[key] = round(float(value), 4)  # NaN: the record lists it in undefined_metrics
    (out / "eval.json").write_text(json.dumps({"metrics": metrics}, indent=2) + "\n")
    print(json.dumps({"metrics": metrics, "out": str(out)}))
    if not args.no_record:
        ann = None
        if args.coco_root:
            from .data import coco_paths

            ann = coco_paths(args.coco_root, "val")[0]
        write_record(path=Path(args.record) if args.record else None, results_dir=args.results_dir,
                     label=resolved.label, task=task, model=resolved.spec, weights_sha256=resolved.weights_sha256,
                     protocol={"name": "+".join([ours["_NAME"], *suffix]), "version": PROTOCOL_VERSION,
                               "backend": "detectron2", "max_iter": cfg.SOLVER.MAX_ITER,
                               "schedule": schedule_label(ours["_NAME"], cfg.SOLVER.MAX_ITER, suffix),
                               "ims_per_batch": cfg.SOLVER.IMS_PER_BATCH},
                     dataset={"name": task, "split": "val2017" if task == "coco" else "2007_test",
                              "fingerprint": _fingerprint([ann]) if ann else None},
                     seed=args.seed, metrics=metrics, wall_seconds=time.perf_counter() - t0,
                     command="python -m detection.train " + shlex.join(argv),
                     extra={"gpus": gpus, "layout": layout, "export": str(weights)})
    return 0
