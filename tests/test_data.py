"""Datasets, multi-view transforms and seeding (tiny generated images); the device views are in
test_device_views.py."""

from __future__ import annotations

import gzip
import io
import random
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from wssl_zoo import catalogue
from wssl_zoo.data.datasets import (
    BadImageWarning,
    ImageFolderDataset,
    balanced_subset,
    build_dataset,
    dataset_stats,
    read_idx,
    scan_images,
)
from wssl_zoo.data.transforms import (
    MultiViewTransform,
    RandomGaussianBlur,
    SeededViews,
    Solarize,
    build_view_transform,
    derive_seed,
    eval_transform,
)


def _save(path: Path, mode="RGB", size=(20, 20), color=(200, 100, 50), fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, format=fmt)
    return path


def _folder(root: Path, per_class=4, split="train") -> Path:
    for c, cls in enumerate(("dog", "cat")):
        for i in range(per_class):
            _save(root / split / cls / f"{i}.jpg", color=(i * 40, 100 * c, 50))
    return root


# ---------------------------------------------------------------------------- image folders


def test_layout_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope does not exist .*ImageFolder layout .*nope/train/<class>"):
        ImageFolderDataset(tmp_path / "nope")
    (tmp_path / "a" / "val").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"split folder .*a/train does not exist.*present in .*\['val'\]"):
        ImageFolderDataset(tmp_path / "a")
    (tmp_path / "flat" / "train").mkdir(parents=True)
    _save(tmp_path / "flat" / "train" / "x.jpg")
    with pytest.raises(ValueError, match=r"flat/train holds no class folders"):
        ImageFolderDataset(tmp_path / "flat")
    root = _folder(tmp_path / "b")
    (root / "train" / "empty").mkdir()
    (root / "train" / "empty" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match=r"class folder .*b/train/empty holds no images"):
        ImageFolderDataset(root)


def test_listing_classes_extensions_nesting_and_hidden_entries(tmp_path):
    root = _folder(tmp_path)
    _save(root / "train" / "cat" / "UPPER.JPEG")
    _save(root / "train" / "cat" / "deep" / "images" / "n.PNG")  # Tiny-ImageNet's train/<wnid>/images/
    _save(root / "train" / "cat" / ".hidden.jpg")
    _save(root / "train" / ".ipynb_checkpoints" / "x.jpg")
    (root / "train" / "cat" / "labels.txt").write_text("x")
    ds = ImageFolderDataset(root)
    assert ds.classes == ["cat", "dog"]  # sorted, hidden folder ignored
    names = [Path(p).name for p, _ in ds.samples]
    assert "UPPER.JPEG" in names and "n.PNG" in names and ".hidden.jpg" not in names and "labels.txt" not in names
    assert len(ds) == 4 + 4 + 2 and ds.targets == [0] * 6 + [1] * 4
    img, target = ds[-1]
    assert img.mode == "RGB" and target == 1
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_tiny_imagenet_val_annotations(tmp_path):
    val = tmp_path / "val"
    _save(val / "images" / "val_0.JPEG")
    _save(val / "images" / "val_1.JPEG")
    (val / "val_annotations.txt").write_text("val_0.JPEG\tn02\t0\t0\t10\t10\nval_1.JPEG\tn01\t0\t0\t10\t10\n")
    ds = build_dataset("tiny_imagenet", str(tmp_path), "val")
    assert ds.classes == ["n01", "n02"] and ds.targets == [1, 0]


