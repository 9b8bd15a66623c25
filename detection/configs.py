"""The detection protocols: detectron2 YAML configs, loaded through detectron2's config system.

``load_config(name_or_path)`` reads ``detection/configs/NAME.yaml`` (or a path), merges its
``_BASE_`` chain onto detectron2's defaults with yacs' ``CfgNode`` (so unknown keys and wrong
types are refused as detectron2 refuses them, naming the key and the file) and returns a plain
nested dict. The defaults are detectron2's own ``get_cfg()`` when detectron2 is importable, and
otherwise :data:`SNAPSHOT`: ``get_cfg().dump()`` of detectron2 0.6, checked against the real
thing by ``tests/test_detectron2_real.py`` wherever detectron2 is installed (``.ci/run`` installs
it). Values written as Python tuples in detectron2's YAML (``(640, 672, 704)``) are parsed as
tuples, as yacs does.

``to_torchvision(cfg)`` maps the detectron2 semantics onto :class:`TrainSettings` for the
torchvision backend.
"""

from __future__ import annotations

import ast
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
PROTOCOLS = ("coco_R_50_C4_1x", "coco_R_50_C4_2x", "voc_R_50_C4_24k", "coco_R_50_FPN_1x")


class ConfigError(ValueError):
    """A config file, key or value is wrong; the message names it."""


SNAPSHOT = CONFIG_DIR / "_detectron2-0.6-defaults.yaml"
# Every MODEL.RESNETS.NORM detectron2 0.6 accepts (detectron2.layers.get_norm; "" = no norm).
NORMS = ("", "BN", "SyncBN", "FrozenBN", "GN", "nnSyncBN", "naiveSyncBN", "naiveSyncBN_N")
# What the torchvision backend does for each: BN variants train with batch statistics (synchronised
# across processes when distributed on CUDA), FrozenBN keeps them; the others need detectron2.
TORCHVISION_NORMS = {"FrozenBN": "FrozenBN", "BN": "BN", "SyncBN": "SyncBN", "nnSyncBN": "SyncBN",
                     "naiveSyncBN": "SyncBN", "naiveSyncBN_N": "SyncBN"}


def detectron2_defaults():
    """detectron2's default config as a yacs ``CfgNode``: ``detectron2.config.get_cfg()`` when
    detectron2 is importable, else the checked :data:`SNAPSHOT` (needs ``yacs``)."""
    try:
        from detectron2.config import get_cfg  # optional: detectron2
    except ImportError:
        return snapshot_defaults()
    return get_cfg()


def snapshot_defaults():
    """:data:`SNAPSHOT` as a yacs ``CfgNode`` with tuples restored (needs ``yacs``)."""
    try:
        from yacs.config import CfgNode  # optional: the [detection] extra
    except ImportError:
        raise ConfigError("detection configs need yacs (detectron2's config system): pip install yacs") from None
    with open(SNAPSHOT) as fh:
        node = CfgNode.load_cfg(fh)

    def tuples(n) -> None:  # yacs decodes "(a, b)" only when merging; the defaults hold real tuples
        for key, value in n.items():
            if isinstance(value, dict):
                tuples(value)
            else:
                n[key] = _literal(value)

    tuples(node)
    return node


_SNAPSHOT_HEAD = (
    "# detectron2 {version}'s defaults, get_cfg() (detectron2/config/defaults.py), tuples written as \"(a, b)\" strings\n"
    "# as detectron2's own YAMLs do (yacs reads them back as tuples). Used by detection/configs.py only where\n"
    "# detectron2 is absent; tests/test_detectron2_real.py checks it equals get_cfg() wherever detectron2 is\n"
    "# installed (.ci/install_detectron2.sh). Regenerate there: python -m detection.configs --dump-defaults > FILE\n")


def snapshot_text(node, version: str) -> str:
    """The :data:`SNAPSHOT` text of a defaults CfgNode (sorted keys, tuples as literals)."""
    def literal(n):
        if isinstance(n, dict):
            return {k: literal(v) for k, v in n.items()}
        return repr(n) if isinstance(n, tuple) else n

    return _SNAPSHOT_HEAD.format(version=version) + yaml.safe_dump(literal(node), sort_keys=True,
                                                                   default_flow_style=False)


