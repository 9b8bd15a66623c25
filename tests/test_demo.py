"""The README's main command on a tiny generated ImageFolder (the real default is timed by hand:
see README)."""

from __future__ import annotations

import json

import pytest

from wssl_zoo.demo import main

from builders import make_imagefolder


@pytest.mark.slow
def test_demo_runs_end_to_end_and_prints_the_table(tmp_path, capsys):
    data = make_imagefolder(tmp_path / "d", classes=3, per_class=44, val=8)
    out = tmp_path / "demo"
    code = main(["--dataset", "imagefolder", "--data", str(data), "--out", str(out), "--epochs", "1",
                 "--steps-per-epoch", "5", "--batch-size", "128", "--train-subset", "132", "--bank", "66",
                 "--queries", "24", "--workers", "0"])
    assert code == 0
    text = capsys.readouterr().out
    assert "| random init |" in text and "| wmse pretrained |" in text
    # --steps-per-epoch is a cap: 132 images in batches of 128 make one step, and the demo says so
    assert "pretraining 1 x 1 steps in" in text
    record = json.loads((out / "demo_results.json").read_text())
    assert record["steps_per_epoch"] == 1
    assert set(record["results"]) == {"random init", "wmse pretrained"}
    for r in record["results"].values():
        assert 0 <= r["linear_top1"] <= 100 and r["queries"] == 24


def test_demo_missing_data_is_a_clear_error(tmp_path, capsys):
    code = main(["--dataset", "fashion_mnist", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "apt-get install dataset-fashion-mnist" in capsys.readouterr().err


def test_the_default_demo_makes_the_steps_it_announces():
    """The README's "2 x 120 steps of 256 images": the default class-balanced subset of Fashion-MNIST's
    10 x 6,000 training images holds exactly steps_per_epoch full batches (it held 117 when the
    subset was 30,000). The subset is drawn by the loop's own rule (balanced_subset)."""
    from wssl_zoo.data.datasets import balanced_subset
    from wssl_zoo.demo import DEFAULTS

    targets = [c for c in range(10) for _ in range(6000)]
    subset = balanced_subset(targets, max(1, DEFAULTS["train_subset"] // 10), seed=0)
    assert len(subset) // DEFAULTS["batch_size"] == DEFAULTS["steps_per_epoch"] == 120


@pytest.mark.slow
def test_ctrl_c_stops_the_demo_with_its_resume_command_and_resume_finishes_it(tmp_path, capsys, monkeypatch):
    """Ctrl-C during the demo's pretraining: the step finishes, the checkpoint is written, one line says
    how to resume (exit status 75, no traceback); that command finishes the demo."""
    import os
    import signal

    from wssl_zoo.pretrain import loop

    data = make_imagefolder(tmp_path / "d", classes=2, per_class=64, val=8, size=32)
    args = ["--dataset", "imagefolder", "--data", str(data), "--out", str(tmp_path / "demo"), "--epochs", "2",
            "--steps-per-epoch", "1", "--batch-size", "128", "--train-subset", "128", "--bank", "16",
            "--queries", "8", "--workers", "0", "--arch", "test_resnet"]
    real = loop._log_step

    def ctrl_c_at_step_1(run, *rest):
        real(run, *rest)
        if run.global_step == 1:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(loop, "_log_step", ctrl_c_at_step_1)
    assert main(args) == 75
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == (
        f"wssl-zoo demo: stopped by SIGINT after epoch 1 (global step 1); checkpoint written to "
        f"{tmp_path / 'demo' / 'checkpoints' / 'last.pt'}. Resume with: python -m wssl_zoo.demo {' '.join(args)} "
        "--resume  (exit status 75)")
    monkeypatch.setattr(loop, "_log_step", real)
    assert main([*args, "--resume"]) == 0
    out = capsys.readouterr().out
    assert "resuming from" in out and "| wmse pretrained |" in out and "pretraining 2 x 1 steps in" in out


def test_the_demo_estimates_its_evaluation_in_training_steps(capsys):
    """After its first steps the demo prints the pretraining left and the evaluation after it, both from
    the measured time per step (the default demo: 240 steps, then 2 x 7,000 images through the backbone)."""
    import argparse

    from wssl_zoo.demo import DEFAULTS, _print_estimate, eval_steps_equivalent
    from wssl_zoo.pretrain.recipes import resolve_recipe

    args = argparse.Namespace(**DEFAULTS)
    recipe = resolve_recipe("wmse_cifar10_2views")
    assert eval_steps_equivalent(args, 2) == pytest.approx(2 * 7000 / (3 * 256 * 2))
    _print_estimate(args, recipe, 0.5, 229)
    assert capsys.readouterr().out.strip() == ("estimated time left: about 1 min 59 s (1 min 54 s of pretraining at "
                                               "0.50 s per step, then about 5 s of evaluation)")
