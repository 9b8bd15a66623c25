"""Export a zoo backbone to detectron2's checkpoint format.

``python -m detection.export --model NAME|DIR|hf-hub:ORG/NAME --format detectron2 --out FILE.pkl``

The map from timm ResNet names to detectron2's is exhaustive and strict: every tensor of the
backbone is mapped exactly once (``num_batches_tracked`` counters are dropped explicitly, detectron2
has none); a tensor the map does not know (a deep stem, squeeze-excitation, an anti-aliasing
filter, ...) is an error that lists it. Names:

===============================  =======================================
timm                             detectron2
===============================  =======================================
conv1.weight                     stem.conv1.weight
bn1.*                            stem.conv1.norm.*
layer{i}.{j}.conv{k}.weight      res{i+1}.{j}.conv{k}.weight
layer{i}.{j}.bn{k}.*             res{i+1}.{j}.conv{k}.norm.*
layer{i}.{j}.downsample.0.weight res{i+1}.{j}.shortcut.weight
layer{i}.{j}.downsample.1.*      res{i+1}.{j}.shortcut.norm.*
===============================  =======================================

``--layout`` adds the prefix the weights have inside detectron2's models, so detectron2 matches
names exactly (the pickle says ``matching_heuristics: False``):

- ``c4`` (default; GeneralizedRCNN with Res5ROIHeads): ``backbone.{stem,res2,res3,res4}.*`` and
  ``roi_heads.res5.*``;
- ``fpn``: ``backbone.bottom_up.{stem,res2..res5}.*``;
- ``backbone``: the bare names above, as MoCo's converter writes them; detectron2 can only place
  those by its suffix-matching heuristic, so this layout writes ``matching_heuristics: True``.

The pickle is ``{"model": {name: np.ndarray}, "__author__": "wssl-zoo", "matching_heuristics":
bool, "wssl_zoo": {...provenance and input settings...}}`` (detectron2's checkpointer reads
``model``/``__author__``/``matching_heuristics`` and ignores the rest). Beside it, ``FILE.yaml`` is a
detectron2 config fragment with the input settings the weights need: ``MODEL.WEIGHTS``,
``MODEL.PIXEL_MEAN``/``PIXEL_STD`` (RGB, 0-255 scale, from the model's config), ``INPUT.FORMAT:
RGB``, ``MODEL.RESNETS.STRIDE_IN_1X1: False`` (timm puts the stride in the 3x3 conv),
``MODEL.RESNETS.DEPTH`` and ``RES2_OUT_CHANNELS``.
"""

from __future__ import annotations

import argparse
import io
import json
import pickle
import re
import sys
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import yaml

from wssl_zoo.cliargs import USER_ERRORS, run_cli
from wssl_zoo.fileio import atomic_write_bytes
from wssl_zoo.weights import ResolvedWeights, resolve

__all__ = ["timm_to_detectron2", "detectron2_name", "layout_name", "ExportError", "load_backbone",
           "export_detectron2", "input_settings", "main", "LAYOUTS"]

LAYOUTS = ("c4", "fpn", "backbone")
_NORM_FIELDS = ("weight", "bias", "running_mean", "running_var")
# detectron2 ResNet depth for the (blocks per stage, block type) of a timm ResNet.
_DEPTHS = {((2, 2, 2, 2), "basic"): 18, ((3, 4, 6, 3), "basic"): 34, ((3, 4, 6, 3), "bottleneck"): 50,
           ((3, 4, 23, 3), "bottleneck"): 101, ((3, 8, 36, 3), "bottleneck"): 152}


class ExportError(ValueError):
    """The backbone cannot be written in detectron2's format (names the offending tensors)."""


_RULES = [
    (re.compile(r"^conv1\.weight$"), lambda m: "stem.conv1.weight"),
    (re.compile(r"^bn1\.(weight|bias|running_mean|running_var)$"), lambda m: f"stem.conv1.norm.{m[1]}"),
    (re.compile(r"^layer([1-4])\.(\d+)\.conv([1-3])\.weight$"),
     lambda m: f"res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.weight"),
    (re.compile(r"^layer([1-4])\.(\d+)\.bn([1-3])\.(weight|bias|running_mean|running_var)$"),
     lambda m: f"res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.norm.{m[4]}"),
    (re.compile(r"^layer([1-4])\.(\d+)\.downsample\.0\.weight$"),
     lambda m: f"res{int(m[1]) + 1}.{m[2]}.shortcut.weight"),
    (re.compile(r"^layer([1-4])\.(\d+)\.downsample\.1\.(weight|bias|running_mean|running_var)$"),
     lambda m: f"res{int(m[1]) + 1}.{m[2]}.shortcut.norm.{m[3]}"),
]


