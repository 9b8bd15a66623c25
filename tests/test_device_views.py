"""The device views (wssl_zoo/data/device_views.py) against the PIL pipelines they replace, on real
JPEGs (COCO photos from coco-tiny, CIFAR-10's 32 px files): the parameter streams are the PIL
pipeline's numbers, every operation equals PIL's, whole views of every recipe equal the PIL path's,
a sample's views depend on (seed, epoch, index) only, and files the device cannot decode are
decoded on the host, counted and reported once."""

from __future__ import annotations

import io
import math
import random
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageFilter, ImageOps
from torch.utils.data import DataLoader
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from wssl_zoo.data import device_views as dv
from wssl_zoo.data.datasets import BadImageWarning, ImageFolderDataset
from wssl_zoo.data.transforms import SeededViews, build_view_transform, seeded
from wssl_zoo.pretrain.recipes import list_recipes

from builders import TINY, make_imagefolder
from conftest import cifar10_subset

# One entry per distinct view pipeline of `wssl-zoo pretrain --list-recipes`.
PIPELINES = sorted({(r.method, r.dataset, r.img_size, r.num_views, r.multi_crop) for r in list_recipes()})


def _pipeline_id(key) -> str:
    method, dataset, size, views, multi = key
    return f"{method}-{dataset}-{size}px-{views}{'mc' if multi else ''}"


def _transform(key):
    method, dataset, size, views, multi = key
    return build_view_transform(method, dataset, size, views, multi_crop=multi)


@pytest.fixture(scope="module")
def photos(shared_data_dir, tmp_path_factory) -> Path:
    """An ImageFolder of real photos (COCO): two at their own size (640 px wide), six re-encoded
    smaller (baseline JPEG, quality 90), so crops both shrink and enlarge and a batch mixes sizes."""
    archive = shared_data_dir / "coco-tiny.tar.gz"
    if not archive.is_file():
        pytest.skip(f"{archive} not found")
    folder = tmp_path_factory.mktemp("photos") / "train" / "photo"
    folder.mkdir(parents=True)
    widths = [None, None, 320, 256, 200, 160, 120, 96]
    with tarfile.open(archive, "r:gz") as tar:
        members = [m for m in tar if m.isfile() and m.name.endswith(".jpg")]
        for i, (member, width) in enumerate(zip(members, widths)):
            data = tar.extractfile(member).read()
            if width is None:
                (folder / f"{i}.jpg").write_bytes(data)
                continue
            img = Image.open(io.BytesIO(data)).convert("RGB")
            img.resize((width, round(width * img.height / img.width)), Image.BICUBIC).save(folder / f"{i}.jpg", quality=90)
    return folder.parent.parent


@pytest.fixture(scope="module")
def cifar(shared_data_dir, tmp_path_factory) -> Path:
    return cifar10_subset(shared_data_dir, tmp_path_factory.mktemp("cifar"), 1, 0)


@pytest.fixture(scope="module")
def native(photos, cifar, tmp_path_factory) -> dict[str, Path]:
    """Per dataset kind, real JPEGs at the size that data has on disk: CIFAR's own 32 px files,
    the photos made 96 x 96 (STL-10) and 64 x 64 (Tiny-ImageNet), and photos of 160-320 px
    (ImageNet-like, mixed sizes; the 640 px ones are used where fewer views are made)."""
    roots = {"cifar10": cifar, "cifar100": cifar}
    for name, side in (("stl10", 96), ("tiny_imagenet", 64)):
        folder = tmp_path_factory.mktemp(name) / "train" / "photo"
        folder.mkdir(parents=True)
        for i, path in enumerate(_files(photos)[2:7]):
            _pil(path).resize((side, side), Image.BICUBIC).save(folder / f"{i}.jpg", quality=90)
        roots[name] = folder.parent.parent
    folder = tmp_path_factory.mktemp("imagenet") / "train" / "photo"
    folder.mkdir(parents=True)
    for path in _files(photos)[2:6]:
        (folder / path.name).write_bytes(path.read_bytes())
    roots["imagenet"] = roots["imagenet100"] = folder.parent.parent
    return roots


def _pil(path) -> Image.Image:
    return Image.open(path).convert("RGB")


def _tensor(img: Image.Image) -> torch.Tensor:
    return TF.pil_to_tensor(img).float()[None]


def _files(root: Path) -> list[Path]:
    return sorted((root / "train").rglob("*.jpg"))


