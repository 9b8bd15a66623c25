"""The evaluation suite on tiny generated image folders: protocols, cache, records, splits, report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import wssl_zoo
from eval import benchmark, knn, linear, report, semi, spectrum
from eval.protocols import PROTOCOLS, get_protocol, with_overrides
from eval.records import aggregate, dataset_fingerprint, make_record, read_records, validate_record, write_record
from wssl_zoo import plots
from wssl_zoo.heads import Projector
from wssl_zoo.fileio import sha256_file
from wssl_zoo.modelio import save_model_dir

COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]


def colour_folder(root: Path, train: int = 8, val: int = 4, seed: int = 0) -> Path:
    """ROOT/train/<class>/ (``train`` images each) and ROOT/val/<class>/ (``val`` each), 32 px PNGs,
    one colour per class plus noise drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", train), ("val", val)):
        for c, color in enumerate(COLORS):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(n):
                noise = rng.integers(0, 60, (32, 32, 3))
                Image.fromarray(np.clip(np.array(color) + noise, 0, 255).astype(np.uint8)).save(d / f"im{i}.png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """ROOT/train/<class>/ (8 images each) and ROOT/val/<class>/ (4 each), 32 px, colour-coded classes."""
    return colour_folder(tmp_path_factory.mktemp("data") / "tiny")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("model") / "m"
    torch.manual_seed(0)
    save_model_dir(out, wssl_zoo.create("resnet18"), arch="resnet18", stem="imagenet", mean=(0.5, 0.5, 0.5),
                   std=(0.25, 0.25, 0.25), img_size=32, projector=Projector(512, 32, 16, 2),
                   extra_meta={"method": "intl"})
    return out


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WSSL_ZOO_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _common(model_dir, folder, out) -> list[str]:
    return ["--model", str(model_dir), "--data", str(folder), "--out", str(out), "--no-progress", "--workers", "0"]


# ---------------------------------------------------------------------------- protocols


def test_protocols_are_frozen_named_and_versioned():
    assert {"intl", "cwrgp", "small", "fast", "knn5", "knn200", "semi_intl", "semi_simclr"} <= set(PROTOCOLS)
    intl = get_protocol("intl")
    assert (intl.optimizer, intl.lr, intl.epochs, intl.milestones, intl.batch_size) == ("sgd", 0.4, 100, (60, 80), 256)
    small = get_protocol("small")
    assert (small.optimizer, small.epochs, small.lr, small.final_lr) == ("adam", 500, 1e-2, 1e-6)
    with pytest.raises(Exception):
        intl.lr = 1.0  # frozen
    with pytest.raises(ValueError, match="unknown linear protocol 'nope'; choose one of cwrgp, fast, intl, intl_plain, small"):
        get_protocol("nope", "linear")
    p, rec = with_overrides(intl, epochs=2, lr=None)
    assert p.epochs == 2 and rec["name"] == "intl+epochs=2" and rec["overrides"] == {"epochs": 2}
    assert with_overrides(intl, epochs=100)[1]["name"] == "intl"  # no change, no suffix


def test_schedules_follow_the_sources():
    intl = get_protocol("intl")
    assert [linear.lr_at(intl, e) for e in (0, 59, 60, 79, 80, 99)] == pytest.approx([0.4, 0.4, 0.04, 0.04, 0.004, 0.004])
    small = get_protocol("small")
    assert linear.lr_at(small, 0) == pytest.approx(1e-2) and linear.lr_at(small, 500) == pytest.approx(1e-6)
    cw = get_protocol("cwrgp")
    assert linear.lr_at(cw, 50) == pytest.approx(0.2)


# ---------------------------------------------------------------------------- linear + cache


def test_fast_protocol_writes_a_valid_record_and_the_second_run_hits_the_cache(model_dir, folder, tmp_path, cache):
    out = tmp_path / "r.json"
    assert linear.main([*_common(model_dir, folder, out), "--epochs", "30"]) == 0
    first = json.loads(out.read_text())
    validate_record(first)
    assert first["cache_hit"] is False and first["protocol"]["name"] == "fast+epochs=30"
    assert first["weights_sha256"] == sha256_file(model_dir / "model.safetensors")
    assert first["train_samples"] == 24 and first["test_samples"] == 12 and "python -m eval.linear" in first["command"]
    assert len(list(cache.glob("*/index.json"))) == 2  # train and test features (a folder of shards each)
    assert linear.main([*_common(model_dir, folder, out), "--epochs", "30"]) == 0
    second = json.loads(out.read_text())
    assert second["cache_hit"] is True and second["metrics"] == first["metrics"]
    assert second["dataset"]["fingerprint"] == first["dataset"]["fingerprint"]
    assert first["metrics"]["top1"] > 80  # colour-coded classes are linearly separable even at random init


@pytest.mark.parametrize("protocol", ["fast", "intl"])  # cached features; augmented images every epoch
def test_the_record_holds_the_final_epoch_never_the_best(model_dir, folder, tmp_path, monkeypatch, protocol):
    """The README's "final-epoch metrics": a schedule whose 4th epoch is gradient ascent (lr -100)
    ruins a classifier that was good after 3 epochs; the 4-epoch record must hold the ruined
    final accuracy, not the better one of epoch 3 (the 3-epoch run's record: the same trajectory)."""
    monkeypatch.setattr(linear, "lr_at", lambda p, epoch: -100.0 if epoch == 3 else 0.1)
    tops = {}
    for epochs in (3, 4):
        out = tmp_path / f"{epochs}.json"
        assert linear.main([*_common(model_dir, folder, out), "--protocol", protocol, "--epochs", str(epochs),
                            "--batch-size", "8"]) == 0
        tops[epochs] = json.loads(out.read_text())["metrics"]["top1"]
    assert tops[3] >= 75 and tops[4] <= tops[3] - 30, tops


def test_every_linear_protocol_runs(model_dir, folder, tmp_path):
    for name in ("small", "intl", "cwrgp"):
        out = tmp_path / f"{name}.json"
        assert linear.main([*_common(model_dir, folder, out), "--protocol", name, "--epochs", "1",
                            "--batch-size", "8"]) == 0
        record = json.loads(out.read_text())
        validate_record(record)
        assert record["protocol"]["name"].startswith(f"{name}+") and 0 <= record["metrics"]["top1"] <= 100


def test_several_seeds_write_one_record_each(model_dir, folder, tmp_path, capsys):
    out = tmp_path / "seeds"
    assert linear.main([*_common(model_dir, folder, out), "--epochs", "3", "--seeds", "2"]) == 0
    assert sorted(json.loads(p.read_text())["seed"] for p in out.glob("*.json")) == [0, 1]
    assert "over 2 seeds" in capsys.readouterr().out
    # --out FILE.json means that one file: a run that writes two records is refused before any work
    before = sorted(tmp_path.rglob("*"))
    assert linear.main([*_common(model_dir, folder, tmp_path / "s.json"), "--epochs", "3", "--seeds", "2"]) == 2
    assert "--out" in capsys.readouterr().err and sorted(tmp_path.rglob("*")) == before


def test_random_init_baseline_is_reproducible_and_distinct():
    from wssl_zoo.weights import resolve

    a, b, c = resolve("random:resnet18", 0), resolve("random:resnet18", 0), resolve("random:resnet18", 1)
    assert a.weights_sha256 == b.weights_sha256 != c.weights_sha256 and a.label == "random-resnet18-imagenet-224px"


def test_errors_are_one_line(model_dir, tmp_path, capsys):
    assert linear.main(["--model", str(model_dir), "--data", str(tmp_path / "none"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("eval.linear: error:") and "none" in err and "Traceback" not in err
    assert linear.main(["--model", "not_a_model", "--data", str(tmp_path)]) == 2
    assert "unknown model 'not_a_model'" in capsys.readouterr().err


# ---------------------------------------------------------------------------- kNN


def test_knn_rules():
    xtr = torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [5.0, 5.0], [5.1, 5.0]])
    ytr = torch.tensor([0, 0, 0, 1, 1])
    xq = torch.tensor([[0.05, 0.05], [4.9, 5.1]])
    assert knn.knn_predict(get_protocol("knn5"), xtr, ytr, xq).tolist() == [0, 0]  # 5-NN majority: 3 vs 2
    p3, _ = with_overrides(get_protocol("knn5"), k=3)
    assert knn.knn_predict(p3, xtr, ytr, xq).tolist() == [0, 1]
    # weighted cosine: direction matters, not distance
    xtr = torch.tensor([[1.0, 0.0], [10.0, 0.1], [0.0, 1.0]])
    pred = knn.knn_predict(with_overrides(get_protocol("knn200"), k=2)[0], xtr, torch.tensor([0, 0, 1]),
                           torch.tensor([[0.1, 1.0]]))
    assert pred.tolist() == [1]


def test_knn_cli_records_both_rules(model_dir, folder, tmp_path, capsys):
    assert knn.main(_common(model_dir, folder, tmp_path / "k")) == 0
    records = [json.loads(p.read_text()) for p in (tmp_path / "k").glob("*.json")]
    assert sorted(r["protocol"]["name"] for r in records) == ["knn200", "knn5"]
    for r in records:
        validate_record(r)
    # one rule into one named file: exactly that file
    assert knn.main([*_common(model_dir, folder, tmp_path / "k5.json"), "--protocols", "knn5"]) == 0
    assert json.loads((tmp_path / "k5.json").read_text())["protocol"]["name"] == "knn5"
    assert knn.main(_common(model_dir, folder, tmp_path / "both.json")) == 2  # two rules, one file: refused
    assert "--out" in capsys.readouterr().err and not (tmp_path / "both.json").exists()


# ---------------------------------------------------------------------------- semi-supervised


def test_split_file_checks(folder, tmp_path, monkeypatch):
    from wssl_zoo.data import build_dataset

    train = build_dataset("imagefolder", folder, "train")
    monkeypatch.setitem(semi.IMAGENET_COUNTS, "1pct", 3)
    bad = tmp_path / "1percent.txt"
    bad.write_text("n01440764_1.JPEG\nn01440764_2.JPEG\n")
    with pytest.raises(semi.SplitFileError, match=r"2 lines, but SimCLR's ImageNet 1pct subset has 3"):
        semi.read_split_file(bad, "1pct", train)
    bad.write_text("n01440764_1.JPEG\nn01440764_2.JPEG\nn01440764_3.JPEG\n")
    with pytest.raises(semi.SplitFileError, match=r"3 listed images are not under .*n01440764_1.JPEG, n01440764_2.JPEG"):
        semi.read_split_file(bad, "1pct", train)
    with pytest.raises(FileNotFoundError, match="no such split file"):
        semi.read_split_file(tmp_path / "absent.txt", "1pct", train)
    rel = tmp_path / "rel.txt"
    rel.write_text("class0/im0.png\nclass9/im0.png\n")
    with pytest.raises(semi.SplitFileError, match=r"1 listed images are not under .*class9/im0.png"):
        semi.read_split_file(rel, "10pct", train)


def test_simclr_style_file_is_accepted_when_complete(tmp_path, monkeypatch):
    root = tmp_path / "in"
    for wnid in ("n01440764", "n01443537"):
        (root / "train" / wnid).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8)).save(root / "train" / wnid / f"{wnid}_{i}.JPEG", format="JPEG")
    from wssl_zoo.data import build_dataset

    train = build_dataset("imagefolder", root, "train")
    monkeypatch.setitem(semi.IMAGENET_COUNTS, "1pct", 2)
    f = tmp_path / "1percent.txt"
    f.write_text("n01440764_0.JPEG\nn01443537_2.JPEG\n")
    idx = semi.read_split_file(f, "1pct", train)
    assert [train.samples[i][1] for i in idx] == [0, 1]


def test_generated_split_is_class_balanced_and_deterministic(folder, tmp_path):
    from wssl_zoo.data import build_dataset

    train = build_dataset("imagefolder", folder, "train")
    a = semi.make_split_file(train, 25, 0, tmp_path / "a.txt")
    b = semi.make_split_file(train, 25, 0, tmp_path / "b.txt")
    assert a == b and (tmp_path / "a.txt").read_text() == (tmp_path / "b.txt").read_text()
    assert sorted(train.targets[i] for i in a) == [0, 0, 1, 1, 2, 2]
    assert semi.read_split_file(tmp_path / "a.txt", "10pct", train) == a


@pytest.mark.parametrize("protocol", ["semi_intl", "semi_simclr"])
def test_semi_fine_tuning_runs_and_records(model_dir, folder, tmp_path, protocol):
    out = tmp_path / "semi.json"
    assert semi.main([*_common(model_dir, folder, out), "--split", "10pct", "--make-split-file",
                      str(tmp_path / "split.txt"), "--protocol", protocol, "--epochs", "1", "--batch-size", "4"]) == 0
    record = json.loads(out.read_text())
    validate_record(record)
    assert record["task"] == "semi_10pct" and record["labelled_images"] == 3
    assert record["split_sha256"] == sha256_file(tmp_path / "split.txt")


# ---------------------------------------------------------------------------- records, benchmark, report


def test_records_validate_and_aggregate(tmp_path):
    rec = make_record(task="linear", model="m", weights_sha256="a" * 64, protocol={"name": "fast", "version": 1},
                      dataset={"name": "cifar10", "fingerprint": "x"}, seed=0, metrics={"top1": 50.0},
                      wall_seconds=1.0, command="python -m eval.linear")
    for key, bad, match in (("metrics", {"top1": float("nan")}, "metric 'top1' must be a finite number"),
                            ("weights_sha256", "abc", "'weights_sha256' must be 64 hex"),
                            ("protocol", {"name": "fast"}, "'protocol' has no 'version'")):
        with pytest.raises(ValueError, match=match):
            validate_record(dict(rec, **{key: bad}))
    with pytest.raises(ValueError, match="missing key 'seed'"):
        validate_record({k: v for k, v in rec.items() if k != "seed"})
    write_record(dict(rec, seed=0, metrics={"top1": 50.0}), tmp_path / "a.json")
    write_record(dict(rec, seed=1, metrics={"top1": 52.0}), tmp_path / "b.json")
    (tmp_path / "old.json").write_text(json.dumps({"kind": "pretrain_eval"}))  # older records are skipped
    records = read_records(tmp_path)
    assert [r["file"] for r in records] == ["a.json", "b.json"]
    stats = aggregate(records)["top1"]
    assert stats["mean"] == 51.0 and stats["std"] == pytest.approx(math.sqrt(2)) and stats["n"] == 2


def test_dataset_fingerprint_tracks_files(folder, tmp_path):
    import shutil

    from wssl_zoo.data import build_dataset

    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    a = dataset_fingerprint(build_dataset("imagefolder", folder, "train"))
    assert a == dataset_fingerprint(build_dataset("imagefolder", copy, "train"))
    (copy / "train" / "class0" / "im0.png").unlink()
    assert a != dataset_fingerprint(build_dataset("imagefolder", copy, "train"))


def test_benchmark_is_resumable_and_prints_one_table(model_dir, folder, tmp_path, capsys):
    root = tmp_path / "root"
    root.mkdir()
    (root / "imagenet").symlink_to(folder)
    argv = ["--models", f"{model_dir},random:resnet18:imagenet:32", "--tasks", "linear,knn", "--data-root", str(root),
            "--epochs", "5", "--results-dir", str(tmp_path / "res"), "--no-progress", "--workers", "0"]
    assert benchmark.main(argv) == 0
    out = capsys.readouterr().out
    assert "4 task(s) run, 0 already recorded" in out
    assert "| model | knn | linear |" in out and "| m |" in out and "| random-resnet18-imagenet-32px |" in out
    assert benchmark.main(argv) == 0
    assert "0 task(s) run, 4 already recorded (skipped)" in capsys.readouterr().out
    assert benchmark.main([*argv[:2], "--tasks", "linear,nope", *argv[4:]]) == 2
    assert "unknown task(s) ['nope']" in capsys.readouterr().err


def test_benchmark_semi_tasks_fine_tune_on_the_split_files(model_dir, folder, tmp_path, capsys):
    """semi1 / semi10 through the benchmark: each reads its split file (--split-files DIR), fine-tunes
    on exactly the listed images and writes a bench- record; a second run skips both."""
    splits = tmp_path / "splits"
    splits.mkdir()
    lists = {"1percent.txt": [f"class{c}/im0.png" for c in range(3)],
             "10percent.txt": [f"class{c}/im{i}.png" for c in range(3) for i in (1, 2)]}
    for name, lines in lists.items():
        (splits / name).write_text("\n".join(lines) + "\n")
    root = tmp_path / "root"
    root.mkdir()
    (root / "imagenet").symlink_to(folder)
    argv = ["--models", str(model_dir), "--tasks", "semi1,semi10", "--data-root", str(root), "--split-files",
            str(splits), "--epochs", "1", "--results-dir", str(tmp_path / "res"), "--no-progress", "--workers", "0"]
    assert benchmark.main(argv) == 0
    out = capsys.readouterr().out
    assert "2 task(s) run, 0 already recorded" in out and "| model | semi_10pct | semi_1pct |" in out
    records = {r["task"]: r for r in read_records(tmp_path / "res")}
    assert sorted(records) == ["semi_10pct", "semi_1pct"]
    for task, name, n in (("semi_1pct", "1percent.txt", 3), ("semi_10pct", "10percent.txt", 6)):
        rec = records[task]
        validate_record(rec)
        assert rec["file"].startswith("bench-semi") and rec["labelled_images"] == n
        assert rec["split_sha256"] == sha256_file(splits / name) and rec["protocol"]["name"] == "semi_intl+epochs=1"
    assert benchmark.main(argv) == 0
    assert "0 task(s) run, 2 already recorded (skipped)" in capsys.readouterr().out


def test_report_is_deterministic_and_updates_readme_markers(tmp_path):
    base = dict(schema_version=1, weights_sha256="a" * 64, seed=0, wall_seconds=1.0, hardware="cpu", torch="x",
                code_version="y", created="z", command="c", dataset={"name": "cifar10", "fingerprint": "f"})
    records = [dict(base, task="linear", model="m1", protocol={"name": "fast", "version": 1}, metrics={"top1": 60.0}),
               dict(base, task="linear", model="m1", seed=1, protocol={"name": "fast", "version": 1}, metrics={"top1": 62.0}),
               dict(base, task="knn", model="m2", protocol={"name": "knn5", "version": 1}, metrics={"top1": 40.0})]
    for i, r in enumerate(records):
        write_record(r, tmp_path / "res" / f"r{i}.json")
    loaded = read_records(tmp_path / "res")
    md = report.render_leaderboard(loaded)
    assert md == report.render_leaderboard(read_records(tmp_path / "res"))
    assert "| model | knn / knn5 / cifar10 | linear / fast / cifar10 |" in md
    assert "| m1 | — | 61.00 ± 1.41 (n=2) |" in md and "| m2 | 40.00 | — |" in md
    assert report.plot_data(loaded) == report.plot_data(read_records(tmp_path / "res"))
    if plots.have_matplotlib():
        png = report.render_plot(loaded, tmp_path / "a.png").read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and png == report.render_plot(loaded, tmp_path / "b.png").read_bytes()
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.START}\nold\n{report.END}\nrest\n")
    assert report.update_readme(readme, loaded) is True and "| m2 | 40.00 | — |" in readme.read_text()
    assert report.update_readme(readme, loaded) is False
    args = ["--results-dir", str(tmp_path / "res"), "--markdown", str(tmp_path / "LB.md"), "--plot",
            str(tmp_path / "lb.png"), "--readme", str(readme), "--no-cards"]
    assert report.main([*args, "--check"]) == 1
    if not plots.have_matplotlib():
        args[args.index("--plot") + 1] = ""  # no PNG to draw: check the Markdown and the README only
    assert report.main(args) == 0 and report.main([*args, "--check"]) == 0


