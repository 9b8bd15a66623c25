"""Seconds per training iteration of the torchvision backend (default: Mask R-CNN R50-C4, the
coco_R_50_C4_1x protocol) at several batch sizes, on whatever device this runs on.

    python benchmarks/detection_speed.py --device cuda --batch-sizes 2 4 8 --amp     # the GPU table
    python benchmarks/detection_speed.py --device cpu --arch resnet18 --size 128 --batch-sizes 1 2 \
        --iters 3 --warmup 1 --light                                                  # a CPU smoke run

An iteration is the training step of ``python -m detection.train`` without data loading: synthetic
images (shortest side ``--size``, COCO-like 4:3) with 3 boxes and masks each already on the
device, forward (RPN + RoI heads + losses), backward and the SGD step. The model is built from the
protocol config exactly as detection.train builds it (``--light`` shrinks the RoI sampling and
proposal counts so CPU runs finish; the table says so). Prints a Markdown table; the median of
``--iters`` timed iterations after ``--warmup`` untimed ones.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detection import configs, tv_backend, tv_model  # noqa: E402

LIGHT = ["MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE=64", "MODEL.RPN.POST_NMS_TOPK_TRAIN=200"]


def synthetic_batch(n: int, size: int, num_classes: int, device, masks: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    h, w = size, int(size * 4 / 3)
    images, targets = [], []
    for _ in range(n):
        images.append(torch.rand(3, h, w, generator=g).to(device))
        xy = torch.rand(3, 2, generator=g) * torch.tensor([w * 0.5, h * 0.5])
        wh = (0.2 + 0.3 * torch.rand(3, 2, generator=g)) * torch.tensor([w, h])
        boxes = torch.cat([xy, xy + wh], 1)
        t = {"boxes": boxes.to(device), "labels": torch.randint(1, num_classes + 1, (3,), generator=g).to(device)}
        if masks:
            m = torch.zeros(3, h, w, dtype=torch.uint8)
            for k, (x1, y1, x2, y2) in enumerate(boxes.int().tolist()):
                m[k, y1:y2, x1:x2] = 1
            t["masks"] = m.to(device)
        targets.append(t)
    return images, targets


def measure(config: str, arch: str, batch: int, size: int, device: torch.device, iters: int, warmup: int,
            amp: bool, overrides: list[str]) -> float:
    import wssl_zoo

    cfg = configs.load_config(config, overrides + [f"INPUT.MIN_SIZE_TRAIN=({size},)", f"INPUT.MAX_SIZE_TRAIN={2 * size}"])
    s = configs.to_torchvision(cfg)
    torch.manual_seed(0)
    model = tv_model.build_model(wssl_zoo.create(arch), s).to(device).train()
    opt = torch.optim.SGD(tv_backend.param_groups(model, s), lr=1e-3, momentum=0.9)
    use_amp = amp and device.type == "cuda"
    dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and dtype == torch.float16)
    images, targets = synthetic_batch(batch, size, s.num_classes, device, s.mask_on)
    times = []
    for i in range(warmup + iters):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=use_amp):
            loss = sum(model(images, targets).values())
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", default="coco_R_50_C4_1x", help="protocol config")
    p.add_argument("--arch", default="resnet50", help="timm backbone (random init)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[2, 4, 8], help="images per iteration")
    p.add_argument("--size", type=int, default=800, help="shortest image side (the protocols test at 800)")
    p.add_argument("--iters", type=int, default=10, help="timed iterations")
    p.add_argument("--warmup", type=int, default=3, help="untimed iterations first")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", action="store_true", help="autocast (bf16/fp16) on CUDA")
    p.add_argument("--light", action="store_true", help=f"smaller RoI/proposal counts: {LIGHT}")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    overrides = args.overrides + (LIGHT if args.light else [])
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)")
    print(f"`python benchmarks/detection_speed.py {' '.join(argv if argv is not None else sys.argv[1:])}`\n")
    print(f"{args.config} ({args.arch}, random init), {where}, torch {torch.__version__}, shortest side {args.size}"
          + (f", overrides {overrides}" if overrides else "") + "\n")
    print("| batch | s/iter | images/s |")
    print("|---|---|---|")
    for b in args.batch_sizes:
        try:
            sec = measure(args.config, args.arch, b, args.size, device, args.iters, args.warmup, args.amp, overrides)
            print(f"| {b} | {sec:.3f} | {b / sec:.2f} |", flush=True)
        except torch.OutOfMemoryError:
            print(f"| {b} | out of memory | - |", flush=True)
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
