"""A killed and resumed run ends with the same weights as one that never stopped; the envs
are restored mid-episode by replay (episode_replay.py). Paths stored in a run's files never
direct where a run writes."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from ppo.agent import PPO
from ppo.checkpoint import checkpoint_path, latest_checkpoint, load_checkpoint, save_checkpoint
from ppo.config import Config
from ppo.episode_replay import ReplayableEpisodes, episode_seed


def _weights(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _interrupted_copy(run_dir: Path, copy: Path, update: int) -> None:
    """The state a kill leaves behind: the run's config and its checkpoints up to `update`."""
    (copy / "checkpoints").mkdir(parents=True)
    shutil.copy(run_dir / "config.toml", copy / "config.toml")
    for u in range(1, update + 1):
        if checkpoint_path(run_dir, u).exists():
            shutil.copy(checkpoint_path(run_dir, u), copy / "checkpoints")


@pytest.mark.parametrize("env_id, extra", [
    ("CartPole-v1", {}),
    ("CartPole-v1", {"vector": "async"}),
    ("LunarLander-v3", {}),
    ("Pendulum-v1", {"normalize_obs": True, "normalize_reward": True, "shared_trunk": False}),
])
def test_resumed_run_ends_with_the_same_weights(tmp_path, env_id, extra):
    cfg = Config(env_id=env_id, num_envs=2, rollout_steps=96, minibatch_size=64,
                 total_timesteps=6 * 192, checkpoint_every=2, tensorboard=False,
                 run_dir=str(tmp_path / "whole"), **extra)
    whole = PPO(cfg, verbose=False)
    whole.learn()
    whole.close()
    _interrupted_copy(tmp_path / "whole", tmp_path / "killed", update=2)
    resumed = PPO.resume(tmp_path / "killed", verbose=False)
    assert resumed.update == 2
    resumed.learn()
    resumed.close()
    assert torch.equal(_weights(whole.model), _weights(resumed.model))
    assert resumed.collector.episodes.episodes == whole.collector.episodes.episodes


def test_native_vector_env_resumes_with_fresh_episodes(tmp_path, capsys):
    cfg = Config(env_id="CartPole-v1", num_envs=2, vector="native", rollout_steps=64,
                 total_timesteps=3 * 128, checkpoint_every=1, tensorboard=False,
                 run_dir=str(tmp_path / "run"))
    PPO(cfg, verbose=False).learn().close()
    checkpoint_path(tmp_path / "run", 3).unlink()
    agent = PPO.resume(tmp_path / "run", verbose=True)
    agent.learn()
    agent.close()
    assert "resuming with fresh episodes" in capsys.readouterr().err
    assert agent.update == 3


def test_checkpoint_holds_the_episodes_in_progress(tmp_path):
    cfg = Config(env_id="CartPole-v1", num_envs=3, rollout_steps=50, total_timesteps=150,
                 tensorboard=False, run_dir=str(tmp_path / "run"))
    agent = PPO(cfg, verbose=False)
    agent.learn()
    tensors, meta = load_checkpoint(latest_checkpoint(tmp_path / "run"))
    lengths = tensors["collector.episode_lengths"].numpy()
    assert lengths.tolist() == agent.collector.episodes.lengths.tolist()
    for i in range(3):
        assert len(tensors[f"collector.actions.{i}"]) == lengths[i]
    assert meta["collector"]["env_seeds"] == [0, 1, 2]
    agent.close()


# ---------------------------------------------------------------- the replay wrapper
def test_replay_rebuilds_the_exact_state():
    env = ReplayableEpisodes(gym.make("LunarLander-v3"), index=0)
    env.reset(seed=7)
    rng = np.random.default_rng(0)
    for _ in range(150):  # through at least one episode end
        obs, _, term, trunc, _ = env.step(int(rng.integers(4)))
        if term or trunc:
            obs, _ = env.reset()
    snapshot = env.snapshot()
    fresh = ReplayableEpisodes(gym.make("LunarLander-v3"), index=0)
    np.testing.assert_array_equal(fresh.restore([snapshot]), obs)
    actions = rng.integers(4, size=20)
    for a in actions:
        expected = env.step(int(a))
        got = fresh.step(int(a))
        np.testing.assert_array_equal(got[0], expected[0])
        assert got[1:4] == expected[1:4]


def test_each_episode_has_its_own_seed():
    seeds = {episode_seed(s, e) for s in range(4) for e in range(50)}
    assert len(seeds) == 200
    env = ReplayableEpisodes(gym.make("CartPole-v1"), index=0)
    first, _ = env.reset(seed=3)
    second, _ = env.reset()
    assert env.episode == 1 and not np.array_equal(first, second)


def test_unseeded_or_overlong_episodes_are_not_replayable(monkeypatch):
    env = ReplayableEpisodes(gym.make("CartPole-v1"), index=0)
    env.reset()
    assert env.snapshot() is None
    monkeypatch.setattr("ppo.episode_replay.MAX_RECORDED_STEPS", 3)
    env.reset(seed=0)
    for _ in range(4):
        env.step(0)
    assert env.snapshot() is None


# ---------------------------------------------------------------- the CLI, with SIGKILL
def _train(run_dir: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        # The plain defaults: one env built here, whose episodes a resumed run replays.
        [sys.executable, "-m", "ppo", "train", "--env", "CartPole-v1", "--defaults", "plain",
         "--rollout-steps", "64", "--minibatch-size", "32", "--total-timesteps", str(64 * 120),
         "--checkpoint-every", "1", "--no-tensorboard", "--quiet", "--run-dir", str(run_dir),
         *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    whole = _train(tmp_path / "whole")
    killed = _train(tmp_path / "killed")
    deadline = time.monotonic() + 120
    while not checkpoint_path(tmp_path / "killed", 10).exists():
        assert killed.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert whole.wait(timeout=120) == 0
    assert latest_checkpoint(tmp_path / "killed") != checkpoint_path(tmp_path / "killed", 120)
    resumed = subprocess.run(
        [sys.executable, "-m", "ppo", "train", "--resume", str(tmp_path / "killed"), "--quiet"],
        capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    a, _ = load_checkpoint(latest_checkpoint(tmp_path / "whole"))
    b, _ = load_checkpoint(latest_checkpoint(tmp_path / "killed"))
    model = [k for k in a if k.startswith("model.")]
    assert all(torch.equal(a[k], b[k]) for k in model)
    rows = (tmp_path / "killed" / "metrics.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == list(range(1, 121))


# ---------------------------------------------------------------- paths in files
def test_run_dir_stored_in_a_checkpoint_is_not_written_to(tmp_path):
    cfg = Config(env_id="CartPole-v1", rollout_steps=64, total_timesteps=64,
                 tensorboard=False, run_dir=str(tmp_path / "run"))
    PPO(cfg, verbose=False).learn().close()
    path = latest_checkpoint(tmp_path / "run")
    tensors, meta = load_checkpoint(path)
    elsewhere = tmp_path / "elsewhere"
    meta["config"]["run_dir"] = str(elsewhere)
    save_checkpoint(path, tensors, meta)  # an edit that recomputes the checksums

    agent = PPO.load(path)
    agent.learn(64)
    assert agent.run_dir is None and not elsewhere.exists()
    resumed = PPO.resume(tmp_path / "run", verbose=False, total_timesteps=128)
    resumed.learn()
    assert resumed.run_dir == tmp_path / "run" and not elsewhere.exists()
    assert latest_checkpoint(tmp_path / "run") == checkpoint_path(tmp_path / "run", 2)
