"""detection.train (torchvision backend, CPU) sent SIGTERM mid-run: it finishes the iteration, writes
its checkpoint, exits with status 75 and one line naming the command that resumes it; that command
ends with the same weights and metrics as an uninterrupted run of the same job."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import warm
from builders import FPN_FAST, make_coco, sigterm_when

REPO = Path(__file__).resolve().parent.parent
MAX_ITER = 24


def _argv(coco: Path, out: Path) -> list[str]:
    sets = [s.replace("(96,)", "(64,)").replace("=96", "=64") for s in FPN_FAST]
    argv = ["--model", "random:resnet18", "--protocol", "coco_R_50_FPN_1x", "--data", str(coco), "--out", str(out),
            "--backend", "torchvision", "--device", "cpu", "--max-iter", str(MAX_ITER), "--ims-per-batch", "2",
            "--checkpoint-every", "0", "--workers", "1", "--seed", "3", "--no-progress", "--no-record"]
    for item in sets + ["SOLVER.WARMUP_ITERS=4"]:
        argv += ["--set", item]
    return argv


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_and_the_resumed_run_ends_where_an_uninterrupted_one_ends(tmp_path):
    coco = make_coco(tmp_path / "coco", n=6, size=64, seed=2)
    env = dict(os.environ, OMP_NUM_THREADS="1")  # the three runs compute with the same thread count
    stopped, whole = tmp_path / "stopped", tmp_path / "whole"
    proc = warm.popen([sys.executable, "-m", "detection.train", *_argv(coco, stopped)], env=env, cwd=REPO,
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = stopped / "metrics.jsonl"
    # once the first iteration is done: training runs
    err, last = sigterm_when(proc, lambda: log.is_file() and bool(log.read_text().strip()))
    found = re.fullmatch(r"detection\.train: stopped by SIGTERM after iteration (\d+) of 24; checkpoint written to "
                         r"(\S+)\. Resume with: (.+)  \(exit status 75\)", last)
    assert found, last
    assert "Traceback" not in err
    stop_at = int(found[1])
    assert 1 <= stop_at < MAX_ITER
    checkpoint = torch.load(found[2], weights_only=False)
    assert Path(found[2]) == stopped / "checkpoints" / "last.pt" and checkpoint["iteration"] == stop_at
    assert len(checkpoint["rng"]) == 1 and not (stopped / "model_final.pt").exists()
    command = shlex.split(found[3])
    assert command[:3] == ["python", "-m", "detection.train"] and command[-1] == "--resume"
    assert command[3:-1] == _argv(coco, stopped)

    resumed = warm.run([sys.executable, *command[1:]], env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    uninterrupted = warm.run([sys.executable, "-m", "detection.train", *_argv(coco, whole)], env=env, cwd=REPO,
                             capture_output=True, text=True, timeout=600)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]

    a = torch.load(stopped / "model_final.pt", weights_only=False)
    b = torch.load(whole / "model_final.pt", weights_only=False)
    assert a["iteration"] == b["iteration"] == MAX_ITER
    assert a["model"].keys() == b["model"].keys()
    for key in b["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    ea, eb = (json.loads((d / "eval.json").read_text()) for d in (stopped, whole))
    assert ea["metrics"] == eb["metrics"] and ea["train"]["resumed_from"] == stop_at
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert lines[-1]["iteration"] == MAX_ITER
    assert lines[-1]["total_loss"] == [json.loads(x) for x in (whole / "metrics.jsonl").read_text().splitlines()][-1][
        "total_loss"]


@pytest.mark.slow
@pytest.mark.gloo
def test_under_torchrun_a_signal_to_one_rank_stops_every_rank_after_the_same_iteration(tmp_path):
    """Two CPU ranks (gloo, torchrun's environment as tests/warm.py sets it): SIGTERM reaches rank 1
    only; the stop is all-reduced, so both ranks stop after the same iteration with status 75, rank 0
    writes the checkpoint with both ranks' random states, and the resume command under torchrun ends
    the run."""
    coco = make_coco(tmp_path / "coco", n=6, size=64, seed=4)
    out = tmp_path / "ddp"
    argv = _argv(coco, out)
    argv[argv.index("--ims-per-batch") + 1] = "4"
    argv[argv.index("--workers") + 1] = "0"
    argv += ["--set", "MODEL.MASK_ON=False"]
    port = warm.free_port()
    procs = []
    for rank in range(2):
        env = dict(os.environ, OMP_NUM_THREADS="1", RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                   LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), PYTHONUNBUFFERED="1")
        procs.append(warm.popen([sys.executable, "-m", "detection.train", *argv], env=env, cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    log = out / "metrics.jsonl"
    deadline = time.monotonic() + 600
    try:
        while not (log.is_file() and log.read_text().strip()):
            assert all(p.poll() is None for p in procs) and time.monotonic() < deadline, procs[0].communicate()[1][-3000:]
            time.sleep(0.05)
        procs[1].send_signal(signal.SIGTERM)
        errs = [p.communicate(timeout=600)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [75, 75], errs[0][-2000:] + errs[1][-2000:]
    lines = [e.strip().splitlines()[-1] for e in errs]
    where = [re.search(r"after iteration (\d+) of 24", line) for line in lines]
    assert all(where) and where[0][1] == where[1][1], lines  # the same iteration on both ranks
    assert lines[1].startswith("detection.train: stopped by SIGTERM") and "a stop signal (on another rank)" in lines[0]
    checkpoint = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    assert checkpoint["iteration"] == int(where[0][1]) and len(checkpoint["rng"]) == 2
    command = shlex.split(lines[1].split("Resume with: ", 1)[1].rsplit("  (exit status", 1)[0])
    resumed = warm.torchrun(2, command[1:], env=dict(os.environ, OMP_NUM_THREADS="1"), cwd=REPO, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert torch.load(out / "model_final.pt", weights_only=False)["iteration"] == MAX_ITER
