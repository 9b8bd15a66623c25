"""Plots: the data each one draws (checked without matplotlib), and the PNGs where matplotlib is
installed (the ``[plot]`` extra)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval import report, spectrum
from eval.records import read_records, write_record
from wssl_zoo import plots
from wssl_zoo.cli import main as cli_main

from builders import make_imagefolder

needs_mpl = pytest.mark.skipif(not plots.have_matplotlib(), reason="matplotlib is not installed")
PNG = b"\x89PNG\r\n\x1a\n"

LOG = [dict(epoch=1, global_step=10, loss=2.5, lr=0.1, views_per_s=50.0),
       dict(epoch=2, global_step=20, loss=2.0, lr=0.3, monitor_knn_cos=31.5, effective_rank=40.25, feature_dim=512),
       dict(epoch=3, global_step=30, loss=1.9, lr=0.2),
       dict(epoch=3, global_step=30, loss=1.75, lr=0.2),  # epoch 3 again after a resume: the last one counts
       dict(epoch=4, global_step=40, loss=1.5, lr=0.05, monitor_knn_cos=35.0, effective_rank=52.5, feature_dim=512)]


def _write_log(folder: Path, rows=LOG) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_training_curves_are_the_logged_values_per_epoch(tmp_path):
    run = _write_log(tmp_path / "run")
    curves = plots.training_curves(run)
    assert curves == {"loss": [[1, 2.5], [2, 2.0], [3, 1.75], [4, 1.5]],
                      "lr": [[1, 0.1], [2, 0.3], [3, 0.2], [4, 0.05]],
                      "monitor_knn_cos": [[2, 31.5], [4, 35.0]], "effective_rank": [[2, 40.25], [4, 52.5]]}
    assert plots.training_curves(run / "log.jsonl") == curves
    (run / "log.jsonl").write_text(json.dumps(LOG[0]) + "\n{oops\n")
    with pytest.raises(ValueError, match=r"log.jsonl:2: not JSON"):
        plots.training_curves(run)
    with pytest.raises(FileNotFoundError, match=r"nowhere/log.jsonl: no such log"):
        plots.training_curves(tmp_path / "nowhere")


def test_plot_command_writes_the_curves_png(tmp_path, capsys):
    run = _write_log(tmp_path / "run")
    assert cli_main(["plot", str(tmp_path / "missing")]) == 2
    assert "wssl-zoo plot: error: " in capsys.readouterr().err
    if not plots.have_matplotlib():
        assert cli_main(["plot", str(run)]) == 2
        assert "matplotlib" in capsys.readouterr().err
        return
    out = tmp_path / "curves.png"
    assert cli_main(["plot", str(run), "--out", str(out), "--title", "t"]) == 0
    assert f"wrote {out}: loss 1.5 (epoch 4)" in capsys.readouterr().out
    assert out.read_bytes().startswith(PNG)
    assert plots.png_data(out) == {"title": "t", "curves": plots.training_curves(run)}
    assert cli_main(["plot", str(run)]) == 0 and (run / "training_curves.png").is_file()
    assert plots.png_data(run / "training_curves.png")["title"] == "run"


def test_a_failing_plot_never_stops_pretraining(tmp_path, monkeypatch):
    from wssl_zoo.pretrain import loop

    run = _write_log(tmp_path / "run")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(plots, "have_matplotlib", lambda: True)
    monkeypatch.setattr(plots, "plot_training_curves", boom)
    with pytest.warns(UserWarning, match=r"training_curves.png not drawn: OSError: disk full"):
        loop._plot_curves(run / "log.jsonl")


@needs_mpl
def test_pretraining_draws_the_curves_at_each_monitor_epoch(tmp_path):
    from wssl_zoo.pretrain.loop import RunOptions, pretrain
    from wssl_zoo.pretrain.recipes import resolve_recipe

    data = make_imagefolder(tmp_path / "data", classes=2, per_class=16, val=4, size=32)
    recipe = resolve_recipe("wmse_cifar10_2views", {"arch": "resnet18", "stem": "imagenet", "img_size": 32,
                                                   "dataset": "imagefolder", "projector.hidden_dim": 32,
                                                   "batch_size": 16, "loss.w_size": 8, "projector.out_dim": 4,
                                                   "epochs": 1})
    out = tmp_path / "run"
    pretrain(recipe, RunOptions(out=out, data=str(data), workers=0, eval_every=1, progress=False, monitor_samples=8))
    data = plots.png_data(out / "training_curves.png")
    assert data["curves"] == plots.training_curves(out) and set(data["curves"]) == {"loss", "lr", "monitor_knn_cos",
                                                                                    "effective_rank"}


# ---------------------------------------------------------------------------- leaderboard


def _records(tmp_path):
    base = dict(schema_version=1, weights_sha256="a" * 64, seed=0, wall_seconds=1.0, hardware="cpu", torch="x",
                code_version="y", created="z", command="c", dataset={"name": "cifar10", "fingerprint": "f"})
    records = [dict(base, task="linear", model="m1", protocol={"name": "fast", "version": 1}, metrics={"top1": 60.0}),
               dict(base, task="linear", model="m2", protocol={"name": "fast", "version": 1}, metrics={"top1": 20.0}),
               dict(base, task="knn", model="m2", protocol={"name": "knn5", "version": 1}, metrics={"top1": 40.0}),
               dict(base, task="detection", model="m1", protocol={"name": "coco_R_50_C4_1x", "version": 1},
                    dataset={"name": "coco", "fingerprint": "g"}, metrics={"bbox_AP": 38.5, "segm_AP": 33.0}),
               dict(base, task="spectrum", model="m1", protocol={"name": "spectrum", "version": 1},
                    metrics={"backbone_effective_rank": 180.0, "projector_effective_rank": 700.0})]
    for i, r in enumerate(records):
        write_record(r, tmp_path / "res" / f"r{i}.json")
    return read_records(tmp_path / "res")


def test_leaderboard_plot_has_one_axis_per_metric_kind(tmp_path):
    panels = report.plot_data(_records(tmp_path))
    assert [p["kind"] for p in panels] == ["top-1 accuracy (%)", "box AP", "effective rank"]
    acc, ap, rank = panels
    assert acc["xlim"] == [0, 100] and ap["xlim"] == [0, 100] and rank["xlim"] is None
    assert acc["rows"] == [
        {"column": "knn / knn5 / cifar10", "bars": [{"model": "m2", "mean": 40.0, "std": 0.0}]},
        {"column": "linear / fast / cifar10", "bars": [{"model": "m1", "mean": 60.0, "std": 0.0},
                                                       {"model": "m2", "mean": 20.0, "std": 0.0}]}]
    assert ap["rows"] == [{"column": "detection / coco_R_50_C4_1x / coco", "bars": [{"model": "m1", "mean": 38.5,
                                                                                   "std": 0.0}]}]
    assert rank["rows"][0]["bars"][0]["mean"] == 180.0
    assert report.metric_kind("bbox_AP50") == ("box AP (AP50)", [0, 100])


def test_report_check_compares_the_plotted_data_not_pixels(tmp_path):
    records = _records(tmp_path)
    png = tmp_path / "lb.png"
    assert not report.plot_is_current(records, png)
    png.write_bytes(PNG + b"not really")
    assert not report.plot_is_current(records, png)
    if not plots.have_matplotlib():
        pytest.skip("matplotlib is not installed: the PNG itself is not drawn")
    report.render_plot(records, png)
    assert png.read_bytes().startswith(PNG) and report.plot_is_current(records, png)
    assert not report.plot_is_current(records[:-1], png)


# ---------------------------------------------------------------------------- spectrum


def test_spectrum_series_and_the_random_init_baseline():
    series = plots.spectrum_series({"backbone": {"m": [3.0, 1.0, 0.0], "random init": [1.0, 1.0, 2.0]}})
    assert series == {"backbone": {"m": [0.75, 0.25, 0.0], "random init": [0.25, 0.25, 0.5]}}
    with pytest.raises(ValueError, match=r"spectrum of m \(backbone\): the eigenvalues sum to 0.0"):
        plots.spectrum_series({"backbone": {"m": [0.0, 0.0]}})
    record = dict(model="runs/x", model_label="x", eigenvalues={"backbone": [2.0, 1.0], "projector": [4.0]},
                  baseline=dict(model="random:resnet18:imagenet:32", model_label="random-resnet18-imagenet-32px",
                                eigenvalues={"backbone": [1.0, 1.0]}))
    assert spectrum.record_spectra(record) == {"backbone": {"x": [2.0, 1.0], "random-resnet18-imagenet-32px": [1.0, 1.0]},
                                               "projector": {"x": [4.0]}}

    class Info:
        spec, arch, stem, img_size = "runs/x", "resnet18", "cifar", 32

    assert spectrum.baseline_spec(Info, "auto") == "random:resnet18:cifar:32"
    assert spectrum.baseline_spec(Info, "none") is None and spectrum.baseline_spec(Info, "m2") == "m2"
    Info.spec = "random:resnet18"
    assert spectrum.baseline_spec(Info, "auto") is None


@needs_mpl
def test_spectrum_png_holds_its_series(tmp_path):
    spectra = {"backbone": {"m": [3.0, 1.0, 0.5], "random init": [1.0, 1.0, 1.0]}}
    out = plots.plot_spectrum(spectra, tmp_path / "s.png", title="t")
    assert out.read_bytes().startswith(PNG)
    assert plots.png_data(out) == {"title": "t", "series": plots.spectrum_series(spectra)}