def test_checked_in_leaderboard_is_up_to_date():
    """LEADERBOARD.md and docs/leaderboard.png match zoo/results (the README section and
    MODEL_CARDS/ are refreshed by the same command: python -m eval.report)."""
    assert report.main(["--check", "--readme", ""]) == 0, "run python -m eval.report"


# ---------------------------------------------------------------------------- spectrum


def test_effective_rank_and_spectrum():
    torch.manual_seed(0)
    x = torch.randn(20000, 8) * torch.tensor([3.0, 2, 1, 1, 1, 1, 1, 0.5])
    ev = spectrum.spectrum(x)
    assert ev[0] == pytest.approx(9.0, rel=0.05) and ev[-1] == pytest.approx(0.25, rel=0.1)
    assert spectrum.effective_rank(torch.ones(16)) == pytest.approx(16.0)
    assert spectrum.effective_rank(torch.tensor([1.0, 0, 0])) == pytest.approx(1.0)


def test_spectrum_cli_covers_backbone_and_projector(model_dir, folder, tmp_path):
    out = tmp_path / "sp.json"
    assert spectrum.main(_common(model_dir, folder, out)) == 0
    record = json.loads(out.read_text())
    validate_record(record)
    assert set(record["eigenvalues"]) == {"backbone", "projector"} and len(record["eigenvalues"]["projector"]) == 16
    assert 1.0 <= record["metrics"]["backbone_effective_rank"] <= 512
    assert record["baseline"]["model"] == "random:resnet18:imagenet:32" and len(record["baseline"]["eigenvalues"]["backbone"]) == 512
    if plots.have_matplotlib():
        assert out.with_suffix(".png").read_bytes().startswith(b"\x89PNG")
        assert set(plots.png_data(out.with_suffix(".png"))["series"]["backbone"]) == {
            record["model_label"], record["baseline"]["model_label"]}


