"""Resumption that is proven: the run is frozen (SIGSTOP) once its checkpoint has advanced, the
test reads the checkpoint's step, kills the process (SIGKILL), resumes it and checks that it
restarted from that step (its own message, no repeated epoch in log.jsonl) and ends with the same
bytes as an uninterrupted run: weights, projector, and the whole final checkpoint (optimiser state,
INTL_M's momentum encoder, the fp16 grad scaler). Tiny timm ``test_resnet`` backbones (370k
parameters, 1.5 MB checkpoints) on 32x32 images keep each run to seconds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import warm
from test_pretrain import make_imagefolder

STEPS = 9  # 60 images, batch 16 (drop last): 3 steps per epoch, 3 epochs
CASES = {
    # Adam (CW-RGP CIFAR recipe)
    "cwrgp_adam": ["--recipe", "cwrgp_cifar10", "--batch-size", "16", "--set", "loss.w_size=8",
                   "--set", "loss.groups=2", "--set", "projector.out_dim=16"],
    # SGD with a momentum encoder updated every step (INTL_M)
    "intl_m_sgd_momentum_encoder": ["--recipe", "intl_m_imagenet", "--batch-size", "16",
                                    "--set", "projector.out_dim=16"],
    "intl_lars": ["--recipe", "intl_cifar10", "--batch-size", "16", "--set", "optimizer=lars",
                  "--set", "projector.out_dim=16"],
    # INTL_M's six crops made on the device; the resumed command does not repeat --device-views
    "intl_m_device_views": ["--recipe", "intl_m_imagenet", "--batch-size", "16", "--set", "projector.out_dim=16",
                            "--device-views"],
}
RUN = ["--workers", "0", "--eval-every", "0", "--no-progress", "--checkpoint-every", "1", "--device", "cpu"]
COMMON = ["--dataset", "imagefolder", "--arch", "test_resnet", "--stem", "imagenet", "--img-size", "32",
          "--epochs", "3", "--set", "projector.hidden_dim=32", *RUN]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_imagefolder(tmp_path_factory.mktemp("resume-data"), size=32)


def _cli(args):
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return warm.popen([sys.executable, "-m", "wssl_zoo.pretrain", *args], stdout=subprocess.PIPE,
                      stderr=subprocess.STDOUT, text=True, env=env)


def _read_step(ckpt: Path) -> int | None:
    try:
        return int(torch.load(ckpt, weights_only=True)["step"])
    except Exception:  # noqa: BLE001 - not written yet (the file is replaced atomically)
        return None


def kill_after_checkpoint(proc, out: Path, at_least: int) -> int:
    """Freeze ``proc`` once ``out``'s last.pt holds step >= ``at_least``, then SIGKILL it; returns
    the step of the checkpoint it leaves (read while the process is stopped)."""
    ckpt = out / "checkpoints" / "last.pt"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        step = _read_step(ckpt) if ckpt.is_file() else None
        if step is not None and step >= at_least:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed:\n" + proc.stdout.read()
    proc.send_signal(signal.SIGSTOP)
    step = _read_step(ckpt)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    return step


def _final_checkpoint(out: Path) -> dict:
    return torch.load(out / "checkpoints" / "last.pt", weights_only=True)


def assert_same_tensors(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same_tensors(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def run_kill_resume(tmp_path: Path, data: Path, args: list[str], at_least: int = 2):
    full_out, killed_out = tmp_path / "full", tmp_path / "killed"
    full = _cli([*COMMON, *args, "--data", str(data), "--out", str(full_out)])
    killed = _cli([*COMMON, *args, "--data", str(data), "--out", str(killed_out)])
    step = kill_after_checkpoint(killed, killed_out, at_least)
    assert full.wait(timeout=600) == 0, full.stdout.read()
    assert at_least <= step < STEPS and not (killed_out / "model.safetensors").exists()
    logged_before = [json.loads(r)["epoch"] for r in (killed_out / "log.jsonl").read_text().splitlines()] \
        if (killed_out / "log.jsonl").exists() else []
    # the README's command: the recipe, --data and the run options come from train_config.json
    resumed = _cli(["--out", str(killed_out), "--resume", *RUN])
    output = resumed.stdout.read()
    assert resumed.wait(timeout=600) == 0, output
    epoch, in_epoch = divmod(step, 3)
    assert f"at epoch {epoch + 1}, step {in_epoch} (global step {step})" in output, output
    log = [json.loads(r) for r in (killed_out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3], "an epoch was repeated or skipped"
    assert [r["epoch"] for r in log][: len(logged_before)] == logged_before
    assert [r["global_step"] for r in log] == [3, 6, 9]
    for name in ("model.safetensors", "projector.safetensors"):
        assert (full_out / name).read_bytes() == (killed_out / name).read_bytes(), name
    a, b = _final_checkpoint(full_out), _final_checkpoint(killed_out)
    for part in ("model", "optimizer", "scaler"):
        assert_same_tensors(a[part], b[part], part)
    return step, a


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_sigkill_after_a_seen_checkpoint_resumes_from_it_bit_identically(tmp_path, data, case):
    step, final = run_kill_resume(tmp_path, data, CASES[case])
    if case == "intl_m_sgd_momentum_encoder":
        assert any(k.startswith("momentum") or "ema" in k or "target" in k for k in final["model"]), \
            sorted(final["model"])[:20]
    if case == "intl_lars":
        assert all("lars_exclude" in g for g in final["optimizer"]["param_groups"])
    if case == "intl_m_device_views":  # the resumed process made its views on the device too
        assert json.loads((tmp_path / "killed" / "train_config.json").read_text())["options"]["device_views"] is True


@pytest.mark.slow
def test_fp16_grad_scaler_state_is_checkpointed_and_restored(tmp_path, data):
    """AMP fp16: the GradScaler's scale and growth tracker go into the checkpoint and come back, and
    the resumed run ends bit-identical to the uninterrupted one (weights, optimiser, scaler).

    This test used to xfail ("resumed weights differ although the scaler state matches"). Not
    reproducible on 2026-12-02: the old test (32 px) took its bit-identical branch in 2 of 2 runs,
    this one (16 px) passed in 3 of 3, and resuming in-process from the
    checkpoint of every global step 1-8 of this run (among them step 3, whose gradients overflowed:
    the scaler backed off 65536 -> 32768 and Adam skipped the step) ended with the same bytes, on
    the current code and on 935c5a6 where the xfail was written. So nothing in the scaler's state
    is lost (its state_dict is all of it: scale, growth/backoff factors, interval, growth tracker)
    and the assertion is strict. fp16 autocast on the CPU is slow (no fast fp16 kernels), so this
    run uses 16-px views: 4x fewer pixels than the other resume cases."""
    try:
        with torch.autocast("cpu", dtype=torch.float16):
            torch.nn.functional.conv2d(torch.randn(1, 3, 8, 8), torch.randn(4, 3, 3, 3))
    except RuntimeError as exc:  # pragma: no cover - depends on the CPU build
        pytest.skip(f"fp16 autocast unsupported on this CPU build: {exc}")
    _, final = run_kill_resume(tmp_path, data, [*CASES["cwrgp_adam"], "--amp", "fp16", "--img-size", "16"])
    assert set(final["scaler"]) >= {"scale", "_growth_tracker"} and final["scaler"]["scale"] > 0


def test_scaler_state_round_trips_through_a_checkpoint(tmp_path):
    """The save/restore path of the grad scaler on its own (fp16 autocast need not exist here)."""
    from wssl_zoo.pretrain import checkpoint as ck

    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=3)
    p = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([p], lr=0.1)
    for _ in range(4):
        opt.zero_grad()
        scaler.scale(p.sum()).backward()
        scaler.step(opt)
        scaler.update()
    ck.save_checkpoint(tmp_path, ck.TrainState(epoch=1, step=4, model={}, optimizer=opt.state_dict(),
                                               scaler=scaler.state_dict()))
    fresh = torch.amp.GradScaler("cpu")
    fresh.load_state_dict(ck.load_checkpoint(tmp_path).scaler)
    assert fresh.state_dict() == scaler.state_dict() and fresh.get_scale() == 2048.0


def _tiny(case="cwrgp_adam", **extra):
    from wssl_zoo.pretrain.recipes import resolve_recipe

    return resolve_recipe("cwrgp_cifar10", {"arch": "test_resnet", "stem": "imagenet", "img_size": 32,
                                            "dataset": "imagefolder", "batch_size": 16, "loss.w_size": 8,
                                            "loss.groups": 2, "projector.out_dim": 16, "projector.hidden_dim": 32,
                                            "epochs": 2, **extra})


def test_resume_refuses_another_recipe_or_other_data(tmp_path, data):
    import shutil

    from wssl_zoo.pretrain.loop import RunOptions, pretrain

    out = tmp_path / "run"
    opts = dict(out=out, data=str(data), workers=0, eval_every=0, progress=False, steps_per_epoch=1, device="cpu")
    pretrain(_tiny(epochs=1), RunOptions(**opts))
    (out / "model.safetensors").unlink()  # looks interrupted: the checkpoint is what --resume reads
    before = (out / "checkpoints" / "last.pt").read_bytes()
    with pytest.raises(ValueError, match=r"--resume: the recipe differs from the one .*last\.pt"):
        pretrain(_tiny(epochs=1, **{"loss.w_size": 4}), RunOptions(**opts, resume=True))
    fewer = tmp_path / "fewer"
    shutil.copytree(data, fewer)
    for p in list((fewer / "train" / "c0").iterdir())[:4]:
        p.unlink()
    with pytest.raises(ValueError, match=r"--resume: the training data differs .*\(samples[,)].*; resume with the same"):
        pretrain(_tiny(epochs=1), RunOptions(**{**opts, "data": str(fewer)}, resume=True))
    with pytest.raises(ValueError, match=r"\(seed\)"):
        pretrain(_tiny(epochs=1), RunOptions(**opts, resume=True, seed=1))
    assert (out / "checkpoints" / "last.pt").read_bytes() == before  # a refusal writes nothing
