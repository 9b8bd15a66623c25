"""Host CPU per view of the PIL pipeline and of the device views' host part, side by side, and the
device part's views/s; with a GPU step rate, the CPU cores one GPU needs with each.

    python benchmarks/input_pipeline.py                                  # 32, 96, 224 px and INTL multi-crop
    python benchmarks/input_pipeline.py --data .data/cifar10 --sizes 32  # real JPEGs (ImageFolder train/)
    python benchmarks/input_pipeline.py --device cuda --gpu-table step.json --loader-workers 16

Rows: each method's recipe at 32 px (CIFAR-10), 96 px (STL-10's size; the views are the CIFAR
recipes' at 96 px) and 224 px (ImageNet), and INTL_M's multi-crop set (2 x 224 + 192 + 160 + 128 +
96). The images are JPEGs in a temporary folder at the size the data has on disk (32 x 32, 96 x 96,
500 x 375 smooth random photos-like files) or the ``--data`` ImageFolder's own files.

Columns:
- "PIL host ms/view": CPU time (``time.process_time``, one thread, one process = one DataLoader
  worker) of today's path per view: ``load_rgb`` + ``SeededViews`` with the recipe's views.
- "device views host ms/view": the same for ``--device-views``' host part: ``HostViews`` (read the
  file, its size from the header, draw every view's parameters) + ``collate_views``, per view. The
  ratio to the PIL column is the issue's goal (<= 0.25 at 224 px and for the multi-crop set).
- "device part views/s": ``DeviceViews`` (decode + views) on ``--device`` for batches of
  ``--batch`` images, wall time (synchronised on CUDA); on the CPU with one thread.
- "step views/s": the GPU training step of that method and size, from ``--gpu-table`` (the
  ``--json`` of ``benchmarks/pretrain.py`` on a GPU: ResNet-50 @ 224 px, ResNet-18 @ 32 px; the
  multi-crop row scales INTL's 2 x 224 step by the crops' pixels), else, at 224 px and for the
  multi-crop set (by its pixels), ``--assume-step`` views/s marked "assumed": a projection, not a
  measurement.
- "cores/GPU, PIL" and "cores/GPU, device views": step views/s x host seconds per view, the CPU
  cores that keep one GPU fed with each path (the device part runs on the GPU; its time is the
  "device part" column's, not CPU cores).
``--loader-workers K`` also times the PIL path through a real ``DataLoader`` with K workers (views/s,
``benchmarks/gpu_check.sh`` sizes its training runs with it). Prints Markdown; ``--json`` writes the rows.
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
from wssl_zoo.data.device_views import DeviceViews, HostViews, collate_views  # noqa: E402
from wssl_zoo.data.transforms import INTL_MULTI_CROP, SeededViews, build_view_transform  # noqa: E402
from wssl_zoo.pretrain.recipes import get_recipe  # noqa: E402

# size -> (dataset kind of the view transforms, (width, height) of the JPEGs on disk, recipe suffix)
SIZES = {32: ("cifar10", (32, 32), "cifar10"), 96: ("stl10", (96, 96), "cifar10"),
         224: ("imagenet", (500, 375), "imagenet")}
RECIPES = {"wmse": "wmse_{}", "cwrgp": "cwrgp_{}", "intl": "intl_{}"}
METHODS = tuple(RECIPES)
MULTI_CROP = "intl_m"  # the row of INTL_M's multi-crop set (at 224 px)
# Pixels of INTL_M's crops in 224-px views: its step costs about this many 224-px views per image.
MULTI_CROP_PIXELS = sum(n * side * side for side, n, *_ in INTL_MULTI_CROP) / 224 ** 2


def num_views(method: str, size: int) -> int:
    """The views per image of ``method``'s recipe at ``size`` (CIFAR recipes below 224 px)."""
    if method == MULTI_CROP:
        return get_recipe("intl_m_imagenet").num_views
    suffix = SIZES[size][2]
    name = "wmse_cifar10_2views" if (method, suffix) == ("wmse", "cifar10") else RECIPES[method].format(suffix)
    return get_recipe(name).num_views


def view_transform(method: str, size: int):
    if method == MULTI_CROP:
        return build_view_transform("intl", "imagenet", 224, num_views(method, 224), multi_crop=True)
    return build_view_transform(method, SIZES[size][0], size, num_views(method, size))


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


def _cpu_seconds(run, min_images: int, seconds: float) -> tuple[float, int]:
    """CPU seconds per image of ``run(i)`` over at least ``min_images`` calls and ``seconds``."""
    run(0)  # warm-up (imports, first allocations)
    done, wall, cpu = 0, time.perf_counter(), time.process_time()
    while done < min_images or time.perf_counter() - wall < seconds:
        run(done)
        done += 1
    return (time.process_time() - cpu) / done, done


