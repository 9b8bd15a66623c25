"""Results as data: one JSON record per (weights, task, protocol, dataset, seed); the one record
schema, writer and reader of pretraining, evaluation and detection (``eval.records`` re-exports it).

A record holds what is needed to trust and reproduce a number: the model and the sha256 of its
weights, the protocol's name and version (and any overrides, which make it a different
protocol), the dataset and a fingerprint of its files, the seed, the metrics at the *final*
epoch, the wall time, the hardware, torch and code versions and the command that produced it.
An evaluation record also says how it ran: ``world_size`` (processes) and ``per_process_batch``
(a semi-supervised result depends on them: BatchNorm statistics are per process).

**Final and best.** ``metrics`` are the final epoch's: the headline, the only numbers cards and the
leaderboard show. Linear and semi-supervised records also give ``best_epoch`` (1-based) and
``best_metrics``, the test epoch with the highest top-1, because the authors' scripts keep and print
that one (``best_acc1``: INTL ``evaluate.py:225-226``, CW-RGP ``ImageNet/lincls.py:240-241``) without
saying which of the two their tables report; a reader can compare with either convention.

**Identity.** A record's identity is (task, weights sha256, protocol with its overrides, dataset
name and fingerprint, seed), hashed by :func:`record_identity`; the default file name carries a
short hash of it, and :func:`write_record` never replaces a record of a different identity.

**Undefined metrics** (NaN, None: e.g. COCO AP of a size range without instances) are one rule
for every writer: :func:`make_record` leaves them out of ``metrics`` and lists their names in
``undefined_metrics``; ``metrics`` holds only finite numbers.

Ad-hoc records go to the user's results folder (:func:`wssl_zoo.paths.results_dir`); the zoo's
published ones are in ``zoo/results`` (:func:`wssl_zoo.paths.zoo_results_dir`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import re
import time
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.distributed as dist

from ._version import code_version
from .fileio import atomic_write_bytes
from .paths import zoo_results_dir

SCHEMA_VERSION = 1
RECORD_SCHEMA_VERSION = SCHEMA_VERSION  # the name other modules (detection.train) import
RESULTS_DIR = zoo_results_dir()  # the zoo's published records (see wssl_zoo.paths)
# The quick held-out check after pretraining (wssl_zoo.pretrain.evaluate: cosine kNN and a full-batch
# probe on subsets). Its records are read like any other; cards and the leaderboard never show them
# as a paper-comparable result.
PRETRAIN_EVAL_TASK = "pretrain_eval"
REQUIRED = {"schema_version": int, "task": str, "model": str, "weights_sha256": str, "protocol": dict,
            "dataset": dict, "seed": int, "metrics": dict, "wall_seconds": (int, float), "hardware": str,
            "torch": str, "code_version": str, "created": str, "command": str}


def hardware(device: torch.device | None = None) -> str:
    """What a measurement ran on: the GPU's name (``device``'s, else the first one's where CUDA is
    present), else :func:`cpu_description`."""
    if device is not None and device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device is None and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return cpu_description()


def cpu_description() -> str:
    """The CPU as a time or a CPU result depends on it: its model name (``/proc/cpuinfo``; the
    architecture elsewhere), the cores this process may use, torch's threads, and the vector
    instructions torch's own kernels use (``AVX512``, ``AVX2``, ...: results of the same run differ in
    the last bits between them, and training amplifies that; see README "Which numbers depend on the
    machine"), e.g. ``Intel(R) Xeon(R) Processor, 2 cores, 2 threads, AVX512``."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:  # not Linux
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = None
    capability = torch.backends.cpu.get_cpu_capability()
    parts = [model or platform.processor() or platform.machine()]
    if cores:
        parts.append(f"{cores} cores")
    return ", ".join([*parts, f"{torch.get_num_threads()} threads", capability])