def _plain(node) -> Any:
    """A CfgNode as nested plain dicts (values unchanged)."""
    return {k: _plain(v) for k, v in node.items()} if isinstance(node, dict) else node


_CHOICES = {
    "MODEL.RESNETS.NORM": NORMS,
    "MODEL.ROI_HEADS.NAME": ("Res5ROIHeads", "Res5ROIHeadsExtraNorm", "StandardROIHeads"),
    "MODEL.BACKBONE.NAME": ("build_resnet_backbone", "build_resnet_fpn_backbone"),
    "INPUT.FORMAT": ("RGB", "BGR"),
    "INPUT.RANDOM_FLIP": ("horizontal", "none"),
    "INPUT.MIN_SIZE_TRAIN_SAMPLING": ("choice", "range"),
    "SOLVER.WARMUP_METHOD": ("linear", "constant"),
    "MODEL.META_ARCHITECTURE": ("GeneralizedRCNN",),
}


def _literal(value):
    """detectron2 writes tuples as YAML strings "(1, 2)"; parse them as yacs does."""
    if isinstance(value, str) and value.strip().startswith("(") and value.strip().endswith(")"):
        try:
            return ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            return value
    return value


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data


def config_path(name_or_path: str | Path) -> Path:
    """``detection/configs/NAME.yaml`` for a protocol name, else the path itself."""
    text = str(name_or_path)
    candidate = CONFIG_DIR / (text if text.endswith(".yaml") else f"{text}.yaml")
    if "/" not in text and candidate.is_file():
        return candidate
    path = Path(text).expanduser()
    if path.is_file():
        return path
    known = sorted(p.stem for p in shipped_configs() if not p.stem.startswith("Base-"))
    raise ConfigError(f"config {text!r}: no such file or protocol; known protocols: {', '.join(known)}")


def _merge(cfg, data: dict, source: Path | str) -> None:
    """Merge ``data`` (one YAML file's mapping, ``_BASE_`` already followed) into the CfgNode ``cfg``
    with yacs' rules: the key must exist, the type must match (tuples and lists interchange)."""
    node = type(cfg)({k: v for k, v in data.items() if k != "_BASE_"})
    try:
        cfg.merge_from_other_cfg(node)
    except KeyError as exc:
        key = str(exc.args[0]).split(":", 1)[-1].strip() if exc.args else "?"
        raise ConfigError(f"{source}: unknown config key {key!r}") from None
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _chain(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[Path, dict]]:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: _BASE_ cycle through {[str(p) for p in seen]}")
    data = _read_yaml(path)
    chain: list[tuple[Path, dict]] = []
    base = data.get("_BASE_")
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"{path}: _BASE_ must be a file name, got {base!r}")
        base_path = (path.parent / base) if not Path(base).is_absolute() else Path(base)
        if not base_path.is_file():
            raise ConfigError(f"{path}: _BASE_ {base!r} not found at {base_path}")
        chain = _chain(base_path, seen + (path,))
    return chain + [(path, data)]


