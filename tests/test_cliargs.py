"""One CLI vocabulary: pretraining, the three eval tools and detection take --workers, --device,
--out and --seed (or --seeds) from wssl_zoo.cliargs, with one meaning each."""

from __future__ import annotations

import argparse

import pytest
import torch

from wssl_zoo import cliargs

from builders import colour_folder, make_coco


def _pretrain_parser() -> argparse.ArgumentParser:
    from wssl_zoo.pretrain.cli import add_arguments

    p = argparse.ArgumentParser(prog="python -m wssl_zoo.pretrain")
    add_arguments(p)
    return p


def _parser(tool: str) -> argparse.ArgumentParser:
    if tool == "wssl_zoo.pretrain":
        return _pretrain_parser()
    import importlib

    return importlib.import_module(tool).build_parser()


TOOLS = ["wssl_zoo.pretrain", "eval.linear", "eval.knn", "eval.semi", "detection.train"]


def _action(parser: argparse.ArgumentParser, flag: str) -> argparse.Action:
    (action,) = [a for a in parser._actions if flag in a.option_strings]
    return action


@pytest.mark.parametrize("tool", TOOLS)
def test_the_shared_flags_parse_to_one_meaning(tool, tmp_path):
    parser = _parser(tool)
    out = str(tmp_path / "out")
    required = {"eval.linear": ["--model", "m", "--data", "d"], "eval.knn": ["--model", "m", "--data", "d"],
                "eval.semi": ["--model", "m", "--data", "d", "--split", "1pct"],
                "detection.train": ["--model", "m", "--config", "c"]}.get(tool, [])
    args = parser.parse_args([*required, "--workers", "3", "--device", "cpu", "--out", out, "--seed", "5"])
    assert (args.workers, args.device, args.out, args.seed) == (3, "cpu", out, 5)
    device, seed = _action(parser, "--device"), _action(parser, "--seed")
    reference = _pretrain_parser()
    # one definition: the help of --device is the same text everywhere, --workers says what it counts
    assert device.help == _action(reference, "--device").help and device.default == "auto"
    assert _action(parser, "--workers").help.startswith("data-loading worker processes per process (default: ")
    assert seed.type is int and _action(parser, "--workers").type is int
    if tool.startswith("eval."):
        assert parser.parse_args([*required, "--seeds", "3"]).seeds == 3


def test_detection_keeps_its_older_workers_spelling():
    from detection.train import build_parser

    args = build_parser().parse_args(["--model", "m", "--config", "c", "--out", "o", "--num-workers", "2"])
    assert args.workers == 2


def test_device_values_mean_the_same_everywhere(monkeypatch):
    assert cliargs.device("cpu") == torch.device("cpu")
    assert cliargs.device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("gpu", "cuda:x", "tpu", ""):
        with pytest.raises(ValueError, match=r"^--device .*expected auto, cpu, cuda or cuda:N"):
            cliargs.device(bad)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"^--device cuda:1: CUDA is not available on this machine"):
        cliargs.device("cuda:1")
    assert cliargs.device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert cliargs.device("cuda") == torch.device("cuda", 2)  # under torchrun: this process's GPU
    assert cliargs.device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match="has 4 CUDA device"):
        cliargs.device("cuda:7")


@pytest.mark.parametrize("tool", ["eval.knn", "detection.train"])
def test_a_bad_device_is_one_line_naming_the_flag(tool, tmp_path, capsys):
    import importlib

    if tool == "eval.knn":
        argv = ["--model", "random:resnet18", "--data", str(colour_folder(tmp_path / "d", 1, 1)), "--device", "gpu",
                "--workers", "0", "--out", str(tmp_path / "o")]
    else:
        argv = ["--model", "random:resnet18", "--config", "coco_R_50_FPN_1x", "--coco-root",
                str(make_coco(tmp_path / "coco", n=2)), "--out", str(tmp_path / "o"), "--device", "gpu",
                "--backend", "torchvision", "--workers", "0"]
    assert importlib.import_module(tool).main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"{tool}: error: --device gpu: expected auto, cpu, cuda or cuda:N", err
