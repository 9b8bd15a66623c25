"""Feature extraction: per-rank memory-mappable shards (a damaged one refused by name, a killed run's
shards kept), nothing pickled to every rank, 2 processes = 1 process, and the on-disk cache, which
misses whenever what the features depend on changes."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import wssl_zoo
from eval import features as feature_cache
from wssl_zoo.evaluation import FeatureShards, write_feature_shards
from wssl_zoo.modelio import save_model_dir
from wssl_zoo.weights import resolve

from builders import RowsDataset, feature_shards
from conftest import REPO_ROOT

pytestmark = pytest.mark.usefixtures("cache")  # a feature cache of its own for every test


CPU = torch.device("cpu")


def _folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for c in range(2):
        d = root / "train" / f"c{c}"
        d.mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


def _save(out: Path, seed: int, img_size: int = 16) -> Path:
    torch.manual_seed(seed)
    save_model_dir(out, wssl_zoo.create("test_resnet"), arch="test_resnet", stem="imagenet", mean=(0.5,) * 3,
                   std=(0.25,) * 3, img_size=img_size)
    return out


@pytest.fixture
def setup(tmp_path):
    return _folder(tmp_path / "data"), _save(tmp_path / "model", 0), tmp_path / "cache"


def _features(model: Path, data: Path, cache: Path):
    weights = resolve(str(model))
    return feature_cache.cached_features(weights, weights.build(), "imagefolder", str(data), "train", CPU, str(cache),
                             batch_size=4, workers=0, progress=False)


def test_feature_shards_hold_each_ranks_block_and_read_back_rows_chunks_and_the_whole(tmp_path):
    gen = torch.Generator().manual_seed(2)
    x, y = torch.randn(53, 6, generator=gen), torch.randint(0, 3, (53,), generator=gen)
    one = feature_shards(tmp_path / "one", x, y, world=1)
    two = feature_shards(tmp_path / "two", x, y, world=2)
    assert [(s["start"], s["stop"]) for s in two.index["shards"]] == [(0, 27), (27, 53)]
    for store in (one, two):
        assert torch.equal(store.tensor(), x) and torch.equal(store.labels, y) and store.shape == (53, 6)
        idx = torch.tensor([52, 0, 27, 26, 26, 3])
        assert torch.equal(store.take(idx), x[idx]) and torch.equal(store.range(20, 40), x[20:40])
        chunks = list(store.chunks(10))
        assert torch.equal(torch.cat([c for _, c in chunks]), x) and max(len(c) for _, c in chunks) <= 10
        assert torch.equal(store.to("cpu", rows=8), x)
    first = next(two.chunks(100))[1]  # a chunk is a view of the shard's memory map, not a copy
    assert first.untyped_storage().data_ptr() == next(two.chunks(5))[1].untyped_storage().data_ptr()


def test_a_damaged_shard_is_refused_naming_it(tmp_path):
    x, y = torch.randn(20, 4), torch.arange(20) % 2
    store = feature_shards(tmp_path / "s", x, y, world=2)
    victim = store.folder / store.index["shards"][1]["features"]["file"]
    raw = bytearray(victim.read_bytes())
    raw[-3] ^= 0x10
    victim.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=f"{victim.name}: its sha256 does not match"):
        FeatureShards(store.folder)
    victim.write_bytes(bytes(raw[:-8]))
    with pytest.raises(ValueError, match="missing or not"):
        FeatureShards(store.folder)


def test_extraction_keeps_the_shards_a_killed_run_finished(tmp_path):
    """A rerun after a crash skips the shard a rank had finished (its model is not even called)."""
    x, y = torch.randn(10, 3), torch.arange(10) % 2
    write_feature_shards(tmp_path / "f", torch.nn.Identity(), RowsDataset(x, y), batch_size=4, workers=0)
    (tmp_path / "f" / "index.json").unlink()  # killed after the shard, before the index

    class Boom(torch.nn.Module):
        def forward(self, x):
            raise AssertionError("the finished shard was extracted again")

    write_feature_shards(tmp_path / "f", Boom(), RowsDataset(x, y), batch_size=4, workers=0)
    assert torch.equal(FeatureShards(tmp_path / "f").tensor(), x)


def test_no_feature_is_pickled_to_every_rank():
    for path in ("wssl_zoo/evaluation.py", "eval/features.py", "eval/knn.py", "eval/linear.py"):
        assert "all_gather_object" not in (REPO_ROOT / path).read_text(), path


@pytest.mark.slow
@pytest.mark.gloo
def test_torchrun_extraction_gathers_the_same_features_as_one_process(colour_data, tmp_path):
    """2 processes = 1 process for feature extraction: two gloo processes each write the shard of their
    block of rows to the cache, and every rank that asks for the whole matrix reads the same features,
    in order, as one process extracts (torchrun's environment from tests/warm.py)."""
    from eval.features import cached_features
    from wssl_zoo.weights import resolve

    import warm

    script = tmp_path / "ddp.py"
    script.write_text(
        "import sys, torch, torch.distributed as dist\n"
        "dist.init_process_group('gloo')\n"
        "from eval.features import cached_features\n"
        "from wssl_zoo.weights import resolve\n"
        "w = resolve('random:resnet18:imagenet:32')\n"
        "x, y, _ = cached_features(w, w.build(), 'imagefolder', sys.argv[1], 'train', torch.device('cpu'), sys.argv[2],"
        " workers=0, progress=False)\n"
        "torch.save((x, y), f'{sys.argv[3]}.{dist.get_rank()}')\n"
        "dist.destroy_process_group()\n")
    repo = Path(__file__).resolve().parent.parent
    run = warm.torchrun(2, [str(script), str(colour_data), str(tmp_path / "c"), str(tmp_path / "out")], cwd=repo,
                        timeout=300, env={**__import__("os").environ, "PYTHONPATH": str(repo)})
    assert run.returncode == 0, run.stderr[-2000:]
    w = resolve("random:resnet18:imagenet:32")
    x, y, _ = cached_features(w, w.build(), "imagefolder", str(colour_data), "train",
                              torch.device("cpu"), str(tmp_path / "single"), workers=0, progress=False)
    for rank in (0, 1):
        xr, yr = torch.load(tmp_path / f"out.{rank}")
        assert torch.equal(yr, y) and torch.allclose(xr, x, atol=1e-6)
    (index,) = (tmp_path / "c").glob("*/index.json")
    assert [(s["start"], s["stop"]) for s in json.loads(index.read_text())["shards"]] == [(0, 12), (12, 24)]


@pytest.mark.slow
@pytest.mark.gloo
def test_in_memory_extraction_of_the_monitor_gives_every_rank_the_matrix_of_one_process(tmp_path):
    """extract_features (the pretraining monitor's few thousand images) under 2 gloo processes: each rank
    extracts its block (11 of 21 rows, then 10), the blocks are all-gathered as tensors, every rank
    holds one process's matrix in order."""
    import warm

    script = tmp_path / "x.py"
    script.write_text(
        "import sys, torch, torch.distributed as dist\n"
        "from torch.utils.data import TensorDataset\n"
        "from wssl_zoo.evaluation import extract_features\n"
        "dist.init_process_group('gloo')\n"
        "x = torch.arange(21 * 3, dtype=torch.float32).view(21, 3)\n"
        "torch.manual_seed(0)\n"
        "feats, labels = extract_features(torch.nn.Linear(3, 4), TensorDataset(x, torch.arange(21)), batch_size=4,"
        " workers=0)\n"
        "torch.save((feats, labels), f'{sys.argv[1]}.{dist.get_rank()}')\n"
        "dist.destroy_process_group()\n")
    run = warm.torchrun(2, [str(script), str(tmp_path / "out")], cwd=REPO_ROOT, timeout=300,
                        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    torch.manual_seed(0)  # the Linear(3, 4) every rank built
    with torch.no_grad():
        one = torch.nn.Linear(3, 4)(torch.arange(21 * 3, dtype=torch.float32).view(21, 3))
    for rank in (0, 1):
        feats, labels = torch.load(tmp_path / f"out.{rank}")
        assert labels.tolist() == list(range(21)) and torch.allclose(feats, one, rtol=0, atol=1e-5)


def test_same_inputs_hit_and_changed_weights_at_the_same_path_miss(setup):
    data, model, cache = setup
    x1, _, m1 = _features(model, data, cache)
    x2, _, m2 = _features(model, data, cache)
    assert (m1["cache_hit"], m2["cache_hit"]) == (False, True) and torch.equal(x1, x2)
    _save(model, seed=1)  # other weights, same folder
    x3, _, m3 = _features(model, data, cache)
    assert m3["cache_hit"] is False and m3["cache_key"] != m1["cache_key"] and not torch.equal(x3, x1)


def test_changed_transform_misses(setup):
    data, model, cache = setup
    _, _, m1 = _features(model, data, cache)
    _save(model, seed=0, img_size=24)  # same weights, another eval resolution: another transform
    _, _, m2 = _features(model, data, cache)
    assert m1["transform"] != m2["transform"] and m2["cache_hit"] is False


def test_changed_data_misses(setup, tmp_path):
    data, model, cache = setup
    _, _, m1 = _features(model, data, cache)
    other = tmp_path / "other"
    shutil.copytree(data, other)
    _, _, same = _features(model, other, cache)
    assert same["cache_hit"] is True  # the same images elsewhere: the same features
    (other / "train" / "c1" / "0.png").unlink()
    x, _, m2 = _features(model, other, cache)
    assert m2["cache_hit"] is False and len(x) == 7
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(other / "train" / "c1" / "0.png")  # another image
    _, _, m3 = _features(model, other, cache)
    assert m3["cache_hit"] is False and m3["fingerprint"] != m1["fingerprint"]


@pytest.mark.parametrize("damage", ["truncated", "bit flip (still parses)", "garbage"])
def test_a_damaged_entry_is_recomputed_with_a_warning(setup, damage):
    data, model, cache = setup
    x1, y1, m1 = _features(model, data, cache)
    path = Path(m1["cache_file"])
    raw = bytearray(path.read_bytes())
    if damage == "truncated":
        raw = raw[: len(raw) - 40]
    elif damage == "garbage":
        raw = bytearray(b"\x00not safetensors")
    else:
        raw[-5] ^= 0x40  # inside the tensor bytes: the file still parses
    path.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match=r"damaged feature cache entry .*recomputing"):
        x2, y2, m2 = _features(model, data, cache)
    assert m2["cache_hit"] is False and torch.equal(x2, x1) and torch.equal(y2, y1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rewritten entry is sound again
        assert _features(model, data, cache)[2]["cache_hit"] is True
