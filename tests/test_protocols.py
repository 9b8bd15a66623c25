"""The evaluation protocols: frozen, named and versioned, their values taken from the methods' tables
(the authors' schedules and learning rates), and the protocol a model gets by default (its paper's)."""

from __future__ import annotations

import json

import pytest

from eval import knn, linear, semi
from eval.protocols import PROTOCOLS, get_protocol, paper_linear_protocol, with_overrides
from eval.records import is_full_evaluation
from wssl_zoo.weights import ResolvedWeights, resolve

from builders import colour_folder, tiny_model
from conftest import eval_args

pytestmark = pytest.mark.usefixtures("cache")  # a feature cache of its own for every test


def _weights(recipe: str | None, dataset: str | None, method: str | None = None) -> ResolvedWeights:
    from wssl_zoo.methods import recipe_provenance

    method = method or (recipe_provenance(recipe)["method"].value if recipe else None)
    return ResolvedWeights(spec="x", kind="local", label="x", arch="resnet50", stem="imagenet", method=method,
                           img_size=224, weights_sha256="0" * 64,
                           config={"wssl_zoo": {k: v for k, v in dict(recipe=recipe, dataset=dataset).items() if v}})


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


def test_semi_recipes_schedules():
    intl = get_protocol("semi_intl")
    # INTL's published command runs the default step schedule (60, 80): constant over 20 epochs
    assert [semi.lr_factor(intl, e, 20) for e in (0, 10, 19)] == [1.0, 1.0, 1.0]
    assert (intl.epochs, intl.lr_backbone, intl.lr_head, intl.bn_train, intl.weight_decay) == (20, 0.004, 0.2, True, 0.0)
    cos, _ = with_overrides(intl, schedule="cosine")
    assert semi.lr_factor(cos, 10, 20) == pytest.approx(0.5)
    simclr = get_protocol("semi_simclr")
    assert (simclr.epochs_1pct, simclr.epochs_10pct, simclr.nesterov, semi.lr_factor(simclr, 5, 30)) == (60, 30, True, 1.0)
    for name in ("intl", "cwrgp", "small", "knn5", "semi_intl"):
        assert "@" in get_protocol(name).source  # file and commit of the authors' code


def test_semi_intl_lr_is_constant_over_its_20_epochs():
    from eval.protocols import get_protocol
    from eval.semi import lr_factor

    for name in ("semi_intl", "semi_intl_plain"):
        p = get_protocol(name, "semi")
        assert {lr_factor(p, e, p.epochs) for e in range(p.epochs)} == {1.0}


@pytest.mark.parametrize("recipe, linear, semi, lr, lr_backbone", [
    ("intl_m_imagenet_800ep", "intl", "semi_intl", 0.4, 0.004),  # scripts/ep800_multi-crop_ema.sh:14,22
    ("intl_m_imagenet_100ep", "intl", "semi_intl", 0.4, 0.004),
    ("intl_imagenet", "intl_plain", "semi_intl_plain", 0.2, 0.006),  # scripts/ep800.sh:13,21
    ("intl_imagenet100", "intl_plain", "semi_intl", 0.2, 0.004),  # scripts/in100.sh:16 (no semi script)
])
def test_intl_protocols_take_the_models_learning_rates(recipe, linear, semi, lr, lr_backbone):
    from eval.protocols import get_protocol, protocol_for_model

    assert protocol_for_model("intl", recipe) == linear and get_protocol(linear, "linear").lr == lr
    assert protocol_for_model("semi_intl", recipe) == semi and get_protocol(semi, "semi").lr_backbone == lr_backbone
    assert protocol_for_model("cwrgp", recipe) == "cwrgp" and protocol_for_model("intl", None) == "intl"


def test_registry_model_resolves_its_recipe_for_protocol_choice():
    from wssl_zoo.registry import get_entry

    assert get_entry("intl_resnet50").recipe == "intl_m_imagenet_800ep"


