"""The pretraining options do what they say: --show prints the resolved recipe, --amp bf16 runs the
backbone under autocast, --channels-last reaches the convolutions, --device-views makes the views the
backbone trains on, --tensorboard logs every epoch record (and warns without the package)."""

from __future__ import annotations

import json

import pytest

import wssl_zoo
from wssl_zoo.pretrain.cli import main as pretrain_main
from wssl_zoo.runlog import read_log

from builders import TINY, make_imagefolder

TINY_STEPS, TINY_VIEWS = 2, 4  # --steps-per-epoch 2; cwrgp_cifar10 makes 4 views


class _RecordingWriter:
    """Stands in for ``torch.utils.tensorboard.SummaryWriter`` where tensorboard is not installed."""

    instances: list["_RecordingWriter"] = []

    def __init__(self, log_dir):
        self.log_dir, self.scalars, self.closed = log_dir, [], False
        type(self).instances.append(self)

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def close(self):
        self.closed = True


def _observe(mp: pytest.MonkeyPatch) -> dict[str, list]:
    """Patches, through ``mp``: the loop's ``build_model`` to hook the model it builds, the batched
    view augmentation to record its calls, and ``torch.utils.tensorboard`` to a recording writer.
    Returns the lists they fill: ``seen`` (per backbone call: input, dtype, memory formats of the
    input and the first conv's weight, autocast state, that conv's output dtype), ``made`` (per
    view the device views make: the decoded images' dtype and batch shape, the view) and ``writers``."""
    import sys
    import types

    import torch

    from wssl_zoo.data import device_views
    from wssl_zoo.pretrain import loop

    seen, made = [], []
    real_build, real_views = loop.build_model, device_views.DeviceViews.views

    def hooked(recipe, gather):
        model = real_build(recipe, gather)
        conv = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d))

        def before(_, args):
            x = args[0]
            seen.append(dict(input=x.detach().clone(), dtype=x.dtype,
                             channels_last=x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
                             and not x.is_contiguous(),
                             autocast=torch.is_autocast_enabled("cpu"),
                             weight_channels_last=conv.weight.is_contiguous(memory_format=torch.channels_last)
                             and not conv.weight.is_contiguous()))

        def conv_out(_, __, out):
            seen[-1]["conv_out"] = out.dtype

        model.backbone.register_forward_pre_hook(before)
        conv.register_forward_hook(conv_out)
        return model

    def recording(self, images, params):
        out = real_views(self, images, params)
        for view in out:
            made.append(dict(raw=images[0].dtype, shape=(len(images), *images[0].shape), view=view.detach().clone()))
        return out

    mp.setattr(loop, "build_model", hooked)
    mp.setattr(device_views.DeviceViews, "views", recording)
    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = _RecordingWriter
    mp.setitem(sys.modules, "torch.utils.tensorboard", fake)
    _RecordingWriter.instances = []
    return dict(seen=seen, made=made, writers=_RecordingWriter.instances)


def _pretrain_tiny(data, out, *extra):
    assert pretrain_main([*TINY, "--data", str(data), "--out", str(out), *extra]) == 0
    return json.loads((out / "train_config.json").read_text())["options"]


@pytest.fixture(scope="module")
def tiny_images(tmp_path_factory):
    return make_imagefolder(tmp_path_factory.mktemp("claims-data"), size=32)


@pytest.fixture(scope="module")
def control(tiny_images, tmp_path_factory):
    """What the hooks saw in one run without any of the options."""
    with pytest.MonkeyPatch.context() as mp:
        observed = _observe(mp)
        _pretrain_tiny(tiny_images, tmp_path_factory.mktemp("control") / "run")
    assert len(observed["seen"]) == TINY_STEPS * TINY_VIEWS
    return observed


@pytest.fixture
def observed(monkeypatch):
    return _observe(monkeypatch)