def _get(cfg: dict, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def validate(cfg: dict, source: str = "config") -> dict:
    """Check types and values of the keys the backends use; returns ``cfg``."""
    def need(cond, key, why):
        if not cond:
            raise ConfigError(f"{source}: {key} = {_get(cfg, key)!r} {why}")

    for key, choices in _CHOICES.items():
        need(_get(cfg, key) in choices, key, f"is not one of {list(choices)}")
    s = cfg["SOLVER"]
    need(isinstance(s["MAX_ITER"], int) and s["MAX_ITER"] > 0, "SOLVER.MAX_ITER", "must be a positive integer")
    steps = s["STEPS"]
    need(isinstance(steps, (list, tuple)) and all(isinstance(x, int) and x > 0 for x in steps)
         and list(steps) == sorted(steps), "SOLVER.STEPS", "must be increasing positive integers")
    need(isinstance(s["IMS_PER_BATCH"], int) and s["IMS_PER_BATCH"] > 0, "SOLVER.IMS_PER_BATCH",
         "must be a positive integer")
    need(isinstance(s["BASE_LR"], (int, float)) and s["BASE_LR"] > 0, "SOLVER.BASE_LR", "must be positive")
    need(isinstance(s["WARMUP_ITERS"], int) and s["WARMUP_ITERS"] >= 0, "SOLVER.WARMUP_ITERS", "must be >= 0")
    need(0 < s["WARMUP_FACTOR"] <= 1, "SOLVER.WARMUP_FACTOR", "must be in (0, 1]")
    mins = cfg["INPUT"]["MIN_SIZE_TRAIN"]
    if isinstance(mins, int):
        cfg["INPUT"]["MIN_SIZE_TRAIN"] = mins = (mins,)
    need(isinstance(mins, (list, tuple)) and len(mins) > 0 and all(isinstance(x, int) and x > 0 for x in mins),
         "INPUT.MIN_SIZE_TRAIN", "must be positive integers")
    need(isinstance(cfg["INPUT"]["MIN_SIZE_TEST"], int) and cfg["INPUT"]["MIN_SIZE_TEST"] > 0,
         "INPUT.MIN_SIZE_TEST", "must be a positive integer")
    need(cfg["MODEL"]["BACKBONE"]["FREEZE_AT"] in range(0, 6), "MODEL.BACKBONE.FREEZE_AT", "must be 0..5")
    for key in ("MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD"):
        v = _get(cfg, key)
        need(isinstance(v, (list, tuple)) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v),
             key, "must be 3 numbers")
    need(all(x > 0 for x in cfg["MODEL"]["PIXEL_STD"]), "MODEL.PIXEL_STD", "must be positive")
    need(isinstance(cfg["MODEL"]["ROI_HEADS"]["NUM_CLASSES"], int) and cfg["MODEL"]["ROI_HEADS"]["NUM_CLASSES"] > 0,
         "MODEL.ROI_HEADS.NUM_CLASSES", "must be a positive integer")
    fpn = cfg["MODEL"]["BACKBONE"]["NAME"] == "build_resnet_fpn_backbone"
    need(fpn == (cfg["MODEL"]["ROI_HEADS"]["NAME"] == "StandardROIHeads"), "MODEL.ROI_HEADS.NAME",
         "does not fit MODEL.BACKBONE.NAME (FPN needs StandardROIHeads, C4 Res5ROIHeads[ExtraNorm])")
    return cfg


def set_value(cfg, dotted: str, value: Any, source: str = "--set") -> None:
    """Override one dotted key of the CfgNode ``cfg`` (it must exist); string values are parsed
    as YAML (then as a Python tuple literal), and yacs checks the type."""
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"{source}: unknown config key {dotted!r}")
        node = node[part]
    if isinstance(node, dict):
        raise ConfigError(f"{source}: {dotted!r} is a section, not a value")
    if isinstance(value, str):
        try:
            value = yaml.safe_load(value) if value.strip() else value
        except yaml.YAMLError:
            pass
    nested: dict = {}
    leaf = nested
    *parents, last = dotted.split(".")
    for part in parents:
        leaf = leaf.setdefault(part, {})
    leaf[last] = _literal(value)
    _merge(cfg, nested, f"{source} {dotted}")


def load_config(name_or_path: str | Path, overrides: list[str] | None = None) -> dict:
    """The merged, validated config (a nested dict) of a protocol name or YAML path.

    ``overrides`` are ``KEY=VALUE`` strings (``SOLVER.BASE_LR=0.01``). The result carries
    ``_NAME`` (protocol name) and ``_PATH``.
    """
    path = config_path(name_or_path)
    node = detectron2_defaults()
    for source, data in _chain(path):
        _merge(node, data, source)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        set_value(node, key.strip(), value)
    cfg = _plain(node)
    validate(cfg, str(path))
    cfg["_NAME"] = path.stem
    cfg["_PATH"] = str(path)
    return cfg


