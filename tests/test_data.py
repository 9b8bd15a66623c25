"""Datasets and view transforms."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from wssl_zoo.data.datasets import ImageFolderDataset, balanced_subset, build_dataset, read_idx, scan_images
from wssl_zoo.data.transforms import SeededViews, build_view_transform, derive_seed, eval_transform


def _folder(root: Path, per_class=4) -> Path:
    for c in ("cat", "dog"):
        (root / "train" / c).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (20, 20), (i * 40, 100, 50)).save(root / "train" / c / f"{i}.JPG")
    return root


def test_layout_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolderDataset(tmp_path / "nope")
    (tmp_path / "a").mkdir()
    with pytest.raises(FileNotFoundError, match=r"a/train does not exist: expected the ImageNet layout"):
        ImageFolderDataset(tmp_path / "a")
    root = _folder(tmp_path / "b")
    (root / "train" / "empty").mkdir()
    with pytest.raises(ValueError, match=r"class folder .*empty holds no images"):
        ImageFolderDataset(root)


def test_grayscale_cmyk_palette_load_as_rgb_and_bad_files_are_skipped(tmp_path):
    root = _folder(tmp_path)
    Image.new("L", (20, 20), 7).save(root / "train" / "cat" / "g.png")
    Image.new("CMYK", (20, 20), (1, 2, 3, 4)).save(root / "train" / "cat" / "k.jpg")
    Image.new("P", (20, 20)).save(root / "train" / "dog" / "p.png")
    (root / "train" / "dog" / "zz_bad.jpg").write_bytes(b"\xff\xd8garbage")
    ds = ImageFolderDataset(root)
    for i in range(len(ds)):
        path = ds.samples[i][0]
        if path.endswith("zz_bad.jpg"):
            with pytest.warns(UserWarning, match="zz_bad.jpg"):
                img, _ = ds[i]
        else:
            img, _ = ds[i]
        assert img.mode == "RGB"
    assert any(p.endswith("zz_bad.jpg") for p in ds.bad_files)
    assert [Path(p).name for p in scan_images(ds, progress=False)] == ["zz_bad.jpg"]


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">I", 2051 if array.ndim == 3 else 2049) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def test_idx_reader_and_fashion_mnist_layout(tmp_path):
    x = np.arange(2 * 28 * 28).reshape(2, 28, 28) % 256
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", x)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.array([3, 9]))
    assert np.array_equal(read_idx(tmp_path / "train-images-idx3-ubyte.gz"), x)
    ds = build_dataset("fashion_mnist", str(tmp_path), "train")
    img, label = ds[1]
    assert img.size == (28, 28) and img.mode == "RGB" and label == 9 and ds.targets == [3, 9]
    (tmp_path / "bad.gz").write_bytes(gzip.compress(b"\x00\x00\x09\x99" + b"\x00" * 8))
    with pytest.raises(ValueError, match="magic number"):
        read_idx(tmp_path / "bad.gz")
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        build_dataset("fashion_mnist", str(tmp_path / "none"), "train")


def test_real_fashion_mnist_when_installed():
    if not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    assert len(build_dataset("fashion_mnist", None, "train")) == 60000
    assert len(build_dataset("fashion_mnist", None, "test")) == 10000


def test_views_per_method_and_multi_crop_sizes():
    img = Image.new("RGB", (64, 64), (10, 20, 30))
    assert [v.shape for v in build_view_transform("wmse", "cifar10", 32, 4)(img)] == [(3, 32, 32)] * 4
    assert len(build_view_transform("cwrgp", "imagenet", 64, 4)(img)) == 4
    sizes = [v.shape[-1] for v in build_view_transform("intl", "imagenet", 224, 6, multi_crop=True)(img)]
    assert sizes == [224, 224, 192, 160, 128, 96]
    assert eval_transform("cifar10", 32)(img).shape == (3, 32, 32)
    with pytest.raises(ValueError, match="unknown method 'byol'"):
        build_view_transform("byol", "cifar10", 32, 2)


def test_seeded_views_are_deterministic_across_workers_and_epochs(tmp_path):
    ds = ImageFolderDataset(_folder(tmp_path, per_class=6))
    views = SeededViews(ds, build_view_transform("wmse", "cifar10", 16, 2), seed=3)
    a = torch.stack(views[2][0])
    torch.manual_seed(123)  # the caller's generator does not matter...
    b = torch.stack(views[2][0])
    assert torch.equal(a, b)
    state = torch.random.get_rng_state()
    views[1]
    assert torch.equal(state, torch.random.get_rng_state())  # ...and is not touched
    views.set_epoch(1)
    assert not torch.equal(torch.stack(views[2][0]), a)
    views.set_epoch(0)
    batches = []
    for workers in (0, 2):
        loader = DataLoader(views, batch_size=4, num_workers=workers)
        batches.append(torch.cat([torch.cat(v) for v, _ in loader]))
    assert torch.equal(batches[0], batches[1])
    assert derive_seed(1, 2, 3) == derive_seed(1, 2, 3) != derive_seed(1, 2, 4)


def test_balanced_subset():
    idx = balanced_subset([0, 0, 0, 1, 1, 2, -1], 2, seed=0)
    assert len(idx) == 5 and 6 not in idx and idx == sorted(idx)


def test_gpu_side_batch_augmentation_is_batched_and_deterministic():
    from wssl_zoo.data.gpu_augment import BatchViewAugment

    aug = BatchViewAugment(24, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    a = aug(images, torch.Generator().manual_seed(1))
    b = aug(images, torch.Generator().manual_seed(1))
    c = aug(images, torch.Generator().manual_seed(2))
    assert a.shape == (8, 3, 24, 24) and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= (0 - 0.5) / 0.25 - 1e-5 and a.max() <= (1 - 0.5) / 0.25 + 1e-5
    flat = torch.full((2, 3, 32, 32), 128, dtype=torch.uint8)  # a constant image stays constant
    out = BatchViewAugment(16, (0, 0, 0), (1, 1, 1), jitter_p=0.0, gray_p=0.0)(flat, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, torch.full_like(out, 128 / 255))
