"""The one stop-on-signal behaviour every long job shares (wssl_zoo.preempt, cliargs.run_cli)."""

from __future__ import annotations

import os
import signal

import pytest

from wssl_zoo import cliargs
from wssl_zoo.preempt import EXIT_PREEMPTED, Preempted, StopOnSignal, resume_command, stopped_message


@pytest.mark.parametrize("name", ["SIGTERM", "SIGUSR1", "SIGINT"])
def test_a_stop_signal_sets_the_flag_and_the_old_handler_comes_back(name, capsys):
    signum = getattr(signal, name)
    before = signal.getsignal(signum)
    with StopOnSignal() as stop:
        assert not stop.requested()
        os.kill(os.getpid(), signum)  # delivered before kill returns in the main thread
        assert stop.requested() and stop.received == name and stop.signal_name == name
    assert signal.getsignal(signum) is before
    assert f"{name} received: finishing the current step" in capsys.readouterr().err


def test_a_second_ctrl_c_interrupts_at_once():
    with StopOnSignal(announce=False):
        os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)


def test_resume_command_adds_resume_once():
    assert resume_command("wssl-zoo pretrain", ["--out", "runs/a b"]) == "wssl-zoo pretrain --out 'runs/a b' --resume"
    assert resume_command("python -m eval.linear", ["--resume", "--model", "m"]) == \
        "python -m eval.linear --resume --model m"


def test_run_cli_prints_one_line_and_exits_75_on_preemption_and_130_on_interrupt(capsys):
    def preempted():
        raise Preempted(stopped_message("SIGTERM", "at epoch 3, step 7", "OUT/checkpoints/last.pt", "cmd --resume"))

    assert cliargs.run_cli("prog", preempted) == EXIT_PREEMPTED == 75
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("prog: stopped by SIGTERM at epoch 3, step 7; checkpoint written "
                                                   "to OUT/checkpoints/last.pt. Resume with: cmd --resume")

    def interrupted():
        raise KeyboardInterrupt

    assert cliargs.run_cli("prog", interrupted) == 130
    assert "Traceback" not in capsys.readouterr().err
