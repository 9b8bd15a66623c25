"""Detection datasets: COCO layout and Pascal VOC XML, validated on load.

COCO layout: ``ROOT/annotations/instances_{train,val}2017.json`` and ``ROOT/{train,val}2017/*.jpg``.
VOC: ``ROOT/VOC2007`` and/or ``ROOT/VOC2012`` (or ``ROOT/VOCdevkit/VOC20xx``), each with
``Annotations/``, ``ImageSets/Main/{trainval,test}.txt`` and ``JPEGImages/``.

Validation names the offending entry (file, image id, annotation id): duplicate image ids, image
files that do not exist, boxes that are empty, NaN or outside the image, unknown category ids.
As detectron2 does, crowd annotations are not trained on, and in training images without
(non-crowd) annotations are dropped (``DATALOADER.FILTER_EMPTY_ANNOTATIONS``).

Each item is ``(image, target)``: ``image`` a float RGB tensor (3, h, w) on the 0-1 scale and
``target`` a dict with ``boxes`` (N, 4) xyxy in pixels of that image, ``labels`` (N,) contiguous in
1..K (0 is background in torchvision), ``image_id``, ``orig_size`` (H, W) of the file, and ``masks``
(N, h, w) uint8 or ``polygons`` (per instance a list of float64 arrays [x0, y0, x1, ...] in pixels
of the resized image; ``mask_format`` "polygon", detectron2's default) when masks are asked for.

The input pipeline is detectron2's ``DatasetMapper``, step by step, in the data-loading workers:
the file is read with PIL and turned upright by its EXIF orientation (``detection_utils.read_image``),
resized with :class:`Resize` (``ResizeShortestEdge``: the shortest side drawn from the sizes, the
longest at most ``max_size``, the output size rounded as detectron2 rounds it, PIL bilinear on the
uint8 image), flipped horizontally with probability 0.5 in training (``RandomFlip``); boxes are
scaled and flipped with the image, and so are polygons (rasterised inside each proposal by the
mask head, as detectron2's ``PolygonMasks``) or bitmaps (``INPUT.MASK_FORMAT bitmask``: rasterised
and resized nearest). An item asked for as ``dataset[(index, draw)]`` takes its random
choices (size, flip) from ``random.Random(draw)``: :class:`TrainingBatches` hands out these draws,
so a batch is the same whichever worker or process makes it, and a resumed run sees the images an
uninterrupted one would have seen.
"""

from __future__ import annotations

import json
import math
import random
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

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


@dataclass(frozen=True)
class Resize:
    """detectron2's ``ResizeShortestEdge`` (sample style "choice"; "range" is the choice over every
    integer of the range, :func:`detection.configs.to_torchvision` expands it)."""

    sizes: tuple[int, ...]
    max_size: int

    @staticmethod
    def output_shape(height: int, width: int, size: int, max_size: int) -> tuple[int, int]:
        """``(new_h, new_w)``: shortest side ``size``, longest at most ``max_size``, each rounded to
        the nearest integer (``int(x + 0.5)``) as ``ResizeShortestEdge.get_output_shape`` does."""
        scale = size / min(height, width)
        new_h, new_w = (size, scale * width) if height < width else (scale * height, size)
        if max(new_h, new_w) > max_size:
            shrink = max_size / max(new_h, new_w)
            new_h, new_w = new_h * shrink, new_w * shrink
        return int(new_h + 0.5), int(new_w + 0.5)

    def shape(self, height: int, width: int, rng: random.Random) -> tuple[int, int]:
        size = self.sizes[0] if len(self.sizes) == 1 else rng.choice(self.sizes)
        return self.output_shape(height, width, size, self.max_size)


def _draw(key):
    """``dataset[i]`` or ``dataset[(i, draw)]``: the index and the generator of its random choices."""
    if isinstance(key, tuple):
        index, draw = key
        return int(index), random.Random(draw)
    return int(key), random  # plain indexing: the module's global generator (random.seed applies)


