"""A run's log (wssl_zoo.runlog): record kinds, what a resumed run drops, the run state a SLURM script
asks, the per-step numbers in log.jsonl, TensorBoard and W&B (offline, no network), and the training
curves drawn from the per-step log."""

from __future__ import annotations

import json
import os
import signal
import struct
import time
from pathlib import Path

import pytest

from wssl_zoo import plots, runlog
from wssl_zoo.runlog import read_log, run_state, trim

from builders import make_imagefolder

needs_mpl = pytest.mark.skipif(not plots.have_matplotlib(), reason="matplotlib is not installed")

START = dict(kind="start", epoch=1, step=0, global_step=0, resumed_from=None, steps_per_epoch=4, epochs=2,
             fresh="a new run")


def _step(g: int, loss: float) -> dict:
    return dict(kind="step", epoch=(g - 1) // 4 + 1, step=(g - 1) % 4 + 1, global_step=g, lr=0.1 * g, loss=loss,
                views_per_s=100.0 + g, data_wait_share=0.25, steps=1)


LOG = [START, _step(1, 3.0), _step(2, 2.8), _step(3, 2.9), _step(4, 2.5),
       dict(kind="epoch", epoch=1, global_step=4, loss=2.8, lr=0.4, views_per_s=90.0, epoch_seconds=1.0),
       _step(5, 2.4), _step(6, 2.2),
       dict(kind="stop", epoch=2, step=2, global_step=6, signal="SIGUSR1", checkpoint="c",
            slurm_job_id="41", slurm_restart_count="0")]


def _write(path: Path, rows, tail: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)
    return path


def test_read_log_by_kind_and_an_unfinished_last_line_is_left_out(tmp_path):
    log = _write(tmp_path / "log.jsonl", LOG, tail='{"kind": "step", "epo')  # a crash in the middle of a write
    assert read_log(log) == LOG
    assert [r["global_step"] for r in read_log(log, kind="step")] == [1, 2, 3, 4, 5, 6]
    assert read_log(log, kind="epoch") == [LOG[5]]
    old = _write(tmp_path / "old.jsonl", [dict(epoch=1, loss=1.0)])  # logs before kinds: epoch records
    assert read_log(old, kind="epoch") == [dict(epoch=1, loss=1.0)]
    with pytest.raises(ValueError, match="unknown kind 'steps'"):
        read_log(log, kind="steps")


def test_trim_drops_what_was_logged_after_the_checkpoint(tmp_path):
    log = _write(tmp_path / "log.jsonl", LOG[:8], tail='{"kind": "st')
    before = log.stat().st_mtime_ns
    assert trim(log, 4) == 3  # steps 5 and 6 and the unfinished line
    assert read_log(log) == LOG[:6] and log.read_text().endswith("\n")
    assert trim(log, 4) == 0 and log.stat().st_mtime_ns != before
    unchanged = log.read_bytes()
    trim(log, 10)
    assert log.read_bytes() == unchanged


def test_run_state_says_how_the_run_ended(tmp_path, monkeypatch, capsys):
    """0 finished, 75 stopped by a signal (in this SLURM job and restart), 1 otherwise; the CLI's
    --status exits with it (what the sbatch examples in docs/slurm.md requeue on)."""
    from wssl_zoo.pretrain.cli import main

    for var in ("SLURM_JOB_ID", "SLURM_RESTART_COUNT"):
        monkeypatch.delenv(var, raising=False)
    out = tmp_path / "run"
    assert run_state(out)[0] == 1
    _write(out / "log.jsonl", LOG)
    assert run_state(out) == (75, f"{out}: stopped by SIGUSR1 at global step 6 with its checkpoint written; "
                                  "resume it with --resume")
    monkeypatch.setenv("SLURM_JOB_ID", "41")
    assert run_state(out)[0] == 75  # the first run of job 41 (no SLURM_RESTART_COUNT yet)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    status, line = run_state(out)  # the requeued job failed before it logged anything: no endless requeue
    assert status == 1 and "not in this one (41, restart 1)" in line
    assert main(["--out", str(out), "--status"]) == 1
    assert "this job did not get as far as logging" in capsys.readouterr().out
    monkeypatch.delenv("SLURM_JOB_ID")
    assert main(["--out", str(out), "--status"]) == 75
    _write(out / "log.jsonl", LOG[:-1])
    assert run_state(out)[0] == 1
    (out / "summary.json").write_text("{}")
    assert run_state(out)[0] == 1  # not without its model: summary.json is written after model.safetensors
    (out / "model.safetensors").write_bytes(b"")
    assert main(["--out", str(out), "--status"]) == 0
    assert "finished" in capsys.readouterr().out


