"""More of the evaluation suite: authors' rules (k-NN ties, INTL's constant fine-tuning lr), the
split-file CLI flags, the detection hand-off of the benchmark, help texts, torchrun fine-tuning,
and a small integration run on real CIFAR-10 JPEGs (skipped when ../shared/data is absent)."""

from __future__ import annotations

import json
import os
import sys
import tarfile
import types
from pathlib import Path

import pytest
import torch

import wssl_zoo
from eval import benchmark, knn, linear, records, report, semi, spectrum
from wssl_zoo import documents
from eval.protocols import get_protocol, with_overrides
from eval.records import RECORD_SCHEMA_VERSION, default_record_path, make_record, validate_record
from wssl_zoo.modelio import save_model_dir

from conftest import cifar10_subset

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    from test_eval import colour_folder

    return colour_folder(tmp_path_factory.mktemp("data") / "tiny", seed=1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("model") / "m"
    torch.manual_seed(0)
    save_model_dir(out, wssl_zoo.create("resnet18"), arch="resnet18", stem="imagenet", mean=(0.5, 0.5, 0.5),
                   std=(0.25, 0.25, 0.25), img_size=32, extra_meta={"method": "intl"})
    return out


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WSSL_ZOO_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _common(model_dir, folder, out) -> list[str]:
    return ["--model", str(model_dir), "--data", str(folder), "--out", str(out), "--no-progress", "--workers", "0"]


# ---------------------------------------------------------------------------- the authors' rules


def test_knn5_ties_go_to_the_smallest_class_as_in_the_authors_code():
    # 5 neighbours: classes 2, 2, 1, 1, 0 (nearest first): a 2-2 tie between 1 and 2 -> class 1
    xtr = torch.tensor([[0.1], [0.2], [0.3], [0.4], [0.5], [9.0]])
    ytr = torch.tensor([2, 2, 1, 1, 0, 0])
    assert knn.knn_predict(get_protocol("knn5"), xtr, ytr, torch.tensor([[0.0]])).tolist() == [1]
    assert get_protocol("knn5").version == 2


def test_semi_recipes_schedules():
    intl = get_protocol("semi_intl")
    # INTL's published command runs the default step schedule (60, 80): constant over 20 epochs
    assert [semi.lr_factor(intl, e, 20) for e in (0, 10, 19)] == [1.0, 1.0, 1.0]
    assert (intl.epochs, intl.lr_backbone, intl.lr_head, intl.bn_train, intl.weight_decay) == (20, 0.004, 0.2, True, 0.0)
    cos, _ = with_overrides(intl, schedule="cosine")
    assert semi.lr_factor(cos, 10, 20) == pytest.approx(0.5)
    simclr = get_protocol("semi_simclr")
    assert (simclr.epochs_1pct, simclr.epochs_10pct, simclr.nesterov, semi.lr_factor(simclr, 5, 30)) == (60, 30, True, 1.0)
    for name in ("intl", "cwrgp", "small", "knn5", "semi_intl"):
        assert "@" in get_protocol(name).source  # file and commit of the authors' code


# ---------------------------------------------------------------------------- records


def test_record_schema_names_and_default_path(tmp_path):
    assert RECORD_SCHEMA_VERSION == records.SCHEMA_VERSION == 1
    rec = make_record(task="linear", model="m", weights_sha256="b" * 64, protocol={"name": "fast", "version": 1},
                      dataset={"name": "cifar10", "split": "test", "fingerprint": "x"}, seed=3, metrics={"top1": 1.0},
                      wall_seconds=2, command="python -m eval.linear", extra={"model_label": "m"})
    validate_record(rec)
    assert {"hardware", "torch", "code_version", "created"} <= set(rec) and rec["schema_version"] == 1
    with pytest.raises(ValueError, match="would replace required record fields"):
        make_record(task="linear", model="m", weights_sha256="b" * 64, protocol={"name": "fast", "version": 1},
                    dataset={"name": "c", "fingerprint": "x"}, seed=0, metrics={"top1": 1.0}, wall_seconds=1,
                    command="c", extra={"seed": 1})
    path = default_record_path("linear", "runs/x y", "intl+epochs=2", "cifar10", 3)
    assert path.parent == records.RESULTS_DIR and path.name == "linear_runs-x-y_intl-epochs-2_cifar10_seed3.json"


# ---------------------------------------------------------------------------- split files


def test_missing_images_are_listed_first_20_and_counted(folder, tmp_path, monkeypatch):
    from wssl_zoo.data import build_dataset

    train = build_dataset("imagefolder", folder, "train")
    monkeypatch.setitem(semi.IMAGENET_COUNTS, "10pct", 25)
    f = tmp_path / "10percent.txt"
    f.write_text("".join(f"n01440764_{i}.JPEG\n" for i in range(25)))
    with pytest.raises(semi.SplitFileError) as err:
        semi.read_split_file(f, "10pct", train)
    msg = str(err.value)
    assert "25 listed images are not under" in msg and "n01440764_19.JPEG" in msg and "n01440764_20.JPEG" not in msg
    assert msg.endswith("...") and "\n" not in msg


def test_real_simclr_counts_are_the_defaults():
    assert semi.IMAGENET_COUNTS == {"1pct": 12811, "10pct": 128116}


def test_make_split_file_cli_percent_and_seed(folder, tmp_path, capsys):
    out = tmp_path / "half.txt"
    args = ["--model", "random:resnet18:imagenet:32", "--data", str(folder), "--split", "10pct",
            "--make-split-file", str(out), "--percent", "50", "--seed", "3", "--make-only"]
    assert semi.main(args) == 0
    assert "wrote 12 images (50 % per class, seed 3)" in capsys.readouterr().out
    from wssl_zoo.data import build_dataset

    train = build_dataset("imagefolder", folder, "train")
    assert semi.make_split_file(train, 50, 3, tmp_path / "again.txt") == semi.read_split_file(out, "10pct", train)
    assert out.read_text() == (tmp_path / "again.txt").read_text()
    assert semi.main([*args[:6], "--split-file", str(tmp_path / "absent.txt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("eval.semi: error:") and "absent.txt: no such split file" in err and "Traceback" not in err


# ---------------------------------------------------------------------------- linear


def test_cached_protocol_with_a_train_subset_is_recorded(model_dir, folder, tmp_path):
    out = tmp_path / "sub.json"
    assert linear.main([*_common(model_dir, folder, out), "--epochs", "2", "--train-subset", "6"]) == 0
    rec = json.loads(out.read_text())
    assert rec["protocol"]["name"] == "fast+epochs=2+train_subset=6" and rec["train_samples"] == 6
    assert rec["protocol"]["overrides"] == {"epochs": 2} and rec["protocol"]["train_subset"] == 6


# ---------------------------------------------------------------------------- benchmark <-> detection


def test_benchmark_coco_calls_detection_train_with_the_agreed_flags(tmp_path, monkeypatch, capsys):
    calls = []

    def fake_main(argv):
        calls.append(argv)
        rec = make_record(task="coco", model=argv[argv.index("--model") + 1], weights_sha256="c" * 64,
                          protocol={"name": argv[argv.index("--protocol") + 1], "version": 1},
                          dataset={"name": "coco", "fingerprint": "f"}, seed=0, metrics={"bbox_AP": 1.5},
                          wall_seconds=1, command="python -m detection.train", extra={"model_label": "m"})
        records.write_record(rec, argv[argv.index("--record") + 1])
        return 0

    pkg = types.ModuleType("detection")
    mod = types.ModuleType("detection.train")
    mod.main = fake_main
    pkg.train = mod
    monkeypatch.setitem(sys.modules, "detection", pkg)
    monkeypatch.setitem(sys.modules, "detection.train", mod)
    argv = ["--models", "m", "--tasks", "coco", "--data-root", str(tmp_path / "root"), "--coco-config",
            "coco_R_50_FPN_1x", "--max-iter", "3", "--results-dir", str(tmp_path / "res")]
    assert benchmark.main(argv) == 0
    (call,) = calls
    flags = {call[i]: call[i + 1] for i in range(0, len(call) - 1, 2) if call[i].startswith("--")}
    # the shared vocabulary (issue 24): --protocol (was --config), --data + --dataset (was --coco-root); the
    # benchmark itself is called with its earlier spellings (--models, --data-root, --coco-config), still accepted
    assert flags["--model"] == "m" and flags["--protocol"] == "coco_R_50_FPN_1x" and flags["--dataset"] == "coco"
    assert flags["--data"] == str(tmp_path / "root" / "coco") and flags["--max-iter"] == "3"
    assert flags["--record"] == str(tmp_path / "res" / "bench-coco_m_coco_R_50_FPN_1x_imagefolder_seed0.json")
    assert "--out" in flags
    assert "| model | coco |" in capsys.readouterr().out
    assert benchmark.main(argv) == 0 and len(calls) == 1  # resumed: the record exists


def test_benchmark_passes_the_detection_size_flags_through(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("detection.train.main", lambda argv: calls.append(argv) or 1)
    argv = ["--models", "m", "--tasks", "coco", "--data-root", str(tmp_path / "root"), "--max-iter", "2",
            "--coco-ims-per-batch", "2", "--coco-backend", "torchvision", "--coco-set", "INPUT.MIN_SIZE_TEST=128",
            "--coco-set", "INPUT.MAX_SIZE_TEST=224", "--device", "cpu", "--workers", "0",
            "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "res")]
    assert benchmark.main(argv) == 2  # the fake detection run fails: the benchmark stops with one line
    (call,) = calls
    pairs = list(zip(call, call[1:]))
    for pair in (("--ims-per-batch", "2"), ("--backend", "torchvision"), ("--set", "INPUT.MIN_SIZE_TEST=128"),
                 ("--set", "INPUT.MAX_SIZE_TEST=224"), ("--device", "cpu"), ("--workers", "0"), ("--max-iter", "2")):
        assert pair in pairs, pair
    out = call[call.index("--out") + 1]
    assert Path(out).parent == tmp_path / "runs"


@pytest.mark.slow
def test_benchmark_random_baseline_runs_linear_knn_and_coco_in_one_row(folder, shared_data_dir, tmp_path, capsys):
    """The issue's "done when": random:resnet18:imagenet:32 through linear, kNN and coco (coco-tiny,
    CPU-sized with the pass-through flags) gives one table row with all three tasks."""
    from test_detection_train import FPN_FAST

    archive = shared_data_dir / "coco-tiny.tar.gz"
    if not archive.is_file():
        pytest.skip(f"{archive} not found")
    root = tmp_path / "root"
    root.mkdir()
    (root / "imagenet").symlink_to(folder)
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path, filter="data")
    (root / "coco").symlink_to(tmp_path / "coco-tiny")
    sets = FPN_FAST + ["MODEL.MASK_ON=False", "INPUT.MIN_SIZE_TRAIN=(96,)", "INPUT.MAX_SIZE_TRAIN=160",
                       "INPUT.MIN_SIZE_TEST=96", "INPUT.MAX_SIZE_TEST=160"]
    argv = ["--models", "random:resnet18:imagenet:32", "--tasks", "linear,knn,coco", "--data-root", str(root),
            "--epochs", "1", "--coco-config", "coco_R_50_FPN_1x", "--max-iter", "1", "--coco-ims-per-batch", "2",
            "--coco-backend", "torchvision", *[a for s in sets for a in ("--coco-set", s)], "--device", "cpu",
            "--workers", "0", "--no-progress", "--runs-dir", str(tmp_path / "runs"),
            "--results-dir", str(tmp_path / "res")]
    assert benchmark.main(argv) == 0
    out = capsys.readouterr().out
    assert "3 task(s) run, 0 already recorded" in out
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert table[0] == "| model | coco | knn | linear |", table
    rows = table[2:]
    assert len(rows) == 1 and rows[0].startswith("| random-resnet18-imagenet-32px |"), rows
    assert "—" not in rows[0], rows  # every task has a number in the one row
    coco = [r for r in records.read_records(tmp_path / "res") if r["task"] == "coco"]
    assert len(coco) == 1 and "max_iter=1" in coco[0]["protocol"]["name"]


def test_benchmark_coco_without_detection_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "detection.train", None)  # import fails
    argv = ["--models", "m", "--tasks", "coco", "--data-root", str(tmp_path), "--results-dir", str(tmp_path / "r")]
    assert benchmark.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("eval.benchmark: error: the coco task needs the detection package") and err.count("\n") == 1


# ---------------------------------------------------------------------------- report, help


def test_update_readme_defaults_to_zoo_results(tmp_path, monkeypatch):
    readme = tmp_path / "README.md"
    readme.write_text(f"a\n{report.START}\n{report.END}\nb\n")
    res = tmp_path / "res"
    res.mkdir()
    monkeypatch.setattr(documents, "zoo_results_dir", lambda: res)  # the default: the zoo's records
    assert report.update_readme(readme) is True
    assert "No evaluation records yet" in readme.read_text() and readme.read_text().endswith(f"{report.END}\nb\n")


@pytest.mark.parametrize("module", [linear, knn, semi, spectrum, benchmark, report])
def test_help_explains_every_flag(module, capsys):
    with pytest.raises(SystemExit) as exc:
        module.main(["--help"]) if module is not report else report.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    options = [line.strip() for line in out.splitlines() if line.strip().startswith("--")]
    assert options  # every option line is followed by (or carries) a help text
    assert "default" in out


# ---------------------------------------------------------------------------- torchrun fine-tuning


@pytest.mark.slow
@pytest.mark.gloo
def test_torchrun_semi_fine_tuning_writes_one_record(model_dir, folder, tmp_path):
    """eval.semi under torchrun (2 gloo processes): DDP fine-tuning, the split file and the record
    are written once (by rank 0). The processes get torchrun's environment from tests/warm.py."""
    out = tmp_path / "semi.json"
    import warm

    run = warm.torchrun(2, ["-m", "eval.semi", *_common(model_dir, folder, out), "--split", "10pct",
                            "--make-split-file", str(tmp_path / "split.txt"), "--percent", "50", "--epochs", "1",
                            "--batch-size", "4"],
                        cwd=REPO, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
                                                    "WSSL_ZOO_CACHE": str(tmp_path / "c")})
    assert run.returncode == 0, run.stderr[-3000:]
    rec = json.loads(out.read_text())
    validate_record(rec)
    assert rec["labelled_images"] == 12 and rec["task"] == "semi_10pct"
    assert run.stdout.count("wrote 12 images") == 1 and run.stdout.count(f"-> {out}") == 2  # both ranks report


# ---------------------------------------------------------------------------- real CIFAR-10


@pytest.fixture(scope="module")
def cifar_small(tmp_path_factory, shared_data_dir) -> Path:
    """20 training and 10 test JPEGs of every CIFAR-10 class, streamed out of the shared tarball."""
    return cifar10_subset(shared_data_dir, tmp_path_factory.mktemp("cifar"), 20, 10)


@pytest.mark.slow
def test_real_cifar10_fast_linear_and_knn(cifar_small, tmp_path):
    """The fast protocol and both k-NN rules on 200 real CIFAR-10 training JPEGs (random init, and
    the pretrained INTL ResNet-18 of benchmarks/cifar10_pretrain.sh when runs/ has it)."""
    models = ["random:resnet18:imagenet:32"]
    pretrained = REPO / "runs" / "cifar10_intl_cifar10_imagenet_e2"
    if (pretrained / "model.safetensors").is_file():
        models.append(str(pretrained))
    for i, model in enumerate(models):
        common = ["--model", model, "--data", str(cifar_small), "--no-progress", "--workers", "0"]
        assert linear.main([*common, "--epochs", "20", "--out", str(tmp_path / f"l{i}.json")]) == 0
        assert knn.main([*common, "--out", str(tmp_path / f"k{i}")]) == 0
        lin = json.loads((tmp_path / f"l{i}.json").read_text())
        assert lin["train_samples"] == 200 and lin["test_samples"] == 100
        assert lin["metrics"]["top1"] > 10  # better than chance on 10 classes, even at random init
        rules = [json.loads(p.read_text()) for p in (tmp_path / f"k{i}").glob("*.json")]
        assert sorted(r["protocol"]["name"] for r in rules) == ["knn200", "knn5"]
        for record in rules:
            validate_record(record)