def test_coco_default_is_mask_rcnn_c4_2x_and_records_say_their_schedule():
    from detection.train import schedule_label
    from eval.benchmark import build_parser, task_protocols

    args = build_parser().parse_args(["--models", "m", "--data-root", "d"])
    assert task_protocols(args.protocol)["coco"] == "coco_R_50_C4_2x"  # --protocol coco=NAME (was --coco-config)
    assert schedule_label("coco_R_50_C4_2x", 180000, []) == "2x, 180000 iterations"
    assert schedule_label("coco_R_50_C4_1x", 90000, []).startswith("1x")
    assert "shortened" in schedule_label("coco_R_50_C4_2x", 400, ["max_iter=400"])


@pytest.mark.parametrize("recipe,dataset,expected", [
    ("intl_m_imagenet", "imagenet", "intl"), ("intl_imagenet", "imagenet", "intl_plain"),
    ("intl_imagenet100", "imagenet100", "intl_plain"), ("cwrgp_imagenet", "imagenet", "cwrgp"),
    ("wmse_imagenet100", "imagenet100", "small"), ("wmse_imagenet", "imagenet", "small"),
    ("intl_cifar10", "cifar10", "small"), ("cwrgp_stl10", "stl10", "small"), ("wmse_tiny_imagenet", "tiny_imagenet", "small")])
def test_the_default_linear_protocol_is_the_models_paper_protocol(recipe, dataset, expected):
    name, why = paper_linear_protocol(_weights(recipe, dataset), "imagefolder")
    assert name == expected and "wssl-zoo/methods" not in why and "@" in why  # the authors' source is cited


def test_without_a_paper_protocol_the_default_is_the_quick_probe_and_says_so():
    assert paper_linear_protocol(_weights(None, None, "intl"), "imagefolder")[0] == "fast"
    name, why = paper_linear_protocol(_weights("intl_cifar10", "cifar10"), "stl10")  # transfer: no paper protocol
    assert name == "fast" and "pretrained on CIFAR-10 and is evaluated on STL-10" in why and "quick probe" in why
    assert paper_linear_protocol(resolve("random:resnet18:cifar:32"), "cifar10")[0] == "fast"


def test_a_cifar10_run_is_evaluated_with_small_and_says_so(tmp_path, capsys):
    data = colour_folder(tmp_path / "c10", held="test")  # --dataset cifar10 reads <split>/<class>/ folders
    run = tiny_model(tmp_path / "run", recipe="intl_cifar10", dataset="cifar10")
    out = tmp_path / "r.json"
    assert linear.main([*eval_args(run, data, out, "--device", "cpu")[:-4], "--device", "cpu", "--dataset", "cifar10", "--epochs", "2"]) == 0
    printed = capsys.readouterr().out
    assert "protocol small: the intl authors' protocol for models pretrained on CIFAR-10 (winci-ai/INTL@" in printed
    assert json.loads(out.read_text())["protocol"]["name"] == "small+epochs=2"


def test_amp_is_recorded_as_a_protocol_override_and_keyed_in_the_cache(test_resnet_dir, colour_data, tmp_path, cache):
    """float32 by default; --amp bf16 (CPU autocast here) gives other features, another cache entry and a
    record that never counts as the paper's protocol."""
    out = tmp_path / "k.json"
    assert knn.main([*eval_args(test_resnet_dir, colour_data, out, "--device", "cpu"), "--protocols", "knn5", "--amp", "bf16"]) == 0
    rec = json.loads(out.read_text())
    assert rec["protocol"]["name"] == "knn5+amp=bf16" and rec["protocol"]["overrides"] == {"amp": "bf16"}
    assert is_full_evaluation(rec) == "protocol 'knn5' with amp=bf16"
    assert knn.main([*eval_args(test_resnet_dir, colour_data, tmp_path / "f.json", "--device", "cpu"), "--protocols", "knn5"]) == 0
    assert json.loads((tmp_path / "f.json").read_text())["protocol"]["name"] == "knn5"
    infos = [json.loads(p.read_text())["info"]["precision"] for p in cache.glob("*/index.json")]
    assert sorted(infos) == ["bf16", "bf16", "none", "none"]
    for module in (linear, semi, knn):
        assert module.build_parser().parse_args(["--model", "m", "--data", "d", *(["--split", "1pct"] if module is semi
                                                                                  else [])]).amp == "none"
