"""Forward + backward time of the batched losses against plain loops computing the same math.

The loops (``wssl_zoo.losses.reference``) are what the authors' code does: one factorisation per
sub-batch, view and group in a Python loop. Run on the CPU, and on the GPU when there is one:

    python benchmarks/losses.py                 # all paper configurations, CPU (+ CUDA if present)
    python benchmarks/losses.py --device cpu --repeats 5 --json out.json

Prints a Markdown table (RESULTS.md-ready), one row per (configuration, device): median
milliseconds of forward+backward for the loop and for wssl-zoo, the speed-up (loop time /
wssl-zoo time), the FLOPs the loss needs (:func:`loss_flops`), the GFLOP/s wssl-zoo achieves
and their share of the matmul peak measured in the same process on the same device
(:func:`matmul_peak`, measured again right after each configuration), so the share stays
meaningful on a loaded machine.
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

from wssl_zoo.fileio import atomic_write_bytes
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
    Config("INTL CIFAR V2", "intl", 2, 256, 2048, dict()),
    Config("INTL ImageNet V2", "intl", 2, 256, 8192, dict()),
    Config("INTL ImageNet V6", "intl", 6, 256, 8192, dict()),
]
LOOPS = {"wmse": wmse_loop, "cwrgp": cwrgp_loop, "intl": intl_loop}


def _mm(m: int, k: int, n: int) -> float:
    """FLOPs of one (m, k) @ (k, n) product: 2 m k n."""
    return 2.0 * m * k * n


def loss_flops(cfg: Config) -> float:
    """Floating-point operations of one forward + backward of the loss, counted from the math.

    Conventions: an (m, k) @ (k, n) product is ``2mkn``; its backward is two products (``4mkn``)
    except for a symmetric Gram ``x x^T`` (one product, ``2mkn``: ``(g + g^T) x``); Cholesky of
    an n x n matrix ``n^3/3``, its backward ``n^3`` (two triangular solves and one triangular
    product); a triangular solve with m right-hand sides ``n^2 m``, backward ``3 n^2 m``;
    a symmetric eigendecomposition with vectors ``9 n^3`` (Golub & Van Loan), its backward
    ``6 n^3`` (``U^T dU``, ``U (.) U^T``). The O(V N D) elementwise passes (centring, normalising,
    the MSE) are left out: they are memory-bound, not FLOP-bound.

    - W-MSE, S = N / w sub-batches of w samples: per (view, sub-batch) covariance ``2wD^2`` fwd +
      ``2wD^2`` bwd, Cholesky ``D^3/3 + D^3``, ``L^-1 xn^T`` ``wD^2 + 3wD^2``:
      ``V S (4wD^2 + 4D^3/3 + 4wD^2)``.
    - CW-RGP, d = D / G: per (view, sub-batch, group) Gram ``2w^2 d + 2w^2 d``, eigh ``9w^3 + 6w^3``,
      ``U diag U^T`` ``2w^3 + 4w^3``, ``S^-1/2 X`` ``2w^2 d + 4w^2 d``:
      ``V S G (10 w^2 d + 21 w^3)``; plus, with ``cov_weight``, the (N, N) Gram of every view
      ``V (2N^2 D + 2N^2 D)``.
    - INTL, T Newton steps: per crop Gram ``2N^2 D + 2N^2 D``; the first step from ``P_0 = I`` is
      ``1.5 I - 0.5 Sn`` (no product), each later step three N x N products (``P^3 Sn``)
      ``6N^3 + 12N^3``; ``diag(W^T S W)`` ``2N^3 + 4N^3``; per crop i >= 1 the cross Gram
      ``xn_i xn_0^T`` ``2N^2 D + 4N^2 D`` and ``diag(W_i^T C W_0)`` ``2N^3 + 4N^3``:
      ``V (4N^2 D + 18 (T - 1) N^3 + 6N^3) + (V - 1)(6N^2 D + 6N^3)``.
    """
    v, n, d = cfg.views, cfg.batch, cfg.dim
    if cfg.method == "wmse":
        w = cfg.params["w_size"]
        return v * (n // w) * (8 * w * d * d + 4 * d ** 3 / 3)
    if cfg.method == "cwrgp":
        w, g = cfg.params["w_size"], cfg.params.get("groups", 4)
        flops = v * (n // w) * g * (10 * w * w * (d // g) + 21 * w ** 3)
        if cfg.params.get("cov_weight"):
            flops += v * 2 * _mm(n, d, n)
        return flops
    t = cfg.params.get("iterations", 4)
    return v * (4 * n * n * d + 18 * (t - 1) * n ** 3 + 6 * n ** 3) + (v - 1) * (6 * n * n * d + 6 * n ** 3)


PEAK_SIZES = (256, 512, 1024, 2048)


def matmul_peak(device: torch.device, repeats: int = 5, sizes=PEAK_SIZES) -> tuple[float, int]:
    """(GFLOP/s, n) of the fastest fp32 n x n x n matmul among ``sizes``, median of ``repeats``
    runs each, measured now on ``device``: the reference the losses' GFLOP/s are shared of."""
    best = (0.0, 0)
    gen = torch.Generator().manual_seed(0)
    for n in sizes:
        a = torch.randn(n, n, generator=gen).to(device)
        b = torch.randn(n, n, generator=gen).to(device)
        times = []
        for i in range(repeats + 1):
            _sync(device)
            start = time.perf_counter()
            a @ b
            _sync(device)
            if i:
                times.append(time.perf_counter() - start)
        gflops = _mm(n, n, n) / statistics.median(times) / 1e9
        best = max(best, (gflops, n))
    return best


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