def shipped_configs() -> list[Path]:
    """The protocol YAMLs and their bases (not the defaults snapshot, whose name starts with _)."""
    return sorted(p for p in CONFIG_DIR.glob("*.yaml") if not p.name.startswith("_"))


@dataclass
class TrainSettings:
    """What the torchvision backend needs, in detectron2's semantics."""

    arch: str                   # "C4" or "FPN"
    mask_on: bool
    num_classes: int
    max_iter: int
    steps: tuple[int, ...]
    gamma: float
    base_lr: float
    momentum: float
    weight_decay: float
    weight_decay_norm: float
    warmup_iters: int
    warmup_factor: float
    warmup_method: str
    ims_per_batch: int
    min_size_train: tuple[int, ...]
    max_size_train: int
    min_size_test: int
    max_size_test: int
    norm: str                   # FrozenBN | BN | SyncBN (TORCHVISION_NORMS of MODEL.RESNETS.NORM)
    freeze_at: int
    extra_norm: bool            # Res5ROIHeadsExtraNorm
    pixel_mean: tuple[float, float, float]   # RGB, 0-255
    pixel_std: tuple[float, float, float]
    rpn_pre_nms_train: int
    rpn_post_nms_train: int
    rpn_pre_nms_test: int
    rpn_post_nms_test: int
    rpn_batch_per_image: int
    roi_batch_per_image: int
    roi_positive_fraction: float
    score_thresh_test: float
    nms_thresh_test: float
    detections_per_image: int
    checkpoint_period: int
    amp: bool
    num_workers: int
    filter_empty: bool
    datasets_train: tuple[str, ...] = ()
    datasets_test: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict)
    anchor_sizes: tuple = ((32, 64, 128, 256, 512),)
    anchor_ratios: tuple = ((0.5, 1.0, 2.0),)
    anchor_offset: float = 0.0
    fpn_out_channels: int = 256
    fpn_norm: str = ""           # "" | BN | SyncBN | FrozenBN | GN (as detectron2's get_norm; BN variants folded)
    box_pooler_resolution: int = 14
    box_pooler_aligned: bool = True          # POOLER_TYPE ROIAlignV2 (half-pixel aligned) or ROIAlign
    box_pooler_sampling_ratio: int = 0
    box_num_conv: int = 0
    box_conv_dim: int = 256
    box_num_fc: int = 0
    box_fc_dim: int = 1024
    box_head_norm: str = ""
    mask_pooler_resolution: int = 14
    mask_pooler_aligned: bool = True
    mask_pooler_sampling_ratio: int = 0
    mask_num_conv: int = 0
    mask_conv_dim: int = 256
    mask_head_norm: str = ""
    mask_format: str = "polygon"
    random_flip: bool = True
    # RPN, in detectron2's semantics (MODEL.RPN.*)
    rpn_iou_thresholds: tuple[float, float] = (0.3, 0.7)
    rpn_positive_fraction: float = 0.5
    rpn_nms_thresh: float = 0.7
    rpn_min_size: float = 0.0               # MODEL.PROPOSAL_GENERATOR.MIN_SIZE
    rpn_loss_type: str = "smooth_l1"
    rpn_smooth_l1_beta: float = 0.0
    rpn_loc_loss_weight: float = 1.0        # BBOX_REG_LOSS_WEIGHT
    rpn_loss_weight: float = 1.0            # LOSS_WEIGHT (both RPN losses)
    rpn_box_weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    # RoI heads (MODEL.ROI_HEADS.*, MODEL.ROI_BOX_HEAD.*)
    roi_iou_threshold: float = 0.5
    box_loss_type: str = "smooth_l1"
    box_smooth_l1_beta: float = 0.0
    box_loss_weight: float = 1.0
    box_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    # solver and data (SOLVER.*, DATALOADER.*, TEST.*)
    nesterov: bool = False
    bias_lr_factor: float = 1.0
    weight_decay_bias: float | None = None  # None: SOLVER.WEIGHT_DECAY (detectron2 0.6)
    aspect_ratio_grouping: bool = True
    precise_bn: bool = False
    precise_bn_iters: int = 200
    eval_period: int = 0

    @property
    def size_divisibility(self) -> int:
        """Padding of a batch (detectron2's ``backbone.size_divisibility``): 32 for the FPN, none for C4."""
        return 32 if self.arch == "FPN" else 0

    @property
    def strides(self) -> tuple[int, ...]:
        """The feature strides the RPN runs on: res4 (16) for C4, p2-p6 (4-64) for the FPN."""
        return (4, 8, 16, 32, 64) if self.arch == "FPN" else (16,)

    def lr_at(self, it: int) -> float:
        """detectron2's WarmupMultiStepLR: linear warm-up from WARMUP_FACTOR, x GAMMA at each step."""
        factor = self.gamma ** sum(1 for s in self.steps if s <= it)
        if it < self.warmup_iters:
            if self.warmup_method == "constant":
                factor *= self.warmup_factor
            else:
                alpha = it / self.warmup_iters
                factor *= self.warmup_factor * (1 - alpha) + alpha
        return self.base_lr * factor

    def as_dict(self) -> dict:
        return asdict(self)


