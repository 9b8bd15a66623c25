"""The feature cache (eval/features.py) misses whenever what the features depend on changes (the
weights at the same path, the transform, the data) and recomputes a damaged entry with a warning,
so that a stale entry can never report another model's accuracy."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import wssl_zoo
from eval import features as F
from wssl_zoo.modelio import save_model_dir
from wssl_zoo.weights import resolve

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
    return F.cached_features(weights, weights.build(), "imagefolder", str(data), "train", CPU, str(cache),
                             batch_size=4, workers=0, progress=False)


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
