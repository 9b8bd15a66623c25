"""tests/warm.py, the warm interpreter other tests run their command lines in, behaves like a new
``python`` where those tests can tell: argv, exit status, stdin/stdout/stderr, environment, cwd,
signals, a fresh import of the project, and torchrun's environment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

import warm

PROBE = ("import json, os, sys; "
         "print(json.dumps({'argv': sys.argv, 'cwd': os.getcwd(), 'env': os.environ.get('PROBE_VAR'), "
         "'project': sorted(m for m in sys.modules if m.split('.')[0] in ('wssl_zoo', 'eval', 'detection', 'timm', "
         "'huggingface_hub')), 'path0': sys.path[0]}))")

# slow as the tests that use the zygote are: a "not slow" run never starts it
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.environ.get("WSSL_TESTS_FRESH") == "1", reason="WSSL_TESTS_FRESH=1: no zygote")]


def test_a_warm_child_sees_what_a_new_interpreter_sees(tmp_path):
    import json

    env = dict(os.environ, PROBE_VAR="x")
    cmd = [sys.executable, "-c", PROBE, "a", "b"]
    fresh = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True)
    child = warm.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert (child.returncode, child.stderr) == (fresh.returncode, fresh.stderr) == (0, "")
    assert json.loads(child.stdout) == json.loads(fresh.stdout) == {
        "argv": ["-c", "a", "b"], "cwd": str(tmp_path), "env": "x", "project": [], "path0": ""}


def test_the_child_takes_its_own_pythonpath(tmp_path):
    (tmp_path / "probe_mod.py").write_text("X = 41\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    found = warm.run([sys.executable, "-c", "import probe_mod, sys; print(probe_mod.X + 1, sys.path[1])"], env=env,
                     capture_output=True, text=True)
    assert found.stdout.split() == ["42", str(tmp_path)], found.stderr
    gone = warm.run([sys.executable, "-c", "import probe_mod"], capture_output=True, text=True)
    assert gone.returncode == 1 and "ModuleNotFoundError" in gone.stderr


def test_exit_status_streams_stdin_and_tracebacks(tmp_path):
    script = tmp_path / "s.py"
    script.write_text("import sys\nprint(sys.stdin.read().upper(), sys.argv[1:])\nprint('err', file=sys.stderr)\n"
                      "sys.exit(7)\n")
    done = warm.run([sys.executable, str(script), "z"], input="hi", capture_output=True, text=True)
    assert (done.returncode, done.stdout, done.stderr) == (7, "HI ['z']\n", "err\n")
    boom = warm.run([sys.executable, "-c", "raise ValueError('boom')"], capture_output=True, text=True)
    assert boom.returncode == 1 and boom.stderr.splitlines()[-1] == "ValueError: boom"
    assert "warm.py" not in boom.stderr
    merged = warm.run([sys.executable, "-u", "-c", "import sys; print('o'); print('e', file=sys.stderr)"],
                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert merged.stdout == "o\ne\n" and merged.stderr is None
    module = warm.run([sys.executable, "-m", "wssl_zoo", "info", "no_such_model"], capture_output=True, text=True)
    fresh = subprocess.run([sys.executable, "-m", "wssl_zoo", "info", "no_such_model"], capture_output=True, text=True)
    assert (module.returncode, module.stdout, module.stderr) == (fresh.returncode, fresh.stdout, fresh.stderr)
    assert module.returncode == 2


def test_a_child_is_a_process_that_can_be_stopped_and_killed():
    proc = warm.popen([sys.executable, "-c", "import time; time.sleep(60)"])
    assert proc.poll() is None
    os.kill(proc.pid, signal.SIGSTOP)  # a real pid
    proc.kill()
    assert proc.wait(timeout=10) == -signal.SIGKILL
    with pytest.raises(subprocess.TimeoutExpired):
        warm.run([sys.executable, "-c", "import time; time.sleep(60)"], timeout=0.5)


def test_the_thread_count_follows_omp_num_threads():
    code = "import torch; print(torch.get_num_threads())"
    one = warm.run([sys.executable, "-c", code], env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True,
                   text=True)
    assert one.stdout.strip() == "1"


def test_the_shell_client_passes_fds_status_and_signals(tmp_path):
    env = dict(os.environ, **warm.client_env())
    script = ('echo "import sys; print(sys.argv[1:]); sys.exit(5)" | "$PYTHON" - x y; echo "rc=$?"; '
              'timeout 1 "$PYTHON" -c "import time; time.sleep(30)"; echo "rc=$?"')
    start = time.monotonic()
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.stdout == "['x', 'y']\nrc=5\nrc=124\n", done.stderr
    assert time.monotonic() - start < 20


@pytest.mark.gloo
def test_torchrun_gives_each_rank_torchruns_environment():
    code = ("import os, torch.distributed as dist; dist.init_process_group('gloo'); "
            "print(dist.get_rank(), dist.get_world_size(), os.environ['LOCAL_RANK']); dist.destroy_process_group()")
    done = warm.torchrun(2, ["-c", code], timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["0 2 0", "1 2 1"]
    failed = warm.torchrun(2, ["-c", "import os, sys, time; os.environ['RANK'] == '1' and sys.exit(3); "
                                     "time.sleep(60)"], timeout=120)
    assert failed.returncode != 0  # one failed rank ends the run, as torchrun does