def test_grayscale_cmyk_palette_rgba_load_as_rgb(tmp_path):
    folder = tmp_path / "train" / "c"
    _save(folder / "grey.png", "L", color=77)
    _save(folder / "grey.jpg", "L", color=77)
    _save(folder / "cmyk.jpg", "CMYK", color=(10, 20, 30, 40))
    _save(folder / "palette.gif", "P", color=3)
    _save(folder / "rgba.png", "RGBA", color=(1, 2, 3, 128))
    _save(folder / "sixteen.tif", "I;16", color=300)
    assert Image.open(folder / "cmyk.jpg").mode == "CMYK"
    ds = ImageFolderDataset(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for i in range(len(ds)):
            img, _ = ds[i]
            assert img.mode == "RGB" and img.size == (20, 20)
            assert np.asarray(img).shape == (20, 20, 3)
    grey = np.asarray(ds[ds.samples.index((str(folder / "grey.png"), 0))][0])
    assert (grey == 77).all()


def test_corrupt_and_truncated_files_warn_once_and_are_replaced(tmp_path):
    root = _folder(tmp_path, per_class=3)
    folder = root / "train" / "cat"
    (folder / "1.jpg").write_bytes(b"\xff\xd8 this is not a JPEG")
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    (folder / "2.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])  # truncated
    ds = ImageFolderDataset(root)
    paths = [p for p, _ in ds.samples]
    i_corrupt, i_trunc = paths.index(str(folder / "1.jpg")), paths.index(str(folder / "2.jpg"))
    next_good = ds[i_trunc + 1]  # the sample after both bad files (dog/0.jpg)
    with pytest.warns(BadImageWarning) as record:
        img, target = ds[i_corrupt]
    # 1.jpg is bad, 2.jpg is bad too: one warning each, and the substitute is the next index that decodes
    assert sorted(Path(str(w.message).split()[3]).name for w in record) == ["1.jpg", "2.jpg"]
    assert np.array_equal(np.asarray(img), np.asarray(next_good[0])) and target == next_good[1]
    assert set(ds.bad_files) == {str(folder / "1.jpg"), str(folder / "2.jpg")}
    assert "truncated" in ds.bad_files[str(folder / "2.jpg")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # known bad files are skipped silently
        assert np.array_equal(np.asarray(ds[i_trunc][0]), np.asarray(next_good[0]))
    fresh = ImageFolderDataset(root)
    for workers in (0, 2):
        assert [Path(p).name for p in scan_images(fresh, workers=workers, progress=False)] == ["1.jpg", "2.jpg"]
    assert set(fresh.bad_files) == set(ds.bad_files)


def test_all_files_unreadable_is_a_clear_error(tmp_path):
    (tmp_path / "train" / "c").mkdir(parents=True)
    (tmp_path / "train" / "c" / "a.png").write_bytes(b"junk")
    ds = ImageFolderDataset(tmp_path)
    with pytest.warns(BadImageWarning), pytest.raises(RuntimeError, match=r"none of the 1 images .*train"):
        ds[0]


# ---------------------------------------------------------------------------- idx / Fashion-MNIST / torchvision


def _write_idx(path: Path, array: np.ndarray, magic: int | None = None, gz=True) -> None:
    magic = magic or (2051 if array.ndim == 3 else 2049)
    payload = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    payload += array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(path, "wb") as fh:
            fh.write(payload)
    else:
        path.write_bytes(payload)


def test_idx_reader_and_fashion_mnist_layout(tmp_path):
    x = (np.arange(3 * 28 * 28).reshape(3, 28, 28) % 256).astype(np.uint8)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", x)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.array([3, 9, 0]))
    _write_idx(tmp_path / "raw-idx1-ubyte", np.array([4, 5]), gz=False)
    assert np.array_equal(read_idx(tmp_path / "train-images-idx3-ubyte.gz"), x)
    assert read_idx(tmp_path / "raw-idx1-ubyte").tolist() == [4, 5]
    ds = build_dataset("fashion_mnist", str(tmp_path), "train")
    img, label = ds[1]
    assert img.size == (28, 28) and img.mode == "RGB" and label == 9 and ds.targets == [3, 9, 0]
    rgb = np.asarray(img)
    assert np.array_equal(rgb[..., 0], x[1]) and np.array_equal(rgb[..., 0], rgb[..., 2])
    assert ds.classes[9] == "Ankle boot"

    _write_idx(tmp_path / "magic.gz", np.zeros((2, 2, 2)), magic=2052)
    with pytest.raises(ValueError, match=r"magic\.gz: magic number 2052 is neither"):
        read_idx(tmp_path / "magic.gz")
    with gzip.open(tmp_path / "short.gz", "wb") as fh:
        fh.write(struct.pack(">IIII", 2051, 5, 28, 28) + bytes(28 * 28))
    with pytest.raises(ValueError, match=r"short\.gz: the header announces shape \(5, 28, 28\)"):
        read_idx(tmp_path / "short.gz")
    (tmp_path / "notgz.gz").write_bytes(b"plain bytes")
    with pytest.raises(ValueError, match=r"notgz\.gz: cannot be read"):
        read_idx(tmp_path / "notgz.gz")
    with pytest.raises(FileNotFoundError, match=r"apt-get install dataset-fashion-mnist"):
        build_dataset("fashion_mnist", str(tmp_path / "none"), "train")
    with pytest.raises(ValueError, match=r"splits 'train' and 'test'"):
        build_dataset("fashion_mnist", str(tmp_path), "val")


def test_real_fashion_mnist_when_installed():
    if not (Path(catalogue.get("fashion_mnist").default_root) / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
    train, test = build_dataset("fashion_mnist", None, "train"), build_dataset("fashion_mnist", None, "test")
    assert (len(train), len(test)) == (60000, 10000)
    assert sorted(set(test.targets)) == list(range(10)) and test.targets.count(0) == 1000
    mean, std = dataset_stats("fashion_mnist")
    pixels = train.images[:10000].astype(np.float64) / 255
    assert abs(pixels.mean() - mean[0]) < 0.01 and abs(pixels.std() - std[0]) < 0.01


def test_torchvision_formats_missing_files_say_how_to_get_them(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cifar-10-batches-py does not exist.*download=True"):
        build_dataset("cifar10", str(tmp_path), "train")
    (tmp_path / "stl10_binary").mkdir()
    with pytest.raises(FileNotFoundError, match=r"stl10_binary lacks train_X\.bin.*STL10\(ROOT, download=True\)"):
        build_dataset("stl10", str(tmp_path), "train+unlabeled")
    with pytest.raises(ValueError, match=r"cifar100 has the splits train, test"):
        build_dataset("cifar100", str(tmp_path), "val")
    with pytest.raises(ValueError, match=r"unknown dataset 'mnist'; choose one of imagefolder, cifar10"):
        build_dataset("mnist", str(tmp_path), "train")
    root = _folder(tmp_path / "jpeg_cifar")  # CIFAR exported as JPEG folders is read as an ImageFolder
    assert isinstance(build_dataset("cifar10", str(root), "train"), ImageFolderDataset)


def test_dataset_stats_follow_the_authors():
    assert dataset_stats("cifar10", "wmse") == ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
    assert dataset_stats("cifar10", "cwrgp") == dataset_stats("cifar10", "wmse")
    assert dataset_stats("cifar10", "intl") == ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    assert dataset_stats("cifar100", "intl")[1] == (0.2673, 0.2564, 0.2762)
    assert dataset_stats("stl10", "wmse") == ((0.43, 0.42, 0.39), (0.27, 0.26, 0.27))
    assert dataset_stats("imagefolder") == dataset_stats("imagenet") == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    with pytest.raises(ValueError, match="unknown method 'byol'"):
        dataset_stats("cifar10", "byol")


def test_balanced_subset():
    targets = [0, 0, 0, 1, 1, 2, -1, 2, 2]
    idx = balanced_subset(targets, 2, seed=0)
    assert idx == sorted(idx) and 6 not in idx and len(idx) == 6
    assert sorted(targets[i] for i in idx) == [0, 0, 1, 1, 2, 2]
    assert balanced_subset(targets, 2, seed=0) == idx
    assert {tuple(balanced_subset(targets, 1, seed=s)) for s in range(20)} != {tuple(balanced_subset(targets, 1, seed=0))}


# ---------------------------------------------------------------------------- transforms


def _steps(compose: T.Compose, kind) -> list:
    """The transforms of type ``kind`` in a Compose, looking inside RandomApply."""
    found = []
    for t in compose.transforms:
        inner = t.transforms if isinstance(t, T.RandomApply) else [t]
        found += [(t, x) for x in inner if isinstance(x, kind)]
    return found


def test_wmse_and_cwrgp_views_have_the_authors_parameters():
    small = build_view_transform("wmse", "cifar10", 32, 4)
    assert len(small) == 4 and small.sizes == [32] * 4
    view = small.transforms[0]
    names = [type(t).__name__ for t in view.transforms]
    assert names == ["RandomApply", "RandomGrayscale", "RandomResizedCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    (jitter_apply, jitter), = _steps(view, T.ColorJitter)
    assert jitter_apply.p == 0.8 and jitter.brightness == pytest.approx((0.6, 1.4))
    assert jitter.saturation == pytest.approx((0.6, 1.4)) and jitter.hue == pytest.approx((-0.1, 0.1))
    assert view.transforms[1].p == 0.1
    crop = view.transforms[2]
    assert crop.scale == (0.2, 1.0) and crop.ratio == (0.75, 4 / 3) and crop.interpolation == T.InterpolationMode.BICUBIC
    assert view.transforms[-1].std == (0.2023, 0.1994, 0.2010)

    big = build_view_transform("wmse", "imagenet100", 224, 2).transforms[0]
    big_jitter = _steps(big, T.ColorJitter)[0][1]
    assert big_jitter.brightness == pytest.approx((0.2, 1.8)) and big_jitter.hue == pytest.approx((-0.2, 0.2))
    assert big.transforms[1].p == 0.2 and big.transforms[2].scale == (0.08, 1.0)
    (blur_apply, _), = _steps(big, RandomGaussianBlur)
    assert blur_apply.p == 0.5

    assert build_view_transform("cwrgp", "stl10", 64, 2).transforms[0].transforms[2].scale == (0.2, 1.0)
    in100 = build_view_transform("cwrgp", "imagenet100", 224, 2).transforms[0]  # base/datasets/in100.py
    assert in100.transforms[1].p == 0.1 and in100.transforms[2].scale == (0.2, 1.0) and _steps(in100, RandomGaussianBlur)
    moco = build_view_transform("cwrgp", "imagenet", 224, 4).transforms[0]  # ImageNet/train.py
    assert type(moco.transforms[0]).__name__ == "RandomResizedCrop" and moco.transforms[0].scale == (0.2, 1.0)
    assert moco.transforms[0].interpolation == T.InterpolationMode.BILINEAR
    assert _steps(moco, T.RandomGrayscale)[0][1].p == 0.2 and _steps(moco, RandomGaussianBlur)[0][0].p == 0.5


def test_intl_views_pair_cifar_and_multi_crop():
    pair = build_view_transform("intl", "imagenet", 224, 2)
    blur_p = [_steps(v, RandomGaussianBlur)[0][0].p for v in pair.transforms]
    solar_p = [[a.p for a, _ in _steps(v, Solarize)] for v in pair.transforms]
    assert blur_p == [1.0, 0.1] and solar_p == [[], [0.2]]
    first = pair.transforms[0]
    assert first.transforms[0].scale == (0.08, 1.0) and first.transforms[0].interpolation == T.InterpolationMode.BICUBIC
    jitter = _steps(first, T.ColorJitter)[0][1]
    assert jitter.saturation == pytest.approx((0.8, 1.2)) and jitter.hue == pytest.approx((-0.1, 0.1))

    cifar = build_view_transform("intl", "cifar100", 32, 2)
    assert [_steps(v, RandomGaussianBlur) for v in cifar.transforms] == [[], []]
    assert [[a.p for a, _ in _steps(v, Solarize)] for v in cifar.transforms] == [[], [0.2]]
    assert cifar.mean == (0.5071, 0.4865, 0.4409)

    img = Image.new("RGB", (48, 40), (10, 200, 30))
    multi = build_view_transform("intl", "imagenet", 224, 6, multi_crop=True)
    assert [v.shape for v in multi(img)] == [(3, s, s) for s in (224, 224, 192, 160, 128, 96)]
    scales = [v.transforms[0].scale for v in multi.transforms]
    assert scales == [(0.2, 1.0), (0.2, 1.0), (0.171, 0.857), (0.143, 0.714), (0.114, 0.571), (0.086, 0.429)]
    assert all(_steps(v, RandomGaussianBlur)[0][0].p == 0.5 and _steps(v, Solarize)[0][0].p == 0.1 for v in multi.transforms)
    assert build_view_transform("intl", "imagenet", 112, 6, multi_crop=True).sizes == [112, 112, 96, 80, 64, 48]
    with pytest.raises(ValueError, match="makes 6 crops"):
        build_view_transform("intl", "imagenet", 224, 2, multi_crop=True)
    assert build_view_transform("intl", "imagefolder", 64, 6, multi_crop=True).sizes == [64, 64, 55, 46, 37, 27]
    with pytest.raises(ValueError, match="ImageNet-style data"):
        build_view_transform("intl", "cifar10", 32, 6, multi_crop=True)


def test_every_method_makes_the_requested_views():
    img = Image.new("RGB", (40, 36), (120, 60, 200))
    for method in ("wmse", "cwrgp", "intl"):
        for dataset, size in (("cifar10", 32), ("stl10", 64), ("tiny_imagenet", 64), ("fashion_mnist", 32),
                              ("imagefolder", 48), ("imagenet100", 128), ("imagenet", 128)):
            for views in (2, 4):
                out = build_view_transform(method, dataset, size, views)(img)
                assert [v.shape for v in out] == [(3, size, size)] * views, (method, dataset)
                assert all(v.dtype == torch.float32 for v in out)
    with pytest.raises(ValueError, match=r"unknown method 'byol'; choose one of wmse, cwrgp, intl"):
        build_view_transform("byol", "cifar10", 32, 2)
    with pytest.raises(ValueError, match=r"unknown dataset 'svhn' .* choose one of cifar10, cifar100"):
        build_view_transform("wmse", "svhn", 32, 2)
    with pytest.raises(ValueError, match="only defined for intl"):
        build_view_transform("wmse", "imagenet", 224, 6, multi_crop=True)
    with pytest.raises(ValueError, match="num_views must be at least 1"):
        build_view_transform("cwrgp", "cifar10", 32, 0)
    assert isinstance(build_view_transform("wmse", "tiny_in", 64, 2), MultiViewTransform)  # the authors' name


def test_eval_transform_sizes_and_values():
    grey = Image.new("RGB", (32, 32), (128, 128, 128))
    out = eval_transform("cifar10", 32, method="wmse")(grey)
    mean, std = dataset_stats("cifar10", "wmse")
    expected = torch.tensor([(128 / 255 - m) / s for m, s in zip(mean, std)]).view(3, 1, 1).expand(3, 32, 32)
    torch.testing.assert_close(out, expected)
    rng = np.random.default_rng(0)
    cifar_img = Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    torch.testing.assert_close(eval_transform("cifar10", 32)(cifar_img),
                               T.Normalize(*dataset_stats("cifar10"))(TF.to_tensor(cifar_img)))  # untouched pixels
    assert eval_transform("fashion_mnist", 32)(Image.new("RGB", (28, 28))).shape == (3, 32, 32)
    assert eval_transform("imagenet", 224)(Image.new("RGB", (400, 300))).shape == (3, 224, 224)
    assert eval_transform("stl10", 64)(Image.new("RGB", (96, 96))).shape == (3, 64, 64)
    assert eval_transform("imagefolder", 32)(Image.new("RGB", (50, 70))).shape == (3, 32, 32)
    resize = eval_transform("imagenet", 224).transforms[0]
    assert resize.size == 256


# ---------------------------------------------------------------------------- seeding


@pytest.mark.slow
def test_derive_seed_is_the_same_in_a_fresh_process_with_another_str_hash_salt():
    # resumed runs and data workers must see the same seeds: the same value in a fresh process whose
    # str hashing is salted differently (so it is not hash()); slow: the fresh process imports torch
    import os
    import subprocess
    import sys

    code = "import sys; from wssl_zoo.data.transforms import derive_seed; print(derive_seed(0, 1, 2), derive_seed(7, 3))"
    salt = "2" if os.environ.get("PYTHONHASHSEED") == "1" else "1"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONHASHSEED=salt)).stdout.split()
    assert out == [str(derive_seed(0, 1, 2)), str(derive_seed(7, 3))]


def test_derive_seed_is_stable():
    # 63 bits, no collisions on a grid, integer-like inputs alike
    grid = {derive_seed(s, e, i) for s in range(4) for e in range(20) for i in range(50)}
    assert len(grid) == 4 * 20 * 50 and all(0 <= v < 2**63 for v in grid)
    assert derive_seed(1, 23) != derive_seed(12, 3)  # the separator matters
    assert derive_seed(np.int64(0), 1, 2) == derive_seed(0, 1, 2) != derive_seed(0, 2, 1)
    assert 0 <= derive_seed(2**70, -5) < 2**63
    with pytest.raises(TypeError):
        derive_seed(1.5)


def test_seeded_views_are_deterministic_across_workers_epochs_and_callers(tmp_path):
    ds = ImageFolderDataset(_folder(tmp_path, per_class=6))
    views = SeededViews(ds, build_view_transform("intl", "cifar10", 16, 2), seed=3)
    first = torch.stack(views[2][0])
    torch.manual_seed(123)  # the caller's generators do not matter...
    random.seed(99)
    py_before, torch_before = random.getstate(), torch.random.get_rng_state()
    again = torch.stack(views[2][0])
    assert torch.equal(first, again)
    assert random.getstate() == py_before and torch.equal(torch.random.get_rng_state(), torch_before)  # ...nor change
    assert not torch.equal(first[0], first[1])  # the two views differ
    assert not torch.equal(torch.stack(views[3][0]), first)
    views.set_epoch(1)
    assert not torch.equal(torch.stack(views[2][0]), first)
    assert not torch.equal(torch.stack(SeededViews(ds, views.transform, seed=4)[2][0]), first)
    views.set_epoch(0)
    batches = []
    for workers in (0, 2):
        loader = DataLoader(views, batch_size=4, num_workers=workers, shuffle=False)
        batches.append(torch.cat([torch.cat(v) for v, _ in loader]))
    assert torch.equal(batches[0], batches[1])
    order = list(range(len(views)))[::-1]  # the batch order does not change a sample's views
    loader = DataLoader(views, batch_size=5, sampler=order)
    got = torch.cat([torch.stack(v, dim=1) for v, _ in loader])  # (N, views, 3, 16, 16)
    assert torch.equal(got, torch.stack([torch.stack(views[i][0]) for i in order]))

