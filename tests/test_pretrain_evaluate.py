"""``python -m wssl_zoo.pretrain.evaluate`` writes a record of the one schema (task pretrain_eval)
through wssl_zoo.records; cards, the leaderboard and the README's pretraining table read it, and
never list it as a paper-comparable result. The zoo's three records were migrated, not re-measured."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import wssl_zoo
from wssl_zoo.fileio import sha256_file
from wssl_zoo.modelio import save_model_dir
from wssl_zoo.records import PRETRAIN_EVAL_TASK, read_records, validate_record

from builders import colour_folder

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "zoo" / "results"


def _run_dir(folder: Path) -> Path:
    torch.manual_seed(0)
    save_model_dir(folder, wssl_zoo.create("resnet18"), arch="resnet18", stem="imagenet", mean=(0.5, 0.5, 0.5),
                   std=(0.25, 0.25, 0.25), img_size=32, extra_meta={"method": "intl"})
    recipe = {"name": "intl_cifar10", "method": "intl", "dataset": "imagefolder", "epochs": 1, "arch": "resnet18",
              "stem": "imagenet"}
    (folder / "train_config.json").write_text(json.dumps({"recipe": recipe, "options": {"seed": 0},
                                                          "hardware": "test machine"}))
    (folder / "summary.json").write_text(json.dumps({"wall_seconds": 12.0}))
    return folder


def test_the_check_writes_a_schema_record_that_readers_handle(tmp_path, capsys, monkeypatch):
    from eval import report
    from wssl_zoo import cards, cli, documents
    from wssl_zoo.pretrain.evaluate import main

    run = _run_dir(tmp_path / "run")
    data = colour_folder(tmp_path / "data", train=4, test=2)
    results = tmp_path / "results"
    out = results / "pretrain_x.json"
    argv = ["--model", str(run), "--dataset", "imagefolder", "--data", str(data), "--bank", "12", "--queries", "6",
            "--workers", "0", "--device", "cpu", "--command", "python -m wssl_zoo.pretrain ...", "--out", str(out)]
    assert main(argv) == 0
    rec = json.loads(out.read_text())
    validate_record(rec, str(out))
    assert rec["task"] == PRETRAIN_EVAL_TASK and rec["schema_version"] == 1 and "kind" not in rec
    assert rec["weights_sha256"] == sha256_file(run / "model.safetensors")
    assert set(rec["metrics"]) == {"monitor_knn5_cos", "monitor_knn20_cos", "linear_top1", "effective_rank"}
    assert set(rec["random_init_metrics"]) == set(rec["metrics"])
    assert rec["protocol"]["bank"] == 12 and rec["protocol"]["queries"] == 6 and rec["dataset"]["fingerprint"]
    assert rec["pretrain"]["command"] == "python -m wssl_zoo.pretrain ..." and rec["pretrain"]["hardware"] == "test machine"
    assert rec["command"].startswith("python -m wssl_zoo.pretrain.evaluate --model")
    assert rec["model_label"] == "run" and rec["protocol"]["paper_comparable"] is False
    # readers: one reader, the README's table, never a paper-comparable card result, not in the leaderboard
    (found,) = read_records(results, task=PRETRAIN_EVAL_TASK)
    assert found["file"] == "pretrain_x.json"
    assert not cards.comparable(rec)
    assert [r["metric"] for r in cards.metric_rows(rec)] == ["linear_top1", "monitor_knn20_cos", "monitor_knn5_cos"]
    assert report.full_evaluations(read_records(results)) == ([], [])
    monkeypatch.setattr(documents, "zoo_results_dir", lambda: results)  # where the README table reads
    (row,) = cli.pretrain_results_table().splitlines()[2:]
    assert row.startswith("| intl_cifar10 | resnet18 (imagenet stem) | 1 | 0.2 min | test machine |")
    assert row.endswith("| `zoo/results/pretrain_x.json` |")
    # a second, different measurement is never written over the first
    assert argv[8:10] == ["--queries", "6"]
    assert main([*argv[:9], "3", *argv[10:]]) == 2  # another query count: another measurement
    assert "refusing to replace it" in capsys.readouterr().err


def test_a_missing_train_config_is_one_line(tmp_path, capsys):
    from wssl_zoo.pretrain.evaluate import main

    run = _run_dir(tmp_path / "run")
    (run / "train_config.json").unlink()
    assert main(["--model", str(run), "--dataset", "cifar10", "--out", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"wssl_zoo.pretrain.evaluate: error: --model {run}: no train_config.json (a pretraining output " \
                  "directory has one)"


@pytest.mark.parametrize("name", sorted(p.name for p in RESULTS.glob("pretrain_*.json")))
def test_the_zoo_pretraining_records_are_measurements_of_the_benchmark_script(name):
    """Each ``zoo/results/pretrain_*.json`` is a schema record written by this CLI for the run that
    ``benchmarks/cifar10_pretrain.sh`` makes (its commands reproduce it), never a paper-comparable result."""
    from wssl_zoo.cards import comparable

    record = json.loads((RESULTS / name).read_text())
    validate_record(record, name)
    assert record["task"] == PRETRAIN_EVAL_TASK and not comparable(record)
    recipe = record["recipe"]
    assert name == f"pretrain_{recipe}_{record['stem']}_e{record['pretrain']['epochs']}.json"
    assert record["command"].startswith("python -m wssl_zoo.pretrain.evaluate --model runs/cifar10_")
    assert record["pretrain"]["command"].startswith(f"python -m wssl_zoo.pretrain --recipe {recipe} ")
    assert set(record["metrics"]) >= {"linear_top1", "monitor_knn5_cos", "monitor_knn20_cos", "effective_rank"}
    assert set(record["random_init_metrics"]) == set(record["metrics"])
