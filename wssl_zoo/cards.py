"""Model cards rendered from a registry entry and the measured results in ``zoo/results``.

``wssl-zoo card --all`` rewrites ``MODEL_CARDS/<name>.md`` for every entry; a test fails when a
checked-in card differs from what this module renders. The card is also the Hub README of the
model: its YAML front matter is a ``huggingface_hub.ModelCardData`` (``library_name: timm`` only
for the imagenet stem, which timm builds; ``license`` per source; ``tags``, ``datasets``) with a
``model-index`` of :class:`huggingface_hub.EvalResult` holding only the comparable results (see
:func:`comparable`). A Hub README (``wssl-zoo publish``) describes the uploaded files: epochs, data,
recipe and provenance come from the uploaded ``train_config.json`` / ``convert.json``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from . import catalogue
from .catalogue import display_name
from .fileio import atomic_write_bytes
from .paths import cards_dir, zoo_results_dir
from .records import PRETRAIN_EVAL_TASK, is_own_protocol, read_records
from .registry import ZooEntry, get_entry, list_models

CARDS_DIR = cards_dir()  # see wssl_zoo.paths: the checkout's, else $WSSL_ZOO_HOME or the current directory
RESULTS_DIR = zoo_results_dir()

TASK_NAMES = {"linear_top1": "linear probe top-1 (%)", "linear_top5": "linear probe top-5 (%)",
              "knn5_top1": "5-NN top-1 (%)", "knn20_top1": "20-NN top-1 (%)", "coco_det_ap": "detection AP (bbox)",
              "coco_seg_ap": "instance segmentation AP (mask)", "voc_det_ap50": "detection AP50",
              "voc_det_ap": "detection AP"}
LICENSE = "apache-2.0"  # weights wssl-zoo trained
# Converted authors' weights: their repositories carry no license, so wssl-zoo cannot relicense them.
CONVERTED_LICENSE = dict(license="other", license_name="authors-terms")
CONVERTED_LICENSE_NOTE = ("converted from the authors' checkpoint; the authors' repository carries no license, "
                          "so these weights are under the authors' terms (`license: other`), not wssl-zoo's "
                          "apache-2.0, which covers the code")
INSTALL = 'pip install "wssl-zoo @ git+https://github.com/wssl-zoo/wssl-zoo"'
# Hub task ids and short names per metric-key prefix (model-index only)
_HUB_TASKS = {"bbox_": ("object-detection", "detection", "mAP"), "segm_": ("image-segmentation", "instance segmentation", "mAP")}
_HUB_METRIC_NAMES = {"top1": "top-1", "top5": "top-5"}


# ---------------------------------------------------------------------------- measured results


def _hub_dataset(name: str) -> str:
    """The Hugging Face dataset id of ``name`` (the catalogue's), else the name itself."""
    try:
        return catalogue.get(name).hub_id or name
    except catalogue.UnknownDatasetError:
        return name


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

    Understands the records of :mod:`wssl_zoo.records` (``task`` plus a flat ``metrics`` mapping;
    for task ``pretrain_eval`` those are the pretrained model's numbers, the random-init baseline is
    apart in ``random_init_metrics`` and is not a result of the weights; a mean/std summary of several
    seeds is reported as its mean).
    """
    metrics = record.get("metrics", {})
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
    """Records of ``zoo/results`` measured on this entry's pinned weights (matched by sha256), read
    through :func:`wssl_zoo.records.read_records` (the one reader: a malformed record names its file)."""
    wanted = {entry.hub.files.get("model.safetensors", "")} - {""}
    return [r for r in read_records(results_dir or RESULTS_DIR) if r.get("weights_sha256") in wanted]


# ---------------------------------------------------------------------------- metadata


def comparable(record: dict) -> bool:
    """Whether a ``zoo/results`` record goes into a model-index: an evaluation on full data under a
    paper's protocol (a ``+`` in the protocol name marks overrides such as ``+train_subset=10000`` or a
    reduced detection schedule; a protocol whose ``source`` is ``wssl-zoo: ...``, like the cached
    ``fast`` probe, is ours, not a paper's), and not a pretraining monitor (``pretrain_eval`` repeats the
    kNN/linear protocols) or a spectrum (effective rank is no accuracy)."""
    if record.get("task") in (PRETRAIN_EVAL_TASK, "spectrum", None, ""):
        return False
    return "+" not in _protocol_name(record) and not is_own_protocol(record)


def _hub_result(record: dict, row: dict):
    from huggingface_hub import EvalResult  # heavy (0.16 s): only where a Hub card is rendered

    ds = row["dataset"]
    prefix = next((k for k in _HUB_TASKS if row["metric"].startswith(k)), None)
    if prefix:
        ttype, tname, mtype = _HUB_TASKS[prefix]
        metric = row["metric"][len(prefix):]
    else:
        ttype, tname, mtype = "image-classification", row["task"], "accuracy"
        metric = _HUB_METRIC_NAMES.get(row["metric"], row["metric"])
    # huggingface_hub merges results of one task type and dataset under the first one's task name,
    # so the protocol goes into the (short) metric name
    proto = f"{row['protocol']} " if row["protocol"] else ""
    return EvalResult(task_type=ttype, task_name=tname if prefix else None, dataset_type=_hub_dataset(ds),
                      dataset_name=display_name(ds), metric_type=mtype, metric_name=f"{proto}{metric}",
                      metric_value=round(row["value"], 4), source_name=f"wssl-zoo zoo/results/{record['file']}",
                      source_url="https://github.com/wssl-zoo/wssl-zoo")


def card_data(name: str, *, stem: str, method: str, dataset: str, converted: bool, measured: list[dict]):
    """The Hub metadata (``huggingface_hub.ModelCardData``) of a card; ``measured`` are zoo/results records."""
    from huggingface_hub import ModelCardData  # heavy (0.16 s): only where a Hub card is rendered

    results = [_hub_result(r, row) for r in measured if comparable(r) for row in metric_rows(r)]
    license_ = CONVERTED_LICENSE if converted else dict(license=LICENSE)
    return ModelCardData(
        library_name="timm" if stem == "imagenet" else None, **license_,
        tags=["image-feature-extraction", "self-supervised-learning", method, "whitening", "wssl-zoo"],
        datasets=[_hub_dataset(dataset)] if dataset else None, pipeline_tag="image-feature-extraction",
        model_name=name if results else None, eval_results=results or None)


def _front_matter(data) -> list[str]:
    return ["---", *data.to_yaml().splitlines(), "---", ""]


def uploaded(folder: Path) -> dict[str, Any]:
    """What the files of a model directory say about the weights: ``epochs``, ``dataset``,
    ``recipe`` (name), ``train`` (the resolved recipe of ``train_config.json``), ``options``,
    ``convert`` (``convert.json``) and the ``config.json`` section ``wssl_zoo``."""
    def _json(name: str) -> dict:
        path = folder / name
        if not path.is_file():
            return {}
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None

    from .modelio import read_config  # modelio imports torch and timm: list, info and docs run without them

    section = read_config(folder).get("wssl_zoo", {})
    train_cfg, conv = _json("train_config.json"), _json("convert.json")
    train = train_cfg.get("recipe", {})
    return dict(epochs=train.get("epochs"), dataset=train.get("dataset") or conv.get("dataset") or section.get("dataset", ""),
                recipe=train.get("name", ""), method=train.get("method") or conv.get("method") or section.get("method"),
                train=train, options=train_cfg.get("options", {}), convert=conv, section=section)


def _training_lines(up: dict[str, Any], entry: ZooEntry | None) -> list[str]:
    """The "How it was trained" section from the uploaded files (not the registry entry)."""
    lines = ["## How it was trained", ""]
    conv, train = up["convert"], up["train"]
    if conv:
        url = (entry.official.get("url") if entry is not None else "") or ""
        where = f" ({url})" if url else ""
        lines += [f"Converted from the authors' checkpoint `{conv.get('source_file')}`{where}, sha256 "
                  f"`{conv.get('source_sha256')}`, by `wssl-zoo convert --from {conv.get('layout')}` "
                  f"(`convert.json` in this repo records the key mapping and the feature check against "
                  f"torchvision). The authors trained it; its recipe is theirs"
                  + (f": {entry.training.get('epochs')} epochs on "
                     f"{display_name(entry.training.get('dataset', ''))}, "
                     f"as {entry.training.get('source', 'their repository')}" if entry is not None else "")
                  + ".", "", f"License: {CONVERTED_LICENSE_NOTE}.", ""]
        return lines
    if train:
        ds = display_name(up["dataset"])
        subset = up["options"].get("train_subset")
        data = f"{ds} ({subset} training images)" if subset else f"{ds} (the full training set)"
        lines += [f"Pretrained for **{up['epochs']} epochs** on {data} by `wssl-zoo pretrain` with recipe "
                  f"`{up['recipe']}`: " + ", ".join(f"{k} {v}" for k, v in sorted(train.items())
                                                   if k not in ("name", "epochs", "dataset", "source", "description", "notes")
                                                   and not isinstance(v, (dict, list)) and v not in (None, "")) + ".",
                  f"Source of the recipe: {train.get('source', '')}." if train.get("source") else "",
                  "`train_config.json`, `summary.json` and `log.jsonl` in this repo hold the whole run.", ""]
        if entry is not None and up["epochs"] != entry.training.get("epochs"):
            lines += [f"The registry entry `{entry.name}` describes the {entry.training.get('epochs')}-epoch recipe; "
                      f"these weights had {up['epochs']} epochs, so the entry's paper numbers are not theirs.", ""]
        return lines
    lines += ["No `train_config.json` or `convert.json` was uploaded: how these weights were made is not recorded.", ""]
    return lines


def _published_notes(notes: str) -> str:
    """An entry's notes without the sentences saying its weights are not published (true before)."""
    kept = [s for s in re.split(r"(?<=\.)\s+", notes.strip()) if s and "not published" not in s]
    return " ".join(kept)


