"""The pretraining engine on tiny generated images: every method, resume after SIGKILL, DDP,
bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wssl_zoo.pretrain.loop import RunOptions, TrainingStopped, pretrain
from wssl_zoo.pretrain.recipes import resolve_recipe
from wssl_zoo.runlog import read_log

from builders import make_imagefolder

# timm's test_resnet (370k parameters, 96 features): a ResNet like resnet18, 30x fewer weights
SMALL = {"arch": "test_resnet", "stem": "imagenet", "img_size": 32, "dataset": "imagefolder",
         "projector.hidden_dim": 64}
CASES = {
    "wmse": ("wmse_cifar10_2views", {"batch_size": 32, "loss.w_size": 16, "projector.out_dim": 8}),
    "cwrgp": ("cwrgp_cifar10", {"batch_size": 16, "loss.w_size": 8, "loss.groups": 2, "projector.out_dim": 32}),
    "intl": ("intl_cifar10", {"batch_size": 16, "projector.out_dim": 64}),
    "intl_m": ("intl_m_imagenet", {"batch_size": 16, "projector.out_dim": 64, "img_size": 64}),
}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return make_imagefolder(tmp_path_factory.mktemp("data"))


def _recipe(case: str, **extra):
    base, overrides = CASES[case]
    return resolve_recipe(base, {**SMALL, **overrides, "epochs": 2, **extra})


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_two_epoch_cpu_run_per_method(tmp_path, tiny_data, case):
    out = tmp_path / "run"
    summary = pretrain(_recipe(case), RunOptions(out=out, data=str(tiny_data), workers=0, eval_every=1,
                                                 progress=False, monitor_samples=18))
    assert summary["epoch"] == 2 and np.isfinite(summary["loss"])
    log = read_log(out / "log.jsonl", kind="epoch")
    assert [r["epoch"] for r in log] == [1, 2]
    assert 0 <= log[-1]["monitor_knn_cos"] <= 100 and log[-1]["effective_rank"] > 0
    import wssl_zoo

    model = wssl_zoo.load(out)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 96)  # test_resnet's num_features
    cfg = json.loads((out / "train_config.json").read_text())
    assert cfg["recipe"]["method"] == case.split("_")[0] and (out / "projector.safetensors").is_file()


DDP_RUN = ["--recipe", "intl_cifar10", "--dataset", "imagefolder", "--arch", "test_resnet", "--stem", "imagenet",
           "--img-size", "32", "--epochs", "1", "--batch-size", "16", "--set", "projector.num_layers=1",
           "--set", "projector.out_dim=32", "--workers", "0", "--eval-every", "0", "--no-progress", "--device", "cpu"]
# W-MSE whitens per process unless --gather yes: with w_size 16 only the gathered 2 x 8 batch works
WMSE_DDP_RUN = [*DDP_RUN[DDP_RUN.index("--dataset"):], "--recipe", "wmse_cifar10_2views", "--set", "loss.w_size=16",
                "--set", "projector.out_dim=8"]


@pytest.mark.slow
@pytest.mark.gloo
def test_ddp_two_gloo_processes_agree_with_one_process_on_the_concatenated_batch(tmp_path, tiny_data, monkeypatch):
    """torchrun with 2 gloo processes (8 images each) ends with the weights and logged losses of one
    process on the same 16 images per step: INTL whitens over the gathered global batch and DDP
    averages the gradients. ``--gather no`` (per-process whitening) does not agree, so the gather
    is what makes them equal. Measured 2026-12-02: max |weight difference| 1.2e-7 gathered, 2.4e-3
    with --gather no; losses 0.6478689 / 0.6478692 / 0.354. W-MSE (per process by default) with
    ``--gather yes``: the loss of one process on the 16 images (1.72990974 / 1.72990998); its
    weights are not compared: Adam moves each weight by about the learning rate (1.8e-5 in this
    warm-up) whatever the gradient's size, so float rounding in near-zero gradients shows at the
    size of the whole update. The backbone's BatchNorms are GroupNorms
    (tests/bn_free_pretrain.py: on the CPU each rank's BatchNorm would see only its own half of the
    batch) and the projector is one Linear layer (no BatchNorm); the rest is the real CLI and loop."""
    import bn_free_pretrain
    from safetensors.torch import load_file

    from wssl_zoo import encoders
    from wssl_zoo.pretrain.cli import main as pretrain_main

    import warm

    data = ["--data", str(tiny_data)]
    with monkeypatch.context() as mp:
        mp.setattr(encoders, "create_backbone", bn_free_pretrain.create_groupnorm_backbone)
        assert pretrain_main([*DDP_RUN, *data, "--out", str(tmp_path / "one")]) == 0
        assert pretrain_main([*WMSE_DDP_RUN, *data, "--out", str(tmp_path / "wmse-one")]) == 0
    script = Path(bn_free_pretrain.__file__)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(script.parent.parent),
                                                                           os.environ.get("PYTHONPATH", "")]))
    for name, run_args in (("ddp", DDP_RUN), ("ddp-no-gather", [*DDP_RUN, "--gather", "no"]),
                           ("wmse-ddp-gather", [*WMSE_DDP_RUN, "--gather", "yes"])):
        command = [str(script), *run_args, *data, "--out", str(tmp_path / name)]
        if name == "ddp":  # the real launcher once; the other two runs get torchrun's environment warm
            proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                                   "2", *command], capture_output=True, text=True, timeout=600, env=env)
        else:
            proc = warm.torchrun(2, command, env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    cfg = json.loads((tmp_path / "ddp" / "train_config.json").read_text())
    assert cfg["world_size"] == 2 and cfg["local_batch"] == 8 and cfg["gather_distributed"] is True
    assert json.loads((tmp_path / "ddp" / "summary.json").read_text())["global_step"] == 3
    assert json.loads((tmp_path / "ddp-no-gather" / "train_config.json").read_text())["gather_distributed"] is False

    def run(name):
        log = read_log(tmp_path / name / "log.jsonl", kind="epoch")
        weights = {**load_file(tmp_path / name / "model.safetensors"),
                   **{f"projector.{k}": v for k, v in load_file(tmp_path / name / "projector.safetensors").items()}}
        return log[0]["loss"], weights

    (loss_one, one), (loss_ddp, ddp), (loss_local, local) = run("one"), run("ddp"), run("ddp-no-gather")
    assert loss_ddp == pytest.approx(loss_one, rel=1e-5)
    assert one.keys() == ddp.keys()
    for k in one:
        torch.testing.assert_close(ddp[k], one[k], rtol=0, atol=1e-5, msg=k)
    assert abs(loss_local - loss_one) > 1e-2
    assert max((local[k] - one[k]).abs().max().item() for k in one) > 1e-4
    assert json.loads((tmp_path / "wmse-ddp-gather" / "train_config.json").read_text())["gather_distributed"] is True
    assert run("wmse-ddp-gather")[0] == pytest.approx(run("wmse-one")[0], rel=1e-6)


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tmp_path, tiny_data, monkeypatch):
    from wssl_zoo.losses import WMSELoss

    calls = {"n": 0}
    real = WMSELoss._loss

    def flaky(self, h):
        calls["n"] += 1
        loss = real(self, h)
        return loss * float("nan") if calls["n"] == 5 else loss

    monkeypatch.setattr(WMSELoss, "_loss", flaky)
    out = tmp_path / "run"
    with pytest.raises(TrainingStopped, match=r"non-finite loss \(nan\) at epoch 2, step 2 \(global step 5\)"):
        pretrain(_recipe("wmse", batch_size=16), RunOptions(out=out, data=str(tiny_data), workers=0, eval_every=0,
                                                           progress=False))
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and state["step"] == 3  # the end of the good first epoch
    assert not (out / "model.safetensors").exists()


def test_existing_run_is_not_overwritten_without_resume(tmp_path, tiny_data):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.pt").write_bytes(b"x")
    with pytest.raises(ValueError, match="already holds a run .* pass --resume"):
        pretrain(_recipe("wmse"), RunOptions(out=out, data=str(tiny_data), workers=0, progress=False))


def test_corrupt_grayscale_and_cmyk_images_are_handled(tmp_path):
    data = make_imagefolder(tmp_path / "d", classes=2, per_class=16, val=4)
    Image.fromarray(np.full((40, 40), 128, np.uint8), mode="L").save(data / "train" / "c0" / "gray.jpg")
    Image.new("CMYK", (40, 40), (10, 200, 30, 0)).save(data / "train" / "c1" / "cmyk.jpg")
    (data / "train" / "c0" / "corrupt.jpg").write_bytes(b"not a jpeg at all")
    good = (data / "train" / "c1" / "0.jpg").read_bytes()
    (data / "train" / "c1" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        summary = pretrain(_recipe("wmse", epochs=1, batch_size=16),
                           RunOptions(out=tmp_path / "run", data=str(data), workers=0, eval_every=0, progress=False))
    assert np.isfinite(summary["loss"])


def test_bad_input_gives_clear_errors(tmp_path, tiny_data):
    empty = make_imagefolder(tmp_path / "e", classes=2, per_class=4, val=2)
    (empty / "train" / "c_empty").mkdir()
    cases = [
        (dict(), tmp_path / "missing", r"dataset root .*missing does not exist"),
        (dict(), empty, r"class folder .*c_empty holds no images"),
        (dict(batch_size=24), tiny_data, r"batch_size=24 is not a multiple of loss.w_size=16"),
        (dict(batch_size=128, **{"loss.w_size": 128}), tiny_data, r"60 images, fewer than one global batch of 128"),
    ]
    for extra, data, match in cases:
        with pytest.raises((ValueError, FileNotFoundError), match=match):
            pretrain(_recipe("wmse", **extra), RunOptions(out=tmp_path / "o", data=str(data), workers=0, progress=False))


def test_a_refused_start_leaves_no_out_folder(tmp_path, tiny_data):
    """Inputs are checked and the data is read before --out is claimed: a refused start leaves no folder,
    not even the marker, with or without --resume (one command for the first start and every requeue)."""
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    few = tmp_path / "few"
    shutil.copytree(make_imagefolder(tmp_path / "made", classes=2, per_class=8, val=2) / "train", few / "train")
    cases = [
        (dict(), dict(data=str(empty)), r"empty.train|no class folders|holds no"),
        (dict(), dict(data=str(few)), r"16 images, fewer than one global batch of 32"),
        (dict(), dict(data=str(few), resume=True), r"16 images, fewer than one global batch of 32"),
        # a recipe/data mismatch: CIFAR-10 read from a folder of images without its test split
        (dict(dataset="cifar10", batch_size=16), dict(data=str(few), eval_every=1), r"pass --dataset imagefolder"),
    ]
    for i, (recipe, options, match) in enumerate(cases):
        out = tmp_path / f"out{i}"
        with pytest.raises((ValueError, FileNotFoundError), match=match):
            pretrain(_recipe("wmse", **recipe), RunOptions(out=out, workers=0, progress=False, **options))
        assert not out.exists(), f"case {i} left {sorted(p.name for p in out.iterdir())}"


def test_resume_refuses_a_foreign_folder_and_says_when_it_starts_fresh(tmp_path, tiny_data, capsys):
    from wssl_zoo.outdir import OutputDirError

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    opts = dict(data=str(tiny_data), workers=0, eval_every=0, progress=False, resume=True)
    with pytest.raises(OutputDirError, match=r"the folder is not empty \(notes.txt; not made by wssl-zoo\)"):
        pretrain(_recipe("wmse", epochs=1, batch_size=16), RunOptions(out=foreign, **opts))
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    pretrain(_recipe("wmse", epochs=1, batch_size=16), RunOptions(out=empty, **opts))
    assert f"--resume: nothing to resume in {empty} (a missing or empty folder); starting a new run" in \
        capsys.readouterr().out
    assert read_log(empty / "log.jsonl", kind="start")[0]["fresh"] == "--resume found a missing or empty folder"


def test_keep_every_keeps_loadable_backbone_snapshots(tmp_path, tiny_data):
    """--keep-every 2 of a 4-epoch run: OUT/snapshots/epoch_0002 and epoch_0004, each a model directory
    (backbone only: no projector, no optimiser state) that wssl_zoo.load reads; the last is the final model."""
    import wssl_zoo
    from wssl_zoo.pretrain.loop import snapshot_dir

    out = tmp_path / "run"
    pretrain(_recipe("wmse", epochs=4, batch_size=16),
             RunOptions(out=out, data=str(tiny_data), workers=0, eval_every=0, progress=False, keep_every=2))
    assert sorted(p.name for p in (out / "snapshots").iterdir()) == ["epoch_0002", "epoch_0004"]
    for epoch in (2, 4):
        snap = snapshot_dir(out, epoch)
        assert sorted(p.name for p in snap.iterdir()) == ["config.json", "model.safetensors"]
        meta = json.loads((snap / "config.json").read_text())["wssl_zoo"]
        assert (meta["epochs"], meta["schedule_epochs"], meta["method"]) == (epoch, 4, "wmse")
        assert wssl_zoo.load(snap)(torch.randn(2, 3, 32, 32)).shape == (2, 96)
    assert (snapshot_dir(out, 4) / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()
    assert (snapshot_dir(out, 2) / "model.safetensors").read_bytes() != (out / "model.safetensors").read_bytes()


def test_cli_errors_exit_2_with_one_line(tmp_path, capsys):
    # in-process (python -m wssl_zoo.pretrain is the same main: test_api.test_python_dash_m_runs_the_cli)
    from wssl_zoo.pretrain.cli import main

    code = main(["--recipe", "intl_cifar", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "did you mean intl_cifar10" in err and "Traceback" not in err
    assert main(["--list-recipes"]) == 0
    out = capsys.readouterr().out
    assert "intl_m_imagenet" in out and "cwrgp_cifar10_2views" in out


def test_a_non_resnet_timm_backbone_trains_and_a_resnet_init_on_it_is_a_named_error(tmp_path, tiny_data, capsys):
    """timm models outside the ResNet family take no ``zero_init_last``: a recipe without the authors'
    zero-init trains on one (it used to be a TypeError traceback), one with it names the setting."""
    summary = pretrain(_recipe("wmse", arch="test_convnext", epochs=1),
                       RunOptions(out=tmp_path / "convnext", data=str(tiny_data), workers=0, eval_every=0, progress=False))
    assert summary["epoch"] == 1 and np.isfinite(summary["loss"])
    with pytest.raises(ValueError, match=r"zero_init_residual=True .* 'test_convnext' has no zero_init_last; "
                                         r"add --set zero_init_residual=false"):
        pretrain(_recipe("cwrgp", arch="test_convnext", epochs=1),
                 RunOptions(out=tmp_path / "c2", data=str(tiny_data), workers=0, eval_every=0, progress=False))
    # print_recipes reads sys.stdout when called, so in-process capture sees the table
    from wssl_zoo.pretrain.cli import print_recipes

    print_recipes()
    assert "cwrgp_cifar10_2views" in capsys.readouterr().out


def test_distributed_on_cpu_warns_that_batchnorm_is_per_process(monkeypatch):
    """No SyncBatchNorm without CUDA: a CPU DDP run says its BatchNorms see only their process's batch."""
    from torch import nn

    from wssl_zoo.pretrain import loop

    monkeypatch.setattr(nn.parallel, "DistributedDataParallel", lambda model, device_ids=None: model)
    opts = RunOptions(out=Path("unused"))

    def wrap(model):
        run = loop._Run(recipe=None, opts=opts, out=Path("unused"), rank=0, world=2, device=torch.device("cpu"),
                        local_batch=8, gather=True, dataset="imagefolder", model=model, core=model)
        loop._wrap_distributed(run)

    with pytest.warns(UserWarning, match=r"SyncBatchNorm needs CUDA, so each of the 2 processes normalises"):
        wrap(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        wrap(nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4)))  # nothing to say without BatchNorm