# ---------------------------------------------------------------------------- (1) parameter streams


def _record_pil_calls(monkeypatch) -> list[tuple]:
    """Spies (the real functions run) on every random step's effect in the PIL pipeline."""
    calls: list[tuple] = []

    def spy(name, real, keep):
        def wrapper(img, *args, **kwargs):
            calls.append((name, *keep(args)))
            return real(img, *args, **kwargs)
        monkeypatch.setattr(TF, name, wrapper)

    spy("resized_crop", TF.resized_crop, lambda a: tuple(a[:4]))
    spy("hflip", TF.hflip, lambda a: ())
    spy("rgb_to_grayscale", TF.rgb_to_grayscale, lambda a: ())
    for name in ("adjust_brightness", "adjust_contrast", "adjust_saturation", "adjust_hue"):
        spy(name, getattr(TF, name), lambda a: (a[0],))
    real_solarize = ImageOps.solarize
    monkeypatch.setattr(ImageOps, "solarize", lambda img, *a, **k: calls.append(("solarize",)) or real_solarize(img, *a, **k))

    class RecordingBlur(ImageFilter.GaussianBlur):
        def __init__(self, radius=2):
            calls.append(("blur", radius))
            super().__init__(radius)

    monkeypatch.setattr(ImageFilter, "GaussianBlur", RecordingBlur)
    return calls


def _calls_from_params(plan: dv.ViewPlan, params: torch.Tensor) -> list[tuple]:
    """The calls the PIL pipeline makes for these parameters, in its order."""
    names = ("adjust_brightness", "adjust_contrast", "adjust_saturation", "adjust_hue")
    calls: list[tuple] = []
    for view, row in zip(plan.views, params.tolist()):
        for step in view.draws:
            col = dv.COL
            if step.kind == "crop":
                calls.append(("resized_crop", *(int(v) for v in row[0:4])))
            elif step.kind in ("flip", "gray", "solarize") and row[col[step.kind]]:
                calls.append({"flip": ("hflip",), "gray": ("rgb_to_grayscale",), "solarize": ("solarize",)}[step.kind])
            elif step.kind == "blur" and row[col["blur"]]:
                calls.append(("blur", row[col["radius"]]))
            elif step.kind == "jitter" and row[col["jitter"]]:
                for slot in range(4):
                    comp = int(row[col["order0"] + slot])
                    if not math.isnan(row[col["brightness"] + comp]):
                        calls.append((names[comp], row[col["brightness"] + comp]))
    return calls


class _Images(torch.utils.data.Dataset):
    """PIL images of a few sizes (the stream depends on the size only): square small data, a
    landscape and a portrait photo, and a very wide one (the crop sampler's fallback)."""

    sizes = ((32, 32), (96, 96), (500, 375), (333, 500), (640, 60))

    def __len__(self):
        return len(self.sizes)

    def __getitem__(self, i):
        return Image.new("RGB", self.sizes[i], (90, 140, 60)), 0


@pytest.mark.parametrize("key", PIPELINES, ids=_pipeline_id)
def test_parameter_streams_equal_the_pil_pipelines(key, monkeypatch):
    """For every recipe: under the same (seed, epoch, index) the host part draws exactly the
    numbers the PIL pipeline uses (crop boxes, flips, jitter order and factors, grayscale, blur
    radius, solarisation), and leaves both generators where the PIL pipeline leaves them."""
    transform, images = _transform(key), _Images()
    host = dv.HostViews(images, transform, seed=11)
    pil = SeededViews(images, transform, seed=11)
    calls = _record_pil_calls(monkeypatch)
    for epoch in (0, 3):
        pil.set_epoch(epoch)
        for i in range(len(images)):
            calls.clear()
            pil[i]
            _, params, _ = host[(epoch, i)]
            assert calls == _calls_from_params(host.plan, params), (epoch, i)
            assert params.shape == (len(transform), dv.NUM_PARAMS)
    with seeded(5):  # the same number of draws from both generators
        transform(images[2][0])
        after_pil = (torch.default_generator.get_state(), random.getstate())
    with seeded(5):
        host.plan.draw(375, 500)
        after_host = (torch.default_generator.get_state(), random.getstate())
    assert torch.equal(after_pil[0], after_host[0]) and after_pil[1] == after_host[1]


