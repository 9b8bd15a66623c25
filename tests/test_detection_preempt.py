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
from test_detection_train import FPN_FAST, make_coco

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
    deadline = time.monotonic() + 600
    while not (log.is_file() and log.read_text().strip()):  # the first iteration is done: training runs
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 75, err[-3000:]
    last = err.strip().splitlines()[-1]
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
