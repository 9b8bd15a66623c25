"""Evaluation records: the schema and its named errors, default paths, aggregation, dataset
fingerprints, one rule for undefined metrics, and a record never replacing one of another identity."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import wssl_zoo
from eval import records, report
from eval.records import (
    RECORD_SCHEMA_VERSION,
    aggregate,
    dataset_fingerprint,
    default_record_path,
    make_record,
    read_records,
    validate_record,
    write_record,
)
from wssl_zoo.modelio import save_model_dir

from builders import colour_folder

pytestmark = pytest.mark.usefixtures("cache")  # a feature cache of its own for every test


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    return colour_folder(tmp_path_factory.mktemp("data") / "tiny", train=4, test=2)


def _model(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    save_model_dir(path, wssl_zoo.create("resnet18"), arch="resnet18", stem="imagenet", mean=(0.5,) * 3,
                   std=(0.25,) * 3, img_size=32)
    return path


def _record(**over):
    from eval.records import make_record

    base = dict(task="linear", model="m", weights_sha256="a" * 64, protocol={"name": "fast", "version": 1},
                dataset={"name": "cifar10", "fingerprint": "f"}, seed=0, metrics={"top1": 50.0},
                wall_seconds=1.0, command="c")
    return make_record(**{**base, **over})


def _valid_record_json() -> dict:
    from eval.records import make_record

    return make_record(task="linear", model="m", weights_sha256="a" * 64, protocol={"name": "p", "version": 1},
                       dataset={"name": "d", "fingerprint": "f"}, seed=0, metrics={"top1": 1.0}, wall_seconds=1.0,
                       command="c")


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


def test_dataset_fingerprint_tracks_files(colour_data, tmp_path):

    from wssl_zoo.data import build_dataset

    copy = tmp_path / "copy"
    shutil.copytree(colour_data, copy)
    a = dataset_fingerprint(build_dataset("imagefolder", colour_data, "train"))
    assert a == dataset_fingerprint(build_dataset("imagefolder", copy, "train"))
    (copy / "train" / "class0" / "im0.png").unlink()
    assert a != dataset_fingerprint(build_dataset("imagefolder", copy, "train"))


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


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=300), st.text(max_size=200).map(str.encode),
                      st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                               lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=5),
                               max_leaves=12).map(lambda v: json.dumps(v).encode())))
def test_record_reader_gives_a_named_error_or_records(tmp_path, data):
    from eval.records import read_records

    folder = tmp_path / "r"
    folder.mkdir(exist_ok=True)
    (folder / "x.json").write_bytes(data)
    try:
        records = read_records(folder)
    except ValueError as exc:
        assert "x.json" in str(exc)
    else:
        assert all(isinstance(r, dict) and r["file"] == "x.json" for r in records)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(sorted(_valid_record_json())), value=st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10), st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.floats(), max_size=3)))
def test_a_record_with_any_one_field_changed_is_valid_or_named(tmp_path, key, value):
    from eval.records import read_records

    rec = dict(_valid_record_json(), **{key: value})
    folder = tmp_path / "r"
    folder.mkdir(exist_ok=True)
    (folder / "x.json").write_text(json.dumps(rec))
    try:
        read_records(folder)
    except ValueError as exc:
        assert str(exc).startswith(str(folder / "x.json"))
