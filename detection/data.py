"""Detection datasets: COCO layout and Pascal VOC XML, validated on load.

COCO layout: ``ROOT/annotations/instances_{train,val}2017.json`` and ``ROOT/{train,val}2017/*.jpg``.
VOC: ``ROOT/VOC2007`` and/or ``ROOT/VOC2012`` (or ``ROOT/VOCdevkit/VOC20xx``), each with
``Annotations/``, ``ImageSets/Main/{trainval,test}.txt`` and ``JPEGImages/``.

Validation names the offending entry (file, image id, annotation id): duplicate image ids, image
files that do not exist, boxes that are empty, NaN or outside the image, unknown category ids.
As detectron2 does, crowd annotations are not trained on, and in training images without
(non-crowd) annotations are dropped (``DATALOADER.FILTER_EMPTY_ANNOTATIONS``).

Each item is ``(image, target)``: ``image`` a float RGB tensor (3, H, W) on the 0-1 scale and
``target`` a dict with ``boxes`` (N, 4) xyxy in pixels, ``labels`` (N,) contiguous in 1..K (0 is
background in torchvision), ``image_id``, and ``masks`` (N, H, W) uint8 when masks are asked for.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor")
# A box may poke this many pixels outside its image (annotation tools round); more is an error.
_EDGE_TOLERANCE = 1.0


class AnnotationError(ValueError):
    """An annotation file or entry is invalid; the message names the file and the entry."""


@dataclass
class ImageRecord:
    file: Path
    image_id: int
    width: int
    height: int
    boxes: np.ndarray            # (N, 4) xyxy float32, non-crowd
    labels: np.ndarray           # (N,) int64 contiguous 1..K
    segmentations: list = field(default_factory=list)   # COCO polygons / RLE per box (COCO only)
    ignored: int = 0             # crowd / difficult annotations not trained on


def coco_paths(root: str | Path, split: str) -> tuple[Path, Path]:
    root = Path(root)
    ann = root / "annotations" / f"instances_{split}2017.json"
    return ann, root / f"{split}2017"


def _check_box(box, width, height, where: str) -> list[float]:
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        raise AnnotationError(f"{where}: bbox {box!r} is not [x, y, w, h]")
    try:
        x, y, w, h = (float(v) for v in box)
    except (TypeError, ValueError):
        raise AnnotationError(f"{where}: bbox {box!r} has non-numeric values") from None
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        raise AnnotationError(f"{where}: bbox {box!r} holds NaN or Inf")
    if w <= 0 or h <= 0:
        raise AnnotationError(f"{where}: bbox {box!r} is empty (width and height must be > 0)")
    t = _EDGE_TOLERANCE
    if x < -t or y < -t or x + w > width + t or y + h > height + t:
        raise AnnotationError(f"{where}: bbox {box!r} lies outside the {width}x{height} image")
    return [max(0.0, x), max(0.0, y), min(float(width), x + w), min(float(height), y + h)]


class CocoDetection(torch.utils.data.Dataset):
    """A COCO-format detection dataset (instances JSON + image folder), validated on load.

    ``train=True`` ignores crowd annotations and (with ``filter_empty``) drops images without
    annotations; ``train=False`` keeps every image (evaluation uses the JSON itself as ground truth).
    """

    def __init__(self, ann_file: str | Path, image_dir: str | Path, *, train: bool, masks: bool = False,
                 filter_empty: bool = True, check_files: bool = True, flip: bool = False):
        self.flip = flip
        self.ann_file = Path(ann_file)
        self.image_dir = Path(image_dir)
        self.masks = masks
        if not self.ann_file.is_file():
            raise AnnotationError(f"{self.ann_file}: annotation file not found (COCO layout is "
                                  "ROOT/annotations/instances_{train,val}2017.json)")
        if not self.image_dir.is_dir():
            raise AnnotationError(f"{self.image_dir}: image folder not found")
        try:
            data = json.loads(self.ann_file.read_text())
        except json.JSONDecodeError as exc:
            raise AnnotationError(f"{self.ann_file}: not valid JSON ({exc})") from None
        for key in ("images", "annotations", "categories"):
            if not isinstance(data.get(key), list):
                raise AnnotationError(f"{self.ann_file}: key {key!r} is missing or not a list")
        src = self.ann_file.name
        cats = data["categories"]
        cat_ids = [c.get("id") for c in cats]
        if len(set(cat_ids)) != len(cat_ids):
            raise AnnotationError(f"{src}: duplicate category ids in 'categories'")
        self.cat_ids = sorted(cat_ids)
        self.cat_to_label = {c: i + 1 for i, c in enumerate(self.cat_ids)}
        self.label_to_cat = {i + 1: c for i, c in enumerate(self.cat_ids)}
        self.class_names = [next(c.get("name", str(c["id"])) for c in cats if c["id"] == cid) for cid in self.cat_ids]
        images: dict[int, dict] = {}
        missing = []
        for img in data["images"]:
            iid = img.get("id")
            if iid in images:
                raise AnnotationError(f"{src}: duplicate image id {iid} ({img.get('file_name')} and "
                                      f"{images[iid].get('file_name')})")
            for key in ("file_name", "width", "height"):
                if key not in img:
                    raise AnnotationError(f"{src}: image id {iid} has no {key!r}")
            images[iid] = img
            if check_files and not (self.image_dir / img["file_name"]).is_file():
                missing.append(str(self.image_dir / img["file_name"]))
        if missing:
            more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
            raise AnnotationError(f"{src}: image file(s) not found: {', '.join(missing[:3])}{more}")
        per_image: dict[int, list[dict]] = {iid: [] for iid in images}
        for ann in data["annotations"]:
            aid = ann.get("id")
            iid = ann.get("image_id")
            if iid not in images:
                raise AnnotationError(f"{src}: annotation id {aid} refers to unknown image id {iid}")
            img = images[iid]
            where = f"{src}: annotation id {aid} (image id {iid}, {img['file_name']})"
            if ann.get("category_id") not in self.cat_to_label:
                raise AnnotationError(f"{where}: unknown category id {ann.get('category_id')!r} "
                                      f"(known: {self.cat_ids[:10]}{'...' if len(self.cat_ids) > 10 else ''})")
            xyxy = _check_box(ann.get("bbox"), img["width"], img["height"], where)
            if masks and not ann.get("iscrowd", 0) and not ann.get("segmentation"):
                raise AnnotationError(f"{where}: no 'segmentation' (masks are on)")
            per_image[iid].append(dict(ann, _xyxy=xyxy))
        self.records: list[ImageRecord] = []
        for iid in sorted(images):
            img = images[iid]
            anns = per_image[iid]
            keep = [a for a in anns if not (train and a.get("iscrowd", 0))]
            if train and filter_empty and not keep:
                continue
            self.records.append(ImageRecord(
                file=self.image_dir / img["file_name"], image_id=int(iid), width=int(img["width"]),
                height=int(img["height"]),
                boxes=np.asarray([a["_xyxy"] for a in keep], dtype=np.float32).reshape(-1, 4),
                labels=np.asarray([self.cat_to_label[a["category_id"]] for a in keep], dtype=np.int64),
                segmentations=[a.get("segmentation") for a in keep], ignored=len(anns) - len(keep)))
        if not self.records:
            raise AnnotationError(f"{src}: no images with annotations to train on")

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, idx: int):
        rec = self.records[idx]
        image = read_image(rec.file, rec.width, rec.height)
        target: dict[str, Any] = {"boxes": torch.from_numpy(rec.boxes.copy()),
                                  "labels": torch.from_numpy(rec.labels.copy()),
                                  "image_id": rec.image_id}
        if self.masks:
            target["masks"] = torch.from_numpy(segmentations_to_masks(rec.segmentations, rec.height, rec.width))
        if self.flip:
            return random_hflip(image, target)
        return image, target


def random_hflip(image: torch.Tensor, target: dict):
    """Horizontal flip with probability 0.5 (detectron2's INPUT.RANDOM_FLIP "horizontal")."""
    if float(torch.rand(())) >= 0.5:
        return image, target
    width = image.shape[-1]
    image = image.flip(-1)
    target = dict(target)
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
    target["boxes"] = boxes
    if "masks" in target:
        target["masks"] = target["masks"].flip(-1)
    return image, target


def read_image(path: Path, width: int | None = None, height: int | None = None) -> torch.Tensor:
    """An RGB image as a float tensor (3, H, W) on the 0-1 scale; checks the annotated size."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise AnnotationError(f"{path}: image file not found") from None
    except OSError as exc:
        raise AnnotationError(f"{path}: unreadable image ({exc})") from None
    if width is not None and (arr.shape[1], arr.shape[0]) != (width, height):
        raise AnnotationError(f"{path}: image is {arr.shape[1]}x{arr.shape[0]} but annotated as {width}x{height}")
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def segmentations_to_masks(segs: list, height: int, width: int) -> np.ndarray:
    """COCO polygons / RLE to (N, H, W) uint8 masks (pycocotools)."""
    from pycocotools import mask as mask_utils

    out = np.zeros((len(segs), height, width), dtype=np.uint8)
    for i, seg in enumerate(segs):
        if isinstance(seg, list):
            rles = mask_utils.frPyObjects(seg, height, width)
            rle = mask_utils.merge(rles)
        elif isinstance(seg, dict) and isinstance(seg.get("counts"), list):
            rle = mask_utils.frPyObjects(seg, height, width)
        else:
            rle = seg
        out[i] = mask_utils.decode(rle)
    return out


# ----------------------------------------------------------------------------------------------- VOC

def _voc_year_dirs(root: Path) -> dict[str, Path]:
    found = {}
    for year in ("2007", "2012"):
        for cand in (root / f"VOC{year}", root / "VOCdevkit" / f"VOC{year}"):
            if cand.is_dir():
                found[year] = cand
                break
    return found


class VOCDetection(torch.utils.data.Dataset):
    """Pascal VOC detection from XML. ``splits`` like ``[("2007", "trainval"), ("2012", "trainval")]``.

    "difficult" objects are not trained on; at evaluation they are ground truth marked as crowd, so
    COCOeval neither rewards nor penalises detections of them (VOC's convention).
    """

    def __init__(self, root: str | Path, splits, *, train: bool, filter_empty: bool = True, flip: bool = False):
        root = Path(root)
        self.flip = flip
        years = _voc_year_dirs(root)
        self.masks = False
        self.cat_ids = list(range(1, len(VOC_CLASSES) + 1))
        self.cat_to_label = {c: c for c in self.cat_ids}
        self.label_to_cat = dict(self.cat_to_label)
        self.class_names = list(VOC_CLASSES)
        self.records: list[ImageRecord] = []
        self.difficult: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        next_id = 0
        for year, split in splits:
            if year not in years:
                raise AnnotationError(f"{root}: no VOC{year} folder (expected {root}/VOC{year} or "
                                      f"{root}/VOCdevkit/VOC{year})")
            base = years[year]
            listing = base / "ImageSets" / "Main" / f"{split}.txt"
            if not listing.is_file():
                raise AnnotationError(f"{listing}: image list not found")
            for name in listing.read_text().split():
                xml = base / "Annotations" / f"{name}.xml"
                if not xml.is_file():
                    raise AnnotationError(f"{xml}: annotation file not found (listed in {listing})")
                try:
                    tree = ET.parse(xml).getroot()
                except ET.ParseError as exc:
                    raise AnnotationError(f"{xml}: invalid XML ({exc})") from None
                size = tree.find("size")
                try:
                    width, height = int(size.find("width").text), int(size.find("height").text)
                except (AttributeError, TypeError, ValueError):
                    raise AnnotationError(f"{xml}: missing or invalid <size>") from None
                file = base / "JPEGImages" / (tree.findtext("filename") or f"{name}.jpg")
                if not file.is_file():
                    raise AnnotationError(f"{xml}: image file {file} not found")
                boxes, labels, dboxes, dlabels = [], [], [], []
                for k, obj in enumerate(tree.findall("object")):
                    cls = (obj.findtext("name") or "").strip()
                    where = f"{xml}: object {k} ({cls!r})"
                    if cls not in VOC_CLASSES:
                        raise AnnotationError(f"{where}: unknown class {cls!r}")
                    bb = obj.find("bndbox")
                    try:
                        x1, y1, x2, y2 = (float(bb.find(t).text) for t in ("xmin", "ymin", "xmax", "ymax"))
                    except (AttributeError, TypeError, ValueError):
                        raise AnnotationError(f"{where}: missing or invalid <bndbox>") from None
                    # VOC boxes are 1-based inclusive pixel indices (detectron2 subtracts 1 from the mins).
                    xyxy = _check_box([x1 - 1, y1 - 1, x2 - x1 + 1, y2 - y1 + 1], width, height, where)
                    if int(obj.findtext("difficult") or 0):
                        dboxes.append(xyxy)
                        dlabels.append(VOC_CLASSES.index(cls) + 1)
                        continue
                    boxes.append(xyxy)
                    labels.append(VOC_CLASSES.index(cls) + 1)
                if train and filter_empty and not boxes:
                    continue
                next_id += 1
                self.records.append(ImageRecord(file=file, image_id=next_id, width=width, height=height,
                                                boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
                                                labels=np.asarray(labels, np.int64), ignored=len(dboxes)))
                self.difficult[next_id] = (np.asarray(dboxes, np.float32).reshape(-1, 4),
                                           np.asarray(dlabels, np.int64))
        if not self.records:
            raise AnnotationError(f"{root}: no VOC images found for {splits}")

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, idx: int):
        rec = self.records[idx]
        image = read_image(rec.file, rec.width, rec.height)
        target = {"boxes": torch.from_numpy(rec.boxes.copy()), "labels": torch.from_numpy(rec.labels.copy()),
                  "image_id": rec.image_id}
        return random_hflip(image, target) if self.flip else (image, target)

    def coco_ground_truth(self) -> dict:
        """The dataset as a COCO ground-truth dict (difficult objects as crowd)."""
        images, anns = [], []
        for rec in self.records:
            images.append({"id": rec.image_id, "width": rec.width, "height": rec.height, "file_name": str(rec.file)})
            dboxes, dlabels = self.difficult.get(rec.image_id, (np.zeros((0, 4)), np.zeros(0)))
            for boxes, labels, crowd in ((rec.boxes, rec.labels, 0), (dboxes, dlabels, 1)):
                for b, lab in zip(boxes, labels):
                    w, h = float(b[2] - b[0]), float(b[3] - b[1])
                    anns.append({"id": len(anns) + 1, "image_id": rec.image_id, "category_id": int(lab),
                                 "bbox": [float(b[0]), float(b[1]), w, h], "area": w * h, "iscrowd": crowd})
        cats = [{"id": i + 1, "name": n} for i, n in enumerate(VOC_CLASSES)]
        return {"images": images, "annotations": anns, "categories": cats}


def collate(batch):
    return tuple(zip(*batch))


def coco_datasets(root: str | Path, *, masks: bool, filter_empty: bool = True, flip: bool = False):
    """``(train, val)`` CocoDetection datasets of a COCO-layout root (``flip``: random h-flip in train)."""
    train_ann, train_dir = coco_paths(root, "train")
    val_ann, val_dir = coco_paths(root, "val")
    return (CocoDetection(train_ann, train_dir, train=True, masks=masks, filter_empty=filter_empty, flip=flip),
            CocoDetection(val_ann, val_dir, train=False, masks=False))


def voc_datasets(root: str | Path, *, filter_empty: bool = True, flip: bool = False):
    """``(train, test)``: VOC07+12 trainval (whichever years exist; 2007 is required) and VOC07 test."""
    years = _voc_year_dirs(Path(root))
    splits = [(y, "trainval") for y in ("2007", "2012") if y in years] or [("2007", "trainval")]
    return (VOCDetection(root, splits, train=True, filter_empty=filter_empty, flip=flip),
            VOCDetection(root, [("2007", "test")], train=False))


def dataset_fingerprint_files(dataset) -> list[Path]:
    """The annotation files that define a dataset (for the record's fingerprint)."""
    if isinstance(dataset, CocoDetection):
        return [dataset.ann_file]
    return []


__all__ = ["AnnotationError", "CocoDetection", "VOCDetection", "ImageRecord", "coco_datasets", "voc_datasets",
           "collate", "read_image", "segmentations_to_masks", "VOC_CLASSES", "coco_paths"]
