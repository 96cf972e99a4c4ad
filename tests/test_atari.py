"""The Atari pipeline: a lost life ends the training episode but not the logged game, rewards
are clipped for learning only, frames are stacked, and ALE ids work without an import."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.wrappers import RecordEpisodeStatistics, TransformReward

from ppo.agent import PPO
from ppo.atari import EpisodicLife
from ppo.config import Config, ConfigError
from ppo.envs import env_spec


class _Ale:
    def __init__(self, env):
        self.env = env

    def lives(self):
        return self.env.lives


class LivesEnv(gym.Env):
    """A game of 3 lives, each lost after 4 steps; every step scores 2 points."""

    metadata: dict = {"render_modes": []}

    def __init__(self):
        self.observation_space = spaces.Box(0.0, 10.0, (1,), np.float32)
        self.action_space = spaces.Discrete(2)
        self.ale = _Ale(self)
        self.lives, self.t = 3, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.lives, self.t = 3, 0
        return np.array([self.lives], np.float32), {}

    def step(self, action):
        self.t += 1
        if self.t % 4 == 0:
            self.lives -= 1
        return np.array([self.lives], np.float32), 2.0, self.lives == 0, False, {}


def atari_like() -> gym.Env:
    """The order of ppo.atari.AtariWrapper, on LivesEnv."""
    env = RecordEpisodeStatistics(LivesEnv())
    return TransformReward(EpisodicLife(env), np.sign)


def test_life_loss_ends_the_training_episode_but_not_the_game():
    env = atari_like()
    env.reset(seed=0)
    ends, rewards = [], []
    for _ in range(12):
        _, reward, terminated, _, info = env.step(0)
        rewards.append(reward)
        if terminated:
            ends.append(info.get("episode"))
            env.reset()
    assert len(ends) == 3  # one training episode a life
    assert ends[:2] == [None, None]
    assert ends[2]["r"] == 24.0 and ends[2]["l"] == 12  # the whole game, unclipped
    assert set(rewards) == {1.0}  # learning sees the sign only


def test_logged_return_is_the_game_score():
    cfg = Config(env_id="CartPole-v1", num_envs=2, rollout_steps=30, minibatch_size=30,
                 total_timesteps=60, tensorboard=False)
    agent = PPO(cfg, env=atari_like, verbose=False)
    agent.learn()
    episodes = list(agent.collector.episodes.recent)
    assert episodes and all(e == (24.0, 12) for e in episodes)
    # A game is 10 agent steps: 12 of the game's, less the no-op that continues after each of
    # the first two lives. 30 steps an env: 3 games each.
    assert agent.collector.episodes.episodes == len(episodes) == 6
    agent.close()


ale_py = pytest.importorskip("ale_py")


@pytest.fixture(scope="module")
def breakout():
    from ppo.cli import load_preset
    from ppo.config import from_dict
    from ppo.envs import make_env

    env = make_env(from_dict(load_preset("atari")))
    yield env
    env.close()


def test_frames_are_stacked_84x84_grayscale(breakout):
    obs, _ = breakout.reset(seed=0)
    assert breakout.observation_space.shape == obs.shape == (4, 84, 84)
    assert obs.dtype == np.uint8


def test_breakout_game_spans_its_lives(breakout):
    breakout.reset(seed=1)
    rng = np.random.default_rng(0)
    training_episodes = 0
    while True:
        _, reward, terminated, truncated, info = breakout.step(int(rng.integers(4)))
        assert reward in (0.0, 1.0)
        if terminated or truncated:
            training_episodes += 1
            if "episode" in info:
                break
            breakout.reset()
    assert training_episodes == 5  # Breakout's five lives
    assert info["episode"]["l"] > 0


def test_ale_ids_work_without_importing_ale_py():
    assert env_spec("ALE/Pong-v5").id == "ALE/Pong-v5"


def test_missing_atari_extra_is_named(monkeypatch):
    monkeypatch.setattr("ppo.extras.installed", lambda extra: extra != "atari")
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[atari\]"'):
        env_spec("ALE/Breakout-v5")


def test_evaluation_plays_whole_games():
    from ppo.evaluation import run_episode

    cfg = Config(env_id="CartPole-v1", num_envs=1, rollout_steps=16, minibatch_size=16,
                 total_timesteps=16, tensorboard=False)
    agent = PPO(cfg, env=atari_like, verbose=False)
    assert run_episode(agent, atari_like(), deterministic=True, seed=0) == 24.0
    agent.close()
