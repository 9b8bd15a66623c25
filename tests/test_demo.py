"""The README's main command on a tiny generated ImageFolder (the real default is timed by hand:
see README)."""

from __future__ import annotations

import json

import pytest

from wssl_zoo.demo import main

from test_pretrain import make_imagefolder


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
