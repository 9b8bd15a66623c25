"""Which library for the device views: each candidate's version of the PIL operations the authors'
pipelines use, against PIL itself, on real photos (8-bit levels), with its CPU time.

    python benchmarks/view_ops_vs_pil.py --data DIR            # DIR/train/<class>/*.jpg, e.g. coco-tiny photos
    PYTHONPATH=EXTRA python benchmarks/view_ops_vs_pil.py ...  # with kornia and nvidia-dali importable from EXTRA

Operations: a crop resized to 224 px with the authors' filters (bicubic shrinking 300 x 250 and
enlarging 90 x 75; bilinear shrinking), PIL's ``GaussianBlur(1.5)``, ColorJitter's hue shift (+0.1)
and saturation (x 0.6). Candidates: ``wssl_zoo.data.device_views`` (PIL's arithmetic on tensors),
torchvision.transforms.v2 on uint8 and on float tensors (``antialias=True``), kornia and NVIDIA DALI
(its CPU backend) where importable (optional: "not installed" otherwise). Columns: mean and max
|difference| to PIL in 8-bit levels (float outputs rounded), the share of values that differ, and
milliseconds per image on one CPU thread. Prints Markdown.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from PIL import Image, ImageEnhance, ImageFilter  # noqa: E402
from torchvision.transforms import InterpolationMode  # noqa: E402
from torchvision.transforms import functional as TF  # noqa: E402
from torchvision.transforms.v2 import functional as F2  # noqa: E402

from wssl_zoo.data import device_views as dv  # noqa: E402

CROPS = {"bicubic shrink 300x250->224": ("bicubic", (40, 30, 300, 250)),
         "bicubic enlarge 90x75->224": ("bicubic", (60, 50, 90, 75)),
         "bilinear shrink 300x250->224": ("bilinear", (40, 30, 300, 250))}
SIZE, RADIUS, HUE, SATURATION = 224, 1.5, 0.1, 0.6


def pil_reference(img: Image.Image, op: str) -> np.ndarray:
    if op in CROPS:
        kind, (top, left, h, w) = CROPS[op]
        mode = InterpolationMode.BICUBIC if kind == "bicubic" else InterpolationMode.BILINEAR
        out = TF.resized_crop(img, top, left, h, w, [SIZE, SIZE], interpolation=mode)
    elif op == "blur":
        out = img.filter(ImageFilter.GaussianBlur(RADIUS))
    elif op == "hue":
        out = TF.adjust_hue(img, HUE)
    else:
        out = ImageEnhance.Color(img).enhance(SATURATION)
    return np.asarray(out).transpose(2, 0, 1).astype(np.int32)


def ours(x: torch.Tensor, op: str) -> torch.Tensor:
    xf = x.float()[None]
    if op in CROPS:
        kind, (top, left, h, w) = CROPS[op]
        params = torch.zeros(1, dv.NUM_PARAMS, dtype=torch.float64)
        params[0, :4] = torch.tensor([top, left, h, w])
        return dv.resized_crop(xf, params, SIZE, kind)[0]
    if op == "blur":
        return dv.gaussian_blur(xf, np.array([RADIUS]))[0]
    if op == "hue":
        return dv.adjust_hue(xf, torch.tensor([HUE]))[0]
    return dv.adjust_saturation(xf, torch.tensor([SATURATION]))[0]


def torchvision_v2(x: torch.Tensor, op: str, dtype: torch.dtype) -> torch.Tensor:
    y = x if dtype == torch.uint8 else x.float() / 255
    if op in CROPS:
        kind, (top, left, h, w) = CROPS[op]
        mode = InterpolationMode.BICUBIC if kind == "bicubic" else InterpolationMode.BILINEAR
        y = F2.resized_crop(y, top, left, h, w, [SIZE, SIZE], interpolation=mode, antialias=True)
    elif op == "blur":  # PIL's radius is the Gaussian's sigma; torchvision's usual 3-sigma kernel
        y = F2.gaussian_blur(y, [2 * int(3 * RADIUS) + 1] * 2, [RADIUS, RADIUS])
    elif op == "hue":
        y = F2.adjust_hue(y, HUE)
    else:
        y = F2.adjust_saturation(y, SATURATION)
    return y.float() if dtype == torch.uint8 else (y * 255).round()


def kornia_op(x: torch.Tensor, op: str) -> torch.Tensor:
    import kornia  # optional: only this measurement uses it

    y = x.float()[None] / 255
    if op in CROPS:
        kind, (top, left, h, w) = CROPS[op]
        y = kornia.geometry.transform.resize(y[..., top:top + h, left:left + w], (SIZE, SIZE), interpolation=kind,
                                             antialias=True)
    elif op == "blur":
        y = kornia.filters.gaussian_blur2d(y, (2 * int(3 * RADIUS) + 1,) * 2, (RADIUS, RADIUS))
    elif op == "hue":
        y = kornia.enhance.adjust_hue(y, HUE * 2 * np.pi)  # kornia's hue is an angle in radians
    else:
        y = kornia.enhance.adjust_saturation(y, SATURATION)
    return (y[0].clamp(0, 1) * 255).round()


def dali_op(x: torch.Tensor, op: str) -> torch.Tensor:
    from nvidia.dali import fn, pipeline_def, types  # optional: only this measurement uses it

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def pipe():
        img = fn.external_source(name="x", layout="HWC", dtype=types.UINT8)
        if op in CROPS:
            kind, (top, left, h, w) = CROPS[op]
            interp = types.INTERP_CUBIC if kind == "bicubic" else types.INTERP_LINEAR
            return fn.resize(img, resize_x=SIZE, resize_y=SIZE, interp_type=interp, antialias=True,
                             roi_start=(top, left), roi_end=(top + h, left + w), roi_relative=False)
        if op == "blur":
            return fn.gaussian_blur(img, sigma=RADIUS)
        if op == "hue":
            return fn.hue(img, hue=HUE * 360)  # DALI's hue is in degrees
        return fn.saturation(img, saturation=SATURATION)

    p = pipe()
    p.build()
    p.feed_input("x", [x.permute(1, 2, 0).contiguous().numpy()])
    (out,) = p.run()
    return torch.from_numpy(np.array(out[0])).permute(2, 0, 1).float()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="ImageFolder root: its train/**/*.jpg are the photos")
    p.add_argument("--images", type=int, default=8, help="photos used (default: %(default)s)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    files = sorted(Path(args.data, "train").rglob("*.jpg"))[: args.images]
    if not files:
        raise SystemExit(f"no JPEGs under {args.data}/train")
    images = [Image.open(f).convert("RGB") for f in files]
    candidates = {"device_views (PIL arithmetic)": ours,
                  "torchvision v2, uint8": lambda x, op: torchvision_v2(x, op, torch.uint8),
                  "torchvision v2, float": lambda x, op: torchvision_v2(x, op, torch.float32),
                  "kornia": kornia_op, "DALI (CPU)": dali_op}
    print(f"{len(files)} photos from {args.data} ({images[0].size[0]}x{images[0].size[1]} and others), torch "
          f"{torch.__version__}, one CPU thread; |difference| to PIL in 8-bit levels\n")
    print("| operation | candidate | mean abs diff | max abs diff | values differing | ms per image |")
    print("|---|---|---|---|---|---|")
    for op in [*CROPS, "blur", "hue", "saturation"]:
        refs = [pil_reference(img, op) for img in images]
        for name, fn in candidates.items():
            try:
                diffs, start = [], time.process_time()
                for img, ref in zip(images, refs):
                    out = fn(TF.pil_to_tensor(img), op)
                    diffs.append(np.abs(out.numpy().astype(np.int32) - ref))
                ms = (time.process_time() - start) / len(images) * 1e3
            except ImportError:
                print(f"| {op} | {name} | not installed | | | |")
                continue
            flat = np.concatenate([d.ravel() for d in diffs])
            print(f"| {op} | {name} | {flat.mean():.3f} | {flat.max()} | {100 * (flat > 0).mean():.1f}% | {ms:.1f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
