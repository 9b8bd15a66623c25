"""A wrong command or a bad input exits 2 with one line naming the file, key or flag, and changes
nothing; unreadable images are converted or skipped by name; recipe conflicts name the flag that fixes each."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import pytest
import torch
from PIL import Image

import wssl_zoo
from wssl_zoo.modelio import save_model_dir

from builders import authors_resnet, dataparallel_state, head, image_folder, make_coco, tree_hash

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools vs numpy 2


def model_dir(path: Path, arch: str = "test_resnet") -> Path:
    """A model directory of timm's test_resnet (370k parameters: the cases copy and hash it)."""
    torch.manual_seed(0)
    save_model_dir(path, wssl_zoo.create(arch), arch=arch, stem="imagenet", mean=(0.5,) * 3, std=(0.25,) * 3,
                   img_size=32)
    return path


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Path:
    """Read-only originals that the cases copy: an image folder, a model dir, a COCO folder."""
    root = tmp_path_factory.mktemp("assets")
    image_folder(root / "images")
    model_dir(root / "model")
    make_coco(root / "coco", n=2, size=64)
    return root


def _pretrain(argv):
    from wssl_zoo.pretrain.cli import main

    return main(argv)


def _zoo(argv):
    from wssl_zoo.cli import main

    return main(argv)


def _demo(argv):
    from wssl_zoo.demo import main

    return main(argv)


def _eval(module: str) -> Callable:
    def run(argv):
        import importlib

        return importlib.import_module(module).main(argv)

    return run


def _detect(argv):
    from detection.train import main

    return main(argv)


SMALL = ["--arch", "resnet18", "--stem", "imagenet", "--img-size", "32", "--epochs", "1", "--workers", "0",
         "--no-progress", "--set", "projector.hidden_dim=32", "--set", "projector.out_dim=32"]


def pretrain_missing_root(w, a):
    return _pretrain, ["--recipe", "intl_cifar10", "--dataset", "imagefolder", "--data", str(w / "nope"),
                       "--out", str(w / "o"), *SMALL], f"{w / 'nope'} does not exist"


def pretrain_empty_class(w, a):
    data = shutil.copytree(a / "images", w / "d")
    (data / "train" / "c_empty").mkdir()
    return _pretrain, ["--recipe", "intl_cifar10", "--dataset", "imagefolder", "--data", str(data), "--out",
                       str(w / "o"), "--batch-size", "8", *SMALL], "c_empty holds no images"


def pretrain_foreign_out(w, a):
    (w / "o").mkdir()
    (w / "o" / "notes.txt").write_text("mine")
    return _pretrain, ["--recipe", "intl_cifar10", "--dataset", "imagefolder", "--data", str(a / "images"),
                       "--out", str(w / "o"), "--batch-size", "8", *SMALL], "the folder is not empty (notes.txt"


def pretrain_interrupted_without_resume(w, a):
    (w / "o" / "checkpoints").mkdir(parents=True)
    (w / "o" / "checkpoints" / "last.pt").write_bytes(b"x")
    return _pretrain, ["--recipe", "intl_cifar10", "--dataset", "imagefolder", "--data", str(a / "images"),
                       "--out", str(w / "o"), "--batch-size", "8", *SMALL], "pass --resume to continue it"


def pretrain_resume_corrupt_config(w, a):
    (w / "o").mkdir()
    (w / "o" / "train_config.json").write_text("{ not json")
    return _pretrain, ["--out", str(w / "o"), "--resume"], "train_config.json is not a train_config.json"


def pretrain_resume_nothing(w, a):
    return _pretrain, ["--out", str(w / "none"), "--resume"], "train_config.json not found"


def pretrain_batch_vs_w_size(w, a):
    return _pretrain, ["--recipe", "wmse_cifar10_2views", "--batch-size", "100", "--out", str(w / "o")], \
        "(change --batch-size or --set loss.w_size=...)"


def pretrain_w_size_vs_dim(w, a):
    return _pretrain, ["--recipe", "wmse_cifar10_2views", "--set", "projector.out_dim=256", "--out", str(w / "o")], \
        "--set projector.out_dim=..."


def pretrain_imagefolder_as_cifar(w, a):
    data = w / "d"
    shutil.copytree(a / "images" / "train", data / "train")  # no val/ or test/
    return _pretrain, ["--recipe", "intl_cifar10", "--data", str(data), "--out", str(w / "o"), "--batch-size", "8",
                       *SMALL, "--eval-every", "1"], "pass --dataset imagefolder and --eval-every 0"


