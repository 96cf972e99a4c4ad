"""The console: progress and ETA on every update line, the step count when rounding to whole
updates changes it, and the end-of-run summary."""

import math
from pathlib import Path

import numpy as np
import pytest

from ppo.config import Config
from ppo.console import (
    console_line,
    duration,
    planned_steps,
    progress,
    rounding_note,
    run_summary,
)
from ppo.metrics import MetricsLogger

ROW = {"update": 20, "global_step": 40960, "episodic_return": 104.2, "approx_kl": 0.024,
       "clipfrac": 0.15, "policy_loss": -0.041, "value_loss": 0.28, "entropy": 0.61,
       "explained_variance": 0.5, "sps": 4321.0}


def test_progress_extrapolates_this_sessions_rate():
    # A resumed run: 10240 steps done before, 30720 in this session's 15 s; 81920 to go.
    at = progress(step=40960, total=122880, start_step=10240, elapsed=15.0)
    assert at.eta == pytest.approx(81920 * 15.0 / 30720)
    assert math.isnan(progress(10240, 122880, 10240, 0.0).eta)  # nothing timed yet
    assert progress(122880, 122880, 0, 60.0).eta == 0.0


def test_update_line_carries_progress_and_eta():
    line = console_line(ROW, progress(40960, 122880, 0, 65.0))
    assert line == ("update 020 step 40960/122880 (33%) return=+104.2 kl=0.024 clipfrac=0.15 "
                    "loss_pi=-0.041 loss_v=0.28 entropy=0.610 ev=0.50 sps=4321 "
                    "elapsed=0:01:05 eta=0:02:10")


def test_duration():
    assert [duration(s) for s in (0, 59.6, 3600 * 27 + 61, math.nan)] == [
        "0:00:00", "0:01:00", "27:01:01", "?"]


@pytest.mark.parametrize(("start", "end", "per_update", "actual"), [
    (0, 200_000, 2048, 200_704), (0, 4096, 2048, 4096), (0, 100, 2048, 2048),
    (10_240, 12_000, 1024, 12_288), (4096, 4096, 2048, 4096)])
def test_planned_steps_are_whole_updates(start, end, per_update, actual):
    assert planned_steps(start, end, per_update) == actual


def test_rounding_note_only_when_the_count_changes():
    assert rounding_note(0, 4096, 2048) is None
    assert rounding_note(0, 200_000, 2048) == (
        "total_timesteps 200000 is not a whole number of updates of 2048 steps: the run "
        "trains to step 200704 (98 updates to go)")


def _columns(returns, time_total=30.0):
    n = len(returns)
    return {"update": np.arange(1.0, n + 1), "global_step": 2048.0 * np.arange(1, n + 1),
            "episodic_return": np.array(returns, dtype=float),
            "time_total": np.full(n, time_total)}


def test_summary_names_final_and_best_returns_and_checkpoints():
    checkpoints = {u: Path(f"run/checkpoints/update_{u:06d}.safetensors") for u in (2, 4, 5)}
    lines = run_summary(_columns([math.nan, 50.0, 210.5, 180.0, 190.25], 61.0), checkpoints)
    assert lines == [
        "final return +190.2 at step 10240 (mean of the last 100 episodes)",
        "best return +210.5 at step 6144 (update 3)",
        "wall-clock 0:05:05 of training",
        "last checkpoint: run/checkpoints/update_000005.safetensors",
        "best checkpoint: run/checkpoints/update_000005.safetensors (return +190.2)",
    ]


def test_summary_before_any_episode_ended():
    lines = run_summary(_columns([math.nan, math.nan]), {})
    assert lines == ["no episode has finished: no return yet", "wall-clock 0:01:00 of training"]


def test_logger_summary_covers_the_whole_run(tmp_path):
    """From the run directory: the rows of earlier sessions count too, and the checkpoints
    are found on disk."""
    from ppo.agent import PPO

    run_dir = tmp_path / "run"
    cfg = Config(env_id="CartPole-v1", rollout_steps=64, minibatch_size=32, total_timesteps=256,
                 checkpoint_every=2, run_dir=str(run_dir), tensorboard=False)
    PPO(cfg, verbose=False).learn()
    logger = MetricsLogger(run_dir, verbose=False, tensorboard=False, total_updates=4,
                           first_update=5)
    lines = logger.summary()
    logger.close()
    assert lines[0].startswith("final return +") and lines[0].endswith(
        "at step 256 (mean of the last 100 episodes)")
    assert lines[-2] == f"last checkpoint: {run_dir / 'checkpoints' / 'update_000004.safetensors'}"
    assert lines[-1].startswith(f"best checkpoint: {run_dir / 'checkpoints'}")


def test_returns_are_shown_with_the_digits_that_matter():
    from ppo.console import figure

    assert figure(255.634) == "255.6" and figure(-1500.04, sign=True) == "-1500.0"
    assert figure(-0.04423) == "-0.0442" and figure(0.9652, sign=True) == "+0.965"
    assert figure(0.0) == "0.0" and figure(float("nan")) == "n/a"
