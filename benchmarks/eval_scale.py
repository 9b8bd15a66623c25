"""The evaluation at its real size, measured small: feature extraction per rank, and the augmented
linear probe's epoch, with a projection to ImageNet.

    python benchmarks/eval_scale.py --data .data/cifar10            # CIFAR-10 JPEGs (extracted if missing)
    python benchmarks/eval_scale.py --device cuda --workers 16 --aug-arch resnet50 --aug-img-size 224

Table 1, feature extraction (``wssl_zoo.evaluation.write_feature_shards``, what ``eval.linear`` /
``eval.knn`` / ``eval.spectrum`` run on a cache miss): for each dataset size (``--sizes``, default
2k / 8k / 32k of the CIFAR-10 training JPEGs) and each number of ranks (``--ranks``, default 1 and 2,
started as torchrun starts them, gloo on the CPU), images/s of the whole job and the peak resident
memory (``ru_maxrss``) of every rank's process and of its DataLoader workers, with the growth from
the smallest size. Beside it the in-memory extraction (``extract_features``: every rank gathers the
whole matrix, as the pretraining monitor does for its few thousand images), whose memory grows with
the dataset. Memory is read from /proc: the resident set before the extraction (model built) and its
peak during it (``VmHWM``, reset first); the peak above the start of a rank that writes shards should
stay flat across sizes (one batch's forward), not grow with the dataset (the file list of
``ImageFolder`` is the whole extracted training folder's in every row).

Table 2, the augmented linear protocol (``eval.linear --protocol intl``: the frozen backbone on
freshly augmented images every epoch): seconds per epoch per 1,000 images, from the difference of a
3-epoch and a 1-epoch run of ``--aug-images`` images after a first run that caches the test
features (so setup and the cached test features cancel out), and a projection of ImageNet's 1.28 M images x 100 epochs from it, labelled as a projection.

Prints Markdown; ``--json FILE`` writes the rows too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
IMAGENET_TRAIN, IMAGENET_EPOCHS = 1_281_167, 100  # the projection's size: ILSVRC-2012 train, the protocols' epochs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ranks(world: int, argv: list[str], env: dict | None = None) -> list[dict]:
    """Run ``python <argv>`` as ``world`` ranks with torchrun's environment; each prints one JSON line last."""
    port = _free_port()
    procs = []
    for rank in range(world):
        rank_env = dict(env or os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                        LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                        PYTHONPATH=str(REPO))
        procs.append(subprocess.Popen([sys.executable, *argv], env=rank_env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    rows = []
    for proc in procs:
        out, err = proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"a rank failed (exit {proc.returncode}): {err[-2000:]}")
        rows.append(json.loads(out.strip().splitlines()[-1]))
    return rows


def _status_mib(key: str) -> float | None:
    """``VmRSS`` / ``VmHWM`` (peak) of this process from /proc, in MiB (None off Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def worker(args) -> None:
    """One rank of an extraction: print ``{rank, seconds, rss_start_mib, rss_mib, workers_rss_mib}``: the
    resident memory before the extraction and its peak during it (the peak is reset first, through
    /proc/self/clear_refs, so the model's build does not count), and the DataLoader workers' peak."""
    import torch
    from torch.utils.data import Subset

    from wssl_zoo import distributed
    from wssl_zoo.data.datasets import TransformedDataset, build_dataset
    from wssl_zoo.evaluation import extract_features, write_feature_shards
    from wssl_zoo.weights import resolve

    process = distributed.setup(args.device)
    weights = resolve(f"random:{args.arch}:imagenet:{args.img_size}")
    model = weights.build()
    train = build_dataset("imagefolder", args.data, "train")
    data = TransformedDataset(Subset(train, range(args.n)), weights.eval_transform("imagefolder"))
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS (Linux >= 4.0)
    except OSError:
        pass
    rss_start = _status_mib("VmRSS")
    start = time.perf_counter()
    if args.mode == "shards":
        write_feature_shards(args.out, model, data, process.device, args.batch, args.workers)
    else:
        x, _ = extract_features(model, data, process.device, args.batch, args.workers)
        assert len(x) == args.n
    distributed.barrier()
    seconds = time.perf_counter() - start
    own = _status_mib("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    distributed.teardown(process)
    print(json.dumps(dict(rank=process.rank, seconds=seconds, rss_start_mib=rss_start or 0.0, rss_mib=own,
                          workers_rss_mib=children,
                          device=str(process.device), gpu=torch.cuda.get_device_name() if process.device.type == "cuda"
                          else None)))


def extraction_table(args) -> list[dict]:
    rows = []
    for mode in args.modes:
        for world in args.ranks:
            base = None
            for n in args.sizes:
                with tempfile.TemporaryDirectory() as tmp:
                    ranks = _ranks(world, [__file__, "--worker", "--mode", mode, "--n", str(n), "--out", tmp,
                                           "--data", str(args.data), "--arch", args.arch, "--img-size",
                                           str(args.img_size), "--batch", str(args.batch), "--workers",
                                           str(args.workers), "--device", args.device])
                seconds = max(r["seconds"] for r in ranks)
                peak = max(r["rss_mib"] for r in ranks)
                above = max(r["rss_mib"] - r["rss_start_mib"] for r in ranks)  # what the extraction itself held
                base = above if base is None else base
                rows.append(dict(mode=mode, ranks=world, images=n, images_s=n / seconds, seconds=seconds,
                                 rank_rss_mib=[round(r["rss_mib"], 1) for r in ranks], peak_rss_mib=peak,
                                 rank_start_mib=[round(r["rss_start_mib"], 1) for r in ranks], above_start_mib=above,
                                 growth_mib=above - base, workers_rss_mib=max(r["workers_rss_mib"] for r in ranks)))
                print(f"  {mode} x{world} {n}: {n / seconds:.0f} img/s, peak {peak:.0f} MiB", file=sys.stderr, flush=True)
    return rows


def linear_table(args) -> list[dict]:
    """Seconds per augmented epoch per 1,000 images: (3 epochs - 1 epoch) / 2 of ``eval.linear``."""
    rows = []
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with tempfile.TemporaryDirectory() as tmp:
        env["WSSL_ZOO_CACHE"] = str(Path(tmp) / "cache")
        for world in args.aug_ranks:
            walls = {}
            for epochs in (0, 1, 3):  # 0: a first 1-epoch run that fills the test features' cache, not timed
                argv = ["-m", "eval.linear", "--model", f"random:{args.aug_arch}:imagenet:{args.aug_img_size}",
                        "--data", str(args.data), "--protocol", "intl", "--epochs", str(max(epochs, 1)), "--train-subset",
                        str(args.aug_images), "--workers", str(args.workers), "--device", args.device, "--no-progress",
                        "--out", str(Path(tmp) / f"w{world}e{epochs}.json")]
                if world == 1:
                    start = time.perf_counter()
                    subprocess.run([sys.executable, *argv], env=env, check=True, capture_output=True)
                    walls[epochs] = time.perf_counter() - start
                else:
                    start = time.perf_counter()
                    port = _free_port()
                    procs = [subprocess.Popen([sys.executable, *argv], env=dict(
                        env, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)), stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE, text=True) for r in range(world)]
                    for proc in procs:
                        _, err = proc.communicate()
                        if proc.returncode:
                            raise RuntimeError(f"eval.linear failed: {err[-2000:]}")
                    walls[epochs] = time.perf_counter() - start
            record = json.loads((Path(tmp) / f"w{world}e3.json").read_text())
            images = record["train_samples"]
            per_epoch = max(walls[3] - walls[1], 1e-9) / 2
            per_1000 = per_epoch / images * 1000
            rows.append(dict(ranks=world, images=images, seconds_per_epoch=per_epoch, seconds_per_1000=per_1000,
                             per_process_batch=record["per_process_batch"], hardware=record["hardware"],
                             projection_hours=per_1000 * IMAGENET_TRAIN / 1000 * IMAGENET_EPOCHS / 3600))
            print(f"  augmented x{world}: {per_1000:.2f} s per 1,000 images", file=sys.stderr, flush=True)
    return rows


def ensure_data(folder: Path, images: int) -> Path:
    """``folder/train/<class>/*.jpg`` with at least ``images`` CIFAR-10 training JPEGs and a test split,
    extracted from ``../shared/data/cifar10-jpeg.tar.gz`` when missing (tests/conftest.py's helper)."""
    have = sum(1 for _ in (folder / "train").rglob("*.jpg")) if (folder / "train").is_dir() else 0
    if have >= images:
        return folder
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import cifar10_subset, shared_dir

    tar = shared_dir() / "data" / "cifar10-jpeg.tar.gz"
    if not tar.is_file():
        raise SystemExit(f"eval_scale.py: {folder} holds {have} training JPEGs and {tar} is missing; give --data")
    shutil.rmtree(folder, ignore_errors=True)
    return cifar10_subset(tar.parent, folder, train_per_class=-(-images // 10), test_per_class=20)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=REPO / ".data" / "cifar10_eval_scale",
                   help="ImageFolder root with train/ and test/ (default: %(default)s, CIFAR-10 JPEGs extracted there)")
    p.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000, 32000], help="dataset sizes (default: %(default)s)")
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2], help="processes (default: %(default)s)")
    p.add_argument("--modes", nargs="+", default=["shards", "memory"], choices=["shards", "memory"],
                   help="shards: write_feature_shards; memory: extract_features (default: both)")
    p.add_argument("--arch", default="resnet18", help="extraction backbone, random init (default: %(default)s)")
    p.add_argument("--img-size", type=int, default=32, help="extraction input size (default: %(default)s)")
    p.add_argument("--batch", type=int, default=256, help="extraction batch per rank (default: %(default)s)")
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers per rank (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    p.add_argument("--aug-images", type=int, default=500, help="images of the augmented epochs (default: %(default)s)")
    p.add_argument("--aug-arch", default="resnet50", help="augmented protocol's backbone (default: %(default)s)")
    p.add_argument("--aug-img-size", type=int, default=224, help="its input size (default: %(default)s)")
    p.add_argument("--aug-ranks", type=int, nargs="+", default=[1], help="processes of the augmented epochs "
                   "(default: %(default)s)")
    p.add_argument("--json", type=Path, help="also write the rows here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="shards", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return 0
    ensure_data(args.data, max(max(args.sizes), args.aug_images))
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    extraction = extraction_table(args)
    augmented = linear_table(args) if args.aug_images else []
    import torch

    where = (torch.cuda.get_device_name() if args.device.startswith("cuda") else
             f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)")
    print(f"\n{started}, {where}, torch {torch.__version__}: "
          f"`python benchmarks/eval_scale.py {' '.join(sys.argv[1:])}`\n")
    print(f"Feature extraction, {args.arch} @ {args.img_size} px (random init), batch {args.batch} per rank, "
          f"{args.workers} DataLoader worker(s) per rank, CIFAR-10 JPEGs:\n")
    print("| extraction | ranks | images | images/s | RSS per rank before (MiB) | peak RSS per rank (MiB) | "
          "peak above before, worst rank (MiB) | growth of that from the smallest size (MiB) | "
          "DataLoader worker peak (MiB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in extraction:
        what = "shards on disk" if r["mode"] == "shards" else "in memory, gathered to every rank"
        print(f"| {what} | {r['ranks']} | {r['images']:,} | {r['images_s']:.0f} | "
              f"{' / '.join(f'{v:.0f}' for v in r['rank_start_mib'])} | "
              f"{' / '.join(f'{v:.0f}' for v in r['rank_rss_mib'])} | {r['above_start_mib']:.0f} | "
              f"{r['growth_mib']:+.0f} | {r['workers_rss_mib']:.0f} |")
    dim = {"resnet18": 512, "resnet50": 2048}.get(args.arch)
    if dim:
        print(f"\nFor scale: the {dim}-d float32 features of {max(args.sizes):,} images take "
              f"{max(args.sizes) * dim * 4 / 2**20:.0f} MiB, those of ImageNet's 1.28 M images "
              f"{IMAGENET_TRAIN * dim * 4 / 2**30:.1f} GiB; one batch's input is "
              f"{args.batch * 3 * args.img_size ** 2 * 4 / 2**20:.0f} MiB (the forward's activations come on top).")
    if augmented:
        print(f"\nAugmented linear protocol (`eval.linear --protocol intl`), {args.aug_arch} @ {args.aug_img_size} px, "
              f"{args.workers} worker(s) per rank; CIFAR-10's 32 px JPEGs decode faster than ImageNet's photos:\n")
        print("| ranks | images per epoch | per-process batch | s per epoch | s per epoch per 1,000 images | "
              "ImageNet, 1.28 M images x 100 epochs (projection) |")
        print("|---|---|---|---|---|---|")
        for r in augmented:
            print(f"| {r['ranks']} | {r['images']:,} | {r['per_process_batch']} | {r['seconds_per_epoch']:.1f} | "
                  f"{r['seconds_per_1000']:.2f} | {r['projection_hours']:,.0f} h (projection: {r['seconds_per_1000']:.2f} "
                  f"s per 1,000 images x 1,281 x 100, on {r['hardware']}) |")
    if args.json:
        args.json.write_text(json.dumps(dict(extraction=extraction, augmented=augmented), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
