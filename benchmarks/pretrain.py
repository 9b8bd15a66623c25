"""Pretraining throughput (views/s) and the share of step time spent in the loss, per method.

    python benchmarks/pretrain.py                     # ResNet-18 @ 32 px and ResNet-50 @ 224 px, CPU (+ CUDA)
    python benchmarks/pretrain.py --device cuda --amp bf16 --channels-last

A step is the training step of ``wssl-zoo pretrain`` without data loading (random images already
on the device): the recipe's backbone, projector and loss (SSLModel forward), backward and the
optimiser step. "loss share" is the forward+backward time of the loss alone on the same
embeddings, divided by the step time. The baseline is a plain supervised step of the same
backbone (linear classifier, cross-entropy) on the same number of images per step.
On the CPU the ResNet-50 rows use a batch of 32 with sub-batch sizes scaled to fit (stated in the
table); on a GPU the recipes' per-GPU batches are used. ``--compile yes|both`` also times the step
(and the baseline) under ``torch.compile``; on CUDA the peak memory of the step is reported.
``--tiny`` shrinks every row (batch 8, ResNet-18 at 16 px, ResNet-50 at 32 px with 64-wide projectors,
sub-batches scaled) for smoke runs.
Prints a Markdown table; ``--json`` also writes the rows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
from torch import nn

from wssl_zoo.encoders import SSLModel, create_backbone
from wssl_zoo.fileio import atomic_write_bytes
from wssl_zoo.heads import Projector
from wssl_zoo.losses import build_loss
from wssl_zoo.optim import build_optimizer
from wssl_zoo.pretrain.recipes import get_recipe


def configs(device: str, tiny: bool = False):
    gpu = device.startswith("cuda")
    r50_batch = 8 if tiny else (None if gpu else 32)
    small = 8 if tiny else 32  # CW-RGP: its covariance blocks (128 samples) must divide the smaller batch too
    cpu_r50_loss = {"wmse": {"w_size": small}, "cwrgp": {"w_size": small, "cov_block": small}, "intl": {}}
    cpu_r50_proj = {"wmse": {"out_dim": 4 if tiny else 16}, "cwrgp": {}, "intl": {}}
    if tiny:  # the ResNet-50 recipes' projectors (up to 3 x 8192 wide for INTL) would dominate a smoke run
        cpu_r50_proj = {"wmse": {"hidden_dim": 64, "out_dim": 4}, "cwrgp": {"hidden_dim": 64, "out_dim": 32},
                        "intl": {"hidden_dim": 64, "out_dim": 64}}
    rows = []
    for method, recipe in (("wmse", "wmse_cifar10_2views"), ("cwrgp", "cwrgp_cifar10"), ("intl", "intl_cifar10")):
        r = get_recipe(recipe)
        loss, proj, batch = dict(r.loss), dict(r.projector), r.batch_size
        if tiny:
            batch = 8
            loss.update(cpu_r50_loss[method])
            proj.update(cpu_r50_proj[method])
        img = 16 if tiny else 32
        rows.append(dict(name=f"{method} R18 {img}px", recipe=r, arch="resnet18", stem=r.stem, img=img,
                         batch=batch, views=r.num_views, loss=loss, proj=proj))
    for method, recipe in (("wmse", "wmse_imagenet"), ("cwrgp", "cwrgp_imagenet"), ("intl", "intl_imagenet")):
        r = get_recipe(recipe)
        loss, proj = dict(r.loss), dict(r.projector)
        batch = r.batch_size // (4 if method == "cwrgp" else 1)  # CW-RGP: 512 over 4 GPUs
        if r50_batch:
            batch = r50_batch
            loss.update(cpu_r50_loss[method])
            proj.update(cpu_r50_proj[method])
        img = 32 if tiny else 224
        rows.append(dict(name=f"{method} R50 {img}px", recipe=r, arch="resnet50", stem="imagenet", img=img,
                         batch=batch, views=r.num_views, loss=loss, proj=proj))
    return rows


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(fn, device, repeats, warmup):
    times = []
    for i in range(warmup + repeats):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def _peak_mem_gib(device, fn) -> float | None:
    """Peak CUDA memory (GiB) allocated while ``fn()`` runs; None on other devices."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2 ** 30