def test_step_window_times_only_the_steps():
    """A step's time runs from asking the loader for its batch to the end of the step; the data-wait share
    is the waiting part of it."""
    window = runlog.StepWindow()
    asked = time.perf_counter() - 1.0  # a step that asked for its batch a second ago and waited 0.25 s
    window.fetched(asked, asked + 0.25)
    window.add(2.0, 8)
    summary = window.summary()
    assert window.steps == 1 and summary["steps"] == 1 and summary["loss"] == 2.0
    assert 0.15 < summary["data_wait_share"] <= 0.25 and 5 < summary["views_per_s"] <= 8
    window.reset()
    assert (window.steps, window.views, window.wait, window.seconds) == (0, 0, 0.0, 0.0)
    assert runlog.format_duration(59.6) == "1 min 00 s" and runlog.format_duration(7300) == "2 h 01 min"


def test_training_curves_from_the_per_step_log(tmp_path):
    curves = plots.training_curves(LOG)
    assert curves["loss"] == [[1.0, 2.8]] and curves["lr"] == [[1.0, 0.4]]
    assert curves["loss_steps"] == [[0.25, 3.0], [0.5, 2.8], [0.75, 2.9], [1.0, 2.5], [1.25, 2.4], [1.5, 2.2]]
    assert curves["lr_steps"][2] == [0.75, 0.1 * 3] and curves["data_wait_share"][0] == [0.25, 0.25]
    assert curves["views_per_s"][-1] == [1.5, 106.0]
    assert set(plots.training_curves([r for r in LOG if r["kind"] != "start"])) == {"loss", "lr"}  # no x scale


# ---------------------------------------------------------------------------- a real run's logs


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_imagefolder(tmp_path_factory.mktemp("runlog-data"), size=32)


def _tiny(epochs: int = 2):
    from wssl_zoo.pretrain.recipes import resolve_recipe

    return resolve_recipe("cwrgp_cifar10", {"arch": "test_resnet", "stem": "imagenet", "img_size": 32,
                                            "dataset": "imagefolder", "batch_size": 16, "loss.w_size": 8,
                                            "loss.groups": 2, "projector.out_dim": 16, "projector.hidden_dim": 32,
                                            "epochs": epochs})


def _options(out: Path, images: Path, **extra):
    from wssl_zoo.pretrain.loop import RunOptions

    return RunOptions(out=out, data=str(images), workers=0, eval_every=0, progress=False, device="cpu", **extra)


def _at_step(monkeypatch, global_step: int, then) -> object:
    """Call ``then()`` at the end of ``global_step`` of the runs that follow; returns the loop's own
    step hook (to put back)."""
    from wssl_zoo.pretrain import loop

    real = loop._log_step

    def hooked(run, *args):
        real(run, *args)
        if run.global_step == global_step:
            then()

    monkeypatch.setattr(loop, "_log_step", hooked)
    return real


def _sigterm():
    os.kill(os.getpid(), signal.SIGTERM)


def _crash():
    raise OSError("the node went away")


@needs_mpl
def test_step_records_every_n_steps_and_the_curves_png(tmp_path, images):
    from wssl_zoo.pretrain.loop import pretrain

    out = tmp_path / "run"
    pretrain(_tiny(epochs=3), _options(out, images, log_every=2))
    log = read_log(out / "log.jsonl")
    assert [r["kind"] for r in log] == ["start", "step", "epoch", "step", "step", "epoch", "step", "epoch"]
    steps = [r for r in log if r["kind"] == "step"]  # 3 steps per epoch, a record every 2 global steps
    assert [(r["epoch"], r["step"], r["global_step"], r["steps"]) for r in steps] == [
        (1, 2, 2, 2), (2, 1, 4, 2), (2, 3, 6, 2), (3, 2, 8, 2)]
    for r in steps:
        assert r["views_per_s"] > 0 and 0 <= r["data_wait_share"] <= 1 and r["lr"] > 0
    assert log[0]["steps_per_epoch"] == 3 and log[0]["hardware"].endswith(("AVX512", "AVX2", "DEFAULT", "NO AVX"))
    png = plots.plot_training_curves(out)
    assert plots.png_data(png)["curves"] == plots.training_curves(out)
    assert {"loss_steps", "lr_steps", "views_per_s", "data_wait_share"} <= set(plots.png_data(png)["curves"])


