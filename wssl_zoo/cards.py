"""Model cards rendered from a registry entry and the measured results in ``zoo/results``.

``wssl-zoo card --all`` rewrites ``MODEL_CARDS/<name>.md`` for every entry; a test fails when a
checked-in card differs from what this module renders. The card is also the Hub README of the
model (Hub metadata in the YAML front matter).
"""

from __future__ import annotations

import json
from pathlib import Path

from .registry import ZooEntry, get_entry, list_models

REPO = Path(__file__).resolve().parent.parent
CARDS_DIR = REPO / "MODEL_CARDS"
RESULTS_DIR = REPO / "zoo" / "results"

DATASET_NAMES = {"imagenet": "ImageNet-1k", "cifar10": "CIFAR-10", "coco": "COCO 2017", "voc07+12": "PASCAL VOC 07+12"}
TASK_NAMES = {"linear_top1": "linear probe top-1 (%)", "linear_top5": "linear probe top-5 (%)",
              "knn5_top1": "5-NN top-1 (%)", "coco_det_ap": "detection AP (bbox)", "coco_seg_ap": "instance segmentation AP (mask)",
              "voc_det_ap50": "detection AP50", "voc_det_ap": "detection AP"}


def measured_results(entry: ZooEntry) -> list[dict]:
    """Records of ``zoo/results`` measured on this entry's published weights (matched by sha256)."""
    wanted = set(entry.hub.files.values()) - {""}
    out = []
    for path in sorted(RESULTS_DIR.glob("*.json")):
        record = json.loads(path.read_text())
        if record.get("weights_sha256") in wanted:
            out.append(dict(record, file=path.name))
    return out


def render_card(entry: ZooEntry) -> str:
    e = entry
    lines = ["---", "library_name: timm", "license: apache-2.0", "tags:", "- self-supervised-learning",
             f"- {e.method}", "- whitening", "- wssl-zoo", "datasets:", f"- {e.training.get('dataset', '')}", "---", ""]
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
              "these weights recorded in `zoo/results`.", "",
              "| task | dataset | epochs | value | provenance |", "|---|---|---|---|---|"]
    for r in e.paper_results:
        note = f" ({r.note})" if r.note else ""
        lines.append(f"| {TASK_NAMES.get(r.task, r.task)} | {DATASET_NAMES.get(r.dataset, r.dataset)} | "
                     f"{r.epochs or ''} | {r.value} | paper: {r.label}, {r.source}{note} |")
    measured = measured_results(e)
    for m in measured:
        for key, value in sorted(m.get("metrics", {}).items()):
            lines.append(f"| {key} | {m.get('dataset', '')} | | {value} | measured: `zoo/results/{m['file']}` |")
    if not e.paper_results and not measured:
        lines.append("| — | — | — | — | no paper-reported or measured result yet |")
    lines.append("")
    lines += ["## How to load it", ""]
    if e.hub.published:
        lines += ["```python", "import wssl_zoo, timm", f'backbone = wssl_zoo.load("{e.name}")  # pinned revision, sha256-checked',
                  f'backbone = timm.create_model("hf-hub:{e.hub.repo_id}@{e.hub.revision}", pretrained=True, num_classes=0)', "```"]
    else:
        lines += ["The weights are **not published yet**: `wssl_zoo.load(" + repr(e.name) + ")` raises an error that says so.",
                  "Make them with", "", "```bash", f"wssl-zoo pretrain --recipe {e.recipe} --data ROOT --out runs/{e.name}", "```", "",
                  f"and load them with `wssl_zoo.load(\"runs/{e.name}\")`."]
        if e.official.get("url"):
            lines += ["", f"The authors publish their own checkpoint: {e.official['url']}."]
    lines += ["", "## Limitations", "",
              "- A self-supervised backbone: it has no classifier; evaluate it with a probe or fine-tuning.",
              f"- Trained on {DATASET_NAMES.get(e.training.get('dataset', ''), e.training.get('dataset', ''))} only; "
              "features transfer less well to very different images."]
    if e.notes:
        lines.append(f"- {e.notes}")
    lines += ["", "## Citation", "", "```bibtex", e.citation.strip(), "```", ""]
    return "\n".join(lines)


def write_cards(folder: Path = CARDS_DIR) -> list[Path]:
    from .modelio import atomic_write_bytes

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in list_models():
        path = folder / f"{name}.md"
        atomic_write_bytes(path, render_card(get_entry(name)).encode())
        paths.append(path)
    return paths