def test_pretrain_show_prints_the_resolved_recipe_with_overrides_and_config(tmp_path, capsys):
    assert pretrain_main(["--recipe", "intl_cifar10", "--show", "--set", "epochs=3"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["name"] == "intl_cifar10" and shown["epochs"] == 3 and shown["method"] == "intl"
    config = tmp_path / "over.toml"
    config.write_text('epochs = 7\nbatch_size = 64\n[projector]\nout_dim = 128\n')
    assert pretrain_main(["--recipe", "intl_cifar10", "--show", "--config", str(config), "--set", "epochs=9"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["epochs"], shown["batch_size"], shown["projector"]["out_dim"]) == (9, 64, 128)  # --set wins
    (tmp_path / "bad.json").write_text("[1, 2]")
    assert pretrain_main(["--recipe", "intl_cifar10", "--show", "--config", str(tmp_path / "bad.json")]) == 2
    assert "expected a table of overrides" in capsys.readouterr().err
    assert pretrain_main(["--recipe", "intl_cifar10", "--show", "--config", str(tmp_path / "none.toml")]) == 2
    assert "none.toml: no such file" in capsys.readouterr().err


def test_amp_bf16_runs_the_backbone_under_autocast(tiny_images, tmp_path, control, observed):
    import torch

    assert not any(c["autocast"] for c in control["seen"])
    assert {c["conv_out"] for c in control["seen"]} == {torch.float32}
    assert _pretrain_tiny(tiny_images, tmp_path / "bf16", "--amp", "bf16")["amp"] == "bf16"
    seen = observed["seen"]
    assert len(seen) == TINY_STEPS * TINY_VIEWS
    assert all(c["autocast"] for c in seen) and {c["conv_out"] for c in seen} == {torch.bfloat16}
    log = read_log(tmp_path / "bf16" / "log.jsonl", kind="epoch")
    assert len(log) == 1 and torch.isfinite(torch.tensor(log[0]["loss"]))
    # the weights stay float32 (autocast, not a half-precision model)

    assert {p.dtype for p in wssl_zoo.load(tmp_path / "bf16").parameters()} == {torch.float32}


def test_channels_last_reaches_the_conv_input_and_weights(tiny_images, tmp_path, control, observed):
    assert not any(c["channels_last"] or c["weight_channels_last"] for c in control["seen"])
    assert _pretrain_tiny(tiny_images, tmp_path / "cl", "--channels-last")["channels_last"] is True
    seen = observed["seen"]
    assert len(seen) == TINY_STEPS * TINY_VIEWS
    assert all(c["channels_last"] and c["weight_channels_last"] for c in seen)


def test_device_views_make_the_views_the_backbone_trains_on(tiny_images, tmp_path, control, observed):
    """--device-views (older name --gpu-augment): the loader yields the JPEG files and the device
    part (here on the CPU, the training device) decodes them to uint8 images and makes every view
    the backbone sees; without it, it is never called. Its views are the PIL path's (control), value
    for value: the parameters are the PIL pipeline's and every step is PIL's arithmetic."""
    import torch

    assert control["made"] == []
    assert _pretrain_tiny(tiny_images, tmp_path / "gpu-views", "--gpu-augment")["device_views"] is True
    made, seen = observed["made"], observed["seen"]
    assert len(made) == len(seen) == TINY_STEPS * TINY_VIEWS
    assert {m["raw"] for m in made} == {torch.uint8} and {m["shape"] for m in made} == {(16, 3, 32, 32)}
    for m, c in zip(made, seen):
        assert torch.equal(m["view"], c["input"])  # the backbone trains on exactly these views
    assert all(torch.equal(a["input"], c["input"]) for a, c in zip(control["seen"], seen))


def test_tensorboard_logs_every_epoch_record(tiny_images, tmp_path, control, observed):
    assert control["writers"] == []  # without the flag no writer is made
    out = tmp_path / "tb"
    _pretrain_tiny(tiny_images, out, "--epochs", "2", "--tensorboard")
    (writer,) = observed["writers"]
    assert writer.log_dir == str(out / "tensorboard") and writer.closed
    log = read_log(out / "log.jsonl", kind="epoch")
    expected = [(f"pretrain/{k}", v, r["epoch"]) for r in log for k, v in r.items() if k not in ("epoch", "kind")]
    assert len(log) == 2 and [s for s in writer.scalars if s[0].startswith("pretrain/")] == expected


def test_tensorboard_writes_event_files(tiny_images, tmp_path):
    """With the real tensorboard package (the ``[tensorboard]`` extra): event files with the scalars."""
    pytest.importorskip("tensorboard", reason="the [tensorboard] extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    _pretrain_tiny(tiny_images, out, "--tensorboard")
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert {"pretrain/loss", "pretrain/lr"} <= set(events.Tags()["scalars"])


def test_tensorboard_without_the_package_warns_and_still_trains(tiny_images, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    with pytest.warns(UserWarning, match="--tensorboard needs the tensorboard package"):
        _pretrain_tiny(tiny_images, tmp_path / "tb", "--tensorboard")
    assert (tmp_path / "tb" / "model.safetensors").is_file() and not (tmp_path / "tb" / "tensorboard").exists()