@pytest.mark.slow
@pytest.mark.gloo
def test_torchrun_extraction_gathers_the_same_features_as_one_process(folder, tmp_path):
    """2 processes = 1 process for feature extraction: two gloo processes each write the shard of their
    block of rows to the cache, and every rank that asks for the whole matrix reads the same features,
    in order, as one process extracts (torchrun's environment from tests/warm.py)."""
    import warm
    from eval.features import cached_features
    from wssl_zoo.weights import resolve

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
    run = warm.torchrun(2, [str(script), str(folder), str(tmp_path / "c"), str(tmp_path / "out")], cwd=repo,
                        timeout=300, env={**__import__("os").environ, "PYTHONPATH": str(repo)})
    assert run.returncode == 0, run.stderr[-2000:]
    w = resolve("random:resnet18:imagenet:32")
    x, y, _ = cached_features(w, w.build(), "imagefolder", str(folder), "train",
                              torch.device("cpu"), str(tmp_path / "single"), workers=0, progress=False)
    for rank in (0, 1):
        xr, yr = torch.load(tmp_path / f"out.{rank}")
        assert torch.equal(yr, y) and torch.allclose(xr, x, atol=1e-6)
    (index,) = (tmp_path / "c").glob("*/index.json")
    assert [(s["start"], s["stop"]) for s in json.loads(index.read_text())["shards"]] == [(0, 12), (12, 24)]