MASK_FORMATS = ("polygon", "bitmask")  # detectron2's INPUT.MASK_FORMAT


def _item(rec: "ImageRecord", key_rng: random.Random, *, resize: "Resize | None", flip: bool, masks: bool,
          mask_format: str = "bitmask"):
    """One ``(image, target)`` through detectron2's mapper steps (see the module docstring); the
    masks as ``polygons`` (``mask_format`` polygon) or ``masks`` bitmaps (bitmask)."""
    image = open_image(rec.file, rec.width, rec.height)
    h, w = rec.height, rec.width
    nh, nw = resize.shape(h, w, key_rng) if resize is not None else (h, w)
    if (nh, nw) != (h, w):
        image = image.resize((nw, nh), Image.BILINEAR)
    flipped = flip and key_rng.random() < 0.5
    tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div_(255.0)
    boxes = rec.boxes.astype(np.float32) * np.asarray([nw / w, nh / h, nw / w, nh / h], np.float32)
    target: dict[str, Any] = {"boxes": torch.from_numpy(boxes).reshape(-1, 4),
                              "labels": torch.from_numpy(rec.labels.copy()), "image_id": rec.image_id,
                              "orig_size": (h, w)}
    if flipped:
        tensor, target = hflip(tensor, target)
    if masks:  # transformed as detectron2's transform_instance_annotations + annotations_to_instances do
        polygons = [scale_polygons(seg, nw * 1.0 / w, nh * 1.0 / h, nw if flipped else None)
                    if isinstance(seg, list) else None for seg in rec.segmentations]
        if mask_format == "polygon":
            if any(p is None for p in polygons):
                raise AnnotationError(f"{rec.file.name}: an instance's segmentation is RLE, not polygons; set "
                                      "INPUT.MASK_FORMAT bitmask (as detectron2 asks)")
            target["polygons"] = polygons
        else:
            stack = np.zeros((len(polygons), nh, nw), dtype=np.uint8)
            for k, (poly, seg) in enumerate(zip(polygons, rec.segmentations)):
                if poly is not None:
                    stack[k] = polygons_to_bitmask(poly, nh, nw)
                else:
                    bitmap = segmentations_to_masks([seg], h, w, out_size=(nh, nw))[0]
                    stack[k] = bitmap[:, ::-1] if flipped else bitmap
            target["masks"] = torch.from_numpy(stack)
    return tensor, target


def scale_polygons(seg: list, sx: float, sy: float, flip_width: int | None = None) -> list[np.ndarray]:
    """An instance's COCO polygons as float64 arrays [x0, y0, x1, ...] scaled by (sx, sy), then
    mirrored (x -> flip_width - x) when given, in the order and dtypes of detectron2's transforms
    (``ResizeTransform`` then ``HFlipTransform`` on float64 coordinates, as ``PolygonMasks`` holds them)."""
    out = []
    for poly in seg:
        p = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
        p[:, 0] = p[:, 0] * sx
        p[:, 1] = p[:, 1] * sy
        if flip_width is not None:
            p[:, 0] = flip_width - p[:, 0]
        out.append(p.reshape(-1))
    return out