def test_every_recipe_compiles_and_unknown_steps_are_refused():
    for key in PIPELINES:
        plan = dv.ViewPlan(_transform(key))
        assert len(plan) == key[3] and all(v.size in (key[2],) or key[4] for v in plan.views)
    multi = dv.ViewPlan(_transform(("intl", "imagenet", 224, 6, True)))
    assert multi.sizes == [224, 224, 192, 160, 128, 96]
    assert {v.interpolation for v in dv.ViewPlan(_transform(("cwrgp", "imagenet", 224, 4, False))).views} == {"bilinear"}
    assert {v.interpolation for v in multi.views} == {"bicubic"}
    wmse = dv.ViewPlan(_transform(("wmse", "cifar10", 32, 2, False))).views[0]
    assert wmse.before_crop == ("jitter", "gray") and wmse.after_crop == ()  # W-MSE colours the whole image first
    intl = dv.ViewPlan(_transform(("intl", "imagenet", 224, 2, False))).views
    assert intl[0].after_crop == ("jitter", "gray", "blur") and intl[1].after_crop == ("jitter", "gray", "blur", "solarize")
    norm = [T.ToTensor(), T.Normalize((0.5,) * 3, (0.5,) * 3)]
    with pytest.raises(ValueError, match="do not implement RandomRotation"):
        dv.ViewPlan(type("M", (), {"transforms": [T.Compose([T.RandomResizedCrop(8), T.RandomRotation(3), *norm])]})())
    with pytest.raises(ValueError, match="flip before the crop"):
        dv.ViewPlan(type("M", (), {"transforms": [T.Compose([T.RandomHorizontalFlip(), T.RandomResizedCrop(8), *norm])]})())


# ---------------------------------------------------------------------------- (2) each operation against PIL


def test_decoding_equals_pils(photos, cifar):
    from torchvision.io import ImageReadMode, decode_jpeg

    for path in _files(photos) + _files(cifar):
        data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            assert torch.equal(decode_jpeg(data, mode=ImageReadMode.RGB), TF.pil_to_tensor(_pil(path))), path


CROPS = [  # (top, left, height, width, size): shrink, enlarge, both, whole image, thin, square small data
    (10, 20, 300, 250, 224), (5, 7, 50, 60, 224), (3, 1, 200, 40, 96), (0, 0, None, None, 224), (30, 2, 400, 120, 160),
    (1, 2, 17, 29, 32), (0, 0, 96, 96, 64),
]


@pytest.mark.parametrize("kind", ["bicubic", "bilinear"])
def test_crop_resize_flip_equal_pils(photos, kind):
    """torchvision's ``resized_crop`` on PIL images (+ ``hflip``) with the authors' filters:
    BICUBIC in W-MSE (``interpolation=3``) and INTL, BILINEAR in CW-RGP's ImageNet view; crops
    that make Pillow 13 run either pass first."""
    mode = {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR}[kind]
    for path in _files(photos)[:3]:
        img = _pil(path)
        x = _tensor(img)
        for top, left, h, w, size in CROPS:
            h, w = min(h or img.height, img.height - top), min(w or img.width, img.width - left)
            for flip in (0.0, 1.0):
                params = torch.zeros(1, dv.NUM_PARAMS, dtype=torch.float64)
                params[0, :5] = torch.tensor([top, left, h, w, flip])
                ref = TF.resized_crop(img, top, left, h, w, [size, size], interpolation=mode)
                ref = TF.hflip(ref) if flip else ref
                got = dv.resized_crop(x, params, size, kind)
                assert torch.equal(got, _tensor(ref)), (path, top, left, h, w, size)


def test_colour_steps_equal_pils(photos, cifar):
    """ColorJitter's four PIL operations at the ends and inside their ranges (INTL's and W-MSE's
    ImageNet strengths), grayscale, solarisation, and the blur over its radius range."""
    paths = _files(photos)[2:5] + _files(cifar)[:3]
    for path in paths:
        img = _pil(path)
        x = _tensor(img)
        for f in (0.2, 0.6, 0.97, 1.0, 1.31, 1.8):
            factor = torch.tensor([f])
            assert torch.equal(dv.adjust_brightness(x, factor), _tensor(ImageEnhance.Brightness(img).enhance(f)))
            assert torch.equal(dv.adjust_contrast(x, factor), _tensor(ImageEnhance.Contrast(img).enhance(f)))
            assert torch.equal(dv.adjust_saturation(x, factor), _tensor(ImageEnhance.Color(img).enhance(f)))
        for h in (-0.5, -0.2, -0.07, 0.0, 0.03, 0.1, 0.2):
            assert torch.equal(dv.adjust_hue(x.clone(), torch.tensor([h])), _tensor(TF.adjust_hue(img, h))), (path, h)
        assert torch.equal(dv.grayscale(x), _tensor(TF.rgb_to_grayscale(img, 3)))
        assert torch.equal(dv.solarize(x), _tensor(ImageOps.solarize(img)))
        for radius in (0.1, 0.55, 1.2, 1.99):
            blurred = dv.gaussian_blur(x, np.array([radius]))
            assert torch.equal(blurred, _tensor(img.filter(ImageFilter.GaussianBlur(radius)))), (path, radius)