# ---------------------------------------------------------------------------- cards


def render_card(entry: ZooEntry, for_hub: bool = False, results_dir: Path | None = None,
                folder: Path | None = None) -> str:
    """The card of ``entry`` (Markdown with Hub front matter).

    ``for_hub`` renders the README of the Hub repo being published from ``folder`` (the staged
    files): its training section and license come from the uploaded ``train_config.json`` /
    ``convert.json``, its load snippet names the repo (the commit does not exist yet), and the
    entry's "not published yet" note is left out.
    """
    e = entry
    measured = measured_results(e, results_dir)
    up = uploaded(folder) if folder is not None else None
    converted = bool(up and up["convert"])
    dataset = (up["dataset"] if up else "") or e.training.get("dataset", "")
    lines = _front_matter(card_data(e.name, stem=e.stem, method=e.method, dataset=dataset, converted=converted,
                                    measured=measured))
    lines += [f"# {e.name}", "", e.description if up is None else f"timm `{e.arch}` ({e.stem} stem) weights "
              f"published for the wssl-zoo registry entry `{e.name}` ({e.method}).", ""]
    # an uploaded run's own projector and loss settings, else the entry's
    proj = (up["train"].get("projector") if up else None) or e.projector
    loss = (up["train"].get("loss") if up else None) or e.loss
    lines += ["## What it is", "",
              f"- Method: **{e.method}** — {e.variant}.",
              f"- Backbone: timm `{e.arch}` ({e.stem} stem), {e.img_size} px input, {e.feature_dim}-d pooled features.",
              f"- Projector used in pretraining: {proj['num_layers']} layers, hidden {proj['hidden_dim']}, "
              f"output {proj['out_dim']}.",
              f"- Loss parameters: `{dict(loss)}`.", ""]
    if up is not None:
        lines += _training_lines(up, e)
    else:
        lines += ["## How it was trained", "",
                  f"Recipe `{e.recipe}` (`wssl-zoo pretrain --recipe {e.recipe} --show` prints every value): "
                  + ", ".join(f"{k} {v}" for k, v in e.training.items() if k != "source") + ".",
                  f"Source of the recipe: {e.training.get('source', '')}.", ""]
    lines += ["## Results", "", "Paper-reported numbers are the authors' own, for the entry's recipe; measured numbers "
              "come from runs of these weights recorded in `zoo/results` (each record holds the command that "
              "reproduces it) and are taken after the final epoch (a linear or semi-supervised record also gives "
              "its best test epoch, not shown). The Hub metadata lists only measured results under a paper protocol "
              "on full data without overrides.", "",
              "| task | dataset | epochs | value | provenance |", "|---|---|---|---|---|"]
    for r in e.paper_results:
        note = f" ({r.note})" if r.note else ""
        lines.append(f"| {TASK_NAMES.get(r.task, r.task)} | {display_name(r.dataset)} | "
                     f"{r.epochs or ''} | {r.value} | paper: {r.label}, {r.source}{note} |")
    for record in measured:
        for row in metric_rows(record):
            proto = f", protocol {row['protocol']}" if row["protocol"] else ""
            lines.append(f"| {TASK_NAMES.get(row['metric'], row['metric'])} | "
                         f"{display_name(row['dataset'])} | | {row['value']:.2f} | "
                         f"measured{proto}: `zoo/results/{record['file']}` |")
    if not e.paper_results and not measured:
        lines.append("| — | — | — | — | no paper-reported or measured result yet |")
    lines.append("")
    lines += ["## How to load it", ""]
    timm_ok = e.stem == "imagenet"
    if for_hub or e.hub.published:
        rev = "" if for_hub else f"@{e.hub.revision}"
        lines += ["```bash", INSTALL, "```", "", "```python", "import wssl_zoo",
                  f'backbone = wssl_zoo.load("hf-hub:{e.hub.repo_id}{rev}")'
                  + ("  # append @<commit> to pin a revision" if for_hub else "  # sha256-checked")]
        if not for_hub:
            lines.append(f'backbone = wssl_zoo.load("{e.name}")  # the same, through the registry entry')
        if timm_ok:
            lines += ["import timm  # fine-tuning: any num_classes / in_chans, as for every timm checkpoint",
                      f'model = timm.create_model("hf-hub:{e.hub.repo_id}{rev}", pretrained=True, num_classes=10)']
        lines += ["```", ""]
        if not for_hub:
            lines += [f"Pinned: `{e.hub.repo_id}` at commit `{e.hub.revision}`; files and sha256:", ""]
            lines += [f"- `{name}`: `{digest}`" + (f" ({e.hub.sizes[name]:,} bytes)" if name in e.hub.sizes else "")
                      for name, digest in e.hub.files.items()]
            lines.append("")
        if not timm_ok:
            lines += [f"The {e.stem} stem (3x3 stride-1 first convolution) is not a timm architecture, so this repo "
                      "is not tagged `library_name: timm` and `timm.create_model` refuses it with an error naming "
                      "`wssl_zoo.load`, which rebuilds the stem.", ""]
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
              f"- Trained on {display_name(dataset)} only; "
              "features transfer less well to very different images."]
    notes = _published_notes(e.notes) if (for_hub or e.hub.published) else e.notes
    if notes:
        lines.append(f"- {notes}")
    lines += ["", "## Citation", "", "```bibtex", e.citation.strip(), "```", ""]
    return "\n".join(lines)