# Keys whose every value the torchvision backend does not implement: it accepts only the value
# here (detectron2 0.6's default, which every shipped config keeps) and refuses the others, naming
# the key and pointing to --backend detectron2, rather than silently computing something else.
TORCHVISION_ONLY = {
    "MODEL.RPN.HEAD_NAME": "StandardRPNHead",
    "MODEL.RPN.CONV_DIMS": [-1],
    "MODEL.RPN.IOU_LABELS": [0, -1, 1],
    "MODEL.RPN.BOUNDARY_THRESH": -1,
    "MODEL.PROPOSAL_GENERATOR.NAME": "RPN",
    "MODEL.ANCHOR_GENERATOR.NAME": "DefaultAnchorGenerator",
    "MODEL.ROI_HEADS.IOU_LABELS": [0, 1],
    "MODEL.ROI_HEADS.PROPOSAL_APPEND_GT": True,
    "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG": False,
    "MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES": False,
    "MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK": False,
    "MODEL.ROI_MASK_HEAD.NAME": "MaskRCNNConvUpsampleHead",
    "MODEL.RESNETS.STRIDE_IN_1X1": False,
    "MODEL.RESNETS.RES5_DILATION": 1,
    "MODEL.RESNETS.DEFORM_ON_PER_STAGE": [False, False, False, False],
    "MODEL.FPN.FUSE_TYPE": "sum",
    "MODEL.LOAD_PROPOSALS": False,
    "MODEL.KEYPOINT_ON": False,
    "INPUT.CROP.ENABLED": False,
    "DATALOADER.SAMPLER_TRAIN": "TrainingSampler",
    "SOLVER.LR_SCHEDULER_NAME": "WarmupMultiStepLR",
    "SOLVER.CLIP_GRADIENTS.ENABLED": False,
    "SOLVER.REFERENCE_WORLD_SIZE": 0,
    "TEST.AUG.ENABLED": False,
}
BOX_LOSSES = ("smooth_l1",)  # of detectron2 0.6's smooth_l1, giou, diou, ciou
POOLER_TYPES = {"ROIAlignV2": True, "ROIAlign": False}   # -> RoIAlign's aligned flag
HEAD_NORMS = {"": "", "BN": "BN", "SyncBN": "SyncBN", "nnSyncBN": "SyncBN", "naiveSyncBN": "SyncBN",
              "naiveSyncBN_N": "SyncBN", "FrozenBN": "FrozenBN", "GN": "GN"}


def _plain_value(value):
    return [_plain_value(v) for v in value] if isinstance(value, (list, tuple)) else value