def test_contrast_of_a_padded_image_uses_its_own_pixels(photos):
    img = _pil(_files(photos)[5])
    x = _tensor(img)
    padded = torch.nn.functional.pad(x, (0, 7, 0, 5), value=255.0)
    valid = torch.tensor([[img.height, img.width]], dtype=torch.float64)
    got = dv.adjust_contrast(padded, torch.tensor([1.6]), valid)[..., :img.height, :img.width]
    assert torch.equal(got, _tensor(ImageEnhance.Contrast(img).enhance(1.6)))


# ---------------------------------------------------------------------------- (3) whole views of every recipe


def _both_paths(root: Path, key, count: int, seed: int = 3, epoch: int = 0):
    transform = _transform(key)
    dataset = ImageFolderDataset(root)
    pil = SeededViews(dataset, transform, seed)
    pil.set_epoch(epoch)
    host = dv.HostViews(dataset, transform, seed)
    indices = list(range(min(count, len(dataset))))
    batch, targets = dv.collate_views([host[(epoch, i)] for i in indices])
    views = dv.DeviceViews(host.plan, "cpu", chunk_pixels=1 << 20)(batch)
    reference = [torch.stack([pil[i][0][v] for i in indices]) for v in range(len(transform))]
    return views, reference, targets


@pytest.mark.parametrize("key", PIPELINES, ids=_pipeline_id)
def test_every_recipe_makes_the_pil_pipelines_views(native, key):
    """Same seed, same images: every view of every recipe equals the PIL path's, value for value
    (so the per-channel statistics of the augmented batch agree, within any sampling error), on
    real JPEGs at the data's size on disk; ImageNet batches mix image sizes (padded chunks)."""
    views, reference, _ = _both_paths(native[key[1]], key, 4)
    assert [v.shape for v in views] == [r.shape for r in reference]
    for got, want in zip(views, reference):
        assert got.dtype == torch.float32 and torch.equal(got, want)
        mean, std = want.mean(dim=(0, 2, 3)), want.std(dim=(0, 2, 3))
        error = std / math.sqrt(want[:, 0].numel())  # the standard error of a channel mean
        assert ((got.mean(dim=(0, 2, 3)) - mean).abs() <= 3 * error).all()
        assert ((got.std(dim=(0, 2, 3)) - std).abs() <= 3 * error).all()


def test_photos_at_their_own_size_through_the_loader_with_workers(photos):
    """CW-RGP's ImageNet views of the 640 px photos, through a DataLoader with two workers and
    ``collate_views``: the batch arrives in one piece and makes the PIL path's views."""
    key = ("cwrgp", "imagenet", 224, 4, False)
    transform, dataset = _transform(key), ImageFolderDataset(photos)
    host = dv.HostViews(dataset, transform, seed=0)
    loader = DataLoader(host, batch_size=2, sampler=[(1, 0), (1, 1)], num_workers=2, collate_fn=dv.collate_views)
    (batch, targets), = list(loader)
    assert isinstance(batch, dv.EncodedBatch) and batch.jpeg.numel() == sum(p.stat().st_size for p in _files(photos)[:2])
    views = dv.DeviceViews(host.plan, "cpu")(batch)
    pil = SeededViews(dataset, transform, 0)
    pil.set_epoch(1)
    for v, got in enumerate(views):
        assert torch.equal(got, torch.stack([pil[i][0][v] for i in range(2)]))
    assert targets.tolist() == [0, 0]


# ---------------------------------------------------------------------------- (4) resume exactness


