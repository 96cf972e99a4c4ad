"""The launcher: which runs are left, how each is started or resumed, what it reports, and
that a stop signal reaches every child and starts nothing more."""

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

import ppo.launcher
from helpers_runs import write_run
from ppo.checkpoint import CheckpointError
from ppo.launcher import Job, Stopped, command, finished, run_jobs


def test_finished_runs_are_skipped_and_checkpointed_ones_resumed(tmp_path):
    done = write_run(tmp_path / "seed0", [1.0] * 5)
    assert finished(Job(done, 0, 5000)) and not finished(Job(done, 0, 6000))
    (done / "checkpoints").mkdir()
    (done / "checkpoints" / "update_000005.safetensors").write_bytes(b"")
    assert command(Job(done, 0, 6000, ("--clip-eps", "1.0"))) == [
        sys.executable, "-m", "ppo", "train", "--quiet", "--resume", str(done),
        "--total-timesteps", "6000"]


def test_fresh_run_gets_its_options_seed_and_length(tmp_path):
    assert command(Job(tmp_path / "seed3", 3, 1000, ("--env", "CartPole-v1"))) == [
        sys.executable, "-m", "ppo", "train", "--quiet", "--env", "CartPole-v1", "--seed", "3",
        "--total-timesteps", "1000", "--run-dir", str(tmp_path / "seed3")]


def test_a_run_that_never_checkpointed_starts_over(tmp_path):
    started = write_run(tmp_path / "seed0", [1.0])
    assert "--resume" not in command(Job(started, 0, 5000))
    assert not started.exists()


class ExitWith:
    """A child that exits at once with the status its seed names (seed 0: success)."""

    def __init__(self, command, stdout, stderr, env):
        self.run_dir = command[command.index("--run-dir") + 1]
        self.seed = int(command[command.index("--seed") + 1])
        assert env["OMP_NUM_THREADS"] == "1"
        if self.seed == 0:
            write_run(Path(self.run_dir), [12.5, 42.0])

    def wait(self):
        return 0 if self.seed == 0 else 3


def test_each_run_reports_one_line_as_it_ends(tmp_path, monkeypatch):
    monkeypatch.setattr(ppo.launcher.subprocess, "Popen", ExitWith)
    finished_run = write_run(tmp_path / "seed9", [1.0, 2.0])
    jobs = [Job(tmp_path / f"seed{s}", s, 2000) for s in (0, 1, 9)]
    lines = []
    codes = run_jobs(jobs, 2, report=lines.append)
    assert codes == {tmp_path / "seed0": 0, tmp_path / "seed1": 3}  # seed 9 was done
    assert sorted(lines) == sorted([f"{tmp_path / 'seed0'}: done, final return 42.0",
                                    f"{tmp_path / 'seed1'}: failed (exit 3), see "
                                    f"{tmp_path / 'seed1.log'}"])
    assert finished_run.exists()


def test_a_directory_that_is_not_a_run_is_left_alone(tmp_path, monkeypatch):
    monkeypatch.setattr(ppo.launcher.subprocess, "Popen", ExitWith)
    (tmp_path / "seed0").mkdir()
    (tmp_path / "seed0" / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="not a run"):
        run_jobs([Job(tmp_path / "seed0", 0, 1000)], 1, report=print)
    assert (tmp_path / "seed0" / "notes.txt").read_text() == "mine"


CHILD = """
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: (open(sys.argv[1], "w").write("stopped"), sys.exit(143)))
open(sys.argv[1] + ".started", "w").close()
time.sleep(60)
"""


def test_a_stop_signal_reaches_every_child_and_starts_no_more(tmp_path, monkeypatch):
    monkeypatch.setattr(ppo.launcher, "command",
                        lambda job: [sys.executable, "-c", CHILD, str(job.run_dir) + ".marker"])
    jobs = [Job(tmp_path / f"seed{s}", s, 1000) for s in range(3)]

    def stop_when_both_started():
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(
                (tmp_path / f"seed{s}.marker.started").exists() for s in (0, 1)):
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=stop_when_both_started, daemon=True).start()
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Stopped, match="SIGTERM: 3 run"):
        run_jobs(jobs, 2, report=print)
    assert [(tmp_path / f"seed{s}.marker").exists() for s in range(3)] == [True, True, False]
    assert signal.getsignal(signal.SIGTERM) is previous


def test_holds_run_means_a_run_was_started_there(tmp_path):
    from ppo.checkpoint import holds_run

    assert not holds_run(tmp_path / "missing") and not holds_run(tmp_path)
    assert holds_run(write_run(tmp_path / "run", [1.0]))
