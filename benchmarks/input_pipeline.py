"""Views per second of each method's pretraining view transforms, per data-loading worker.

    python benchmarks/input_pipeline.py                                  # 32, 96 and 224 px, synthetic JPEGs
    python benchmarks/input_pipeline.py --data .data/cifar10 --sizes 32  # real JPEGs (ImageFolder train/)
    python benchmarks/input_pipeline.py --gpu-table step.json            # + workers a GPU step needs
    python benchmarks/input_pipeline.py --device cuda --loader-workers 16 --gpu-augment

One worker is one process running the training path of ``wssl-zoo pretrain`` on one image after
the other: decode the JPEG (``load_rgb``), make all of the recipe's views from that one decoded
image (``SeededViews`` + ``build_view_transform``), as a DataLoader worker does. The images are
JPEGs written to a temporary folder at the size the data has on disk (32 x 32 for CIFAR, 96 x 96
for STL-10, 500 x 375 for ImageNet-like photos), or the ``--data`` ImageFolder's own files.

Columns: images/s and views/s of one worker; with ``--gpu-table`` (the ``--json`` of
``benchmarks/pretrain.py`` run on the GPU), the GPU step's views/s of the same method at the same
size and the workers that step needs (``ceil(step views/s / views/s per worker)``); without it the
column says "no GPU table". ``--loader-workers K`` also times a real ``DataLoader`` with K worker
processes (views/s of the whole loader); ``--gpu-augment`` times ``--gpu-augment``'s batched
views on ``--device`` (32 and 96 px, W-MSE / CW-RGP / INTL small-image views). Prints Markdown.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from wssl_zoo.data.datasets import ImageFolderDataset, load_rgb  # noqa: E402
from wssl_zoo.data.transforms import SeededViews, build_view_transform  # noqa: E402
from wssl_zoo.pretrain.recipes import get_recipe  # noqa: E402

# size -> (dataset kind of the view transforms, (width, height) of the JPEGs on disk, recipe suffix)
SIZES = {32: ("cifar10", (32, 32), "cifar10"), 96: ("stl10", (96, 96), "cifar10"),
         224: ("imagenet", (500, 375), "imagenet")}
RECIPES = {"wmse": "wmse_{}", "cwrgp": "cwrgp_{}", "intl": "intl_{}"}
METHODS = tuple(RECIPES)


def num_views(method: str, size: int) -> int:
    """The views per image of ``method``'s recipe at ``size`` (CIFAR recipes below 224 px)."""
    suffix = SIZES[size][2]
    name = "wmse_cifar10_2views" if (method, suffix) == ("wmse", "cifar10") else RECIPES[method].format(suffix)
    return get_recipe(name).num_views