def render_generic_card(folder: Path, repo_id: str) -> str:
    """A card for a model directory that belongs to no registry entry, from its own files."""
    from .modelio import config_arch, read_config  # torch and timm only for the command that needs them

    config = read_config(folder)
    up = uploaded(folder)
    stem = up["section"].get("stem", "imagenet")
    method, dataset = up["method"] or "unknown", up["dataset"]
    cfg = config.get("pretrained_cfg", {})
    lines = _front_matter(card_data(repo_id.split("/")[1], stem=stem, method=method, dataset=dataset,
                                    converted=bool(up["convert"]), measured=[]))
    lines += [f"# {repo_id.split('/')[1]}", "",
              f"A timm `{config_arch(config)}` backbone ({stem} stem) pretrained with "
              f"**{method}**" + (f" on {display_name(dataset)}" if dataset else "") + ", published by wssl-zoo.",
              "", f"- Input: {cfg.get('input_size')}, mean {cfg.get('mean')}, std {cfg.get('std')}.", ""]
    lines += _training_lines(up, None)
    lines += ["## How to load it", "", "```bash", INSTALL, "```", "", "```python", "import wssl_zoo",
              f'backbone = wssl_zoo.load("hf-hub:{repo_id}")  # append @<commit> to pin a revision']
    if stem == "imagenet":
        lines += ["import timm", f'model = timm.create_model("hf-hub:{repo_id}", pretrained=True, num_classes=10)']
    lines += ["```", ""]
    return "\n".join(lines)


def write_card(entry: ZooEntry, folder: Path = CARDS_DIR) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{entry.name}.md"
    atomic_write_bytes(path, render_card(entry).encode())
    return path


def write_cards(folder: Path = CARDS_DIR) -> list[Path]:
    """Render the card of every registry entry into ``folder``; returns the paths written."""
    return [write_card(get_entry(name), folder) for name in list_models()]