def run_benchmark(devices: list[str], repeats: int, warmup: int, only: str | None, scale: int = 1):
    """Rows of the table; ``scale`` divides N and D (and w_size), and the matmul sizes of the peak,
    for a quick smoke run (whose peak is then timed ``repeats`` times, not at least 7)."""
    rows = []
    for device_name in devices:
        device = torch.device(device_name)
        for cfg in CONFIGS:
            if scale > 1:
                params = {k: (v // scale if k == "w_size" else v) for k, v in cfg.params.items()}
                cfg = Config(cfg.name, cfg.method, cfg.views, cfg.batch // scale, cfg.dim // scale, params)
            if only and only.lower() not in cfg.name.lower():
                continue
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(cfg.views, cfg.batch, cfg.dim, generator=gen).to(device)
            batched = build_loss(cfg.method, **cfg.params)
            t_batched = time_fn(lambda t: batched(list(t.unbind(0))), x, repeats, warmup)
            t_loop = time_fn(_loop_on(device, cfg.method, cfg.params), x, repeats, warmup)
            # The peak right after this configuration's timings: on a shared machine the load changes
            # from minute to minute, and the share is only meaningful against the same moment.
            peak, peak_n = matmul_peak(device, repeats=max(repeats, 7) if scale == 1 else repeats,
                                       sizes=tuple(n // scale for n in PEAK_SIZES))
            flops = loss_flops(cfg)
            rows.append(
                dict(config=cfg.name, device=device_name, views=cfg.views, batch=cfg.batch,
                     dim=cfg.dim, params=cfg.params, loop_ms=t_loop * 1e3,
                     wssl_zoo_ms=t_batched * 1e3, speedup=t_loop / t_batched,
                     gflop=flops / 1e9, gflops=flops / t_batched / 1e9, peak_gflops=peak,
                     peak_n=peak_n, peak_share=flops / t_batched / 1e9 / peak)
            )
            print(_format_row(rows[-1]), flush=True)
    return rows


HEADER = ("| configuration | device | V | N | D | loop ms | wssl-zoo ms | speed-up | GFLOP | GFLOP/s "
          "| matmul peak GFLOP/s | share of peak |\n|---|---|---|---|---|---|---|---|---|---|---|---|")


def _format_row(r: dict) -> str:
    return (f"| {r['config']} | {r['device']} | {r['views']} | {r['batch']} | {r['dim']} | "
            f"{r['loop_ms']:.1f} | {r['wssl_zoo_ms']:.1f} | {r['speedup']:.2f}x | {r['gflop']:.3f} | "
            f"{r['gflops']:.1f} | {r['peak_gflops']:.1f} (n={r['peak_n']}) | {100 * r['peak_share']:.0f}% |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", action="append", help="cpu or cuda (repeatable); default: cpu, plus cuda when available")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs first")
    parser.add_argument("--only", help="run the configurations whose name contains this text")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads for the CPU runs")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--scale", type=int, default=1, help="divide N, D, w_size and the peak's matmul sizes by this (smoke runs; default 1)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.device or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    cpu = platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads ({cpu})"
          + (f", GPU {torch.cuda.get_device_name()}" if "cuda" in devices else "")
          + (f", N and D divided by {args.scale}" if args.scale > 1 else "") + "\n")
    print(HEADER)
    rows = run_benchmark(devices, args.repeats, args.warmup, args.only, args.scale)
    if args.json:
        payload = dict(torch=torch.__version__, threads=torch.get_num_threads(), rows=rows)
        atomic_write_bytes(args.json, json.dumps(payload, indent=1).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
