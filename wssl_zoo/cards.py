"""Model cards rendered from a registry entry and the measured results in ``zoo/results``.

``wssl-zoo card --all`` rewrites ``MODEL_CARDS/<name>.md`` for every entry; a test fails when a
checked-in card differs from what this module renders. The card is also the Hub README of the
model: its YAML front matter carries the Hub metadata (``library_name``, ``license``, ``tags``,
``datasets``) and a ``model-index`` with every measured result of the entry's weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .paths import cards_dir, zoo_results_dir
from .registry import ZooEntry, get_entry, list_models

CARDS_DIR = cards_dir()  # see wssl_zoo.paths: the checkout's, else $WSSL_ZOO_HOME or the current directory
RESULTS_DIR = zoo_results_dir()

DATASET_NAMES = {"imagenet": "ImageNet-1k", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "stl10": "STL-10",
                 "coco": "COCO 2017", "voc07+12": "PASCAL VOC 07+12", "fashion_mnist": "Fashion-MNIST"}
HUB_DATASETS = {"imagenet": "imagenet-1k", "cifar10": "cifar10", "cifar100": "cifar100", "stl10": "stl10",
                "coco": "detection-datasets/coco", "fashion_mnist": "fashion_mnist"}
TASK_NAMES = {"linear_top1": "linear probe top-1 (%)", "linear_top5": "linear probe top-5 (%)",
              "knn5_top1": "5-NN top-1 (%)", "knn20_top1": "20-NN top-1 (%)", "coco_det_ap": "detection AP (bbox)",
              "coco_seg_ap": "instance segmentation AP (mask)", "voc_det_ap50": "detection AP50",
              "voc_det_ap": "detection AP"}
LICENSE = "apache-2.0"


# ---------------------------------------------------------------------------- measured results


def _dataset_name(record: dict) -> str:
    ds = record.get("dataset", "")
    return ds.get("name", "") if isinstance(ds, dict) else str(ds)


def _protocol_name(record: dict) -> str:
    proto = record.get("protocol", "")
    if isinstance(proto, dict):
        version = f" v{proto['version']}" if "version" in proto else ""
        return f"{proto.get('name', '')}{version}"
    return str(proto)


def metric_rows(record: dict) -> list[dict[str, Any]]:
    """The numbers of one ``zoo/results`` record as rows ``{metric, value, dataset, protocol, task}``.

    Understands the pretraining-evaluation records (``kind: pretrain_eval``: the pretrained
    model's kNN and linear numbers; the random-init baseline is not a result of the weights)
    and the evaluation records (``task`` plus a flat ``metrics`` mapping; a mean/std summary of
    several seeds is reported as its mean).
    """
    metrics = record.get("metrics", {})
    if record.get("kind") == "pretrain_eval":
        metrics = metrics.get("pretrained", {})
    rows = []
    for key, value in sorted(metrics.items()):
        if isinstance(value, dict) and "mean" in value:
            value = value["mean"]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if key in ("bank", "queries", "effective_rank") or key.endswith(("_count", "_seconds")):
            continue
        rows.append(dict(metric=key, value=float(value), dataset=_dataset_name(record),
                         protocol=_protocol_name(record), task=record.get("task", record.get("kind", ""))))
    return rows


def measured_results(entry: ZooEntry, results_dir: Path | None = None) -> list[dict]:
    """Records of ``zoo/results`` measured on this entry's pinned weights (matched by sha256)."""
    wanted = {entry.hub.files.get("model.safetensors", "")} - {""}
    out = []
    for path in sorted(Path(results_dir or RESULTS_DIR).glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
        if isinstance(record, dict) and record.get("weights_sha256") in wanted:
            out.append(dict(record, file=path.name))
    return out


# ---------------------------------------------------------------------------- metadata


def _yaml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid YAML double-quoted scalar


def _task_type(task: str, metric: str) -> tuple[str, str]:
    if task in ("coco", "voc", "detection") or metric.startswith(("bbox_", "segm_")):
        return ("instance-segmentation", "mAP") if metric.startswith("segm_") else ("object-detection", "mAP")
    return "image-classification", "accuracy"


def model_index(name: str, measured: list[dict]) -> list[str]:
    """The ``model-index`` YAML lines (Hub metadata) for the measured results; empty without any."""
    results = []
    for record in measured:
        for row in metric_rows(record):
            ttype, mtype = _task_type(row["task"], row["metric"])
            ds = row["dataset"]
            results += [
                "  - task:", f"      type: {ttype}", f"      name: {_yaml_str(row['task'] or ttype)}",
                "    dataset:", f"      type: {_yaml_str(HUB_DATASETS.get(ds, ds))}",
                f"      name: {_yaml_str(DATASET_NAMES.get(ds, ds))}",
                "    metrics:", f"    - type: {mtype}", f"      value: {round(row['value'], 4)}",
                f"      name: {_yaml_str(row['metric'] + (' (' + row['protocol'] + ')' if row['protocol'] else ''))}",
                "    source:", f"      name: {_yaml_str('wssl-zoo zoo/results/' + record['file'])}",
                "      url: https://github.com/wssl-zoo/wssl-zoo",
            ]
    if not results:
        return []
    return ["model-index:", f"- name: {name}", "  results:", *results]


def _front_matter(e: ZooEntry, measured: list[dict]) -> list[str]:
    ds = e.training.get("dataset", "")
    return ["---", "library_name: timm", f"license: {LICENSE}", "tags:", "- image-feature-extraction",
            "- self-supervised-learning", f"- {e.method}", "- whitening", "- wssl-zoo", "datasets:",
            f"- {HUB_DATASETS.get(ds, ds)}", "pipeline_tag: image-feature-extraction",
            *model_index(e.name, measured), "---", ""]


# ---------------------------------------------------------------------------- cards


def render_card(entry: ZooEntry, for_hub: bool = False, results_dir: Path | None = None) -> str:
    """The card of ``entry`` (Markdown with Hub front matter).

    ``for_hub`` renders the README of the Hub repo being published: its load instructions use
    the repo without a revision (the commit does not exist yet when the README is written).
    """
    e = entry
    measured = measured_results(e, results_dir)
    lines = _front_matter(e, measured)
    lines += [f"# {e.name}", "", e.description, ""]
    lines += ["## What it is", "",
              f"- Method: **{e.method}** — {e.variant}.",
              f"- Backbone: timm `{e.arch}` ({e.stem} stem), {e.img_size} px input, {e.feature_dim}-d pooled features.",
              f"- Projector used in pretraining: {e.projector['num_layers']} layers, hidden {e.projector['hidden_dim']}, "
              f"output {e.projector['out_dim']}.",
              f"- Loss parameters: `{dict(e.loss)}`.", ""]
    lines += ["## How it was trained", "",
              f"Recipe `{e.recipe}` (`wssl-zoo pretrain --recipe {e.recipe} --show` prints every value): "
              + ", ".join(f"{k} {v}" for k, v in e.training.items() if k != "source") + ".",
              f"Source of the recipe: {e.training.get('source', '')}.", ""]
    lines += ["## Results", "", "Paper-reported numbers are the authors' own; measured numbers come from runs of "
              "these weights recorded in `zoo/results` (each record holds the command that reproduces it).", "",
              "| task | dataset | epochs | value | provenance |", "|---|---|---|---|---|"]
    for r in e.paper_results:
        note = f" ({r.note})" if r.note else ""
        lines.append(f"| {TASK_NAMES.get(r.task, r.task)} | {DATASET_NAMES.get(r.dataset, r.dataset)} | "
                     f"{r.epochs or ''} | {r.value} | paper: {r.label}, {r.source}{note} |")
    for record in measured:
        for row in metric_rows(record):
            proto = f", protocol {row['protocol']}" if row["protocol"] else ""
            lines.append(f"| {TASK_NAMES.get(row['metric'], row['metric'])} | "
                         f"{DATASET_NAMES.get(row['dataset'], row['dataset'])} | | {row['value']:.2f} | "
                         f"measured{proto}: `zoo/results/{record['file']}` |")
    if not e.paper_results and not measured:
        lines.append("| — | — | — | — | no paper-reported or measured result yet |")
    lines.append("")
    lines += ["## How to load it", ""]
    timm_ok = e.stem == "imagenet"
    if for_hub or e.hub.published:
        rev = "" if for_hub else f"@{e.hub.revision}"
        lines += ["```python", "import wssl_zoo", f'backbone = wssl_zoo.load("{e.name}")  # pinned revision, sha256-checked']
        if timm_ok:
            lines += ["import timm",
                      f'backbone = timm.create_model("hf-hub:{e.hub.repo_id}{rev}", pretrained=True, num_classes=0)']
        lines += ["```", ""]
        if not for_hub:
            lines += [f"Pinned: `{e.hub.repo_id}` at commit `{e.hub.revision}`; files and sha256:", ""]
            lines += [f"- `{name}`: `{digest}`" + (f" ({e.hub.sizes[name]:,} bytes)" if name in e.hub.sizes else "")
                      for name, digest in e.hub.files.items()]
            lines.append("")
        if not timm_ok:
            lines += [f"The {e.stem} stem (3x3 first convolution) is not a timm architecture variant: load it "
                      "with `wssl_zoo.load`, which rebuilds the stem.", ""]
        lines[-1:] = []
    else:
        lines += ["The weights are **not published yet**: `wssl_zoo.load(" + repr(e.name) + ")` raises an error that says so.",
                  "Make them with", "", "```bash", f"wssl-zoo pretrain --recipe {e.recipe} --data ROOT --out runs/{e.name}", "```", "",
                  f"and load them with `wssl_zoo.load(\"runs/{e.name}\")`."]
        if e.official.get("url"):
            lines += ["", f"The authors publish their own checkpoint: {e.official['url']}. Turn it into this entry with",
                      "", "```bash", f"wssl-zoo convert --from official-{e.method} CKPT --entry {e.name} --out runs/{e.name}",
                      f"wssl-zoo publish runs/{e.name} --repo {e.hub.repo_id}", "```"]
    lines += ["", "## Limitations", "",
              "- A self-supervised backbone: it has no classifier; evaluate it with a probe or fine-tuning.",
              f"- Trained on {DATASET_NAMES.get(e.training.get('dataset', ''), e.training.get('dataset', ''))} only; "
              "features transfer less well to very different images."]
    if e.notes:
        lines.append(f"- {e.notes}")
    lines += ["", "## Citation", "", "```bibtex", e.citation.strip(), "```", ""]
    return "\n".join(lines)


def render_generic_card(folder: Path, repo_id: str) -> str:
    """A card for a model directory that belongs to no registry entry, from its own files."""
    from .modelio import read_config

    config = read_config(folder)
    section = config.get("wssl_zoo", {})
    train = {}
    if (folder / "train_config.json").is_file():
        train = json.loads((folder / "train_config.json").read_text()).get("recipe", {})
    method = train.get("method") or section.get("method") or "unknown"
    dataset = train.get("dataset") or section.get("dataset", "")
    cfg = config.get("pretrained_cfg", {})
    lines = ["---", "library_name: timm", f"license: {LICENSE}", "tags:", "- image-feature-extraction",
             "- self-supervised-learning", f"- {method}", "- wssl-zoo"]
    if dataset:
        lines += ["datasets:", f"- {HUB_DATASETS.get(dataset, dataset)}"]
    lines += ["pipeline_tag: image-feature-extraction", "---", "", f"# {repo_id.split('/')[1]}", "",
              f"A timm `{config['architecture']}` backbone ({section.get('stem', 'imagenet')} stem) pretrained with "
              f"**{method}**" + (f" on {DATASET_NAMES.get(dataset, dataset)}" if dataset else "") + ", published by wssl-zoo.",
              "", f"- Input: {cfg.get('input_size')}, mean {cfg.get('mean')}, std {cfg.get('std')}.", ""]
    if train:
        lines += ["## How it was trained", "", f"Recipe `{train.get('name', '')}`: "
                  + ", ".join(f"{k} {v}" for k, v in sorted(train.items()) if not isinstance(v, (dict, list))) + ".",
                  "`train_config.json`, `summary.json` and `log.jsonl` in this repo hold the whole run.", ""]
    if (folder / "convert.json").is_file():
        conv = json.loads((folder / "convert.json").read_text())
        lines += ["## Provenance", "", f"Converted from the authors' checkpoint `{conv.get('source_file')}` "
                  f"(sha256 `{conv.get('source_sha256')}`) by `wssl-zoo convert --from {conv.get('layout')}`.", ""]
    lines += ["## How to load it", "", "```python", "import wssl_zoo", f'backbone = wssl_zoo.load("hf-hub:{repo_id}")', "```", ""]
    return "\n".join(lines)


def write_card(entry: ZooEntry, folder: Path = CARDS_DIR) -> Path:
    from .modelio import atomic_write_bytes

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{entry.name}.md"
    atomic_write_bytes(path, render_card(entry).encode())
    return path


def write_cards(folder: Path = CARDS_DIR) -> list[Path]:
    """Render the card of every registry entry into ``folder``; returns the paths written."""
    return [write_card(get_entry(name), folder) for name in list_models()]