def test_views_are_a_function_of_seed_epoch_and_index(cifar):
    key = ("intl", "cifar10", 32, 2, False)
    transform, dataset = _transform(key), ImageFolderDataset(cifar)
    host = dv.HostViews(dataset, transform, seed=7)
    keys = [(2, i) for i in range(6)]
    first = [host[k] for k in keys]
    torch.manual_seed(123)  # the caller's generators neither matter nor change
    state = torch.random.get_rng_state()
    again = [host[k] for k in reversed(keys)][::-1]
    assert torch.equal(torch.random.get_rng_state(), state)
    for a, b in zip(first, again):
        assert torch.equal(a[0].data, b[0].data) and torch.equal(a[1].nan_to_num(), b[1].nan_to_num())
    assert not torch.equal(host[(3, 0)][1].nan_to_num(), first[0][1].nan_to_num())  # another epoch, other views
    assert not torch.equal(dv.HostViews(dataset, transform, seed=8)[(2, 0)][1].nan_to_num(), first[0][1].nan_to_num())
    device = dv.DeviceViews(host.plan)
    batches = []
    for workers in (0, 2):
        loader = DataLoader(host, batch_size=3, sampler=keys, num_workers=workers, collate_fn=dv.collate_views)
        batches.append([torch.cat(device(b)) for b, _ in loader])
    assert all(torch.equal(a, b) for a, b in zip(*batches))


# ---------------------------------------------------------------------------- (5) files the device does not decode