def polygons_to_bitmask(polygons: list[np.ndarray], height: int, width: int) -> np.ndarray:
    """One instance's polygons rasterised (pycocotools) into a (height, width) uint8 bitmap."""
    from pycocotools import mask as mask_utils  # optional: the [detection] extra

    if not polygons:
        return np.zeros((height, width), dtype=np.uint8)
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, height, width)))


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
    ``resize`` (:class:`Resize`) and ``flip`` are the mapper's augmentations (none by default).
    """

    def __init__(self, ann_file: str | Path, image_dir: str | Path, *, train: bool, masks: bool = False,
                 filter_empty: bool = True, check_files: bool = True, flip: bool = False,
                 resize: Resize | None = None, mask_format: str = "bitmask"):
        if mask_format not in MASK_FORMATS:
            raise AnnotationError(f"INPUT.MASK_FORMAT {mask_format!r}: one of {list(MASK_FORMATS)}")
        self.flip = flip
        self.resize = resize
        self.mask_format = mask_format
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

    def __getitem__(self, key):
        idx, rng = _draw(key)
        return _item(self.records[idx], rng, resize=self.resize, flip=self.flip, masks=self.masks,
                     mask_format=self.mask_format)


def random_hflip(image: torch.Tensor, target: dict):
    """:func:`hflip` with probability 0.5 (detectron2's INPUT.RANDOM_FLIP "horizontal"), drawn from torch."""
    if float(torch.rand(())) >= 0.5:
        return image, target
    return hflip(image, target)


def hflip(image: torch.Tensor, target: dict):
    """The image (3, h, w), its boxes (x -> w - x) and masks mirrored left to right."""
    width = image.shape[-1]
    image = image.flip(-1)
    target = dict(target)
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
    target["boxes"] = boxes
    if "masks" in target:
        target["masks"] = target["masks"].flip(-1)
    return image, target


def open_image(path: Path, width: int | None = None, height: int | None = None):
    """The RGB ``PIL.Image`` of a file, turned upright by its EXIF orientation as detectron2's
    ``read_image`` does; checks the annotated size."""
    try:
        with Image.open(path) as im:
            image = ImageOps.exif_transpose(im).convert("RGB")
    except FileNotFoundError:
        raise AnnotationError(f"{path}: image file not found") from None
    except OSError as exc:
        raise AnnotationError(f"{path}: unreadable image ({exc})") from None
    if width is not None and image.size != (width, height):
        raise AnnotationError(f"{path}: image is {image.size[0]}x{image.size[1]} but annotated as {width}x{height}")
    return image


def read_image(path: Path, width: int | None = None, height: int | None = None) -> torch.Tensor:
    """An RGB image as a float tensor (3, H, W) on the 0-1 scale (:func:`open_image`)."""
    arr = np.asarray(open_image(path, width, height))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def segmentations_to_masks(segs: list, height: int, width: int, out_size: tuple[int, int] | None = None) -> np.ndarray:
    """COCO polygons / RLE of a ``height`` x ``width`` image to (N, h, w) uint8 masks (pycocotools) at
    ``out_size`` (h, w; default the image's): polygons are scaled, then rasterised at that size (as
    detectron2 transforms polygons), RLE is decoded and resized nearest (detectron2's bitmask path)."""
    from pycocotools import mask as mask_utils  # optional: the [detection] extra

    oh, ow = out_size or (height, width)
    sx, sy = ow / width, oh / height
    out = np.zeros((len(segs), oh, ow), dtype=np.uint8)
    for i, seg in enumerate(segs):
        if isinstance(seg, list):
            out[i] = polygons_to_bitmask(scale_polygons(seg, sx, sy), oh, ow)
            continue
        rle = mask_utils.frPyObjects(seg, height, width) if isinstance(seg.get("counts"), list) else seg
        full = mask_utils.decode(rle)
        if (oh, ow) != (height, width):
            full = np.asarray(Image.fromarray(full).resize((ow, oh), Image.NEAREST))
        out[i] = full
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

    def __init__(self, root: str | Path, splits, *, train: bool, filter_empty: bool = True, flip: bool = False,
                 resize: Resize | None = None):
        root = Path(root)
        self.flip = flip
        self.resize = resize
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

    def __getitem__(self, key):
        idx, rng = _draw(key)
        return _item(self.records[idx], rng, resize=self.resize, flip=self.flip, masks=False)

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


def coco_datasets(root: str | Path, *, masks: bool, filter_empty: bool = True, flip: bool = False,
                  train_resize: Resize | None = None, test_resize: Resize | None = None,
                  mask_format: str = "bitmask"):
    """``(train, val)`` CocoDetection datasets of a COCO-layout root (``flip``: random h-flip in train;
    the resizes: detectron2's ``ResizeShortestEdge`` of training and of testing; ``mask_format``:
    detectron2's INPUT.MASK_FORMAT of the training masks)."""
    train_ann, train_dir = coco_paths(root, "train")
    val_ann, val_dir = coco_paths(root, "val")
    return (CocoDetection(train_ann, train_dir, train=True, masks=masks, filter_empty=filter_empty, flip=flip,
                          resize=train_resize, mask_format=mask_format),
            CocoDetection(val_ann, val_dir, train=False, masks=False, resize=test_resize))


def voc_datasets(root: str | Path, *, filter_empty: bool = True, flip: bool = False,
                 train_resize: Resize | None = None, test_resize: Resize | None = None):
    """``(train, test)``: VOC07+12 trainval (whichever years exist; 2007 is required) and VOC07 test."""
    years = _voc_year_dirs(Path(root))
    splits = [(y, "trainval") for y in ("2007", "2012") if y in years] or [("2007", "trainval")]
    return (VOCDetection(root, splits, train=True, filter_empty=filter_empty, flip=flip, resize=train_resize),
            VOCDetection(root, [("2007", "test")], train=False, resize=test_resize))


class TrainingBatches(torch.utils.data.Sampler):
    """detectron2's ``TrainingSampler`` and ``AspectRatioGroupedDataset`` as one batch sampler.

    One endless stream of dataset indices, a fresh permutation of all of them per pass (from
    ``seed``, the same on every rank); this rank takes every ``world``-th position from ``rank``
    on; with ``group`` its images are put in two buckets, landscape (w > h) and the others, and a
    bucket that holds ``batch_size`` images is a batch. Each item is ``(index, draw)``, ``draw``
    seeding its augmentation (see :func:`_draw`), so the stream is a function of the seed alone:
    ``start`` batches are skipped (replayed without loading an image) when a run resumes.
    """

    def __init__(self, landscape: list[bool], batch_size: int, seed: int, *, rank: int = 0, world: int = 1,
                 group: bool = True, start: int = 0):
        self.landscape, self.batch_size, self.seed = list(landscape), batch_size, seed
        self.rank, self.world, self.group, self.start = rank, world, group, start

    def _positions(self):
        n = len(self.landscape)
        g = torch.Generator()
        g.manual_seed(self.seed)
        offset = 0
        while True:  # positions offset..offset+n-1 of the global stream are this permutation
            perm = torch.randperm(n, generator=g).tolist()
            first = (self.rank - offset) % self.world
            for k in range(first, n, self.world):
                yield offset + k, perm[k]
            offset += n

    def __iter__(self):
        buckets: dict[bool, list] = {True: [], False: []}
        made = 0
        for position, index in self._positions():
            bucket = buckets[self.landscape[index] if self.group else True]
            bucket.append((index, self.seed * (1 << 40) + position))
            if len(bucket) == self.batch_size:
                batch = list(bucket)
                bucket.clear()
                if made >= self.start:
                    yield batch
                made += 1

    def __len__(self) -> int:  # endless; DataLoader asks only when something sizes it
        raise TypeError("TrainingBatches is endless")


def landscape(dataset) -> list[bool]:
    """Per image of ``dataset``: wider than tall (detectron2's aspect-ratio bucket 0)."""
    return [rec.width > rec.height for rec in dataset.records]


def dataset_fingerprint_files(dataset) -> list[Path]:
    """The annotation files that define a dataset (for the record's fingerprint)."""
    if isinstance(dataset, CocoDetection):
        return [dataset.ann_file]
    return []


__all__ = ["AnnotationError", "CocoDetection", "VOCDetection", "ImageRecord", "coco_datasets", "voc_datasets",
           "collate", "read_image", "open_image", "segmentations_to_masks", "VOC_CLASSES", "coco_paths", "Resize",
           "TrainingBatches", "landscape"]
