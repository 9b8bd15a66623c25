"""Nothing lost, nothing mixed: write-once output folders, records that cannot collide, the
paths module, and ``--resume`` from the saved configuration (issue 13).

The first three tests are the data-loss cases of the issue; each failed on the code before it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

import wssl_zoo
from wssl_zoo.cli import main as zoo_main
from wssl_zoo.demo import main as demo_main
from wssl_zoo.modelio import save_model_dir
from wssl_zoo.outdir import MARKER, OutputDirError, claim, read_marker

REPO = Path(__file__).resolve().parent.parent


def tree_hash(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (relative path -> digest)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


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


# ---------------------------------------------------------------------------- the three data-loss cases


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
    from test_pretrain import make_imagefolder

    data = make_imagefolder(tmp_path / "d", classes=2, per_class=64, val=2, size=32)
    code = demo_main(["--dataset", "imagefolder", "--data", str(data), "--out", str(out), "--epochs", "1",
                      "--steps-per-epoch", "1", "--batch-size", "128", "--train-subset", "128", "--bank", "8",
                      "--queries", "4", "--workers", "0", "--arch", "test_resnet"])
    assert code == 0 and read_marker(out)["tool"] == "demo" and read_marker(out)["job"] != {"earlier": True}
    assert json.loads((out / "demo_results.json").read_text())["results"]  # the new run's, not "{}"


def test_convert_into_an_existing_model_dir_is_refused_and_overwrite_leaves_no_stale_files(tmp_path, capsys):
    from test_convert import authors_resnet

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


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    from test_eval import colour_folder

    return colour_folder(tmp_path_factory.mktemp("data") / "tiny", train=4, val=2)


def _model(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    save_model_dir(path, wssl_zoo.create("resnet18"), arch="resnet18", stem="imagenet", mean=(0.5,) * 3,
                   std=(0.25,) * 3, img_size=32)
    return path


def test_records_of_two_models_with_the_same_folder_name_do_not_collide(tmp_path, tiny_folder, monkeypatch):
    from eval.knn import main as knn_main
    from eval.records import read_records

    monkeypatch.setenv("WSSL_ZOO_CACHE", str(tmp_path / "cache"))
    a, b = _model(tmp_path / "run1", 0), _model(tmp_path / "other" / "run1", 1)
    results = tmp_path / "res"
    for model in (a, b):
        assert knn_main(["--model", str(model), "--data", str(tiny_folder), "--results-dir", str(results),
                         "--protocols", "knn5", "--no-progress", "--workers", "0"]) == 0
    records = read_records(results)
    assert len(records) == 2 and len({r["weights_sha256"] for r in records}) == 2
    assert all(r["file"].startswith("knn_run1_knn5_imagefolder_seed0_") for r in records)


# ---------------------------------------------------------------------------- records


def _record(**over):
    from eval.records import make_record

    base = dict(task="linear", model="m", weights_sha256="a" * 64, protocol={"name": "fast", "version": 1},
                dataset={"name": "cifar10", "fingerprint": "f"}, seed=0, metrics={"top1": 50.0},
                wall_seconds=1.0, command="c")
    return make_record(**{**base, **over})


def test_a_record_never_replaces_one_of_another_identity(tmp_path):
    from eval.records import record_identity, write_record

    path = tmp_path / "r.json"
    write_record(_record(), path)
    write_record(_record(metrics={"top1": 51.0}), path)  # the same measurement again: replaced
    assert json.loads(path.read_text())["metrics"]["top1"] == 51.0
    before = path.read_bytes()
    for other in (_record(weights_sha256="b" * 64), _record(seed=1), _record(protocol={"name": "fast+epochs=1",
                  "version": 1}), _record(dataset={"name": "cifar10", "fingerprint": "g"})):
        assert record_identity(other) != record_identity(_record())
        with pytest.raises(ValueError, match="holds another measurement .* refusing to replace it"):
            write_record(other, path)
    assert path.read_bytes() == before
    path.write_text("{ not json")
    with pytest.raises(ValueError, match="is not a record; refusing"):
        write_record(_record(), path)


def test_undefined_metrics_are_one_rule_for_every_writer(tmp_path):
    from eval.records import read_records, write_record

    rec = _record(metrics={"bbox_AP": 1.5, "bbox_APs": float("nan"), "segm_APl": None})
    assert rec["metrics"] == {"bbox_AP": 1.5} and rec["undefined_metrics"] == ["bbox_APs", "segm_APl"]
    write_record(rec, tmp_path / "r.json")
    assert read_records(tmp_path)[0]["undefined_metrics"] == ["bbox_APs", "segm_APl"]


def test_report_skips_records_with_overrides_or_subsets(tmp_path, capsys):
    from eval import report
    from eval.records import write_record

    res = tmp_path / "res"
    write_record(_record(), res / "full.json")
    write_record(_record(protocol={"name": "fast+train_subset=100", "version": 1, "train_subset": 100}),
                 res / "subset.json")
    md = tmp_path / "L.md"
    assert report.main(["--results-dir", str(res), "--markdown", str(md), "--plot", str(tmp_path / "p.png"),
                        "--readme", "", "--no-cards"]) == 0
    assert "skipped subset.json: protocol 'fast' with train_subset=100" in capsys.readouterr().err
    text = md.read_text()
    assert "fast+train_subset" not in text and "1 records with protocol overrides or subsets are not shown" in text


# ---------------------------------------------------------------------------- paths


def test_paths_use_the_checkout_else_the_environment_else_the_current_directory(tmp_path, monkeypatch):
    from wssl_zoo import paths

    monkeypatch.delenv(paths.HOME_ENV, raising=False)
    assert paths.checkout() == REPO and paths.zoo_results_dir() == REPO / "zoo" / "results"
    monkeypatch.setenv(paths.HOME_ENV, str(tmp_path))
    assert paths.cards_dir() == tmp_path / "MODEL_CARDS" and paths.leaderboard_path() == tmp_path / "LEADERBOARD.md"
    monkeypatch.delenv(paths.HOME_ENV)
    monkeypatch.setattr(paths, "PACKAGE_DIR", tmp_path / "site-packages" / "wssl_zoo")  # an installed package
    monkeypatch.chdir(tmp_path)
    assert paths.checkout() is None and paths.workspace() == tmp_path
    monkeypatch.delenv(paths.RESULTS_ENV)
    assert paths.results_dir() == tmp_path / "results" and paths.results_dir("x") == Path("x")


def test_only_the_paths_module_locates_the_checkout():
    """No module finds the checkout from its own ``__file__`` (``.parent.parent``); reading package
    data next to a module (``detection/configs``) is fine."""
    import re

    offenders = [str(p.relative_to(REPO)) for d in ("wssl_zoo", "eval", "detection") for p in sorted((REPO / d).rglob("*.py"))
                 if re.search(r"__file__\)?(\.resolve\(\))?\.parent\.parent", p.read_text())]
    assert offenders == []


# ---------------------------------------------------------------------------- write-once folders


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


def test_pretrain_overwrite_and_resume_exclude_each_other(tmp_path):
    from wssl_zoo.pretrain.loop import RunOptions, pretrain
    from wssl_zoo.pretrain.recipes import get_recipe

    with pytest.raises(ValueError, match="--resume and --overwrite exclude each other"):
        pretrain(get_recipe("wmse_cifar10_2views"), RunOptions(out=tmp_path, resume=True, overwrite=True))


# ---------------------------------------------------------------------------- validate before work


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
