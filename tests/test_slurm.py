"""The sbatch examples of docs/slurm.md, run with bash under a fake SLURM: ``srun`` and ``scontrol`` are
small stubs on PATH (srun starts its command once per node of the job with SLURM_NODEID set, as
``--ntasks-per-node=1`` does; scontrol names the nodes and records a requeue), torchrun and Python are
the real ones, on the CPU with gloo and tiny settings. The job is sent the signal SLURM sends before its
time limit (SIGUSR1 to every process of the job step), or the SIGTERM of a preemption; it must stop
with its checkpoint, requeue itself, and the requeued job (the same script and arguments) must finish
the run with the weights of an uninterrupted run of the same processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wssl_zoo.runlog import read_log

import warm
from builders import make_imagefolder
from conftest import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.gloo,
              pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the job's processes in /proc")]

SCRIPTS = REPO_ROOT / "docs" / "slurm"
SRUN = """#!/bin/bash
# srun stub: the command once per node (--ntasks-per-node=1), in parallel; as soon as a task's process
# ends, every process it left running is killed, as slurmstepd kills what remains in the task's cgroup
# (here: the processes whose environment carries the task's SRUN_STUB_TASK); the highest exit status
while [[ "${1:-}" == -* ]]; do shift; done
declare -A task
for ((node = 0; node < SLURM_NNODES; node++)); do
    SRUN_STUB_TASK=$$.$node SLURM_NODEID=$node SLURM_PROCID=$node SLURM_LOCALID=0 "$@" &
    task[$!]=$node
done
status=0
for ((left = SLURM_NNODES; left > 0; left--)); do
    wait -n -p ended
    s=$?
    leftover=$(grep -lxz "SRUN_STUB_TASK=$$.${task[$ended]}" /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3)
    [ -n "$leftover" ] && kill -KILL $leftover 2>/dev/null
    (( s > status )) && status=$s
done
exit $status
"""
SCONTROL = """#!/bin/bash
# scontrol stub: the job's host names, and a requeue recorded in $SCONTROL_LOG
case "$1 ${2:-}" in
    "show hostnames") for ((i = 0; i < SLURM_NNODES; i++)); do echo localhost; done ;;
    "requeue "*) echo "requeue $2" >> "$SCONTROL_LOG" ;;
    *) echo "scontrol stub: unexpected $*" >&2; exit 1 ;;
esac
"""
# 102 images in batches of 16 (8 per process): 6 steps per epoch, 2 epochs
RUN = ["--recipe", "cwrgp_cifar10", "--batch-size", "16", "--set", "loss.w_size=8", "--set", "loss.groups=2",
       "--set", "projector.out_dim=16", "--set", "projector.hidden_dim=32", "--dataset", "imagefolder", "--arch",
       "test_resnet", "--stem", "imagenet", "--img-size", "32", "--epochs", "2", "--workers", "0", "--eval-every",
       "0", "--no-progress", "--device", "cpu", "--log-every", "1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_imagefolder(tmp_path_factory.mktemp("slurm-data"), per_class=34, size=32)


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory) -> Path:
    """The same run by 2 processes on one node, never stopped."""
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = warm.torchrun(2, ["-m", "wssl_zoo.pretrain", *RUN, "--data", str(data), "--out", str(out)], env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def _fake_slurm(tmp_path: Path, nodes: int, restart: int, port: int) -> dict[str, str]:
    bin_dir = tmp_path / "slurm-bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in (("srun", SRUN), ("scontrol", SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    venv_bin = str(Path(sys.executable).parent)  # torchrun and python of this interpreter
    env = dict(os.environ, PATH=os.pathsep.join([str(bin_dir), venv_bin, os.environ["PATH"]]),
               PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1", SLURM_JOB_ID="4242", SLURM_NNODES=str(nodes),
               SLURM_JOB_NODELIST="localhost", SLURM_GPUS_ON_NODE="0", SCONTROL_LOG=str(tmp_path / "scontrol.log"),
               NPROC_PER_NODE=str(2 // nodes), MASTER_PORT=str(port))
    if restart:
        env["SLURM_RESTART_COUNT"] = str(restart)
    else:
        env.pop("SLURM_RESTART_COUNT", None)
    return env


def _descendants(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            found += [int(child), *_descendants(int(child))]
    return found


def _job_step(script: subprocess.Popen) -> list[int]:
    """The processes of the job step: what the srun stub (the script's child) started, not srun itself."""
    sruns = [pid for pid in _descendants(script.pid)
             if b"/slurm-bin/srun\0" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    return [pid for srun in sruns for pid in _descendants(srun)]


# SIGUSR1: the --signal of the examples, before the time limit (torchrun ignores it); SIGTERM: preemption or
# a time limit without --signal (torchrun passes it on and waits TORCH_ELASTIC_SHUTDOWN_TIMEOUT)
@pytest.mark.parametrize("script,nodes,signame", [("pretrain_1node.sbatch", 1, "SIGTERM"),
                                                  ("pretrain_nodes.sbatch", 2, "SIGUSR1")])
def test_the_sbatch_example_stops_on_the_signal_requeues_and_the_requeued_job_finishes(
        script, nodes, signame, data, uninterrupted, tmp_path):
    out = tmp_path / "run"
    args = [*RUN, "--data", str(data), "--out", str(out)]
    log = out / "log.jsonl"
    env = _fake_slurm(tmp_path, nodes, restart=0, port=warm.free_port())
    job = subprocess.Popen(["bash", str(SCRIPTS / script), *args], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and job.poll() is None:
        if log.is_file() and len(read_log(log, kind="step")) >= 2:
            break
        time.sleep(0.02)
    assert job.poll() is None, job.stdout.read()
    step = _job_step(job)
    assert len(step) >= 2 * nodes, step  # a torchrun per node and its training processes
    for pid in step:  # SLURM signals every process of the job step, torchrun included
        os.kill(pid, getattr(signal, signame))
    output = job.stdout.read()
    assert job.wait(timeout=300) == 75, output
    stop = read_log(log)[-1]
    assert stop["kind"] == "stop" and stop["signal"] == signame and stop["slurm_job_id"] == "4242", output
    assert f"wssl-zoo pretrain: stopped by {signame} at epoch 1, step" in output
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n"
    assert not (out / "model.safetensors").exists()

    # the requeued job: the same script, arguments and job id, SLURM_RESTART_COUNT=1
    env = _fake_slurm(tmp_path, nodes, restart=1, port=warm.free_port())
    again = subprocess.run(["bash", str(SCRIPTS / script), *args], env=env, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"resuming from {out / 'checkpoints' / 'last.pt'} at epoch 1, step {stop['step']}" in again.stdout
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n"  # no second requeue
    for name in ("model.safetensors", "projector.safetensors"):
        assert (out / name).read_bytes() == (uninterrupted / name).read_bytes(), name
    starts = read_log(log, kind="start")
    assert [s.get("slurm_restart_count") for s in starts] == ["0", "1"] and starts[0]["world_size"] == 2