def pil_host(files: list[str], method: str, size: int, seconds: float, min_images: int) -> float:
    """Host CPU seconds per view of the PIL path (decode + all views of the image)."""
    transform = view_transform(method, size)

    class Files(torch.utils.data.Dataset):
        def __len__(self):
            return len(files)

        def __getitem__(self, i):
            return load_rgb(files[i]), 0

    ds = SeededViews(Files(), transform, seed=0)
    per_image, _ = _cpu_seconds(lambda i: ds[i % len(files)], min_images, seconds)
    return per_image / len(transform)


def device_views_host(root: Path, method: str, size: int, seconds: float, min_images: int,
                      batch: int) -> float:
    """Host CPU seconds per view of the device views' host part (HostViews + collate_views)."""
    transform = view_transform(method, size)
    host = HostViews(ImageFolderDataset(root, "train"), transform, seed=0)
    pending: list = []

    def one(i: int) -> None:
        pending.append(host[(0, i % len(host))])
        if len(pending) == batch:
            collate_views(pending)
            pending.clear()

    per_image, _ = _cpu_seconds(one, max(min_images, 2 * batch), seconds)
    return per_image / len(transform)


def device_part_views_s(root: Path, method: str, size: int, device: torch.device, batch: int,
                        repeats: int) -> float:
    """Views/s of DeviceViews (decode + views) on ``device``, batches of ``batch`` images."""
    transform = view_transform(method, size)
    host = HostViews(ImageFolderDataset(root, "train"), transform, seed=0)
    batches = [collate_views([host[(r, i % len(host))] for i in range(batch)])[0] for r in range(repeats + 1)]
    device_views = DeviceViews(host.plan, device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    device_views(batches[0])  # warm-up
    sync()
    start = time.perf_counter()
    for b in batches[1:]:
        device_views(b)
    sync()
    return repeats * batch * len(transform) / (time.perf_counter() - start)


def decode_difference(root: Path, device: torch.device) -> tuple[float, int, float]:
    """(mean |difference|, max |difference|, share of values that differ) of ``root``'s JPEGs
    decoded on ``device`` against PIL's decode (libjpeg-turbo), in 8-bit levels."""
    import warnings

    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms.functional import pil_to_tensor

    files = [path for path, _ in ImageFolderDataset(root, "train").samples]
    data = [torch.frombuffer(bytearray(Path(f).read_bytes()), dtype=torch.uint8) for f in files]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        decoded = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    total = differ = 0
    worst, summed = 0, 0.0
    for f, image in zip(files, decoded):
        diff = (image.cpu().int() - pil_to_tensor(load_rgb(f)).int()).abs()
        total, differ = total + diff.numel(), differ + int((diff > 0).sum())
        worst, summed = max(worst, int(diff.max())), summed + float(diff.sum())
    return summed / total, worst, differ / total


def loader_views_s(root: Path, method: str, size: int, workers: int, batch: int, batches: int) -> float:
    """Views/s of a DataLoader of the PIL path with ``workers`` processes (after one batch)."""
    ds = SeededViews(ImageFolderDataset(root, "train"), view_transform(method, size), 0)
    sampler = torch.utils.data.RandomSampler(ds, replacement=True, num_samples=batch * (batches + 1))
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=workers,
                                         persistent_workers=False, drop_last=True)
    it = iter(loader)
    next(it)
    start, n = time.perf_counter(), 0
    for imgs, _ in it:
        n += imgs[0].shape[0] * len(imgs)
    return n / (time.perf_counter() - start)


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


