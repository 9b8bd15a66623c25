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
        from detectron2.config import get_cfg
    except ImportError:
        return snapshot_defaults()
    return get_cfg()


def snapshot_defaults():
    """:data:`SNAPSHOT` as a yacs ``CfgNode`` with tuples restored (needs ``yacs``)."""
    try:
        from yacs.config import CfgNode
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
    import yaml

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
    import yaml

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
    import yaml

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
    fpn_out_channels: int = 256
    box_pooler_resolution: int = 14
    box_num_conv: int = 0
    box_conv_dim: int = 256
    box_num_fc: int = 0
    box_fc_dim: int = 1024
    mask_pooler_resolution: int = 14
    mask_num_conv: int = 0
    mask_conv_dim: int = 256
    random_flip: bool = True

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


def to_torchvision(cfg: dict) -> TrainSettings:
    """Map a detectron2 config onto the torchvision backend's settings."""
    m, s, i = cfg["MODEL"], cfg["SOLVER"], cfg["INPUT"]
    if i["FORMAT"] != "RGB":
        raise ConfigError(f"{cfg.get('_PATH', 'config')}: INPUT.FORMAT {i['FORMAT']!r}: the torchvision backend "
                          "feeds RGB images (wssl-zoo backbones are RGB); set INPUT.FORMAT RGB")
    norm = m["RESNETS"]["NORM"]
    if norm not in TORCHVISION_NORMS:
        raise ConfigError(f"{cfg.get('_PATH', 'config')}: MODEL.RESNETS.NORM {norm!r}: detectron2 accepts it, the "
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
        fpn_out_channels=int(m["FPN"]["OUT_CHANNELS"]),
        box_pooler_resolution=int(m["ROI_BOX_HEAD"]["POOLER_RESOLUTION"]),
        box_num_conv=int(m["ROI_BOX_HEAD"]["NUM_CONV"]),
        box_conv_dim=int(m["ROI_BOX_HEAD"]["CONV_DIM"]),
        box_num_fc=int(m["ROI_BOX_HEAD"]["NUM_FC"]),
        box_fc_dim=int(m["ROI_BOX_HEAD"]["FC_DIM"]),
        mask_pooler_resolution=int(m["ROI_MASK_HEAD"]["POOLER_RESOLUTION"]),
        mask_num_conv=int(m["ROI_MASK_HEAD"]["NUM_CONV"]),
        mask_conv_dim=int(m["ROI_MASK_HEAD"]["CONV_DIM"]),
        random_flip=i["RANDOM_FLIP"] == "horizontal",
    )


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["--dump-defaults"]:
        sys.exit("usage: python -m detection.configs --dump-defaults   (needs detectron2; prints the SNAPSHOT text)")
    import detectron2
    from detectron2.config import get_cfg

    sys.stdout.write(snapshot_text(get_cfg(), detectron2.__version__))