def make_record(*, task: str, model: str, weights_sha256: str, protocol: dict, dataset: dict, seed: int,
                metrics: dict, wall_seconds: float, command: str, extra: dict | None = None) -> dict[str, Any]:
    """A validated record; ``extra`` adds task-specific fields (it may not replace the required ones).
    Undefined metrics (NaN, inf, None) are moved from ``metrics`` to ``undefined_metrics``."""
    defined = {k: v for k, v in metrics.items() if _is_number(v)}
    undefined = sorted(set(metrics) - set(defined))
    extra = dict(extra or {})
    undefined = sorted(set(undefined) | set(extra.pop("undefined_metrics", None) or []))
    record = dict(schema_version=SCHEMA_VERSION, task=task, model=model, weights_sha256=weights_sha256,
                  protocol=dict(protocol), dataset=dict(dataset), seed=int(seed), metrics=defined,
                  wall_seconds=float(wall_seconds), hardware=hardware(), torch=torch.__version__,
                  code_version=code_version(), created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  command=command)
    clash = set(extra or {}) & set(record)
    if clash:
        raise ValueError(f"extra fields {sorted(clash)} would replace required record fields")
    record.update(extra)
    if undefined:
        record["undefined_metrics"] = undefined
    validate_record(record)
    return record


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def record_identity(record: dict) -> str:
    """The sha256 (hex) of what makes two records measure the same thing: task, weights sha256,
    protocol (with overrides), dataset name and fingerprint, seed."""
    key = dict(task=record.get("task"), weights_sha256=record.get("weights_sha256"), protocol=record.get("protocol"),
               dataset=[(record.get("dataset") or {}).get(k) for k in ("name", "fingerprint")]
               if isinstance(record.get("dataset"), dict) else record.get("dataset"), seed=record.get("seed"))
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def validate_record(record: Any, where: str = "record") -> None:
    """Raise ValueError naming the first missing or malformed key."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: a record is a JSON object, got {type(record).__name__}")
    for key, typ in REQUIRED.items():
        if key not in record:
            raise ValueError(f"{where}: missing key {key!r}")
        if not isinstance(record[key], typ) or isinstance(record[key], bool):
            raise ValueError(f"{where}: key {key!r} must be {getattr(typ, '__name__', typ)}, got {record[key]!r}")
    if record["schema_version"] > SCHEMA_VERSION:
        raise ValueError(f"{where}: schema_version {record['schema_version']} is newer than this code reads")
    for key in ("name", "version"):
        if key not in record["protocol"]:
            raise ValueError(f"{where}: key 'protocol' has no {key!r}")
    for key in ("name", "fingerprint"):
        if key not in record["dataset"]:
            raise ValueError(f"{where}: key 'dataset' has no {key!r}")
    if not re.fullmatch(r"[0-9a-f]{64}", record["weights_sha256"]):
        raise ValueError(f"{where}: key 'weights_sha256' must be 64 hex characters, got {record['weights_sha256']!r}")
    for key in ("world_size", "per_process_batch", "best_epoch"):
        if key in record and (not isinstance(record[key], int) or isinstance(record[key], bool) or record[key] < 1):
            raise ValueError(f"{where}: key {key!r} must be a positive integer, got {record[key]!r}")
    best = record.get("best_metrics", {})
    if not isinstance(best, dict) or not all(_is_number(v) for v in best.values()) or \
            (("best_metrics" in record) != ("best_epoch" in record)):
        raise ValueError(f"{where}: key 'best_metrics' must be finite numbers, given with 'best_epoch', got {best!r}")
    undefined = record.get("undefined_metrics", [])
    if not isinstance(undefined, list) or not all(isinstance(n, str) for n in undefined):
        raise ValueError(f"{where}: key 'undefined_metrics' must be a list of metric names, got {undefined!r}")
    if not record["metrics"] and not undefined:
        raise ValueError(f"{where}: key 'metrics' is empty")
    for name, value in record["metrics"].items():
        if not _is_number(value):
            raise ValueError(f"{where}: metric {name!r} must be a finite number (undefined ones are listed in "
                             f"'undefined_metrics'), got {value!r}")


def write_record(record: dict, path: str | Path) -> Path:
    """Validate and write ``record`` atomically (sorted keys, indent 2); under torchrun only rank 0
    writes. An existing file at ``path`` is replaced only by a record of the same identity
    (:func:`record_identity`); anything else there (another measurement, corrupt JSON) raises
    ValueError naming it."""
    path = Path(path)
    validate_record(record, str(path))

    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        return path  # under torchrun only rank 0 writes
    if path.exists():
        try:
            old = json.loads(path.read_bytes())
        except (OSError, ValueError):
            old = None
        if not isinstance(old, dict) or record_identity(old) != record_identity(record):
            what = "is not a record" if not isinstance(old, dict) else (
                f"holds another measurement (model {old.get('model')!r}, seed {old.get('seed')!r})")
            raise ValueError(f"{path} {what}; refusing to replace it: choose another --out or --results-dir")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
    return path


def read_records(directory: str | Path = RESULTS_DIR, task: str | None = None) -> list[dict]:
    """Every schema record in ``directory`` (JSON without ``schema_version``, such as the
    pre-schema ``kind: pretrain_eval`` format, is skipped), each with a ``file`` key; a malformed
    record raises ValueError naming its file."""
    out = []
    for path in sorted(Path(directory).glob("*.json")):
        try:
            record = json.loads(path.read_bytes())
        except (ValueError, OSError) as exc:  # bad JSON, bad UTF-8, unreadable
            raise ValueError(f"{path}: not valid JSON ({' '.join(str(exc).split())})") from None
        if not isinstance(record, dict) or "schema_version" not in record:
            continue  # not a schema record (e.g. the pre-schema kind=pretrain_eval format)
        validate_record(record, str(path))
        if task is None or record["task"] == task:
            out.append(dict(record, file=path.name))
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


def default_record_path(task: str, model_label: str, protocol_name: str, dataset: str, seed: int,
                        directory: str | Path = RESULTS_DIR, record: dict | None = None) -> Path:
    """``DIR/<task>_<model>_<protocol>_<dataset>_seed<S>[_<id8>].json``; with ``record``, ``id8`` is
    the first 8 hex digits of its identity, so records of different weights never share a name.
    A protocol name over 40 characters is shortened to its base and the number of overrides."""
    ident = f"_{record_identity(record)[:8]}" if record is not None else ""
    if len(protocol_name) > 40:  # a long override list: its count (the identity hash keeps sets apart)
        base, *changes = protocol_name.split("+")
        protocol_name = f"{base[:40]}+{len(changes)}-overrides"
    return Path(directory) / (f"{_slug(task)}_{_slug(model_label)}_{_slug(protocol_name)}_{_slug(dataset)}"
                              f"_seed{seed}{ident}.json")


def record_file(record: dict, model_label: str, directory: str | Path) -> Path:
    """:func:`default_record_path` of ``record`` in ``directory``."""
    return default_record_path(record["task"], model_label, record["protocol"]["name"], record["dataset"]["name"],
                               record["seed"], directory, record)


def is_full_evaluation(record: dict) -> str | None:
    """None when ``record`` measured its protocol as published (the full evaluation set, no
    overrides); else why not. ``eval.report`` skips the others."""
    proto = record.get("protocol") or {}
    name = str(proto.get("name", ""))
    if "+" in name or proto.get("overrides"):
        base, *changes = name.split("+")
        shown = "+".join(changes) if len("+".join(changes)) <= 60 else f"{len(changes)} overrides"
        return f"protocol {base!r} with {shown or 'overrides'}"
    for key in ("train_subset", "subset", "test_subset"):
        if proto.get(key) or (record.get("dataset") or {}).get(key):
            return f"{key}={proto.get(key) or record['dataset'].get(key)} (a subset)"
    return None


def is_own_protocol(record: dict) -> bool:
    """Whether ``record`` measured one of wssl-zoo's own protocols (its ``protocol.source`` starts with
    ``wssl-zoo``, like the quick ``fast`` probe), not a paper's: cards keep it out of the model index,
    the leaderboard labels its column."""
    proto = record.get("protocol", {})
    return isinstance(proto, dict) and str(proto.get("source", "")).startswith("wssl-zoo")


def dataset_fingerprint(dataset) -> str:
    """A stable hash of a dataset's identity: class names, size, and each file's relative path and
    size where the dataset has files (cheap: no image is read)."""
    h = hashlib.sha256()
    h.update(json.dumps(list(getattr(dataset, "classes", []))).encode())
    h.update(str(len(dataset)).encode())
    samples = getattr(dataset, "samples", None)
    root = Path(getattr(dataset, "root", "/"))
    if samples:
        for path, target in samples:
            p = Path(path)
            try:
                rel = p.relative_to(root)
            except ValueError:
                rel = p.name
            h.update(f"{rel}\0{p.stat().st_size if p.exists() else -1}\0{target}\n".encode())
    else:
        targets = getattr(dataset, "targets", None)
        if targets is not None:
            h.update(json.dumps([int(t) for t in targets]).encode())
    return h.hexdigest()[:16]


def aggregate(records: Iterable[dict]) -> dict[str, dict[str, float]]:
    """Mean and (sample) std of every metric over several seeds' records."""
    records = list(records)
    out: dict[str, dict[str, float]] = {}
    names = sorted({k for r in records for k in r["metrics"]})
    for name in names:
        values = [float(r["metrics"][name]) for r in records if name in r["metrics"]]
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
        out[name] = dict(mean=mean, std=std, n=len(values))
    return out
