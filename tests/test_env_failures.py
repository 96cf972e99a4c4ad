"""Envs that misbehave, and bad input to predict: one line naming the env, the step and
what was wrong, and the last checkpoint stays intact."""

import contextlib
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import ppo.cli
from helpers_envs import Misbehaving
from ppo.agent import PPO
from ppo.checkpoint import latest_checkpoint, load_checkpoint
from ppo.config import Config, ConfigError
from ppo.envs import EnvError

CASES = {
    "raise": r"\(index 0\) raised RuntimeError in step: the simulator lost its license server",
    "shape": r"observation of shape \(3,\), the space says \(2,\)",
    "dtype": r"observation of dtype object, not numbers",
    "reward": r"step returned a reward of type str \('1.0'\), not a number",
    "flag": r"step returned terminated = 'no', not a bool",
    "tuple": r"step returned 4 values, not Gymnasium's 5",
    "reset": r"raised ValueError in reset: no more levels",
}


def _agent(how, **kw):
    cfg = Config(env_id="misbehaving", rollout_steps=16, minibatch_size=16, **kw)
    return PPO(cfg, env=lambda: Misbehaving(how), verbose=False)


@pytest.mark.parametrize("how", CASES)
def test_a_misbehaving_env_is_named_with_the_step(how):
    agent = _agent(how)
    with pytest.raises(EnvError, match=CASES[how] + r".*near global step \d+; the last "
                       "checkpoint is intact"):
        for _ in range(4):
            agent.iteration()
    agent.close()


@pytest.mark.parametrize("how", ["raise", "shape", "flag"])
def test_the_cli_says_one_line_and_keeps_the_checkpoints(tmp_path, how):
    run_dir = tmp_path / "run"
    args = ["train", "--env", "helpers_envs:Misbehaving", "--env-kwargs", f'how="{how}"',
            "--env-kwargs", "at=40", "--defaults", "plain", "--rollout-steps", "16",
            "--minibatch-size", "16", "--checkpoint-every", "1", "--total-timesteps", "160",
            "--run-dir", str(run_dir), "--quiet", "--no-tensorboard"]
    result = CliRunner().invoke(ppo.cli.main, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: env helpers_envs:Misbehaving"), lines
    assert "Traceback" not in result.output
    load_checkpoint(latest_checkpoint(run_dir))  # the checkpoints written before are intact


def test_an_observation_too_large_for_any_network_is_refused_before_allocating():
    with pytest.raises(ConfigError, match=r"env helpers_envs:HugeObservation: observations "
                       r"encode to 1,000,000,000,000 numbers"):
        PPO(Config(env_id="helpers_envs:HugeObservation", rollout_steps=16, minibatch_size=16),
            verbose=False)


def test_unsupported_spaces_name_the_env():
    with pytest.raises(ConfigError, match=r"env helpers_envs:TextActionEnv: unsupported action"):
        PPO(Config(env_id="helpers_envs:TextActionEnv", rollout_steps=16, minibatch_size=16),
            verbose=False)


@pytest.mark.parametrize(("obs", "needle"), [
    (np.array([np.nan, 0.0, 0.0, 0.0]), "NaN or Inf"),
    (np.array([[0.0] * 4, [np.inf, 0.0, 0.0, 0.0]]), "NaN or Inf"),
    (np.zeros((0, 4)), "empty batch"),
    (np.zeros(5), r"observation of shape \(5,\), the space says \(4,\)"),
    (np.zeros((2, 3)), r"observation of shape \(3,\), the space says \(4,\)"),
    (np.array(["a", "b", "c", "d"]), "not numbers"),
])
def test_predict_refuses_what_it_cannot_act_on(obs, needle):
    agent = PPO(Config(env_id="CartPole-v1", rollout_steps=16, minibatch_size=16),
                verbose=False)
    with pytest.raises(ValueError, match=needle):
        agent.predict(obs)
    agent.close()


@pytest.mark.parametrize(("how", "needle"), [
    ("shape", r"env helpers_envs:Misbehaving \(index 0\): step returned an observation of "
              r"shape \(3,\), the space says \(2,\) near global step \d+"),
    ("raise", r"env helpers_envs:Misbehaving \(index 0\) raised RuntimeError in step: the "
              r"simulator lost its license server near global step \d+"),
    ("exit", r"helpers_envs:Misbehaving: env 0's worker process died \(exit code 9\)"),
    ("systemexit", r"helpers_envs:Misbehaving: env 0's worker process died \(exit code 3\)"),
])
def test_env_workers_say_one_line_too(tmp_path, how, needle):
    """A real `ppo train --vector async`: one line, nothing from the workers, no process
    left behind."""
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [Path(sys.executable).parent / "ppo", "train", "--env", "helpers_envs:Misbehaving",
         "--env-kwargs", f'how="{how}"', "--env-kwargs", "at=40", "--num-envs", "2",
         "--vector", "async", "--defaults", "plain", "--rollout-steps", "16",
         "--minibatch-size", "16", "--checkpoint-every", "1", "--total-timesteps", "320",
         "--run-dir", str(run_dir), "--quiet", "--no-tensorboard"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)})
    stderr = proc.communicate(timeout=120)[1]
    assert proc.returncode == 2, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and re.match(rf"error: {needle}; the last checkpoint is intact",
                                        lines[0]), lines
    load_checkpoint(latest_checkpoint(run_dir))
    assert not _members(proc.pid)


def _members(group: int) -> list[int]:
    """Live processes of a process group (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, IndexError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if entry.name.isdigit() and int(fields[2]) == group and fields[0] != "Z":
                found.append(int(entry.name))
    return found


@pytest.mark.parametrize("fail", [False, True])
def test_library_warnings_are_one_line_and_held_back_from_a_failing_start(tmp_path, fail):
    """A warning before the first update shows as one `warning:` line once an update went
    through; if the start fails instead, the error line stands alone."""
    args = ["train", "--env", "helpers_envs:WarnsOnReset", "--env-kwargs",
            f"fail={str(fail).lower()}", "--defaults", "plain", "--rollout-steps", "16",
            "--minibatch-size", "16", "--total-timesteps", "32", "--run-dir",
            str(tmp_path / "run"), "--quiet", "--no-tensorboard"]
    result = CliRunner().invoke(ppo.cli.main, args)
    lines = [line for line in result.stderr.splitlines() if not line.startswith("settings:")]
    if fail:
        assert result.exit_code == 2 and len(lines) == 1, lines
        assert lines[0].startswith("error: env helpers_envs:WarnsOnReset")
    else:
        assert result.exit_code == 0, result.output
        assert lines == ["warning: this env is an old friend"], lines
