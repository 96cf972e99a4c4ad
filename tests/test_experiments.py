"""Experiment bookkeeping: what counts as solved, which runs are left, what the tables say,
and `ppo compare`."""

import math
from pathlib import Path

import numpy as np
import pytest

import ppo.launcher
from helpers_runs import write_run
from ppo.experiments import (
    EXPERIMENTS,
    _args,
    compare,
    group_members,
    report,
    run_experiment,
    summarize,
)
from ppo.stats import iqm_estimate


def _metrics(returns, episodes=None):
    n = len(returns)
    return {"update": np.arange(1, n + 1.0), "global_step": 1000.0 * np.arange(1, n + 1),
            "episodic_return": np.array([math.nan if r is None else r for r in returns]),
            "episodes": np.array(episodes if episodes is not None else [100.0] * n),
            "approx_kl": np.full(n, 0.01), "clipfrac": np.full(n, 0.1),
            "time_total": np.full(n, 2.0)}


class FakeTrain:
    """Stands in for a `ppo train` child process: writes its run at once and exits 0."""

    commands: list[list[str]] = []

    def __init__(self, command, stdout, stderr, env):
        FakeTrain.commands.append(command)
        run_dir = Path(command[command.index("--run-dir") + 1])
        algo = command[command.index("--algo") + 1] if "--algo" in command else "ppo"
        write_run(run_dir, [None, 150.0, 210.0 if algo == "ppo" else 230.0],
                  seed=int(command[command.index("--seed") + 1]))

    def wait(self):
        return 0


@pytest.fixture
def fake_train(monkeypatch):
    FakeTrain.commands = []
    monkeypatch.setattr(ppo.launcher.subprocess, "Popen", FakeTrain)
    return FakeTrain.commands


def test_summary_takes_the_first_step_past_the_threshold():
    s = summarize(_metrics([None, 150.0, 201.0, 190.0, 230.0]), threshold=200.0)
    assert s["steps_to_solve"] == 3000
    assert s["time_to_solve"] == pytest.approx(6.0)
    assert s["final_return"] == 230.0
    assert s["wall_clock"] == pytest.approx(10.0)


def test_solved_counts_once_100_episodes_have_ended():
    """A mean over fewer than 100 episodes is no evidence: 201 after 99 episodes does not
    count, 201 after 100 does."""
    s = summarize(_metrics([201.0, 201.0, 201.0], episodes=[40, 99, 100]), threshold=200.0)
    assert s["steps_to_solve"] == 3000


def test_unsolved_run_has_no_step_to_solve():
    s = summarize(_metrics([None, 10.0, 20.0]), threshold=200.0)
    assert math.isnan(s["steps_to_solve"]) and math.isnan(s["time_to_solve"])


def test_variant_options_become_train_flags():
    args = _args({"preset": "mujoco", "env_id": "Hopper-v5", "clip_eps": 1.0,
                  "clip_value": False, "hidden_sizes": [32, 32]}, "plain")
    assert args == ("--defaults", "plain", "--preset", "mujoco", "--env", "Hopper-v5",
                    "--clip-eps", "1.0", "--no-clip-value", "--hidden-sizes", "32,32",
                    "--no-tensorboard")


def test_report_tables_each_variant_with_iqm_and_ci(tmp_path):
    runs = {
        "eps=0.2": [write_run(tmp_path / "a" / f"seed{s}", [None, 100.0, 210.0 + s], seed=s)
                    for s in range(2)],
        "eps=1.0": [write_run(tmp_path / "b" / "seed0", [None, -50.0, -300.0], clip_eps=1.0)],
    }
    text = report("eps-ablation", runs, EXPERIMENTS["eps-ablation"], tmp_path).read_text()
    assert f"| eps=0.2 | 2 | {iqm_estimate([210.0, 211.0]).format()} | 2/2 | 3000 |" in text
    assert "| eps=1.0 | 1 | -300.0 [-300.0, -300.0] | 0/1 | - |" in text
    assert "interquartile mean" in text and "±" not in text
    assert "| eps=0.2 | 1 | 211.0 | 3000 | 6 | 3000 | 6 |" in text  # per seed
    for figure in ("curves.png", "return_and_kl.png", "profiles.png"):
        assert (tmp_path / figure).stat().st_size > 0