def test_tensorboard_gets_the_step_records_and_a_resumed_run_hides_what_the_killed_one_logged_past_it(
        tmp_path, images, monkeypatch):
    """A run dies at global step 5 with its last checkpoint at step 3 (the end of epoch 1): log.jsonl drops
    the records of steps 4 and 5 and TensorBoard hides their events (purge_step), so each step shows once,
    with the resumed run's numbers."""
    pytest.importorskip("tensorboard", reason="the [tensorboard] extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from wssl_zoo.pretrain import loop
    from wssl_zoo.pretrain.loop import pretrain

    out = tmp_path / "tb"
    real = _at_step(monkeypatch, 5, _crash)
    with pytest.raises(OSError, match="the node went away"):
        pretrain(_tiny(), _options(out, images, log_every=1, tensorboard=True))
    assert [r["global_step"] for r in read_log(out / "log.jsonl", kind="step")] == [1, 2, 3, 4, 5]
    monkeypatch.setattr(loop, "_log_step", real)
    pretrain(_tiny(), _options(out, images, log_every=1, tensorboard=True, resume=True))
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert {"train/loss", "train/lr", "train/views_per_s", "train/data_wait_share", "pretrain/loss"} <= \
        set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]
    losses = {r["global_step"]: r["loss"] for r in read_log(out / "log.jsonl", kind="step")}
    assert sorted(losses) == [1, 2, 3, 4, 5, 6]
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx([losses[g] for g in range(1, 7)])


# ---------------------------------------------------------------------------- Weights & Biases, offline


def wandb_records(path: Path):
    """The records of an offline W&B run file (``run-ID.wandb``): W&B writes them in the LevelDB log
    format (32 KiB blocks of chunks with a 7-byte header: crc32c, length, type) after its own 7-byte file
    header, each a ``wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            break
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def _history(run_file: Path) -> dict[int, dict]:
    rows = {}
    for record in wandb_records(run_file):
        if record.WhichOneof("record_type") == "history":
            items = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item}
            rows[int(items["_step"])] = items
    return rows


def test_wandb_offline_a_resumed_run_continues_the_same_wandb_run(tmp_path, images, monkeypatch):
    pytest.importorskip("wandb", reason="the [wandb] extra is not installed")
    from wssl_zoo.preempt import Preempted
    from wssl_zoo.pretrain import loop
    from wssl_zoo.pretrain.loop import pretrain

    for var, value in dict(WANDB_MODE="offline", WANDB_SILENT="true", WANDB_CONFIG_DIR=tmp_path / "wb-config",
                           WANDB_CACHE_DIR=tmp_path / "wb-cache", WANDB_DATA_DIR=tmp_path / "wb-data",
                           WANDB_PROJECT="wssl-test").items():
        monkeypatch.setenv(var, str(value))
    out = tmp_path / "run"
    real = _at_step(monkeypatch, 4, _sigterm)
    with pytest.raises(Preempted):
        pretrain(_tiny(), _options(out, images, log_every=1, wandb=True))
    saved = json.loads((out / "wandb_run.json").read_text())
    assert saved["project"] == "wssl-test" and saved["id"]
    monkeypatch.setattr(loop, "_log_step", real)
    pretrain(_tiny(), _options(out, images, log_every=1, wandb=True, resume=True))
    assert json.loads((out / "wandb_run.json").read_text()) == saved
    runs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(r.name.endswith(saved["id"]) or r.name.endswith(saved["id"] + "-1") for r in runs)
    first, second = (next(r.glob("run-*.wandb")) for r in runs)
    assert {r.run.run_id for r in wandb_records(first) if r.WhichOneof("record_type") == "run"} == {saved["id"]}
    assert {r.run.run_id for r in wandb_records(second) if r.WhichOneof("record_type") == "run"} == {saved["id"]}
    kinds = [r.WhichOneof("record_type") for r in wandb_records(first)]
    assert "preempting" in kinds  # the stopped run shows as preempted, not crashed
    exits = [r.exit.exit_code for r in wandb_records(first) if r.WhichOneof("record_type") == "exit"]
    assert exits == [75]
    before, after = _history(first), _history(second)
    assert sorted(before) == [1, 2, 3, 4] and sorted(after) == [5, 6]
    losses = {r["global_step"]: r["loss"] for r in read_log(out / "log.jsonl", kind="step")}
    assert {g: row["train/loss"] for g, row in {**before, **after}.items()} == pytest.approx(losses)
    assert before[3]["epoch/epoch"] == 1 and after[6]["epoch/epoch"] == 2


def test_hardware_names_the_cpu_model_cores_threads_and_the_vector_instructions():
    """Times and CPU results in records and logs name the machine: the CPU model, the cores, torch's threads
    and the instructions torch's kernels use (AVX512 / AVX2 runs of one command differ: README)."""
    import torch

    from wssl_zoo.records import cpu_description, hardware

    text = cpu_description()
    assert text == hardware(torch.device("cpu"))
    assert text.endswith(f", {torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}")
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        model = next(line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                     if line.startswith("model name"))
        assert text.startswith(f"{model}, {len(os.sched_getaffinity(0))} cores, ")