def step_rate(table: dict, method: str, size: int, assume: float) -> tuple[float | None, str]:
    """(views/s of the GPU step, where the number comes from); below 224 px only a measured one
    (the networks and stems differ, so the 224-px assumption does not carry over)."""
    if method == MULTI_CROP:
        if ("intl", 224) in table:  # per image the six crops cost MULTI_CROP_PIXELS 224-px views
            return table[("intl", 224)] * num_views(method, 224) / MULTI_CROP_PIXELS, "measured intl 2x224, scaled"
        return assume * num_views(method, 224) / MULTI_CROP_PIXELS, "assumed"
    if (method, size) in table:
        return table[(method, size)], "measured"
    return (assume, "assumed") if size == 224 else (None, "no GPU table")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=sorted(SIZES), choices=sorted(SIZES))
    p.add_argument("--methods", nargs="+", default=[*METHODS, MULTI_CROP], choices=[*METHODS, MULTI_CROP])
    p.add_argument("--data", help="ImageFolder root whose train/ JPEGs are used at every size (default: synthetic)")
    p.add_argument("--images", type=int, default=64, help="synthetic JPEGs per size (default: %(default)s)")
    p.add_argument("--seconds", type=float, default=3.0, help="time per host measurement (default: %(default)s)")
    p.add_argument("--min-images", type=int, default=16, help="images per host measurement at least (default: %(default)s)")
    p.add_argument("--batch", type=int, default=32, help="images per batch of the host collate, the device part and "
                   "the DataLoader (default: %(default)s)")
    p.add_argument("--device-repeats", type=int, default=3, help="timed batches of the device part (default: %(default)s)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="where the device part "
                   "runs (default: cuda when present)")
    p.add_argument("--gpu-table", nargs="+", help="benchmarks/pretrain.py --json files of GPU runs (the step rates)")
    p.add_argument("--assume-step", type=float, default=3000.0, help="without --gpu-table: the 224-px views/s one GPU's "
                   "step is assumed to take (default: %(default)s, about a ResNet-50 bf16 step on an A100-class GPU; "
                   "an assumption, marked as such)")
    p.add_argument("--loader-workers", type=int, default=0, help="also time the PIL path's DataLoader with this many "
                   "workers")
    p.add_argument("--loader-batches", type=int, default=8, help="timed batches of the DataLoader (default: %(default)s)")
    p.add_argument("--json", help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # a DataLoader worker's, and the CPU device part's
    device = torch.device(args.device)
    table = gpu_step_table(args.gpu_table)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU, 1 thread"
    print(f"torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} CPUs, host part: one process with one "
          f"thread = one DataLoader worker, CPU time; device part on {args.device} ({name}); "
          f"{args.data or 'synthetic JPEGs'}; step views/s {'from ' + ', '.join(args.gpu_table) if table else 'assumed'}"
          f" where marked, else measured\n")
    head = ("| recipe | px | views/image | PIL host ms/view | device views host ms/view | ratio | device part views/s "
            f"({args.device}) | step views/s | cores/GPU, PIL | cores/GPU, device views |")
    cols = 10
    if args.loader_workers:
        head += f" PIL DataLoader views/s ({args.loader_workers} workers) |"
        cols += 1
    print(head + "\n" + "|---" * cols + "|")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        roots: dict[int, Path] = {}
        for method in args.methods:
            for size in ([224] if method == MULTI_CROP else args.sizes):
                if method == MULTI_CROP and 224 not in args.sizes:
                    continue
                if size not in roots:
                    roots[size] = Path(args.data) if args.data else write_jpegs(Path(tmp) / str(size), args.images,
                                                                              SIZES[size][1])
                root = roots[size]
                files = [path for path, _ in ImageFolderDataset(root, "train").samples]
                views = num_views(method, size)
                pil = pil_host(files, method, size, args.seconds, args.min_images)
                host = device_views_host(root, method, size, args.seconds, args.min_images, args.batch)
                dev = device_part_views_s(root, method, size, device, args.batch, args.device_repeats)
                step, source = step_rate(table, method, size, args.assume_step)
                r = dict(method=method, size=size, views=views, pil_host_ms=pil * 1e3, host_ms=host * 1e3,
                         ratio=host / pil, device_views_s=dev, device=args.device, step_views_s=step,
                         step_source=source, cores_pil=step and step * pil, cores_device_views=step and step * host)
                label = "intl_m (multi-crop)" if method == MULTI_CROP else get_recipe(
                    "wmse_cifar10_2views" if (method, SIZES[size][2]) == ("wmse", "cifar10")
                    else RECIPES[method].format(SIZES[size][2])).name
                line = (f"| {label} | {size} | {views} | {pil * 1e3:.2f} | {host * 1e3:.3f} | {host / pil:.3f} | "
                        + (f"{dev:.0f} | {step:.0f} ({source}) | {math.ceil(step * pil)} | "
                           f"{max(1, math.ceil(step * host))} |" if step else f"{dev:.0f} | {source} | | |"))
                if args.loader_workers and method != MULTI_CROP:
                    r["loader_views_s"] = loader_views_s(root, method, size, args.loader_workers, args.batch,
                                                         args.loader_batches)
                    line += f" {r['loader_views_s']:.0f} |"
                elif args.loader_workers:
                    line += " |"
                rows.append(r)
                print(line, flush=True)
        if device.type != "cpu" and 224 in roots:
            mean, worst, share = decode_difference(roots[224], device)
            print(f"\nJPEG decode on {args.device} against PIL's (the 224-px JPEGs): mean |difference| {mean:.3f} "
                  f"levels, max {worst}, {100 * share:.1f}% of the values differ (on the CPU: identical).")
    if args.json:
        from wssl_zoo.fileio import atomic_write_bytes

        atomic_write_bytes(args.json, json.dumps(dict(torch=torch.__version__, rows=rows), indent=1).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
