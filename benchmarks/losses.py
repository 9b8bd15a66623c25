"""Forward + backward time of the batched losses against plain loops computing the same math.

The loops (``wssl_zoo.losses.reference``) are what the authors' code does: one factorisation per
sub-batch, view and group in a Python loop. Run on the CPU, and on the GPU when there is one:

    python benchmarks/losses.py                 # all paper configurations, CPU (+ CUDA if present)
    python benchmarks/losses.py --device cpu --repeats 5 --json out.json

Prints one table row per (configuration, device): median milliseconds of forward+backward for
the loop and for wssl-zoo, and the speed-up (loop time / wssl-zoo time).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field

import torch

from wssl_zoo.losses import build_loss
from wssl_zoo.losses.reference import cwrgp_loop, intl_loop, wmse_loop


@dataclass(frozen=True)
class Config:
    name: str
    method: str
    views: int
    batch: int
    dim: int
    params: dict = field(default_factory=dict)


# The papers' configurations (per-GPU batch for ImageNet).
CONFIGS = [
    Config("W-MSE CIFAR", "wmse", 2, 512, 64, dict(w_size=128)),
    Config("CW-RGP CIFAR", "cwrgp", 4, 256, 512, dict(w_size=64, groups=4)),
    Config("CW-RGP ImageNet", "cwrgp", 4, 128, 1024, dict(w_size=128, groups=2, cov_weight=0.01)),
    Config("INTL ImageNet V2", "intl", 2, 256, 8192, dict()),
    Config("INTL ImageNet V6", "intl", 6, 256, 8192, dict()),
]
LOOPS = {"wmse": wmse_loop, "cwrgp": cwrgp_loop, "intl": intl_loop}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn, x: torch.Tensor, repeats: int, warmup: int) -> float:
    """Median seconds of ``fn(x).backward()`` over ``repeats`` runs after ``warmup`` runs."""
    times = []
    for i in range(warmup + repeats):
        xr = x.detach().clone().requires_grad_(True)
        _sync(x.device)
        start = time.perf_counter()
        fn(xr).backward()
        _sync(x.device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _loop_on(device: torch.device, method: str, params: dict):
    loop = LOOPS[method]

    def run(x: torch.Tensor) -> torch.Tensor:
        # The loops allocate their identity matrices on the CPU: move them like the authors' code
        # does by running under the input's default device.
        with torch.device(device):
            return loop(x, **params)

    return run


def run_benchmark(devices: list[str], repeats: int, warmup: int, only: str | None):
    rows = []
    for device_name in devices:
        device = torch.device(device_name)
        for cfg in CONFIGS:
            if only and only.lower() not in cfg.name.lower():
                continue
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(cfg.views, cfg.batch, cfg.dim, generator=gen).to(device)
            batched = build_loss(cfg.method, **cfg.params)
            t_batched = time_fn(lambda t: batched(list(t.unbind(0))), x, repeats, warmup)
            t_loop = time_fn(_loop_on(device, cfg.method, cfg.params), x, repeats, warmup)
            rows.append(
                dict(config=cfg.name, device=device_name, views=cfg.views, batch=cfg.batch,
                     dim=cfg.dim, params=cfg.params, loop_ms=t_loop * 1e3,
                     wssl_zoo_ms=t_batched * 1e3, speedup=t_loop / t_batched)
            )
            print(_format_row(rows[-1]), flush=True)
    return rows


HEADER = f"{'configuration':<20} {'device':<6} {'V':>2} {'N':>5} {'D':>5} {'loop ms':>9} {'wssl-zoo ms':>12} {'speed-up':>9}"


def _format_row(r: dict) -> str:
    return (f"{r['config']:<20} {r['device']:<6} {r['views']:>2} {r['batch']:>5} {r['dim']:>5} "
            f"{r['loop_ms']:>9.1f} {r['wssl_zoo_ms']:>12.1f} {r['speedup']:>8.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", action="append", help="cpu or cuda (repeatable); default: cpu, plus cuda when available")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs first")
    parser.add_argument("--only", help="run the configurations whose name contains this text")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads for the CPU runs")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.device or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    cpu = platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads ({cpu})"
          + (f", GPU {torch.cuda.get_device_name()}" if "cuda" in devices else ""))
    print(HEADER)
    rows = run_benchmark(devices, args.repeats, args.warmup, args.only)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(torch=torch.__version__, threads=torch.get_num_threads(), rows=rows), fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