def demo_on_a_pretraining_run(w, a):
    run = shutil.copytree(a / "model", w / "run")
    (run / "train_config.json").write_text("{}")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.pt").write_bytes(b"x")
    return _demo, ["--dataset", "imagefolder", "--data", str(a / "images"), "--out", str(run)], \
        f"--out {run}: the folder is not empty"


def convert_missing(w, a):
    return _zoo, ["convert", "--from", "official-intl", str(w / "none.pth"), "--out", str(w / "o")], \
        "none.pth: no such checkpoint file"


def convert_corrupt(w, a):
    (w / "bad.pth").write_bytes(b"hello")
    return _zoo, ["convert", "--from", "official-intl", str(w / "bad.pth"), "--out", str(w / "o")], \
        "bad.pth: not readable as a weights-only torch checkpoint (KeyError: neither a zip archive nor a pickle"


def convert_truncated(w, a):
    torch.save({"state_dict": {"module.backbone.conv1.weight": torch.zeros(64, 3, 7, 7)}}, w / "full.pth")
    data = (w / "full.pth").read_bytes()
    (w / "cut.pth").write_bytes(data[: len(data) // 2])
    return _zoo, ["convert", "--from", "official-intl", str(w / "cut.pth"), "--out", str(w / "o")], \
        "cut.pth: not readable as a weights-only torch checkpoint"


def convert_mismatched(w, a):
    state = dataparallel_state(authors_resnet("resnet18", "cifar", 0), head(512, 64, 32, True, 1))
    torch.save(state, w / "wmse.pth")
    return _zoo, ["convert", "--from", "official-intl", str(w / "wmse.pth"), "--out", str(w / "o")], \
        "these keys look like --from official-cwrgp or official-wmse"


def convert_into_model_dir(w, a):
    torch.save(authors_resnet("resnet18", "imagenet", 3).state_dict(), w / "bare.pth")
    out = shutil.copytree(a / "model", w / "model")
    (out / "projector.safetensors").write_bytes(b"stale")
    return _zoo, ["convert", "--from", "official-intl", str(w / "bare.pth"), "--out", str(out)], \
        "projector.safetensors"


def publish_missing(w, a):
    return _zoo, ["publish", str(w / "none"), "--repo", "org/name", "--dry-run"], "none: no such model directory"


def publish_foreign_staging(w, a):
    (w / "st").mkdir()
    (w / "st" / "thesis.tex").write_text("x")
    return _zoo, ["publish", str(a / "model"), "--repo", "org/name", "--dry-run", "--staging", str(w / "st")], \
        "--staging " + str(w / "st") + ": the folder is not empty (thesis.tex"


def publish_corrupt_model(w, a):
    m = shutil.copytree(a / "model", w / "m")
    (m / "model.safetensors").write_bytes(b"\x00" * 20)
    return _zoo, ["publish", str(m), "--repo", "org/name", "--dry-run", "--staging", str(w / "st")], "model.safetensors"


def info_unknown(w, a):
    return _zoo, ["info", "no_such_model_xyz"], "no_such_model_xyz"


def linear_no_heldout(w, a):
    data = w / "d"
    shutil.copytree(a / "images" / "train", data / "train")
    return _eval("eval.linear"), ["--model", str(a / "model"), "--data", str(data), "--workers", "0",
                                  "--no-progress", "--cache-dir", str(w / "cache")], "no val/ or test/ folder"


def linear_missing_model(w, a):
    return _eval("eval.linear"), ["--model", str(w / "gone"), "--data", str(a / "images")], "gone"


def knn_mismatched_weights(w, a):
    m = shutil.copytree(a / "model", w / "m")
    cfg = json.loads((m / "config.json").read_text())
    cfg["architecture"] = cfg["wssl_zoo"]["architecture"] = "resnet34"  # the weights are a test_resnet's
    (m / "config.json").write_text(json.dumps(cfg))
    return _eval("eval.knn"), ["--model", str(m), "--data", str(a / "images"), "--workers", "0", "--no-progress",
                               "--cache-dir", str(w / "cache")], "does not match the architecture"


def semi_wrong_split_file(w, a):
    (w / "split.txt").write_text("c0/none.png\nc1/missing.png\n")
    return _eval("eval.semi"), ["--model", str(a / "model"), "--data", str(a / "images"), "--split", "1pct",
                                "--split-file", str(w / "split.txt"), "--workers", "0", "--no-progress"], \
        "split.txt: 2 listed images are not under"


def semi_empty_split_file(w, a):
    (w / "split.txt").write_text("\n")
    return _eval("eval.semi"), ["--model", str(a / "model"), "--data", str(a / "images"), "--split", "1pct",
                                "--split-file", str(w / "split.txt")], "split.txt: the split file is empty"


def semi_no_heldout_before_training(w, a):
    data = w / "d"
    shutil.copytree(a / "images" / "train", data / "train")
    (w / "split.txt").write_text("c0/0.png\nc1/0.png\n")
    return _eval("eval.semi"), ["--model", str(a / "model"), "--data", str(data), "--split", "1pct",
                                "--split-file", str(w / "split.txt"), "--workers", "0", "--no-progress"], \
        "no val/ or test/ folder"


def spectrum_missing_data(w, a):
    return _eval("eval.spectrum"), ["--model", str(a / "model"), "--data", str(w / "nodata")], "nodata"


def report_corrupt_record(w, a):
    (w / "res").mkdir()
    (w / "res" / "broken.json").write_text('{"schema_version": 1, "task": ')
    return _eval("eval.report"), ["--results-dir", str(w / "res"), "--markdown", str(w / "L.md"), "--plot",
                                  str(w / "p.png"), "--readme", "", "--no-cards"], "broken.json: not valid JSON"


def report_invalid_record(w, a):
    (w / "res").mkdir()
    (w / "res" / "nan.json").write_text(json.dumps({"schema_version": 1, "task": "linear"}))
    return _eval("eval.report"), ["--results-dir", str(w / "res"), "--markdown", str(w / "L.md"), "--plot",
                                  str(w / "p.png"), "--readme", "", "--no-cards"], "nan.json: missing key 'model'"


def benchmark_unknown_task(w, a):
    return _eval("eval.benchmark"), ["--models", "random:resnet18", "--tasks", "linear,nope", "--data-root", str(w)], \
        "unknown task(s) ['nope']"


def _coco_args(root: Path, out: Path) -> list[str]:
    return ["--model", "random:resnet18", "--config", "coco_R_50_FPN_1x", "--coco-root", str(root), "--out", str(out),
            "--num-workers", "0", "--no-progress", "--backend", "torchvision", "--max-iter", "1", "--ims-per-batch", "1"]


def detection_broken_json(w, a):
    coco = shutil.copytree(a / "coco", w / "coco")
    ann = coco / "annotations" / "instances_train2017.json"
    ann.write_text(ann.read_text()[:50])
    return _detect, _coco_args(coco, w / "o"), "instances_train2017.json: not valid JSON"


def detection_inconsistent_json(w, a):
    coco = shutil.copytree(a / "coco", w / "coco")
    ann = coco / "annotations" / "instances_train2017.json"
    data = json.loads(ann.read_text())
    data["annotations"][0]["image_id"] = 999
    ann.write_text(json.dumps(data))
    return _detect, _coco_args(coco, w / "o"), "refers to unknown image id 999"


def detection_missing_images(w, a):
    coco = shutil.copytree(a / "coco", w / "coco")
    next((coco / "train2017").iterdir()).unlink()
    return _detect, _coco_args(coco, w / "o"), "image file(s) not found"


def detection_foreign_out(w, a):
    (w / "o").mkdir()
    (w / "o" / "results.csv").write_text("1")
    return _detect, _coco_args(a / "coco", w / "o"), "the folder is not empty (results.csv"


CASES = [pretrain_missing_root, pretrain_empty_class, pretrain_foreign_out, pretrain_interrupted_without_resume,
         pretrain_resume_corrupt_config, pretrain_resume_nothing, pretrain_batch_vs_w_size, pretrain_w_size_vs_dim,
         pretrain_imagefolder_as_cifar, demo_on_a_pretraining_run, convert_missing, convert_corrupt,
         convert_truncated, convert_mismatched, convert_into_model_dir, publish_missing, publish_foreign_staging,
         publish_corrupt_model, info_unknown, linear_no_heldout, linear_missing_model, knn_mismatched_weights,
         semi_wrong_split_file, semi_empty_split_file, semi_no_heldout_before_training, spectrum_missing_data,
         report_corrupt_record, report_invalid_record, benchmark_unknown_task, detection_broken_json,
         detection_inconsistent_json, detection_missing_images, detection_foreign_out]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_bad_input_exits_2_names_the_culprit_and_changes_nothing(case, tmp_path, assets, capsys, monkeypatch):
    monkeypatch.setenv("WSSL_ZOO_CACHE", str(tmp_path / "cache"))
    work = tmp_path / "work"
    work.mkdir()
    main, argv, culprit = case(work, assets)
    before_work, before_assets = tree_hash(work), tree_hash(assets)
    out = Path(argv[argv.index("--out") + 1]) if "--out" in argv else None
    out_was_new = out is not None and not out.exists()  # a refused start leaves no --out folder behind
    code = main(argv)
    err = capsys.readouterr().err
    message = [line for line in err.splitlines() if "error" in line.lower()]
    assert code == 2, err
    assert message and culprit in message[-1], err
    assert "Traceback" not in err
    after = tree_hash(work)
    assert {k: after.get(k) for k in before_work} == before_work, "an existing file changed"
    if out_was_new:
        assert not out.exists(), f"a refused start left {out}: {sorted(p.name for p in out.iterdir())}"
    assert tree_hash(assets) == before_assets


def test_unreadable_cmyk_palette_and_truncated_images_are_converted_or_skipped_by_name(tmp_path, assets, capsys,
                                                                                      monkeypatch):
    """Images a CLI can read after conversion (CMYK, palette, grayscale) are used; corrupt and
    truncated ones are skipped with one warning line each that names the file."""
    from eval.knn import main

    monkeypatch.setenv("WSSL_ZOO_CACHE", str(tmp_path / "cache"))
    data = shutil.copytree(assets / "images", tmp_path / "d")
    Image.new("CMYK", (32, 32), (10, 200, 30, 0)).save(data / "train" / "c0" / "cmyk.jpg")
    Image.new("P", (32, 32), 7).save(data / "train" / "c1" / "palette.png")
    (data / "train" / "c0" / "corrupt.jpg").write_bytes(b"not a jpeg")
    good = (data / "train" / "c1" / "0.png").read_bytes()
    (data / "train" / "c1" / "truncated.png").write_bytes(good[: len(good) // 3])
    with pytest.warns(UserWarning) as caught:
        code = main(["--model", str(assets / "model"), "--data", str(data), "--workers", "0", "--no-progress",
                     "--protocols", "knn5", "--results-dir", str(tmp_path / "res")])
    assert code == 0, capsys.readouterr().err
    texts = [str(w.message) for w in caught if "skipping unreadable image" in str(w.message)]
    assert any("corrupt.jpg" in t for t in texts) and any("truncated.png" in t for t in texts)
    assert not any("cmyk.jpg" in t or "palette.png" in t for t in texts)


def test_recipe_relations_are_reported_together_with_the_flag_that_fixes_each():
    from wssl_zoo.pretrain.recipes import resolve_recipe

    with pytest.raises(ValueError) as exc:
        resolve_recipe("wmse_cifar10_2views", {"batch_size": 100, "loss.w_size": 32, "projector.out_dim": 64})
    msg = str(exc.value)
    assert "batch_size=100 is not a multiple of loss.w_size=32 (change --batch-size or --set loss.w_size=...)" in msg
    assert "loss.w_size=32 must be larger than the embedding dim projector.out_dim=64" in msg
    with pytest.raises(ValueError, match=r"projector.out_dim/loss.groups=16 channels, fewer than loss.w_size=64"):
        resolve_recipe("cwrgp_cifar10", {"loss.groups": 8, "projector.out_dim": 128})
    with pytest.raises(ValueError, match=r"projector.out_dim=130 is not divisible by loss.groups=4"):
        resolve_recipe("cwrgp_cifar10", {"projector.out_dim": 130})


def test_an_imagefolder_under_a_cifar_recipe_names_the_flags(tmp_path):
    from wssl_zoo.data.datasets import build_dataset

    (tmp_path / "train" / "c0").mkdir(parents=True)  # train/ is read as an ImageFolder; the held-out split is not
    with pytest.raises(FileNotFoundError, match="ImageFolder root .* pass --dataset imagefolder and --eval-every 0"):
        build_dataset("cifar10", tmp_path, "test")