def _odd_files(root: Path, photo: Path) -> Path:
    """One class folder with a baseline JPEG and every kind of file that the host decodes."""
    folder = root / "train" / "odd"
    folder.mkdir(parents=True)
    img = _pil(photo).resize((120, 90))
    img.save(folder / "a_baseline.jpg", quality=90)
    img.save(folder / "b_image.png")
    img.convert("CMYK").save(folder / "c_cmyk.jpg", quality=90)
    img.convert("L").save(folder / "d_grey.jpg", quality=90)
    img.save(folder / "e_progressive.jpg", quality=90, progressive=True)
    data = (folder / "a_baseline.jpg").read_bytes()
    (folder / "f_truncated.jpg").write_bytes(data[: len(data) // 2])
    img.save(folder / "g_baseline.jpg", quality=70)
    return root


def test_other_files_are_decoded_on_the_host_counted_and_reported_once(photos, tmp_path):
    root = _odd_files(tmp_path, _files(photos)[0])
    dataset = ImageFolderDataset(root)
    transform = _transform(("cwrgp", "imagenet", 224, 4, False))
    host = dv.HostViews(dataset, transform, seed=1)
    with pytest.warns(BadImageWarning, match="f_truncated.jpg"):  # unreadable: skipped as on the PIL path
        samples = [host[(0, i)] for i in range(len(dataset))]
    reasons = [s[0].host_decoded for s in samples]
    assert reasons == ["", "PNG file", "CMYK JPEG", "L JPEG", "progressive JPEG", "", ""]  # f: replaced by g
    batch, _ = dv.collate_views(samples)
    device = dv.DeviceViews(host.plan, "cpu")
    assert device.report() == ""
    views = device(batch)
    device(batch)
    assert device.host_decoded == {"PNG file": 2, "CMYK JPEG": 2, "L JPEG": 2, "progressive JPEG": 2}
    assert device.report() == ("device views: 8 of 14 images were decoded by PIL in the data workers (2 PNG file, "
                               "2 CMYK JPEG, 2 L JPEG, 2 progressive JPEG); the others were decoded on cpu")
    pil = SeededViews(dataset, transform, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadImageWarning)
        for v, got in enumerate(views):
            assert torch.equal(got, torch.stack([pil[i][0][v] for i in range(len(dataset))]))


def test_pretraining_reports_the_host_decoded_files_once(tmp_path, capsys):
    """A run over a folder with PNG files: one line at the end of the first epoch, none after."""
    from wssl_zoo.pretrain.cli import main

    data = make_imagefolder(tmp_path / "data", size=32)
    for i in range(0, 20, 4):  # a fifth of each class as PNG
        for folder in (data / "train").iterdir():
            jpeg = folder / f"{i}.jpg"
            Image.open(jpeg).save(jpeg.with_suffix(".png"))
            jpeg.unlink()
    assert main([*TINY, "--data", str(data), "--out", str(tmp_path / "run"), "--epochs", "2", "--device-views"]) == 0
    out = capsys.readouterr().out
    assert "views made on cpu (--device-views)" in out
    (line,) = [line for line in out.splitlines() if line.startswith("device views:")]
    assert "images were decoded by PIL in the data workers (" in line and " PNG file)" in line


def test_a_file_neither_decoder_reads_is_warned_about_once_and_the_run_goes_on(photos, tmp_path):
    """A JPEG whose header reads but whose Huffman table is broken: the device and PIL both fail
    on it; its views come from a mid-grey image of its size, the other images' are untouched."""
    data = bytearray(_files(photos)[4].read_bytes())
    table = data.find(b"\xff\xc4")
    data[table + 4:table + 21] = bytes([255]) * 17  # impossible Huffman code counts
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(bytes(data))
    samples = [dv.read_encoded(bad), dv.read_encoded(_files(photos)[5])]
    assert samples[0].is_jpeg and samples[0].host_decoded == ""  # nothing in the header gives it away
    params = torch.zeros(1, dv.NUM_PARAMS, dtype=torch.float64)
    batch, _ = dv.collate_views([(s, params, 0) for s in samples])
    device = dv.DeviceViews(dv.ViewPlan(_transform(("intl", "cifar10", 32, 1, False))))
    with pytest.warns(BadImageWarning, match=f"{bad}: neither cpu .* nor PIL .* mid-grey image.*scan_images"):
        images = device.decode(batch)
    assert torch.equal(images[0], torch.full((3, samples[0].height, samples[0].width), 128, dtype=torch.uint8))
    assert torch.equal(images[1], TF.pil_to_tensor(_pil(_files(photos)[5])))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        device.decode(batch)  # once per file


# ---------------------------------------------------------------------------- the operations' invariants


def _params(n: int, size_hw, **cols) -> torch.Tensor:
    params = torch.zeros(n, 1, dv.NUM_PARAMS, dtype=torch.float64)
    params[:, 0, dv.COL["brightness"]:dv.COL["brightness"] + 4] = float("nan")
    params[:, 0, dv.COL["height"]], params[:, 0, dv.COL["width"]] = size_hw
    for name, value in cols.items():
        params[:, 0, dv.COL[name]] = value
    return params


def test_identity_flip_grey_brightness_and_a_constant_image():
    plan = dv.ViewPlan(type("M", (), {"transforms": [T.Compose([
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), T.RandomGrayscale(0.2),
        T.RandomResizedCrop(20), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize((0, 0, 0), (1, 1, 1))])]})())
    device = dv.DeviceViews(plan)
    images = [torch.randint(0, 256, (3, 20, 20), dtype=torch.uint8) for _ in range(6)]
    x = torch.stack(images).float() / 255
    (same,) = device.views(images, _params(6, (20, 20)))
    assert same.shape == (6, 3, 20, 20) and same.dtype == torch.float32 and torch.equal(same, x)
    (flipped,) = device.views(images, _params(6, (20, 20), flip=1.0))
    assert torch.equal(flipped, x.flip(-1))
    (grey,) = device.views(images, _params(6, (20, 20), gray=1.0))
    assert torch.equal(grey[:, 0], grey[:, 1]) and torch.equal(grey[:, 1], grey[:, 2])
    bright = _params(6, (20, 20), jitter=1.0, order0=0.0, order1=1.0, order2=2.0, order3=3.0)
    bright[:, 0, dv.COL["brightness"]] = torch.linspace(0.6, 1.4, 6, dtype=torch.float64)
    (lit,) = device.views(images, bright)
    expected = torch.clamp((x * 255) * bright[:, 0, dv.COL["brightness"]].float().view(-1, 1, 1, 1), 0, 255).trunc()
    assert torch.equal(lit, expected / 255)
    const = [torch.full((3, 32, 40), 128, dtype=torch.uint8)] * 2  # a constant image stays constant under any crop
    crop = _params(2, (13, 29), top=3.0, left=5.0)
    (out,) = dv.DeviceViews(plan).views(const, crop)
    assert torch.equal(out, torch.full_like(out, 128 / 255))
    with pytest.raises(ValueError, match="expected parameters of shape"):
        device.views(images, _params(5, (20, 20)))


def test_hsv_conversions_are_pils(cifar):
    img = _pil(_files(cifar)[0])
    hsv = dv.rgb_to_hsv(_tensor(img))
    assert torch.equal(hsv, _tensor(img.convert("HSV")))
    assert torch.equal(dv.hsv_to_rgb(hsv), _tensor(img.convert("HSV").convert("RGB")))