def to_torchvision(cfg: dict) -> TrainSettings:
    """Map a detectron2 config onto the torchvision backend's settings; a value the backend does not
    implement (:data:`TORCHVISION_ONLY`, box losses outside :data:`BOX_LOSSES`, ...) is a
    :class:`ConfigError` naming the key."""
    m, s, i = cfg["MODEL"], cfg["SOLVER"], cfg["INPUT"]
    where = cfg.get("_PATH", "config")
    for key, only in TORCHVISION_ONLY.items():
        value = _get(cfg, key)
        if _plain_value(value) != only:
            raise ConfigError(f"{where}: {key} = {value!r}: the torchvision backend implements only {only!r} "
                              "(detectron2's default); use --backend detectron2")
    for key in ("MODEL.RPN.BBOX_REG_LOSS_TYPE", "MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE"):
        if _get(cfg, key) not in BOX_LOSSES:
            raise ConfigError(f"{where}: {key} = {_get(cfg, key)!r}: the torchvision backend implements "
                              f"{', '.join(BOX_LOSSES)}; use --backend detectron2")
    for key in ("MODEL.ROI_BOX_HEAD.POOLER_TYPE", "MODEL.ROI_MASK_HEAD.POOLER_TYPE"):
        if _get(cfg, key) not in POOLER_TYPES:
            raise ConfigError(f"{where}: {key} = {_get(cfg, key)!r}: the torchvision backend implements "
                              f"{', '.join(POOLER_TYPES)}; use --backend detectron2")
    for key in ("MODEL.FPN.NORM", "MODEL.ROI_BOX_HEAD.NORM", "MODEL.ROI_MASK_HEAD.NORM"):
        if _get(cfg, key) not in HEAD_NORMS:
            raise ConfigError(f"{where}: {key} = {_get(cfg, key)!r}: the torchvision backend implements "
                              f"{', '.join(repr(n) for n in HEAD_NORMS)}; use --backend detectron2")
    if len(m["ROI_HEADS"]["IOU_THRESHOLDS"]) != 1 or len(m["RPN"]["IOU_THRESHOLDS"]) != 2:
        raise ConfigError(f"{where}: MODEL.ROI_HEADS.IOU_THRESHOLDS needs one value and MODEL.RPN.IOU_THRESHOLDS "
                          "two (with the IOU_LABELS the torchvision backend implements)")
    fpn_in = ["p2", "p3", "p4", "p5", "p6"]
    wants = ({"MODEL.RPN.IN_FEATURES": fpn_in, "MODEL.ROI_HEADS.IN_FEATURES": fpn_in[:-1],
              "MODEL.FPN.IN_FEATURES": ["res2", "res3", "res4", "res5"]}
             if m["BACKBONE"]["NAME"] == "build_resnet_fpn_backbone" else
             {"MODEL.RPN.IN_FEATURES": ["res4"], "MODEL.ROI_HEADS.IN_FEATURES": ["res4"]})
    for key, only in wants.items():
        if list(_get(cfg, key)) != only:
            raise ConfigError(f"{where}: {key} = {_get(cfg, key)!r}: the torchvision backend builds {only} for "
                              f"MODEL.BACKBONE.NAME {m['BACKBONE']['NAME']}; use --backend detectron2")
    if i["FORMAT"] != "RGB":
        raise ConfigError(f"{where}: INPUT.FORMAT {i['FORMAT']!r}: the torchvision backend "
                          "feeds RGB images (wssl-zoo backbones are RGB); set INPUT.FORMAT RGB")
    norm = m["RESNETS"]["NORM"]
    if norm not in TORCHVISION_NORMS:
        raise ConfigError(f"{where}: MODEL.RESNETS.NORM {norm!r}: detectron2 accepts it, the "
                          f"torchvision backend does {', '.join(TORCHVISION_NORMS)}; use --backend detectron2")
    fpn = m["BACKBONE"]["NAME"] == "build_resnet_fpn_backbone"
    mins = tuple(i["MIN_SIZE_TRAIN"])
    if i["MIN_SIZE_TRAIN_SAMPLING"] == "range":
        if len(mins) != 2:
            raise ConfigError("INPUT.MIN_SIZE_TRAIN with sampling 'range' needs two values (low, high)")
        mins = tuple(range(mins[0], mins[1] + 1))
    return TrainSettings(
        arch="FPN" if fpn else "C4",
        mask_on=bool(m["MASK_ON"]),
        num_classes=int(m["ROI_HEADS"]["NUM_CLASSES"]),
        max_iter=int(s["MAX_ITER"]),
        steps=tuple(int(x) for x in s["STEPS"]),
        gamma=float(s["GAMMA"]),
        base_lr=float(s["BASE_LR"]),
        momentum=float(s["MOMENTUM"]),
        weight_decay=float(s["WEIGHT_DECAY"]),
        weight_decay_norm=float(s["WEIGHT_DECAY_NORM"]),
        warmup_iters=int(s["WARMUP_ITERS"]),
        warmup_factor=float(s["WARMUP_FACTOR"]),
        warmup_method=str(s["WARMUP_METHOD"]),
        ims_per_batch=int(s["IMS_PER_BATCH"]),
        min_size_train=mins,
        max_size_train=int(i["MAX_SIZE_TRAIN"]),
        min_size_test=int(i["MIN_SIZE_TEST"]),
        max_size_test=int(i["MAX_SIZE_TEST"]),
        norm=TORCHVISION_NORMS[norm],
        freeze_at=int(m["BACKBONE"]["FREEZE_AT"]),
        extra_norm=m["ROI_HEADS"]["NAME"] == "Res5ROIHeadsExtraNorm",
        pixel_mean=tuple(float(x) for x in m["PIXEL_MEAN"]),
        pixel_std=tuple(float(x) for x in m["PIXEL_STD"]),
        rpn_pre_nms_train=int(m["RPN"]["PRE_NMS_TOPK_TRAIN"]),
        rpn_post_nms_train=int(m["RPN"]["POST_NMS_TOPK_TRAIN"]),
        rpn_pre_nms_test=int(m["RPN"]["PRE_NMS_TOPK_TEST"]),
        rpn_post_nms_test=int(m["RPN"]["POST_NMS_TOPK_TEST"]),
        rpn_batch_per_image=int(m["RPN"]["BATCH_SIZE_PER_IMAGE"]),
        roi_batch_per_image=int(m["ROI_HEADS"]["BATCH_SIZE_PER_IMAGE"]),
        roi_positive_fraction=float(m["ROI_HEADS"]["POSITIVE_FRACTION"]),
        score_thresh_test=float(m["ROI_HEADS"]["SCORE_THRESH_TEST"]),
        nms_thresh_test=float(m["ROI_HEADS"]["NMS_THRESH_TEST"]),
        detections_per_image=int(cfg["TEST"]["DETECTIONS_PER_IMAGE"]),
        checkpoint_period=int(s["CHECKPOINT_PERIOD"]),
        amp=bool(s["AMP"]["ENABLED"]),
        num_workers=int(cfg["DATALOADER"]["NUM_WORKERS"]),
        filter_empty=bool(cfg["DATALOADER"]["FILTER_EMPTY_ANNOTATIONS"]),
        datasets_train=tuple(cfg["DATASETS"]["TRAIN"]),
        datasets_test=tuple(cfg["DATASETS"]["TEST"]),
        anchor_sizes=tuple(tuple(int(x) for x in level) for level in m["ANCHOR_GENERATOR"]["SIZES"]),
        anchor_ratios=tuple(tuple(float(x) for x in level) for level in m["ANCHOR_GENERATOR"]["ASPECT_RATIOS"]),
        anchor_offset=float(m["ANCHOR_GENERATOR"]["OFFSET"]),
        fpn_out_channels=int(m["FPN"]["OUT_CHANNELS"]),
        fpn_norm=HEAD_NORMS[m["FPN"]["NORM"]],
        box_pooler_resolution=int(m["ROI_BOX_HEAD"]["POOLER_RESOLUTION"]),
        box_pooler_aligned=POOLER_TYPES[m["ROI_BOX_HEAD"]["POOLER_TYPE"]],
        box_pooler_sampling_ratio=int(m["ROI_BOX_HEAD"]["POOLER_SAMPLING_RATIO"]),
        box_num_conv=int(m["ROI_BOX_HEAD"]["NUM_CONV"]),
        box_conv_dim=int(m["ROI_BOX_HEAD"]["CONV_DIM"]),
        box_num_fc=int(m["ROI_BOX_HEAD"]["NUM_FC"]),
        box_fc_dim=int(m["ROI_BOX_HEAD"]["FC_DIM"]),
        box_head_norm=HEAD_NORMS[m["ROI_BOX_HEAD"]["NORM"]],
        mask_pooler_resolution=int(m["ROI_MASK_HEAD"]["POOLER_RESOLUTION"]),
        mask_pooler_aligned=POOLER_TYPES[m["ROI_MASK_HEAD"]["POOLER_TYPE"]],
        mask_pooler_sampling_ratio=int(m["ROI_MASK_HEAD"]["POOLER_SAMPLING_RATIO"]),
        mask_num_conv=int(m["ROI_MASK_HEAD"]["NUM_CONV"]),
        mask_conv_dim=int(m["ROI_MASK_HEAD"]["CONV_DIM"]),
        mask_head_norm=HEAD_NORMS[m["ROI_MASK_HEAD"]["NORM"]],
        mask_format=str(i["MASK_FORMAT"]),
        random_flip=i["RANDOM_FLIP"] == "horizontal",
        rpn_iou_thresholds=tuple(float(x) for x in m["RPN"]["IOU_THRESHOLDS"]),
        rpn_positive_fraction=float(m["RPN"]["POSITIVE_FRACTION"]),
        rpn_nms_thresh=float(m["RPN"]["NMS_THRESH"]),
        rpn_min_size=float(m["PROPOSAL_GENERATOR"]["MIN_SIZE"]),
        rpn_loss_type=str(m["RPN"]["BBOX_REG_LOSS_TYPE"]),
        rpn_smooth_l1_beta=float(m["RPN"]["SMOOTH_L1_BETA"]),
        rpn_loc_loss_weight=float(m["RPN"]["BBOX_REG_LOSS_WEIGHT"]),
        rpn_loss_weight=float(m["RPN"]["LOSS_WEIGHT"]),
        rpn_box_weights=tuple(float(x) for x in m["RPN"]["BBOX_REG_WEIGHTS"]),
        roi_iou_threshold=float(m["ROI_HEADS"]["IOU_THRESHOLDS"][0]),
        box_loss_type=str(m["ROI_BOX_HEAD"]["BBOX_REG_LOSS_TYPE"]),
        box_smooth_l1_beta=float(m["ROI_BOX_HEAD"]["SMOOTH_L1_BETA"]),
        box_loss_weight=float(m["ROI_BOX_HEAD"]["BBOX_REG_LOSS_WEIGHT"]),
        box_weights=tuple(float(x) for x in m["ROI_BOX_HEAD"]["BBOX_REG_WEIGHTS"]),
        nesterov=bool(s["NESTEROV"]),
        bias_lr_factor=float(s["BIAS_LR_FACTOR"]),
        weight_decay_bias=None if s["WEIGHT_DECAY_BIAS"] is None else float(s["WEIGHT_DECAY_BIAS"]),
        aspect_ratio_grouping=bool(cfg["DATALOADER"]["ASPECT_RATIO_GROUPING"]),
        precise_bn=bool(cfg["TEST"]["PRECISE_BN"]["ENABLED"]),
        precise_bn_iters=int(cfg["TEST"]["PRECISE_BN"]["NUM_ITER"]),
        eval_period=int(cfg["TEST"]["EVAL_PERIOD"]),
    )


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["--dump-defaults"]:
        sys.exit("usage: python -m detection.configs --dump-defaults   (needs detectron2; prints the SNAPSHOT text)")
    import detectron2
    from detectron2.config import get_cfg  # optional: detectron2

    sys.stdout.write(snapshot_text(get_cfg(), detectron2.__version__))