def test_task_experiments_run_every_variant_on_every_task(tmp_path, fake_train):
    """ppo-vs-trpo: a run per task x variant x seed, each with the preset, its task and its
    algo; then a table row per task and variant, and a figure per task."""
    path = run_experiment("ppo-vs-trpo", tmp_path, seeds=2, steps=3000, jobs=1)
    exp = EXPERIMENTS["ppo-vs-trpo"]
    assert len(fake_train) == len(exp.tasks) * 2 * 2
    for command in fake_train:
        assert command[5:11] == ["--defaults", "plain", "--preset", "mujoco", "--env",
                                 command[10]]
        assert command[10] in exp.tasks and "--total-timesteps" in command
    text = path.read_text()
    assert "| Hopper-v5 | trpo | 2 | 3000 | 230.0 [230.0, 230.0] | 6 | 500 |" in text
    assert "| Humanoid-v5 | ppo | 2 | 3000 | 210.0 [210.0, 210.0] |" in text
    for task in exp.tasks:
        assert (tmp_path / "ppo-vs-trpo" / f"curves_{task}.png").stat().st_size > 0
    assert (tmp_path / "ppo-vs-trpo" / "profiles.png").stat().st_size > 0
    assert (tmp_path / "ppo-vs-trpo" / "Walker2d-v5" / "trpo" / "seed1").is_dir()


def test_single_task_experiments_keep_their_layout(tmp_path, fake_train):
    text = run_experiment("lunarlander", tmp_path, seeds=1, steps=3000, jobs=1).read_text()
    assert fake_train[0][5:9] == ["--defaults", "plain", "--env", "LunarLander-v3"]
    assert (tmp_path / "lunarlander" / "standard" / "seed0" / "metrics.csv").exists()
    assert "| standard | 1 | 210.0 [210.0, 210.0] | 1/1 | 3000 |" in text
    fake_train.clear()
    run_experiment("lunarlander", tmp_path, seeds=1, steps=3000, jobs=1)
    assert fake_train == []  # finished: nothing to run again


def test_group_members_are_its_runs_in_seed_order(tmp_path):
    for seed in (10, 2, 0):
        write_run(tmp_path / "g" / f"seed{seed}", [1.0], seed=seed)
    (tmp_path / "g" / "seed2.log").write_text("")
    (tmp_path / "g" / "not-yet").mkdir()  # a run that logged nothing is not a member yet
    assert [d.name for d in group_members(tmp_path / "g")] == ["seed0", "seed2", "seed10"]
    assert group_members(tmp_path / "g" / "seed2") == [tmp_path / "g" / "seed2"]
    with pytest.raises(ValueError, match="holds no run"):
        group_members(tmp_path / "g" / "not-yet")


def test_compare_reports_each_group_and_every_run(tmp_path):
    good = [write_run(tmp_path / "good" / f"seed{s}", [None, 300.0 + s, 480.0 + s],
                      env_id="CartPole-v1", seed=s) for s in range(5)]
    bad = [write_run(tmp_path / "bad" / f"seed{s}", [None, 20.0, 30.0 * s],
                     env_id="CartPole-v1", seed=s) for s in range(4)]
    out = tmp_path / "profiles.png"
    text = compare([tmp_path / "good", tmp_path / "bad"], None, out)
    lines = text.splitlines()
    assert "Solved: mean return over the last 100 episodes > 475." in lines[0]
    good_row = next(line for line in lines if line.startswith(f"| {tmp_path / 'good'} | 5 |"))
    assert f"| {iqm_estimate([480, 481, 482, 483, 484]).format()} | 5/5 | 3000 |" in good_row
    bad_row = next(line for line in lines if line.startswith(f"| {tmp_path / 'bad'} | 4 |"))
    assert "| 0/4 | - |" in bad_row
    assert sum(line.startswith(f"| {tmp_path / 'good'} | ") for line in lines) == 1 + len(good)
    assert sum(line.startswith(f"| {tmp_path / 'bad'} | ") for line in lines) == 1 + len(bad)
    assert out.stat().st_size > 0 and lines[-1] == f"Performance profiles: {out}"
    text = compare([tmp_path / "bad"], 25.0, out)  # a threshold of one's own
    assert "| 3/4 |" in text  # seeds 1-3 reach 30, 60, 90


def test_compare_refuses_a_group_of_mixed_envs(tmp_path):
    write_run(tmp_path / "g" / "seed0", [1.0], env_id="CartPole-v1")
    write_run(tmp_path / "g" / "seed1", [1.0], env_id="Pendulum-v1", seed=1)
    with pytest.raises(ValueError, match="mixes envs"):
        compare([tmp_path / "g"], None, tmp_path / "p.png")


def test_mujoco_preset_is_valid_for_both_algorithms():
    from ppo.cli import load_preset
    from ppo.config import from_dict

    for algo in ("ppo", "trpo"):
        cfg = from_dict({**load_preset("mujoco"), "algo": algo})
        assert (cfg.rollout_steps, cfg.epochs, cfg.minibatch_size, cfg.lr) == (2048, 10, 64, 3e-4)
        assert (cfg.gae_lambda, cfg.gamma, cfg.clip_eps, cfg.ent_coef) == (0.95, 0.99, 0.2, 0.0)
        assert cfg.normalize_obs and cfg.normalize_reward and cfg.anneal_lr
        assert not cfg.shared_trunk


def test_every_experiment_is_a_cli_choice():
    from ppo.cli import main

    param = next(p for p in main.commands["experiment"].params if p.name == "name")
    assert list(param.type.choices) == list(EXPERIMENTS)