def bench(cfg, device, amp, channels_last, repeats, warmup, compile_backend: str | None = None):
    """Step throughput of one row; ``compile_backend`` (e.g. "inductor") wraps the SSL model and
    the baseline classifier in ``torch.compile`` (the compile runs in the untimed warm-up)."""
    torch.manual_seed(0)
    r = cfg["recipe"]
    backbone = create_backbone(cfg["arch"], cfg["stem"])
    p = cfg["proj"]
    projector = Projector(backbone.num_features, p["hidden_dim"], p["out_dim"], p["num_layers"],
                          hidden_bias=p.get("hidden_bias", True), last_bias=p.get("last_bias", True))
    loss = build_loss(r.method, **cfg["loss"])
    model = SSLModel(backbone, projector, loss).to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = build_optimizer(r.optimizer, model, lr=1e-4, weight_decay=r.weight_decay)
    views = [torch.randn(cfg["batch"], 3, cfg["img"], cfg["img"], device=device).contiguous(memory_format=fmt)
             for _ in range(cfg["views"])]
    use_amp = amp == "bf16"
    forward = torch.compile(model, backend=compile_backend) if compile_backend else model
    warmup = max(warmup, 1) if compile_backend else warmup

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            out = forward(views)
        opt.zero_grad(set_to_none=True)
        out.backward()
        opt.step()

    t_step = _median_time(step, device, repeats, warmup)
    mem = _peak_mem_gib(device, step)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
        emb = [e.float() for e in model.embed(views)]

    def loss_only():
        z = [e.detach().requires_grad_(True) for e in emb]
        loss(z).backward()

    t_loss = _median_time(loss_only, device, repeats, warmup)
    # supervised baseline: same backbone, same images per step
    base = create_backbone(cfg["arch"], cfg["stem"])
    clf = nn.Sequential(base, nn.Linear(base.num_features, 1000)).to(device).to(memory_format=fmt)
    opt2 = torch.optim.SGD(clf.parameters(), lr=1e-4, momentum=0.9)
    clf_forward = torch.compile(clf, backend=compile_backend) if compile_backend else clf
    images = torch.cat(views)
    target = torch.randint(0, 1000, (len(images),), device=device)

    def ce_step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            out = nn.functional.cross_entropy(clf_forward(images), target)
        opt2.zero_grad(set_to_none=True)
        out.backward()
        opt2.step()

    t_ce = _median_time(ce_step, device, repeats, warmup)
    ce_mem = _peak_mem_gib(device, ce_step)
    n = cfg["batch"] * cfg["views"]
    return dict(views_s=n / t_step, ce_views_s=n / t_ce, loss_share=t_loss / t_step, step_ms=t_step * 1e3,
                peak_mem_gib=mem, ce_peak_mem_gib=ce_mem)


def _gib(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", action="append", help="cpu / cuda (repeatable; default cpu, plus cuda if present)")
    ap.add_argument("--amp", choices=["none", "bf16"], default="none")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--only", nargs="+", help="only rows whose name contains one of these texts (e.g. R18, 'intl R50')")
    ap.add_argument("--compile", choices=["no", "yes", "both"], default="no",
                    help="time the step eagerly (no), under torch.compile (yes) or both (default: %(default)s)")
    ap.add_argument("--compile-backend", default="inductor",
                    help="torch.compile backend (default: %(default)s; 'eager' checks the path without a compiler)")
    ap.add_argument("--tiny", action="store_true",
                    help="batch 8, ResNet-18 at 16 px, ResNet-50 at 32 px (64-wide projectors): a smoke run")
    ap.add_argument("--json", help="also write the rows to this JSON file")
    args = ap.parse_args(argv)
    devices = args.device or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    modes = {"no": [None], "yes": [args.compile_backend], "both": [None, args.compile_backend]}[args.compile]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, amp={args.amp}, "
          f"channels_last={args.channels_last}" + (", tiny sizes" if args.tiny else "") + "\n")
    print("| config | device | compile | batch x views | views/s | CE views/s | ratio | loss share | step ms "
          "| peak GiB | CE peak GiB | loss params |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for device_name in devices:
        device = torch.device(device_name)
        for cfg in configs(device_name, args.tiny):
            if args.only and not any(text in cfg["name"] for text in args.only):
                continue
            for backend in modes:
                r = bench(cfg, device, args.amp, args.channels_last, args.repeats, args.warmup, backend)
                r.update(config=cfg["name"], device=device_name, compile=backend or "no", batch=cfg["batch"],
                         views=cfg["views"], loss=cfg["loss"], amp=args.amp)
                rows.append(r)
                print(f"| {cfg['name']} | {device_name} | {backend or 'no'} | {cfg['batch']} x {cfg['views']} "
                      f"| {r['views_s']:.1f} | {r['ce_views_s']:.1f} | {r['views_s'] / r['ce_views_s']:.2f} "
                      f"| {100 * r['loss_share']:.1f}% | {r['step_ms']:.1f} | {_gib(r['peak_mem_gib'])} "
                      f"| {_gib(r['ce_peak_mem_gib'])} | {cfg['loss']} |", flush=True)
    if args.json:
        atomic_write_bytes(args.json, json.dumps(dict(torch=torch.__version__, rows=rows), indent=1).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