def _to_numpy(value) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    return value.detach().cpu().float().numpy() if value.is_floating_point() else value.detach().cpu().numpy()


def detectron2_name(timm_key: str) -> str | None:
    """The bare detectron2 ResNet name of one timm ResNet tensor name, or None when the map has no
    rule for it (``layer1.0.bn2.weight`` -> ``res2.0.conv2.norm.weight``)."""
    for pattern, rename in _RULES:
        match = pattern.match(timm_key)
        if match:
            return rename(match)
    return None


def timm_to_detectron2(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Map a timm ResNet state dict to detectron2's ResNet names (bare, without layout prefix).

    Strict: every key is mapped exactly once; ``*.num_batches_tracked`` is dropped; any other key
    the map does not know raises :class:`ExportError` listing all of them. Also checks that every
    mapped conv has its norm (conv + norm pairs are complete), so a partial state dict fails too.
    """
    out: dict[str, np.ndarray] = {}
    unmapped: list[str] = []
    for key, value in state_dict.items():
        if key.endswith(".num_batches_tracked"):
            continue  # BN step counters: detectron2's norms have none
        new = detectron2_name(key)
        if new is None:
            unmapped.append(key)
            continue
        if new in out:  # cannot happen with the rules above; guards future edits
            raise ExportError(f"timm key {key!r} maps onto {new!r}, which is already mapped")
        out[new] = _to_numpy(value)
    if unmapped:
        raise ExportError(f"{len(unmapped)} tensor(s) have no detectron2 name (only plain timm ResNets "
                          f"with the imagenet stem are supported): {sorted(unmapped)}")
    if "stem.conv1.weight" not in out:
        raise ExportError("the state dict has no 'conv1.weight': not a timm ResNet")
    missing = []
    for name in [k for k in out if k.endswith(".weight") and ".norm." not in k]:
        base = name[: -len(".weight")]
        missing += [f"{base}.norm.{f}" for f in _NORM_FIELDS if f"{base}.norm.{f}" not in out]
    for name in [k for k in out if ".norm." in k]:
        conv = name.split(".norm.")[0] + ".weight"
        if conv not in out:
            missing.append(conv)
    if missing:
        raise ExportError(f"incomplete ResNet state dict; missing (detectron2 names): {sorted(set(missing))}")
    return out


def resnet_shape(d2: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Depth, block type and res2 width of a detectron2-named ResNet state dict."""
    blocks = []
    for stage in range(2, 6):
        idx = {int(k.split(".")[1]) for k in d2 if k.startswith(f"res{stage}.")}
        if not idx or idx != set(range(len(idx))):
            raise ExportError(f"stage res{stage} is missing or has non-contiguous blocks: {sorted(idx)}")
        blocks.append(len(idx))
    kind = "bottleneck" if "res2.0.conv3.weight" in d2 else "basic"
    depth = _DEPTHS.get((tuple(blocks), kind))
    if depth is None:
        raise ExportError(f"ResNet with blocks {blocks} ({kind}) has no detectron2 depth; "
                          f"supported: {sorted(set(_DEPTHS.values()))}")
    stem = d2["stem.conv1.weight"]
    if tuple(stem.shape[1:]) != (3, 7, 7):
        raise ExportError(f"stem.conv1.weight has shape {tuple(stem.shape)}; detectron2's stem is a 7x7 conv "
                          "on 3 channels (only the imagenet stem maps)")
    width = int(d2["res2.0.conv3.weight" if kind == "bottleneck" else "res2.0.conv2.weight"].shape[0])
    return {"depth": depth, "block": kind, "res2_out_channels": width, "blocks": blocks}


def layout_name(bare: str, layout: str) -> str:
    """Where the bare detectron2 ResNet name ``bare`` lives in detectron2's model of ``layout``."""
    if layout == "backbone":
        return bare
    if layout == "fpn":
        return f"backbone.bottom_up.{bare}"
    if layout == "c4":
        return f"roi_heads.{bare}" if bare.startswith("res5.") else f"backbone.{bare}"
    raise ExportError(f"unknown layout {layout!r}; choose one of {list(LAYOUTS)}")


def with_layout(d2: dict[str, np.ndarray], layout: str) -> dict[str, np.ndarray]:
    """Prefix bare detectron2 ResNet names with where they live in detectron2's model."""
    return {layout_name(k, layout): v for k, v in d2.items()}


def load_backbone(spec: str, seed: int = 0):
    """``(backbone, weights)`` for a model spec: the built backbone and its
    :class:`~wssl_zoo.weights.ResolvedWeights` (anything :func:`wssl_zoo.weights.resolve` takes: model
    directory, registry name or alias, ``hf-hub:org/name[@rev]``, ``random:ARCH[:STEM[:SIZE]]``).
    Random init is normalised with ImageNet statistics, the detection datasets' (COCO, VOC)."""
    weights = resolve(str(spec), seed)
    return weights.build(), weights


def input_settings(weights: ResolvedWeights, shape: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The detectron2 config fragment the weights need (RGB, mean/std on the 0-255 scale:
    :meth:`~wssl_zoo.weights.ResolvedWeights.pixel_stats`)."""
    mean, std = weights.pixel_stats("imagenet")
    model: dict[str, Any] = {
        "PIXEL_MEAN": mean,
        "PIXEL_STD": std,
        "RESNETS": {"STRIDE_IN_1X1": False},
    }
    if shape is not None:
        model["RESNETS"]["DEPTH"] = int(shape["depth"])
        model["RESNETS"]["RES2_OUT_CHANNELS"] = int(shape["res2_out_channels"])
    return {"MODEL": model, "INPUT": {"FORMAT": "RGB"}}


def _check_stem(weights: ResolvedWeights) -> None:
    if weights.stem != "imagenet":
        raise ExportError(f"{weights.spec}: stem {weights.stem!r} has no detectron2 equivalent (detectron2's stem is "
                          "7x7 stride 2 + max-pool); only imagenet-stem backbones can be exported")


def export_detectron2(backbone, weights: ResolvedWeights, out: str | Path, layout: str = "c4") -> tuple[Path, Path]:
    """Write ``out`` (pickle) and ``out`` with suffix ``.yaml`` (input settings); returns both paths."""
    _check_stem(weights)
    if layout not in LAYOUTS:
        raise ExportError(f"unknown layout {layout!r}; choose one of {list(LAYOUTS)}")
    d2 = timm_to_detectron2(backbone.state_dict())
    shape = resnet_shape(d2)
    out = Path(out)
    settings = input_settings(weights, shape)
    payload = {
        "model": with_layout(d2, layout),
        "__author__": "wssl-zoo",
        # Exact names for c4/fpn: detectron2 must not guess. The bare layout needs its heuristic.
        "matching_heuristics": layout == "backbone",
        "wssl_zoo": {"source": weights.spec, "arch": weights.arch, "weights_sha256": weights.weights_sha256,
                     "layout": layout, "input": settings, **shape},
    }
    buf = io.BytesIO()
    pickle.dump(payload, buf, protocol=pickle.HIGHEST_PROTOCOL)
    atomic_write_bytes(out, buf.getvalue())
    fragment = {"MODEL": dict(settings["MODEL"], WEIGHTS=str(out.resolve())), "INPUT": settings["INPUT"]}
    side = out.with_suffix(".yaml")
    text = (f"# Input settings for {out.name} (exported by wssl-zoo from {weights.spec}, layout {layout}).\n"
            "# Merge after the protocol config: cfg.merge_from_file(this file).\n"
            + yaml.safe_dump(fragment, sort_keys=True))
    atomic_write_bytes(side, text.encode())
    return out, side


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m detection.export", description=(
        "Export a wssl-zoo ResNet backbone to detectron2's pickle checkpoint format, with a YAML "
        "fragment of the input settings (RGB, pixel mean/std on 0-255, STRIDE_IN_1X1 False)."))
    p.add_argument("--model", required=True,
                   help="model directory, registry name/alias, hf-hub:ORG/NAME[@REV] or random:ARCH")
    p.add_argument("--format", default="detectron2", choices=["detectron2"],
                   help="output format (default: detectron2)")
    p.add_argument("--out", required=True, help="output .pkl file; FILE.yaml is written beside it")
    p.add_argument("--layout", default="c4", choices=LAYOUTS,
                   help="name prefixes: c4 (backbone.* + roi_heads.res5.*), fpn (backbone.bottom_up.*) or "
                        "backbone (bare names, matching_heuristics True) (default: c4)")
    return p


def run(args: argparse.Namespace) -> int:
    if not args.out.endswith(".pkl"):
        raise ExportError(f"--out {args.out}: detectron2 checkpoints must end in .pkl")
    backbone, weights = load_backbone(args.model)
    pkl, side = export_detectron2(backbone, weights, args.out, args.layout)
    with open(pkl, "rb") as fh:
        n = len(pickle.load(fh)["model"])
    print(json.dumps({"out": str(pkl), "input_settings": str(side), "tensors": n, "layout": args.layout}))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m detection.export``; errors are one line (``detection.export: error: ...``), exit 2."""
    args = _parser().parse_args(argv)
    return run_cli("detection.export", lambda: run(args), USER_ERRORS + (OSError,))


if __name__ == "__main__":
    sys.exit(main())
