"""Evaluation checkpoints: never clobbered, a wrong resume refused naming the field, SIGKILL or
SIGTERM (to one process or, as SLURM sends it, to every process) + --resume = an uninterrupted run."""

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

from eval import linear

from builders import final_checkpoint
from conftest import REPO_ROOT, eval_args

pytestmark = pytest.mark.usefixtures("cache")  # a feature cache of its own for every test


def _cli(module: str, args: list[str]):
    import warm

    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    return warm.popen([sys.executable, "-m", module, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                      text=True, env=env, cwd=REPO_ROOT)


def _epoch_of(ckpt: Path):
    try:
        data = torch.load(ckpt, weights_only=True)
        return data["epoch"], data["step"]
    except Exception:  # noqa: BLE001 - not written yet (replaced atomically)
        return None


def _wait_for_checkpoint(proc, ckpt: Path, epochs: int = 1):
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        seen = _epoch_of(ckpt) if ckpt.is_file() else None
        if seen is not None and seen[0] >= epochs:
            return seen
        time.sleep(0.005)
    raise AssertionError("the run ended before its checkpoint was seen:\n" + (proc.stdout.read() or ""))


def _same(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


# (module, arguments): each run is a few seconds of tiny steps, long enough to be stopped mid-way
KINDS = {
    "linear-cached": ("eval.linear", ["--protocol", "small", "--epochs", "60", "--batch-size", "8"]),
    "linear-augmented": ("eval.linear", ["--protocol", "cwrgp", "--epochs", "12", "--batch-size", "8"]),
    "semi": ("eval.semi", ["--split", "10pct", "--make-split-file", "SPLIT", "--percent", "50", "--epochs", "8",
                           "--batch-size", "4"]),
}


def _argv(kind: str, test_resnet_dir, colour_data, out: Path) -> tuple[str, list[str]]:
    module, extra = KINDS[kind]
    extra = [str(out.parent / "split.txt") if a == "SPLIT" else a for a in extra]
    return module, [*eval_args(test_resnet_dir, colour_data, out, "--device", "cpu"), *extra, "--keep-checkpoint"]


def _records_match(a: Path, b: Path) -> None:
    ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
    for key in ("metrics", "best_epoch", "best_metrics", "epochs_run", "protocol", "dataset", "weights_sha256"):
        assert ra[key] == rb[key], key


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def test_a_checkpoint_is_never_clobbered_and_a_wrong_resume_is_refused_naming_the_field(test_resnet_dir, colour_data, tmp_path,
                                                                                         capsys):
    out = tmp_path / "r.json"
    argv = [*eval_args(test_resnet_dir, colour_data, out, "--device", "cpu"), "--protocol", "fast", "--epochs", "2", "--batch-size", "8"]
    assert linear.main([*argv, "--resume", "--keep-checkpoint"]) == 0
    assert "--resume: no checkpoint at" in capsys.readouterr().out  # nothing to resume: starts fresh, says so
    assert linear.main([*argv, "--resume"]) == 0  # finished (record, no checkpoint): not run again
    assert "finished" in capsys.readouterr().out
    ckpt, final = out.with_name("r.ckpt"), torch.load(out.with_name("r.final.ckpt"), weights_only=True)
    assert final["identity"]["world size"] == 1 and final["epoch"] == 2 and len(final["history"]) == 2
    torch.save(dict(final, epoch=1), ckpt)
    assert linear.main(argv) == 2  # no --resume: refused, naming the file
    err = capsys.readouterr().err
    assert f"{ckpt}: a checkpoint of this evaluation is there (epoch 1, step 0 of 2 epochs); pass --resume" in err
    for field, value in (("world size", 8), ("model hash", "f" * 64), ("data fingerprint", {"train": "x", "test": "y"}),
                         ("protocol", dict(final["identity"]["protocol"], lr=1.0))):
        torch.save(dict(final, epoch=1, identity=dict(final["identity"], **{field: value})), ckpt)
        assert linear.main([*argv, "--resume"]) == 2
        err = capsys.readouterr().err
        assert f"the checkpoint was written with another {field} (" in err and "refusing to resume" in err, err
    assert ckpt.is_file()  # left as it was
    torch.save(dict(final, epoch=1, history=final["history"][:1]), ckpt)  # the right one resumes
    assert linear.main([*argv, "--resume"]) == 0 and not ckpt.exists()
    assert "resuming from" in capsys.readouterr().out
    # --resume skips only a record of the same measurement: another model's run into that file is refused
    other = [*argv[:argv.index("--model") + 1], "random:test_resnet:imagenet:32", *argv[argv.index("--model") + 2:]]
    assert linear.main([*other, "--resume"]) == 2
    assert f"{out} holds another measurement" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_sigkill_mid_run_and_resume_end_where_an_uninterrupted_run_ends(test_resnet_dir, colour_data, tmp_path, kind):
    """The run is frozen (SIGSTOP) once its checkpoint holds an epoch, killed (SIGKILL: no handler runs),
    resumed with the same command and --resume: the final classifier / network, optimiser state,
    per-epoch test metrics and record equal those of an uninterrupted run, bit for bit (CPU, one thread)."""
    full_out, killed_out = tmp_path / "full" / "r.json", tmp_path / "killed" / "r.json"
    for out in (full_out, killed_out):
        out.parent.mkdir()
    module, argv = _argv(kind, test_resnet_dir, colour_data, killed_out)
    killed = _cli(module, argv)
    seen = _wait_for_checkpoint(killed, killed_out.with_name("r.ckpt"))
    killed.send_signal(signal.SIGSTOP)
    seen = _epoch_of(killed_out.with_name("r.ckpt"))
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    assert seen is not None and not killed_out.exists()
    module, full_argv = _argv(kind, test_resnet_dir, colour_data, full_out)
    full = _cli(module, full_argv)
    resumed = _cli(module, [*argv, "--resume"])
    output = resumed.stdout.read()
    assert resumed.wait(timeout=600) == 0, output
    assert f"at epoch {seen[0] + 1}, step {seen[1]}" in output, output
    assert full.wait(timeout=600) == 0, full.stdout.read()
    _records_match(full_out, killed_out)
    _same(final_checkpoint(full_out), final_checkpoint(killed_out))


def _resumed_ends_as_uninterrupted(module, argv, out: Path, model_dir, data, full: Path) -> None:
    """``argv`` resumed with --resume and an uninterrupted run writing ``full`` (side by side) both exit 0,
    with equal records and equal final checkpoints."""
    full.parent.mkdir()
    for proc in (_cli(module, [*argv, "--resume"]), _cli(module, _argv("linear-augmented", model_dir, data, full)[1])):
        output = proc.stdout.read()
        assert proc.wait(timeout=600) == 0, output
    _records_match(full, out)
    _same(final_checkpoint(full), final_checkpoint(out))


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_at_the_next_step_exits_75_and_resumes(test_resnet_dir, colour_data, tmp_path):
    out = tmp_path / "r.json"
    module, argv = _argv("linear-augmented", test_resnet_dir, colour_data, out)
    proc = _cli(module, argv)
    _wait_for_checkpoint(proc, out.with_name("r.ckpt"))
    proc.send_signal(signal.SIGTERM)
    output = proc.stdout.read()
    assert proc.wait(timeout=120) == 75, output
    line = [x for x in output.splitlines() if x.startswith("eval.linear: stopped by SIGTERM")]
    assert len(line) == 1 and f"checkpoint written to {out.with_name('r.ckpt')}" in line[0], output
    assert "Resume with: python -m eval.linear " in line[0] and line[0].rstrip().endswith("--resume  (exit status 75)")
    assert _epoch_of(out.with_name("r.ckpt")) is not None and not out.exists()
    _resumed_ends_as_uninterrupted(module, argv, out, test_resnet_dir, colour_data, tmp_path / "full" / "r.json")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs /proc to find the DataLoader workers")
def test_sigterm_to_every_process_of_the_job_as_slurm_sends_it_still_checkpoints(test_resnet_dir, colour_data, tmp_path):
    """SLURM signals every process of a job step, DataLoader workers included: the workers ignore it, the
    main process finishes the step, checkpoints and exits 75; the resumed run (2 workers) ends where a run
    without workers ends (the augmentations depend on (seed, epoch, index), not on the workers)."""
    out = tmp_path / "r.json"
    module, argv = _argv("linear-augmented", test_resnet_dir, colour_data, out)
    argv = [*argv[:argv.index("--workers")], "--workers", "2", *argv[argv.index("--workers") + 2:]]
    proc = _cli(module, argv)
    _wait_for_checkpoint(proc, out.with_name("r.ckpt"))
    workers = _children(proc.pid)
    assert len(workers) >= 2, workers
    for pid in (proc.pid, *workers):
        os.kill(pid, signal.SIGTERM)
    output = proc.stdout.read()
    assert proc.wait(timeout=120) == 75, output
    assert "eval.linear: stopped by SIGTERM" in output and "Traceback" not in output, output
    _resumed_ends_as_uninterrupted(module, argv, out, test_resnet_dir, colour_data, tmp_path / "full" / "r.json")
