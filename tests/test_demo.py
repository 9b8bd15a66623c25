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
                 "--steps-per-epoch", "1", "--batch-size", "128", "--train-subset", "132", "--bank", "66",
                 "--queries", "24", "--workers", "0"])
    assert code == 0
    text = capsys.readouterr().out
    assert "| random init |" in text and "| wmse pretrained |" in text
    record = json.loads((out / "demo_results.json").read_text())
    assert set(record["results"]) == {"random init", "wmse pretrained"}
    for r in record["results"].values():
        assert 0 <= r["linear_top1"] <= 100 and r["queries"] == 24


def test_demo_missing_data_is_a_clear_error(tmp_path, capsys):
    code = main(["--dataset", "fashion_mnist", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "apt-get install dataset-fashion-mnist" in capsys.readouterr().err
