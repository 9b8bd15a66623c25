"""Training checkpoints: atomic writes that survive a crash, RNG state in weights-only files, resumed
training bit-identical to an uninterrupted one, the kept copies, and damaged, missing, foreign or
non-finite checkpoints named."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from wssl_zoo import fileio, modelio
from wssl_zoo.optim import build_optimizer
from wssl_zoo.pretrain import checkpoint as ck
from wssl_zoo.pretrain.schedules import WarmupCosine, apply_lr


def _make_run(optimizer_name: str, seed: int):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))
    opt = build_optimizer(optimizer_name, model, lr=0.0, weight_decay=1e-4, exclude_bias_and_norm=True)
    return model, opt


def _train(model, opt, schedule, steps):
    """Steps whose data, dropout masks and batch order draw on torch, numpy and random."""
    for step in steps:
        x = torch.randn(12, 6) + torch.from_numpy(np.random.randn(1, 6)).float()
        order = list(range(12))
        random.shuffle(order)
        apply_lr(opt, schedule.lr_at(step))
        opt.zero_grad()
        model(x[order]).pow(2).mean().backward()
        opt.step()


def _state(step: int, **extra) -> ck.TrainState:
    return ck.TrainState(epoch=step, step=step, model={"w": torch.full((2,), float(step))}, optimizer={},
                         extra=extra)


def test_atomic_save_survives_a_crash_midway(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    ck.atomic_save({"a": torch.ones(4)}, path)
    real_save = torch.save

    def crashing_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip archive")  # bytes reach the temporary file, then the crash
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(OSError, match="No space left"):
        ck.atomic_save({"a": torch.zeros(4)}, path)
    monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        ck.atomic_save({"a": torch.zeros(4)}, path)
    monkeypatch.setattr(torch, "save", real_save)

    def failing_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(fileio.os, "fsync", failing_fsync)  # the crash comes after all bytes were written
    with pytest.raises(OSError, match="disk full"):
        ck.atomic_save({"a": torch.zeros(4)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(4))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary file left
    ck.atomic_save({"a": torch.zeros(4)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.zeros(4))


def test_atomic_save_syncs_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = ck.os.fsync, ck.os.replace
    monkeypatch.setattr(ck.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(ck.os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    ck.atomic_save({"a": torch.ones(1)}, tmp_path / "x.pt")
    assert events == ["fsync", "replace", "fsync"]


def test_atomic_write_text_and_bytes(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "config.json"
    fileio.atomic_write_text(path, '{"lr": 0.5}\n')
    assert path.read_text() == '{"lr": 0.5}\n'

    def no_rename(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(ck.os, "replace", no_rename)
    with pytest.raises(OSError, match="rename failed"):
        fileio.atomic_write_bytes(path, b"new")
    monkeypatch.undo()
    assert path.read_text() == '{"lr": 0.5}\n' and [p.name for p in path.parent.iterdir()] == ["config.json"]
    fileio.atomic_write_bytes(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    torch.manual_seed(1), random.seed(2), np.random.seed(3)
    np.random.randn()  # leaves a cached Gaussian in numpy's state
    state = ck.capture_rng_state()
    expected = (torch.rand(3), random.random(), np.random.randn(2))
    ck.atomic_save(state, tmp_path / "rng.pt")
    torch.manual_seed(9), random.seed(9), np.random.seed(9)
    ck.restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (torch.rand(3), random.random(), np.random.randn(2))
    assert torch.equal(got[0], expected[0]) and got[1] == expected[1] and np.array_equal(got[2], expected[2])
    with pytest.raises(ValueError, match="unknown part"):
        ck.restore_rng_state({"jax": 0})


@pytest.mark.parametrize("optimizer_name", ["sgd", "lars"])
def test_resumed_training_is_bit_identical(tmp_path, optimizer_name):
    schedule = WarmupCosine(0.2, total_steps=8, warmup_steps=2)

    def seed_all():
        torch.manual_seed(123), random.seed(123), np.random.seed(123)

    seed_all()
    straight, straight_opt = _make_run(optimizer_name, seed=0)
    _train(straight, straight_opt, schedule, range(8))

    seed_all()
    first, first_opt = _make_run(optimizer_name, seed=0)
    _train(first, first_opt, schedule, range(4))
    ck.save_checkpoint(tmp_path, ck.TrainState(epoch=1, step=4, model=first.state_dict(),
                                               optimizer=first_opt.state_dict(), rng=ck.capture_rng_state()))
    del first, first_opt

    torch.manual_seed(7), random.seed(7), np.random.seed(7)  # a fresh process: other RNG, other init
    resumed, resumed_opt = _make_run(optimizer_name, seed=99)
    state = ck.load_checkpoint(tmp_path)
    assert (state.epoch, state.step) == (1, 4)
    resumed.load_state_dict(state.model)
    resumed_opt.load_state_dict(state.optimizer)
    ck.restore_rng_state(state.rng)
    _train(resumed, resumed_opt, schedule, range(state.step, 8))

    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    for a, b in zip(straight_opt.state.values(), resumed_opt.state.values()):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])


def test_lars_state_dict_round_trip(tmp_path):
    model, opt = _make_run("lars", seed=0)
    _train(model, opt, WarmupCosine(0.1, 4, 1), range(2))
    ck.atomic_save(opt.state_dict(), tmp_path / "opt.pt")
    _, fresh = _make_run("lars", seed=1)
    fresh.load_state_dict(torch.load(tmp_path / "opt.pt", weights_only=True))
    assert [g["lars_exclude"] for g in fresh.param_groups] == [True, False]
    assert fresh.param_groups[1]["eta"] == 0.001 and len(fresh.state) == len(opt.state)


def test_keep_last_and_numbered_copies(tmp_path):
    for step in range(1, 5):
        ck.save_checkpoint(tmp_path, _state(step), keep_last=3, numbered_every=2)
    ck.save_checkpoint(tmp_path, _state(4, step_in_epoch=3), keep_last=3, numbered_every=2)  # mid-epoch
    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["epoch_0002.pt", "epoch_0004.pt", "last.1.pt",
                                                        "last.2.pt", "last.pt"]
    steps = {p.name: ck.load_checkpoint(p).step for p in folder.iterdir()}
    assert steps == {"last.pt": 4, "last.1.pt": 4, "last.2.pt": 3, "epoch_0002.pt": 2, "epoch_0004.pt": 4}
    assert ck.load_checkpoint(folder / "last.pt").extra == {"step_in_epoch": 3}
    assert ck.load_checkpoint(folder / "epoch_0004.pt").extra == {}  # the numbered copy is the epoch end
    assert ck.load_checkpoint(folder).step == 4  # the checkpoints folder itself works too
    with pytest.raises(ValueError, match="keep_last"):
        ck.save_checkpoint(tmp_path, _state(5), keep_last=0)


def test_damaged_checkpoint_names_the_file_and_the_previous_one(tmp_path):
    ck.save_checkpoint(tmp_path, _state(1), keep_last=2)
    ck.save_checkpoint(tmp_path, _state(2), keep_last=2)
    last = tmp_path / "checkpoints" / "last.pt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(ValueError, match=r"(?s)last\.pt: cannot read the checkpoint .*damaged.*last\.1\.pt") as err:
        ck.load_checkpoint(tmp_path)
    assert str(last) in str(err.value)
    assert ck.load_checkpoint(tmp_path / "checkpoints" / "last.1.pt").step == 1

    lone = tmp_path / "other" / "checkpoints" / "last.pt"
    lone.parent.mkdir(parents=True)
    lone.write_bytes(b"\x80\x02garbage")
    with pytest.raises(ValueError, match=r"(?s)damaged.*no earlier checkpoint exists"):
        ck.load_checkpoint(tmp_path / "other")
    lone.write_bytes(b"")
    with pytest.raises(ValueError, match="cannot read the checkpoint"):
        ck.load_checkpoint(lone)


def test_missing_and_foreign_checkpoints(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no checkpoint at .*nowhere.checkpoints.last\.pt"):
        ck.load_checkpoint(tmp_path / "nowhere")
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match=r"foreign\.pt: not a wssl-zoo checkpoint \(missing \['epoch'"):
        ck.load_checkpoint(tmp_path / "foreign.pt")
    torch.save({"epoch": np.int64(3)}, tmp_path / "numpy.pt")
    with pytest.raises(ValueError, match=r"numpy\.pt: holds Python objects.*weights_only=False"):
        ck.load_checkpoint(tmp_path / "numpy.pt")


def test_is_finite_state_flags_nan_weights_and_buffers():
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    assert ck.is_finite_state(model)
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    model[1].running_var[1] = float("inf")
    assert not ck.is_finite_state(model)
    assert ck.non_finite_tensors(model) == ["0.weight", "1.running_var"]
    assert ck.is_finite_state({"n": torch.tensor(3), "w": torch.ones(2)})


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_non_finite_tensors_is_exact_where_the_fast_sum_overflows(dtype):
    """The check sums each tensor first: finite values whose sum overflows (float16's 65504, or
    float32's 3.4e38) are finite, NaN and Inf are found wherever they are, -Inf beside +Inf too."""
    big = torch.finfo(dtype).max
    state = {"huge": torch.full((64,), big, dtype=dtype), "mixed": torch.tensor([big, -big, big], dtype=dtype),
             "ok": torch.randn(5).to(dtype), "count": torch.tensor(7)}
    assert modelio.non_finite_tensors(state) == []
    assert modelio.non_finite_tensors({"w": torch.full((3,), 1e300, dtype=torch.float64)}) == []  # past float32
    for key, value in (("nan", float("nan")), ("inf", float("inf")), ("-inf", float("-inf"))):
        bad = torch.randn(10).to(dtype)
        bad[3] = value
        state[key] = bad
    both = torch.zeros(4, dtype=dtype)
    both[0], both[1] = float("inf"), float("-inf")  # the sum is NaN, not Inf
    state["both"] = both
    assert modelio.non_finite_tensors(state) == ["nan", "inf", "-inf", "both"]
    assert ck.non_finite_tensors is modelio.non_finite_tensors  # one rule for saving, loading and checkpoints
