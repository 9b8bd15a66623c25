"""Nothing is lost on a wrong command: the output-folder rules (claim, --overwrite, --resume), the demo
and the converter never delete what they did not write, and a resume takes its data and options from
the run's train_config.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import wssl_zoo
from wssl_zoo.cli import main as zoo_main
from wssl_zoo.demo import main as demo_main
from wssl_zoo.modelio import save_model_dir
from wssl_zoo.outdir import MARKER, OutputDirError, claim, read_marker

from builders import authors_resnet, make_imagefolder, tree_hash


def fake_pretraining_run(out: Path) -> Path:
    """A pretraining output as ``wssl-zoo pretrain`` leaves it (weights, config, checkpoint, log)."""
    torch.manual_seed(0)
    save_model_dir(out, wssl_zoo.create("resnet18"), arch="resnet18", stem="imagenet", mean=(0.5,) * 3,
                   std=(0.25,) * 3, img_size=32)
    (out / "train_config.json").write_text(json.dumps({"recipe": {"name": "wmse_cifar10"}, "options": {}}))
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "last.pt").write_bytes(b"weeks of training")
    (out / "log.jsonl").write_text('{"step": 1}\n')
    return out


def test_claim_rules(tmp_path):
    out = tmp_path / "o"
    assert claim(out, "tool", {"a": 1}) == "new" and read_marker(out)["job"] == {"a": 1}
    (out / "f").write_text("x")
    assert claim(out, "tool", {"a": 1}) == "same"
    with pytest.raises(OutputDirError, match=r"--out .*o: the folder is not empty \(f; made by tool for another job\)"):
        claim(out, "tool", {"a": 2})
    with pytest.raises(OutputDirError, match="made by tool\\);"):
        claim(out, "other", {"a": 1})
    assert claim(out, "tool", {"a": 2}, resume=True) == "same"
    assert claim(out, "tool", {"a": 2}, overwrite=True) == "replaced" and not (out / "f").exists()
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "x").write_text("1")
    # a folder no wssl-zoo tool made is refused with --resume as without it, and --resume is not offered
    # (issue 25: it was the one path around the write-once rule)
    for resume in (False, True):
        with pytest.raises(OutputDirError, match="not made by wssl-zoo\\); pass --overwrite") as refused:
            claim(plain, "pretrain", {}, hint="resume", resume=resume)
        assert "--resume" not in str(refused.value)
    (out / "f").write_text("x")  # out is tool's folder for job {"a": 2} again
    with pytest.raises(OutputDirError, match="pass --resume to continue it"):  # offered for this tool's folder
        claim(out, "tool", {"a": 3}, hint="resume")
    # one command serves the first start and every requeue: --resume in a missing or empty folder starts fresh
    assert claim(tmp_path / "missing", "pretrain", {}, resume=True) == "new"
    (tmp_path / "empty").mkdir()
    assert claim(tmp_path / "empty", "pretrain", {}, resume=True) == "new"
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputDirError, match="exists and is not a folder"):
        claim(tmp_path / "file", "t", {})


def test_demo_does_not_delete_a_pretraining_run(tmp_path, capsys):
    run = fake_pretraining_run(tmp_path / "run")
    before = tree_hash(run)
    code = demo_main(["--dataset", "imagefolder", "--data", str(tmp_path / "nodata"), "--out", str(run)])
    err = capsys.readouterr().err
    assert code == 2 and f"--out {run}: the folder is not empty" in err and "checkpoints/" in err
    assert "--overwrite" in err and "\n" not in err.strip()
    assert tree_hash(run) == before


def test_demo_replaces_only_its_own_earlier_run(tmp_path):
    out = tmp_path / "demo"
    claim(out, "demo", {"earlier": True})
    (out / "demo_results.json").write_text("{}")
    # the data is checked before the folder is taken over: a refused start leaves the earlier run as it was
    # (issue 25; until then the old files were deleted before the data error stopped the run)
    code = demo_main(["--dataset", "imagefolder", "--data", str(tmp_path / "nodata"), "--out", str(out)])
    assert code == 2 and (out / "demo_results.json").exists() and read_marker(out)["job"] == {"earlier": True}
    data = make_imagefolder(tmp_path / "d", classes=2, per_class=64, val=2, size=32)
    code = demo_main(["--dataset", "imagefolder", "--data", str(data), "--out", str(out), "--epochs", "1",
                      "--steps-per-epoch", "1", "--batch-size", "128", "--train-subset", "128", "--bank", "8",
                      "--queries", "4", "--workers", "0", "--arch", "test_resnet"])
    assert code == 0 and read_marker(out)["tool"] == "demo" and read_marker(out)["job"] != {"earlier": True}
    assert json.loads((out / "demo_results.json").read_text())["results"]  # the new run's, not "{}"


def test_convert_into_an_existing_model_dir_is_refused_and_overwrite_leaves_no_stale_files(tmp_path, capsys):
    run = fake_pretraining_run(tmp_path / "model")
    from wssl_zoo.heads import Projector
    from wssl_zoo.modelio import save_model_dir as save

    save(run, wssl_zoo.create("resnet18"), arch="resnet18", stem="imagenet", mean=(0.5,) * 3, std=(0.25,) * 3,
         img_size=32, projector=Projector(512, 32, 16, 2))  # a run with a projector
    torch.save(authors_resnet("resnet18", "imagenet", 3).state_dict(), tmp_path / "bare.pth")
    before = tree_hash(run)
    argv = ["convert", "--from", "official-intl", str(tmp_path / "bare.pth"), "--out", str(run)]
    assert zoo_main(argv) == 2
    err = capsys.readouterr().err
    assert f"--out {run}: the folder is not empty" in err and "projector.safetensors" in err
    assert tree_hash(run) == before
    assert zoo_main(argv + ["--overwrite"]) == 0
    capsys.readouterr()
    left = sorted(p.name for p in run.iterdir())
    assert left == sorted([MARKER, "config.json", "convert.json", "model.safetensors"]), left
    staging = tmp_path / "st"
    assert zoo_main(["publish", str(run), "--repo", "someone/r18", "--dry-run", "--staging", str(staging)]) == 0
    staged = sorted(p.name for p in staging.iterdir())
    assert "projector.safetensors" not in staged and "train_config.json" not in staged
    assert MARKER not in (staging / "SHA256SUMS").read_text()
    # the same conversion again into its own folder is fine; publish re-stages its own staging
    assert zoo_main(argv) == 0
    assert zoo_main(["publish", str(run), "--repo", "someone/r18", "--dry-run", "--staging", str(staging)]) == 0


def test_pretrain_overwrite_and_resume_exclude_each_other(tmp_path):
    from wssl_zoo.pretrain.loop import RunOptions, pretrain
    from wssl_zoo.pretrain.recipes import get_recipe

    with pytest.raises(ValueError, match="--resume and --overwrite exclude each other"):
        pretrain(get_recipe("wmse_cifar10_2views"), RunOptions(out=tmp_path, resume=True, overwrite=True))


def test_resume_takes_data_and_options_from_train_config(tmp_path, monkeypatch):
    from wssl_zoo.pretrain import cli

    out = tmp_path / "run"
    out.mkdir()
    (out / "train_config.json").write_text(json.dumps({"recipe": {}, "options": {
        "data": "/d/cifar", "seed": 3, "steps_per_epoch": 5, "amp": "bf16"}}))
    parser = __import__("argparse").ArgumentParser()
    cli.add_arguments(parser)
    opts = cli.run_options(parser.parse_args(["--out", str(out), "--resume"]))
    assert (opts["data"], opts["seed"], opts["steps_per_epoch"], opts["amp"]) == ("/d/cifar", 3, 5, "bf16")
    opts = cli.run_options(parser.parse_args(["--out", str(out), "--resume", "--seed", "4"]))
    assert opts["seed"] == 4
    opts = cli.run_options(parser.parse_args(["--out", str(out), "--recipe", "x"]))
    assert (opts["data"], opts["seed"]) == (None, 0)
