"""COCO-style evaluation with pycocotools' COCOeval (bbox and segm).

Predictions are mapped back to the original image (:func:`detection.tv_model.detector_postprocess`,
detectron2's), to the dataset's category ids, boxes to xywh, masks (pasted and thresholded at 0.5,
as detectron2) to RLE. Metrics are on the 0-100 scale: AP, AP50, AP75, APs, APm, APl per
task, keyed ``bbox_AP`` ... ``segm_APl``. A metric COCOeval cannot compute (no ground truth in an
area range; detectron2 reports NaN) is left out of the metrics and listed under ``undefined``;
no detections at all give AP 0.
"""

from __future__ import annotations

import contextlib
import copy
import io
import time
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from .data import collate
from .tv_model import detector_postprocess

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils  # optional: the [detection] extra

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


@torch.no_grad()
def predict(model, dataset, device, *, batch_size: int = 1, num_workers: int = 0, progress: bool = False,
            rank: int = 0, world: int = 1) -> list[dict]:
    """COCO-format results of ``model`` on ``dataset`` (this rank's share when distributed)."""
    indices = list(range(rank, len(dataset), world))
    subset = torch.utils.data.Subset(dataset, indices)
    loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, shuffle=False, collate_fn=collate,
                                         num_workers=num_workers)
    model.eval()
    results: list[dict] = []
    label_to_cat = dataset.label_to_cat
    for images, targets in tqdm(loader, disable=not progress or rank != 0, desc="eval", unit="batch"):
        outputs = model([im.to(device) for im in images])
        for out, image, tgt in zip(outputs, images, targets):
            out = detector_postprocess(out, tuple(image.shape[-2:]), tuple(tgt["orig_size"]))
            boxes = out["boxes"].float().cpu().numpy()
            scores = out["scores"].float().cpu().numpy()
            labels = out["labels"].cpu().numpy()
            masks = out.get("masks")
            if masks is not None:
                masks = masks.cpu().numpy()
            for k in range(len(boxes)):
                x1, y1, x2, y2 = (float(v) for v in boxes[k])
                res: dict[str, Any] = {"image_id": int(tgt["image_id"]),
                                       "category_id": int(label_to_cat[int(labels[k])]),
                                       "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(scores[k])}
                if masks is not None:
                    res["segmentation"] = _rle(masks[k])
                results.append(res)
    return results


def gather_results(results: list[dict], world: int) -> list[dict]:
    if world == 1:
        return results

    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, results)
    return [r for part in parts for r in part]


def coco_ground_truth(dataset):
    """A pycocotools COCO object for ``dataset`` (its JSON for COCO layout, converted for VOC)."""
    from pycocotools.coco import COCO  # optional: the [detection] extra

    with contextlib.redirect_stdout(io.StringIO()):
        if hasattr(dataset, "coco_ground_truth"):
            gt = COCO()
            gt.dataset = dataset.coco_ground_truth()
            gt.createIndex()
        else:
            gt = COCO(str(dataset.ann_file))
    return gt


def coco_evaluate(gt, results: list[dict], iou_types=("bbox",), image_ids=None) -> tuple[dict, str]:
    """COCOeval of ``results`` against ``gt``; returns (metrics, COCOeval's printed summary).

    Metrics COCOeval cannot compute are left out (:func:`undefined_metrics` lists them).
    """
    from pycocotools.cocoeval import COCOeval  # optional: the [detection] extra

    metrics: dict[str, float] = {}
    undefined: list[str] = []
    log = io.StringIO()
    for iou in iou_types:
        preds = results
        if iou == "segm":
            preds = [r for r in results if "segmentation" in r]
            # COCOeval's segm evaluation needs ground-truth segmentations; bbox-only GT cannot be scored.
        if not preds:
            for name in METRIC_NAMES:
                metrics[f"{iou}_{name}"] = 0.0
            log.write(f"{iou}: no detections, AP 0\n")
            continue
        with contextlib.redirect_stdout(log):
            dt = gt.loadRes(copy.deepcopy(preds))
            ev = COCOeval(gt, dt, iou)
            if image_ids is not None:
                ev.params.imgIds = sorted(image_ids)
            ev.evaluate()
            ev.accumulate()
            print(f"== {iou} ==")
            ev.summarize()
        for i, name in enumerate(METRIC_NAMES):
            v = float(ev.stats[i])
            if v >= 0:
                metrics[f"{iou}_{name}"] = round(100.0 * v, 4)
            else:
                undefined.append(f"{iou}_{name}")
    return metrics, log.getvalue()


def undefined_metrics(metrics: dict, iou_types) -> list[str]:
    """The ``{iou}_{AP...}`` names COCOeval could not compute (absent from ``metrics``)."""
    return [f"{iou}_{n}" for iou in iou_types for n in METRIC_NAMES if f"{iou}_{n}" not in metrics]


def evaluate(model, dataset, device, *, masks: bool, progress: bool = False, rank: int = 0, world: int = 1,
             num_workers: int = 0) -> dict:
    """Predict on ``dataset`` and score with COCOeval; returns {metrics, summary, detections, seconds}."""
    t0 = time.perf_counter()
    results = gather_results(predict(model, dataset, device, progress=progress, rank=rank, world=world,
                                     num_workers=num_workers), world)
    if rank != 0:
        return {}
    gt = coco_ground_truth(dataset)
    ids = [r.image_id for r in dataset.records]
    ious = ("bbox", "segm") if masks else ("bbox",)
    metrics, summary = coco_evaluate(gt, results, ious, image_ids=ids)
    return {"metrics": metrics, "undefined_metrics": undefined_metrics(metrics, ious), "summary": summary,
            "detections": len(results),
            "images": len(ids), "seconds": time.perf_counter() - t0}
