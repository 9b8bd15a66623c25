"""The evaluation library: features (in memory, or as per-rank shards on disk), k-NN, spectrum /
effective rank, and the full-batch probe.

One implementation of each rule, named for what it is, used by the ``eval`` CLIs (which add
protocols, caching and records), the pretraining monitor and the demo:

- :func:`extract_features`: backbone features of a small labelled dataset in memory (eval mode, no
  grad, float32 unless ``amp`` asks otherwise; under torchrun each rank extracts a contiguous block
  of rows and the blocks are all-gathered as tensors, so every rank gets the whole matrix: for the
  pretraining monitor's few thousand images, whose consumer on every rank needs them).
- :func:`write_feature_shards` / :class:`FeatureShards`: features of a dataset of any size on disk.
  Each rank writes the rows of its block (:func:`rank_rows`) batch by batch into its own ``.npy``
  file, so its memory grows with the batch, not with the dataset, and no rank ever holds another
  rank's features; readers memory-map the shards and take rows, chunks or the whole matrix.
- :func:`knn_predict` / :func:`knn_accuracy` with a named ``rule``:
  ``majority-euclidean`` (the W-MSE / CW-RGP papers' 5-NN: ``torch.cdist`` distance, majority vote,
  a tie going to the smallest class index as ``unique(return_counts=True)`` + ``argmax`` in
  CW-RGP ``base/eval/knn.py`` @ 5bbf6ed4df35), ``majority-cosine`` (the same vote on cosine
  similarity: the cheap pretraining monitor, never a paper number) and ``weighted-cosine``
  (InstDisc's weighted k-NN, votes exp(cos / T)). They run on any device, chunked over the
  queries and over the bank (the k nearest of every bank chunk merged into a running top-k).
- :func:`spectrum` and :func:`effective_rank`: eigenvalues of the feature covariance and
  exp(entropy) of their normalised values (Roy & Vetterli, 2007).
- :func:`linear_probe_full_batch`: a full-batch Adam classifier on standardised features; the
  demo's and the monitor's quick probe (the protocol-driven probes are ``eval.linear``'s).

Precision: the authors evaluate in float32 everywhere (INTL ``evaluate.py``, CW-RGP
``ImageNet/lincls.py``, W-MSE ``eval/get_data.py``: no autocast), and so does every function here
unless it is given ``amp="bf16"`` or ``"fp16"`` (:func:`autocast`), which the eval CLIs record as a
protocol override.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from .catalogue import eval_dataset
from .data.datasets import TransformedDataset, balanced_subset, build_dataset, heldout_split
from .data.transforms import eval_transform
from .distributed import barrier, is_main, rank_world
from .fileio import atomic_write_text, sha256_file
from .preempt import ignore_stop_signals

KNN_RULES = ("majority-euclidean", "majority-cosine", "weighted-cosine")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
SHARDS_FORMAT = "wssl-zoo-feature-shards"
SHARDS_VERSION = 1


def autocast(device: torch.device | str, amp: str = "none"):
    """The precision context of a forward (evaluation and pretraining alike): float32 for ``amp="none"``
    (the authors' evaluation precision), else autocast to bf16 / fp16 on ``device``'s type (CUDA, or
    the CPU's own autocast). Whitening runs in float32 inside it (:func:`wssl_zoo.whitening.no_autocast`)."""
    if amp == "none":
        return contextlib.nullcontext()
    if amp not in AMP_DTYPES:
        raise ValueError(f"--amp {amp!r}: choose none, bf16 or fp16")
    return torch.autocast(device_type=torch.device(device).type, dtype=AMP_DTYPES[amp])


def rank_rows(n: int, rank: int | None = None, world: int | None = None) -> range:
    """The contiguous block of ``range(n)`` that ``rank`` of ``world`` (default: this process's) takes:
    blocks in rank order, the first ``n % world`` ranks one row more, so concatenating the blocks in
    rank order gives ``range(n)``."""
    if rank is None or world is None:
        rank, world = rank_world()
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def _feature_batches(model: nn.Module, dataset, rows: range, device: torch.device, batch_size: int, workers: int,
                     progress: bool, desc: str, amp: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(features (b, F) float32 on the CPU, labels (b,) int64)`` of ``dataset[rows]``, batch by batch, in
    order. The model runs in eval mode and without gradients (its mode is restored after)."""
    loader = DataLoader(Subset(dataset, rows), batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda", worker_init_fn=ignore_stop_signals)
    was_training = model.training
    model = model.to(device).eval()
    try:
        with torch.no_grad():
            for images, targets in tqdm(loader, desc=desc, unit="batch", disable=not progress or not is_main(),
                                        dynamic_ncols=True, leave=False):
                with autocast(device, amp):
                    out = model(images.to(device, non_blocking=True))
                yield out.float().cpu(), torch.as_tensor(targets).long()
    finally:
        model.train(was_training)


def extract_features(model: nn.Module, dataset, device: torch.device | str = "cpu", batch_size: int = 256,
                     workers: int = 2, progress: bool = False, desc: str = "features",
                     amp: str = "none") -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, F) float32 on the CPU, labels (N,) int64) of ``dataset`` = (image, label) pairs,
    in dataset order, in memory on every rank. Under torchrun each rank extracts the block
    :func:`rank_rows` gives it and the blocks are all-gathered as tensors (padded to the largest
    block): meant for small sets whose consumer on every rank needs every row (the pretraining
    monitor, the demo). Large sets go to disk with :func:`write_feature_shards`."""
    device = torch.device(device)
    rank, world = rank_world()
    parts = list(_feature_batches(model, dataset, rank_rows(len(dataset), rank, world), device, batch_size, workers,
                                  progress, desc, amp))
    x = torch.cat([p[0] for p in parts]) if parts else torch.zeros(0, 0)
    y = torch.cat([p[1] for p in parts]) if parts else torch.zeros(0, dtype=torch.long)
    if world == 1:
        return x, y
    sizes = [len(rank_rows(len(dataset), r, world)) for r in range(world)]
    dim = torch.tensor([x.shape[1] if len(x) else 0], device=_collective_device(device))
    dist.all_reduce(dim, op=dist.ReduceOp.MAX)
    dim = int(dim.item())
    pad = max(sizes)
    mine_x = torch.zeros(pad, dim, device=_collective_device(device))
    mine_y = torch.zeros(pad, dtype=torch.long, device=mine_x.device)
    mine_x[:len(x)], mine_y[:len(y)] = x.reshape(len(x), dim), y
    xs = [torch.empty_like(mine_x) for _ in range(world)]
    ys = [torch.empty_like(mine_y) for _ in range(world)]
    dist.all_gather(xs, mine_x)
    dist.all_gather(ys, mine_y)
    return (torch.cat([part[:n].cpu() for part, n in zip(xs, sizes)]),
            torch.cat([part[:n].cpu() for part, n in zip(ys, sizes)]))


def _collective_device(device: torch.device) -> torch.device:
    """Where a collective's tensors live: the GPU under NCCL, the CPU under gloo."""
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# ---------------------------------------------------------------------------- features on disk, per rank


def _npy_header(rows: int, dim: int, dtype: str) -> bytes:
    """The ``.npy`` (format 1.0) header of a C-order (rows, dim) array, or (rows,) when ``dim`` is 0 and
    ``dtype`` is an integer type."""
    buf = io.BytesIO()
    shape = (rows,) if dtype.startswith("<i") else (rows, dim)
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue()


class _NpyWriter:
    """Writes a ``.npy`` file row block by row block (no array of the whole file in memory), hashing
    what it writes; the file appears under its name only when :meth:`close` is called after every row."""

    def __init__(self, path: Path, rows: int, dtype: str):
        self.path, self.rows, self.dtype = path, rows, dtype
        self.partial = path.with_name(f".{path.name}.{os.getpid()}.partial")  # two jobs never share one
        self.fh = None
        self.digest = hashlib.sha256()
        self.written = 0

    def write(self, block: np.ndarray) -> None:
        if self.fh is None:
            self.fh = open(self.partial, "wb")
            self._put(_npy_header(self.rows, block.shape[1] if block.ndim == 2 else 0, self.dtype))
        self._put(np.ascontiguousarray(block).tobytes())
        self.written += len(block)

    def _put(self, data: bytes) -> None:
        self.fh.write(data)
        self.digest.update(data)

    def close(self, dim: int = 0) -> dict:
        if self.fh is None:  # no row (an empty block): the header alone
            self.fh = open(self.partial, "wb")
            self._put(_npy_header(0, dim, self.dtype))
        if self.written != self.rows:
            raise RuntimeError(f"{self.path}: wrote {self.written} rows of {self.rows}")
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        os.replace(self.partial, self.path)
        return dict(file=self.path.name, bytes=self.path.stat().st_size, sha256=self.digest.hexdigest())


def _shard_names(rank: int, world: int) -> tuple[str, str, str]:
    tag = f"{rank:05d}-of-{world:05d}"
    return f"features-{tag}.npy", f"labels-{tag}.npy", f"shard-{tag}.json"


def write_feature_shards(folder: str | Path, model: nn.Module, dataset, device: torch.device | str = "cpu",
                         batch_size: int = 256, workers: int = 2, progress: bool = False, desc: str = "features",
                         amp: str = "none", info: dict | None = None) -> Path:
    """Extract the features of ``dataset`` into ``folder`` as per-rank shards; returns ``index.json``.

    Every rank (one process outside torchrun) writes its block with :func:`write_feature_shard`; when
    every rank is done, rank 0 writes the index (:func:`write_shard_index`), which is what makes the
    folder complete. Collective under torchrun: every rank calls it."""
    folder = Path(folder)
    rank, world = rank_world()
    if is_main():
        folder.mkdir(parents=True, exist_ok=True)
    barrier()
    write_feature_shard(folder, model, dataset, rank, world, device, batch_size, workers, progress, desc, amp)
    barrier()
    if is_main():
        write_shard_index(folder, len(dataset), world, info)
    barrier()
    return folder / "index.json"


def write_feature_shard(folder: Path, model: nn.Module, dataset, rank: int, world: int,
                        device: torch.device | str = "cpu", batch_size: int = 256, workers: int = 2,
                        progress: bool = False, desc: str = "features", amp: str = "none") -> dict:
    """Rank ``rank`` of ``world``'s shard: the rows :func:`rank_rows` gives it, extracted batch by batch
    into ``features-RRRRR-of-WWWWW.npy`` (float32, (rows, F)) and ``labels-...npy`` (int64), each hashed
    as it is written and renamed into place when complete, then ``shard-...json`` saying so; a rank's
    memory holds one batch, never its block. A shard an earlier attempt finished (its json and files
    there) is kept as it is, so a rerun after a crash extracts only what is missing. Returns the shard's
    description."""
    folder = Path(folder)
    rows = rank_rows(len(dataset), rank, world)
    feat_name, label_name, shard_name = _shard_names(rank, world)
    shard = _finished_shard(folder / shard_name, rows)
    if shard is not None:
        return shard
    feats = _NpyWriter(folder / feat_name, len(rows), "<f4")
    labels = _NpyWriter(folder / label_name, len(rows), "<i8")
    dim = int(getattr(model, "num_features", 0) or 0)
    for x, y in _feature_batches(model, dataset, rows, torch.device(device), batch_size, workers, progress, desc, amp):
        dim = x.shape[1]
        feats.write(x.numpy())
        labels.write(y.numpy())
    shard = dict(start=rows.start, stop=rows.stop, dim=dim, features=feats.close(dim), labels=labels.close())
    atomic_write_text(folder / shard_name, json.dumps(shard, indent=1, sort_keys=True) + "\n")
    return shard


def write_shard_index(folder: Path, rows: int, world: int, info: dict | None = None) -> Path:
    """``index.json`` of the ``world`` shards in ``folder`` (rows, dim, every shard's row range, sizes and
    sha256, and ``info``), written atomically; files of an earlier attempt with another world size are
    removed."""
    folder = Path(folder)
    shards = [json.loads((folder / _shard_names(r, world)[2]).read_text()) for r in range(world)]
    dims = {s["dim"] for s in shards if s["stop"] > s["start"]}
    if len(dims) > 1:
        raise RuntimeError(f"{folder}: the shards disagree on the feature dimension: {sorted(dims)}")
    keep = {"index.json"} | {name for r in range(world) for name in _shard_names(r, world)}
    for stale in folder.iterdir():  # an earlier attempt's shards of another world size
        if stale.name not in keep and not stale.name.startswith("."):
            stale.unlink()
    index = dict(format=SHARDS_FORMAT, version=SHARDS_VERSION, rows=rows, dim=dims.pop() if dims else 0,
                 shards=shards, info=info or {})
    atomic_write_text(folder / "index.json", json.dumps(index, indent=1, sort_keys=True) + "\n")
    return folder / "index.json"


def _finished_shard(path: Path, rows: range) -> dict | None:
    """The description of a shard an earlier attempt finished for exactly ``rows``, or None."""
    try:
        shard = json.loads(path.read_text())
        files = [path.parent / shard[kind]["file"] for kind in ("features", "labels")]
        if (shard["start"], shard["stop"]) == (rows.start, rows.stop) and \
                all(f.stat().st_size == shard[kind]["bytes"] for f, kind in zip(files, ("features", "labels"))):
            return shard
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


class FeatureShards:
    """A feature matrix (N, F) and its labels (N,) stored by :func:`write_feature_shards`, read through
    memory maps: rows are read from disk when used, so a reader holds what it takes, not the matrix.

    ``FeatureShards(folder)`` checks the index, every file's size and (``verify=True``) its sha256,
    read in 16 MiB blocks; ValueError naming the file when one does not match. ``labels`` (N,) int64
    are read into memory (8 bytes a row)."""

    def __init__(self, folder: str | Path, verify: bool = True):
        self.folder = Path(folder)
        index_path = self.folder / "index.json"
        try:
            index = json.loads(index_path.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{index_path}: unreadable index ({exc})") from None
        if index.get("format") != SHARDS_FORMAT or index.get("version") != SHARDS_VERSION:
            raise ValueError(f"{index_path}: not a version-{SHARDS_VERSION} {SHARDS_FORMAT} index")
        self.index = index
        self.rows, self.dim = int(index["rows"]), int(index["dim"])
        self.info = index.get("info", {})
        self._parts: list[tuple[int, int, np.ndarray]] = []
        labels = []
        expected = 0
        for shard in index["shards"]:
            if shard["start"] != expected:
                raise ValueError(f"{index_path}: shard rows are not contiguous at row {expected}")
            expected = shard["stop"]
            for kind in ("features", "labels"):
                path = self.folder / shard[kind]["file"]
                if not path.is_file() or path.stat().st_size != shard[kind]["bytes"]:
                    raise ValueError(f"{path}: missing or not {shard[kind]['bytes']} bytes")
                if verify and sha256_file(path, 16 << 20) != shard[kind]["sha256"]:
                    raise ValueError(f"{path}: its sha256 does not match {index_path}")
            n = shard["stop"] - shard["start"]
            if n:
                feats = np.load(self.folder / shard["features"]["file"], mmap_mode="c")
                labs = np.load(self.folder / shard["labels"]["file"])
                if feats.shape != (n, self.dim) or feats.dtype != np.float32 or labs.shape != (n,):
                    raise ValueError(f"{self.folder / shard['features']['file']}: shape {feats.shape}, expected "
                                     f"({n}, {self.dim}) float32")
                self._parts.append((shard["start"], shard["stop"], feats))
                labels.append(torch.from_numpy(np.asarray(labs, dtype=np.int64)))
        if expected != self.rows:
            raise ValueError(f"{index_path}: the shards hold {expected} rows, the index says {self.rows}")
        self.labels = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)

    def __len__(self) -> int:
        return self.rows

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows, self.dim)

    @property
    def nbytes(self) -> int:
        return self.rows * self.dim * 4

    def chunks(self, rows: int = 16384, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, torch.Tensor]]:
        """``(first row, (n, F) float32 tensor)`` over rows ``start..stop`` in order, at most ``rows`` at a
        time; each chunk lies inside one shard and is a view of its memory map (no copy)."""
        stop = self.rows if stop is None else stop
        for lo, hi, feats in self._parts:
            for first in range(max(lo, start), min(hi, stop), rows):
                last = min(first + rows, hi, stop)
                yield first, torch.from_numpy(feats[first - lo:last - lo])

    def range(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``start..stop`` as one (copied) tensor."""
        pieces = [chunk.clone() for _, chunk in self.chunks(max(1, stop - start), start, stop)]
        return torch.cat(pieces) if pieces else torch.zeros(0, self.dim)

    def take(self, index: torch.Tensor) -> torch.Tensor:
        """The rows ``index`` (any order, repeats allowed) as one (copied) (len(index), F) tensor."""
        index = torch.as_tensor(index, dtype=torch.long).cpu()
        out = torch.empty(len(index), self.dim)
        for lo, hi, feats in self._parts:
            mask = (index >= lo) & (index < hi)
            if mask.any():
                out[mask] = torch.from_numpy(feats[(index[mask] - lo).numpy()])
        return out

    def tensor(self) -> torch.Tensor:
        """The whole matrix in memory (a copy: the consumer asked for every row)."""
        return self.range(0, self.rows)

    def to(self, device: torch.device | str, rows: int = 16384) -> torch.Tensor:
        """The whole matrix on ``device``, filled chunk by chunk (host memory: one chunk)."""
        out = torch.empty(self.rows, self.dim, device=device)
        for first, chunk in self.chunks(rows):
            out[first:first + len(chunk)].copy_(chunk)
        return out


# ---------------------------------------------------------------------------- k-NN


def _row_chunks(x, rows: int) -> Iterator[tuple[int, torch.Tensor]]:
    """``(first row, chunk)`` of a tensor or a :class:`FeatureShards`."""
    if isinstance(x, torch.Tensor):
        for first in range(0, len(x), rows):
            yield first, x[first:first + rows]
    else:
        yield from x.chunks(rows)


def k_smallest(keys: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values, columns)`` (R, min(k, C)) of the ``k`` smallest entries of each row of ``keys`` (R, C),
    sorted by (value, column): of equal values the one in the smaller column comes first and is the
    one kept at the k-th place. (``torch.topk`` keeps an arbitrary one of a tie.)"""
    k = min(k, keys.shape[1])
    kth = keys.topk(k, dim=1, largest=False, sorted=True).values[:, -1:]
    take = keys < kth
    tied = keys == kth
    need = k - take.sum(1, keepdim=True)
    crowded = (tied.sum(1, keepdim=True) > need).squeeze(1)
    take |= tied
    if crowded.any():  # more ties at the k-th value than places: the smaller columns win
        rows = crowded.nonzero().squeeze(1)
        rank = tied[rows].to(torch.int32).cumsum(1, dtype=torch.int32)
        take[rows] = (keys[rows] < kth[rows]) | (tied[rows] & (rank <= need[rows]))
    columns = take.nonzero()[:, 1].view(len(keys), k)  # row-major: ascending columns
    values = keys.gather(1, columns)
    order = values.argsort(dim=1, stable=True)
    return values.gather(1, order), columns.gather(1, order)


def knn_predict(xtr, ytr: torch.Tensor, xq, k: int, rule: str, temperature: float = 0.07, chunk: int = 1024,
                bank_chunk: int = 16384, device: torch.device | str | None = None) -> torch.Tensor:
    """Predicted classes (Q,) (CPU int64) of the queries ``xq`` (Q, F) from the bank ``xtr`` (N, F),
    ``ytr`` (N,). ``xtr`` and ``xq`` are tensors or :class:`FeatureShards`.

    ``rule`` is one of :data:`KNN_RULES`; ``k`` is capped at N. The work runs on ``device`` (default:
    the queries' device), ``chunk`` queries against ``bank_chunk`` bank rows at a time: the bank is
    read once, each chunk's k nearest (:func:`k_smallest`) merged into every query's running k nearest,
    so neither the bank nor a (Q, N) distance matrix is ever whole in memory. The neighbours are those
    of the whole bank at once (the distances are computed by the same ``torch.cdist`` / matmul per pair),
    a tie at the k-th distance going to the smaller bank index; the vote is the same: majority with
    ties to the smallest class (``argmax``), or exp(cos / T) summed per class in neighbour order.
    """
    if rule not in KNN_RULES:
        raise ValueError(f"unknown k-NN rule {rule!r}; choose one of {list(KNN_RULES)}")
    if k < 1:
        raise ValueError(f"k={k} must be at least 1")
    if device is None:
        device = xq.device if isinstance(xq, torch.Tensor) else torch.device("cpu")
    device = torch.device(device)
    labels = torch.as_tensor(ytr).long().to(device)
    classes = int(labels.max()) + 1
    k = min(k, len(xtr))
    cosine = rule != "majority-euclidean"
    queries = [(first, q.to(device).float()) for first, q in _row_chunks(xq, chunk)]
    if cosine:
        queries = [(first, F.normalize(q, dim=1)) for first, q in queries]
    best: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(queries)
    for offset, bank in _row_chunks(xtr, bank_chunk):
        bank = bank.to(device).float()
        if cosine:
            bank = F.normalize(bank, dim=1)
        for i, (_, q) in enumerate(queries):
            keys = torch.cdist(q, bank) if not cosine else -(q @ bank.T)  # smaller is nearer
            values, columns = k_smallest(keys, k)
            columns = columns + offset
            if best[i] is not None:  # merge: earlier chunks hold smaller bank indices, so a stable sort keeps ties ordered
                values, columns = torch.cat([best[i][0], values], 1), torch.cat([best[i][1], columns], 1)
                order = values.argsort(dim=1, stable=True)[:, :k]
                values, columns = values.gather(1, order), columns.gather(1, order)
            best[i] = (values, columns)
    preds = []
    for values, columns in best:
        votes = labels[columns]
        if rule == "weighted-cosine":
            weights = (-values / temperature).exp()
            scores = torch.zeros(len(votes), classes, device=device)
            for j in range(votes.shape[1]):  # one neighbour per row at a time: the same order on every device
                scores.scatter_add_(1, votes[:, j:j + 1], weights[:, j:j + 1])
        else:  # majority vote; argmax gives a tie to the smallest class index
            scores = F.one_hot(votes, classes).sum(1)
        preds.append(scores.argmax(1).cpu())
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)


def knn_accuracy(xtr, ytr: torch.Tensor, xq, yq: torch.Tensor, k: int, rule: str, temperature: float = 0.07,
                 device: torch.device | str | None = None) -> float:
    """Top-1 accuracy (%) of :func:`knn_predict` on labelled queries."""
    pred = knn_predict(xtr, ytr, xq, k, rule, temperature, device=device)
    return 100.0 * float((pred == torch.as_tensor(yq).cpu()).float().mean())


def spectrum(features: torch.Tensor) -> torch.Tensor:
    """Eigenvalues (descending, float64, clamped at 0) of the covariance of ``features`` (N, D)."""
    x = features.double()
    x = x - x.mean(0, keepdim=True)
    cov = x.T @ x / max(1, len(x) - 1)
    return torch.linalg.eigvalsh(cov).flip(0).clamp_min(0)


def effective_rank(eigenvalues: torch.Tensor) -> float:
    """exp(entropy of the normalised ``eigenvalues``) (Roy & Vetterli, 2007); 0 for a zero spectrum."""
    total = eigenvalues.sum()
    if total <= 0:
        return 0.0
    p = eigenvalues / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def feature_effective_rank(features: torch.Tensor) -> float:
    """:func:`effective_rank` of the :func:`spectrum` of ``features`` (N, D)."""
    return effective_rank(spectrum(features))


def linear_probe_full_batch(xtr: torch.Tensor, ytr: torch.Tensor, xte: torch.Tensor, yte: torch.Tensor,
                            epochs: int = 300, lr: float = 1e-2, weight_decay: float = 5e-6, seed: int = 0,
                            device: torch.device | str = "cpu") -> float:
    """Top-1 accuracy (%) of a linear classifier on standardised fixed features (N, F).

    Full-batch Adam with a cosine decay of the lr to 1e-3 x ``lr``, weights N(0, 0.01), reported
    at the final epoch. A quick probe for the demo and the monitor, not a paper protocol.
    """
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    mean, std = xtr.mean(0, keepdim=True), xtr.std(0, keepdim=True).clamp_min(1e-6)
    xtr_s, xte_s = ((xtr - mean) / std).to(device), ((xte - mean) / std).to(device)
    ytr_d = ytr.to(device)
    classes = int(max(ytr.max(), yte.max())) + 1
    clf = nn.Linear(xtr.shape[1], classes)
    with torch.no_grad():
        clf.weight.copy_(torch.randn(clf.weight.shape, generator=gen) * 0.01)
        clf.bias.zero_()
    clf = clf.to(device)
    opt = torch.optim.Adam(clf.parameters(), lr=lr, weight_decay=weight_decay)
    for epoch in range(epochs):
        for group in opt.param_groups:
            group["lr"] = lr * (1e-3 + (1 - 1e-3) * 0.5 * (1 + math.cos(math.pi * epoch / epochs)))
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(clf(xtr_s), ytr_d).backward()
        opt.step()
    with torch.no_grad():
        pred = clf(xte_s).argmax(dim=1).cpu()
    return 100.0 * float((pred == yte).float().mean())


def heldout_metrics(backbone: nn.Module, dataset: str, root, img_size: int, bank: int, queries: int, seed: int,
                    device, workers: int, method: str | None = None) -> dict[str, float]:
    """The quick held-out check of a backbone (demo, ``python -m wssl_zoo.pretrain.evaluate``):
    on class-balanced subsets of ``bank`` training and ``queries`` held-out images, normalised as
    ``method``'s pretraining views were, the cosine majority k-NN (k=5 and k=20), the full-batch
    linear probe and the effective rank of the bank features. Not a paper protocol."""
    name = eval_dataset(dataset)
    held = heldout_split(name, root)
    if held is None:
        raise ValueError(f"{root}: a held-out check needs a val/ or test/ split next to train/")
    train = build_dataset(name, root, "train")
    tf = eval_transform(dataset, img_size, method)
    ncls = len(train.classes)
    bank_set = TransformedDataset(Subset(train, balanced_subset(train.targets, max(1, bank // ncls), seed)), tf)
    query_set = TransformedDataset(Subset(held, balanced_subset(held.targets, max(1, queries // ncls), seed)), tf)
    xb, yb = extract_features(backbone, bank_set, device, workers=workers)
    xq, yq = extract_features(backbone, query_set, device, workers=workers)
    return {
        "monitor_knn5_cos": knn_accuracy(xb, yb, xq, yq, k=5, rule="majority-cosine"),
        "monitor_knn20_cos": knn_accuracy(xb, yb, xq, yq, k=20, rule="majority-cosine"),
        "linear_top1": linear_probe_full_batch(xb, yb, xq, yq, seed=seed, device=device),
        "effective_rank": feature_effective_rank(xb),
        "bank": len(xb), "queries": len(xq),
    }
