"""Experiment bookkeeping: what counts as solved, which runs are left, what the table says."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ppo.experiments import (
    EXPERIMENTS,
    _command,
    _finished,
    report,
    run_experiment,
    summarize,
)

COLUMNS = ["update", "global_step", "episodic_return", "approx_kl", "clipfrac", "time_total"]


def _write_run(run_dir, returns, clip_eps=0.2, steps_per_update=1000):
    run_dir.mkdir(parents=True)
    lines = [",".join(COLUMNS)]
    for i, ret in enumerate(returns, start=1):
        cell = "" if ret is None else str(ret)
        lines.append(f"{i},{i * steps_per_update},{cell},0.01,0.1,2.0")
    (run_dir / "metrics.csv").write_text("\n".join(lines) + "\n")
    (run_dir / "config.toml").write_text(
        f'env_id = "LunarLander-v3"\nseed = 0\nclip_eps = {clip_eps}\n')
    return run_dir


def _metrics(returns):
    n = len(returns)
    return {"update": np.arange(1, n + 1.0), "global_step": 1000.0 * np.arange(1, n + 1),
            "episodic_return": np.array([math.nan if r is None else r for r in returns]),
            "approx_kl": np.full(n, 0.01), "clipfrac": np.full(n, 0.1),
            "time_total": np.full(n, 2.0)}


def test_summary_takes_the_first_step_past_the_threshold():
    s = summarize(_metrics([None, 150.0, 201.0, 190.0, 230.0]), threshold=200.0)
    assert s["steps_to_solve"] == 3000
    assert s["time_to_solve"] == pytest.approx(6.0)
    assert s["final_return"] == 230.0
    assert s["wall_clock"] == pytest.approx(10.0)


def test_unsolved_run_has_no_step_to_solve():
    s = summarize(_metrics([None, 10.0, 20.0]), threshold=200.0)
    assert math.isnan(s["steps_to_solve"]) and math.isnan(s["time_to_solve"])


def test_finished_runs_are_skipped_and_checkpointed_ones_resumed(tmp_path):
    done = _write_run(tmp_path / "done", [1.0] * 5)
    assert _finished(done, 5000) and not _finished(done, 6000)
    (done / "checkpoints").mkdir()
    (done / "checkpoints" / "update_000005.safetensors").write_bytes(b"")
    command = _command(done, {"clip_eps": 1.0}, seed=0, steps=6000)
    assert command[:3] == [sys.executable, "-m", "ppo"]
    assert "--resume" in command and str(done) in command


def test_fresh_run_gets_its_variant_as_flags(tmp_path):
    command = _command(tmp_path / "new", {"env_id": "LunarLander-v3", "clip_eps": 1.0,
                                           "clip_value": False}, seed=3, steps=1000)
    assert command[5:7] == ["--env", "LunarLander-v3"]
    assert "--no-clip-value" in command
    assert command[command.index("--seed") + 1] == "3"


def test_report_tables_each_variant(tmp_path):
    runs = {
        "eps=0.2": [_write_run(tmp_path / "a" / f"seed{s}", [None, 100.0, 210.0])
                    for s in range(2)],
        "eps=1.0": [_write_run(tmp_path / "b" / "seed0", [None, -50.0, -300.0],
                               clip_eps=1.0)],
    }
    text = report("eps-ablation", runs, EXPERIMENTS["eps-ablation"], tmp_path).read_text()
    assert "| eps=0.2 | 2 | 210.0 ± 0.0 | 2/2 | 3000 |" in text
    assert "| eps=1.0 | 1 | -300.0 | 0/1 | - |" in text
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert (tmp_path / "return_and_kl.png").stat().st_size > 0


def test_task_experiments_run_every_variant_on_every_task(tmp_path, monkeypatch):
    """ppo-vs-trpo: a run per task x variant x seed, each with the preset, its task and its
    algo; then a table row per task and variant, and a figure per task."""
    import ppo.experiments

    commands = []

    def fake_run(command, stdout, stderr):
        commands.append(command)
        run_dir = Path(command[command.index("--run-dir") + 1])
        algo = command[command.index("--algo") + 1]
        _write_run(run_dir, [None, 10.0, 20.0 if algo == "ppo" else 30.0])
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(ppo.experiments.subprocess, "run", fake_run)
    path = run_experiment("ppo-vs-trpo", tmp_path, seeds=2, steps=3000, jobs=1)
    exp = EXPERIMENTS["ppo-vs-trpo"]
    assert len(commands) == len(exp.tasks) * 2 * 2
    for command in commands:
        assert command[5:9] == ["--preset", "mujoco", "--env", command[8]]
        assert command[8] in exp.tasks and "--total-timesteps" in command
    text = path.read_text()
    assert "| Hopper-v5 | trpo | 2 | 3000 ± 0 | 30.0 ± 0.0 | 6 ± 0 | 500 ± 0 |" in text
    assert "| Humanoid-v5 | ppo | 2 | 3000 ± 0 | 20.0 ± 0.0 |" in text
    for task in exp.tasks:
        assert (tmp_path / "ppo-vs-trpo" / f"curves_{task}.png").stat().st_size > 0
    assert (tmp_path / "ppo-vs-trpo" / "Walker2d-v5" / "trpo" / "seed1").is_dir()


def test_single_task_experiments_keep_their_layout(tmp_path, monkeypatch):
    import ppo.experiments

    commands = []

    def fake_run(command, stdout, stderr):
        commands.append(command)
        _write_run(Path(command[command.index("--run-dir") + 1]), [None, 150.0, 210.0])
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(ppo.experiments.subprocess, "run", fake_run)
    text = run_experiment("lunarlander", tmp_path, seeds=1, steps=3000, jobs=1).read_text()
    assert commands[0][5:7] == ["--env", "LunarLander-v3"]
    assert (tmp_path / "lunarlander" / "standard" / "seed0" / "metrics.csv").exists()
    assert "| standard | 1 | 210.0 | 1/1 | 3000 |" in text


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
    assert set(param.type.choices) == set(EXPERIMENTS)