def write_jpegs(folder: Path, count: int, wh: tuple[int, int], seed: int = 0, split: str = "train",
                cls: str = "c") -> Path:
    """``count`` smooth random RGB JPEGs (quality 90) of ``wh`` = (width, height) in
    ``folder/split/cls/``, and returns ``folder``: an ImageFolder root whose JPEGs cost to decode
    about what photos of that size do (unlike white noise)."""
    from PIL import Image

    gen = torch.Generator().manual_seed(seed)
    out = Path(folder) / split / cls
    out.mkdir(parents=True, exist_ok=True)
    w, h = wh
    for i in range(count):
        low = torch.rand(1, 3, max(2, h // 8), max(2, w // 8), generator=gen)
        img = torch.nn.functional.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
        img = img + 0.05 * torch.randn(img.shape, generator=gen)
        arr = (img.clamp(0, 1)[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        Image.fromarray(arr).save(out / f"{i:05d}.jpg", quality=90)
    return folder


def per_worker(files: list[str], method: str, size: int, seconds: float, min_images: int) -> dict:
    """Images/s and views/s of one process making ``method``'s views at ``size`` from ``files``,
    run for at least ``seconds`` and ``min_images`` images (cycling over the files)."""
    dataset, _, _ = SIZES[size]
    views = num_views(method, size)
    transform = build_view_transform(method, dataset, size, views)

    class Files(torch.utils.data.Dataset):
        def __len__(self):
            return len(files)

        def __getitem__(self, i):
            return load_rgb(files[i]), 0

    ds = SeededViews(Files(), transform, seed=0)
    ds[0]  # warm-up (imports, first allocations)
    done, start = 0, time.perf_counter()
    while done < min_images or time.perf_counter() - start < seconds:
        out, _ = ds[done % len(files)]
        assert len(out) == views
        done += 1
    elapsed = time.perf_counter() - start
    return dict(method=method, size=size, views=views, images_s=done / elapsed, views_s=done * views / elapsed)


def loader_views_s(root: Path, method: str, size: int, workers: int, batch: int, batches: int) -> float:
    """Views/s of a DataLoader with ``workers`` processes over ``root``'s images (after one batch)."""
    dataset, _, _ = SIZES[size]
    views = num_views(method, size)
    ds = SeededViews(ImageFolderDataset(root, "train"), build_view_transform(method, dataset, size, views), 0)
    sampler = torch.utils.data.RandomSampler(ds, replacement=True, num_samples=batch * (batches + 1))
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=workers,
                                         persistent_workers=False, drop_last=True)
    it = iter(loader)
    next(it)
    start, n = time.perf_counter(), 0
    for imgs, _ in it:
        n += imgs[0].shape[0] * len(imgs)
    return n / (time.perf_counter() - start)


def gpu_augment_views_s(method: str, size: int, device: torch.device, batch: int, repeats: int) -> float:
    """Views/s of ``--gpu-augment``'s batched views of a ``batch`` of uint8 images on ``device``."""
    from wssl_zoo.data.gpu_augment import batch_view_augments

    dataset, _, _ = SIZES[size]
    views = num_views(method, size)
    augs = batch_view_augments(method, dataset, size, views)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
    gen = torch.Generator(device=device).manual_seed(0)

    def run():
        for aug in augs:
            aug(images, gen)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    run()
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    return repeats * batch * views / (time.perf_counter() - start)


def gpu_step_table(paths: list[str] | None) -> dict[tuple[str, int], float]:
    """(method, size) -> the fastest views/s of the GPU step in ``benchmarks/pretrain.py --json`` files."""
    rows = [r for path in paths or [] for r in json.loads(Path(path).read_text())["rows"]]
    best: dict[tuple[str, int], float] = {}
    for r in rows:
        if not str(r["device"]).startswith("cuda"):
            continue
        method = r["config"].split()[0]
        size = int(r["config"].split()[-1].removesuffix("px"))
        best[(method, size)] = max(best.get((method, size), 0.0), r["views_s"])
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=sorted(SIZES), choices=sorted(SIZES))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--data", help="ImageFolder root whose train/ JPEGs are used at every size (default: synthetic)")
    p.add_argument("--images", type=int, default=64, help="synthetic JPEGs per size (default: %(default)s)")
    p.add_argument("--seconds", type=float, default=3.0, help="time per measurement (default: %(default)s)")
    p.add_argument("--min-images", type=int, default=16, help="images per measurement at least (default: %(default)s)")
    p.add_argument("--gpu-table", nargs="+", help="benchmarks/pretrain.py --json files of GPU runs: adds the "
                   "workers a step needs")
    p.add_argument("--loader-workers", type=int, default=0, help="also time a DataLoader with this many workers")
    p.add_argument("--loader-batches", type=int, default=8, help="timed batches of the DataLoader (default: %(default)s)")
    p.add_argument("--batch", type=int, default=64, help="batch of the DataLoader and of --gpu-augment")
    p.add_argument("--gpu-augment", action="store_true", help="also time --gpu-augment's views on --device (32, 96 px)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # what a DataLoader worker runs with

    table = gpu_step_table(args.gpu_table)
    print(f"torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} CPUs, one process per worker, "
          f"{args.data or 'synthetic JPEGs'}\n")
    head = "| method | px | views/image | images/s per worker | views/s per worker | GPU step views/s | workers needed |"
    cols = ["|---"] * 7
    if args.loader_workers:
        head += f" DataLoader views/s ({args.loader_workers} workers) |"
        cols.append("|---")
    if args.gpu_augment:
        head += f" --gpu-augment views/s ({args.device}) |"
        cols.append("|---")
    print(head + "\n" + "".join(cols) + "|")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            root = Path(args.data) if args.data else write_jpegs(Path(tmp) / str(size), args.images, SIZES[size][1])
            files = [path for path, _ in ImageFolderDataset(root, "train").samples]
            for method in args.methods:
                r = per_worker(files, method, size, args.seconds, args.min_images)
                step = table.get((method, size))
                r["gpu_step_views_s"] = step
                r["workers_needed"] = math.ceil(step / r["views_s"]) if step else None
                line = (f"| {method} | {size} | {r['views']} | {r['images_s']:.0f} | {r['views_s']:.0f} | "
                        + (f"{step:.0f} | {r['workers_needed']} |" if step else "no GPU table | no GPU table |"))
                if args.loader_workers:
                    r["loader_views_s"] = loader_views_s(root, method, size, args.loader_workers, args.batch,
                                                         args.loader_batches)
                    line += f" {r['loader_views_s']:.0f} |"
                if args.gpu_augment:
                    r["gpu_augment_views_s"] = (gpu_augment_views_s(method, size, torch.device(args.device),
                                                                    args.batch, 5) if size < 224 else None)
                    line += f" {r['gpu_augment_views_s']:.0f} |" if r["gpu_augment_views_s"] else " n/a (224 px) |"
                rows.append(r)
                print(line, flush=True)
    if args.json:
        from wssl_zoo.fileio import atomic_write_bytes

        atomic_write_bytes(args.json, json.dumps(dict(torch=torch.__version__, rows=rows), indent=1).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
