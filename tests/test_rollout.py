"""The collector: episode boundaries under both Gymnasium autoreset modes, bootstraps, shapes."""

from functools import partial

import gymnasium as gym
import numpy as np
import ppo.trainer
import pytest
import torch
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from helpers_envs import (
    BoxActionEnv,
    DictObsEnv,
    IntBoxActionEnv,
    MultiDiscreteActionEnv,
    NaNRewardEnv,
    terminating,
    truncating,
)
from ppo.agent import PPO
from ppo.config import Config, ConfigError
from ppo.normalization import RunningMeanStd
from ppo.rollout import EnvValueError, EpisodeStats

L = 3  # episode length of the counter envs
GAMMA = 0.9


def _agent(env, steps=10, **kw):
    cfg = Config(env_id="counter", rollout_steps=steps, minibatch_size=2, tensorboard=False,
                 gamma=GAMMA, **kw)
    agent = PPO(cfg, env=env, verbose=False)
    agent.collector.reset(seed=0)
    return agent


def _vec(factory, mode, n=2):
    """Two counter envs: our in-process one (same step), or Gymnasium's sync one in either mode."""
    fn = partial(factory, L)
    if mode == "inprocess":
        return lambda: fn()  # a factory: PPO builds its in-process vector env
    autoreset = AutoresetMode.SAME_STEP if mode == "same" else AutoresetMode.NEXT_STEP
    return SyncVectorEnv([fn] * n, autoreset_mode=autoreset)


def _make(factory, mode, steps=10, **kw):
    env = _vec(factory, mode)
    return _agent(env, steps, num_envs=2, **kw)


@pytest.mark.parametrize("mode", ["inprocess", "same"])
@pytest.mark.parametrize("factory", [terminating, truncating])
def test_same_step_reset_boundaries(factory, mode):
    agent = _make(factory, mode)
    r = agent.collector.collect(10, 0)
    ends = np.zeros(10, bool)
    ends[[2, 5, 8]] = True
    for n in range(2):
        np.testing.assert_array_equal(r.obs[:, n, 0], [0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
        np.testing.assert_array_equal(r.episode_end[:, n], ends)
        np.testing.assert_array_equal(r.terminated[:, n], ends if factory is terminating else 0)
    assert r.valid.all()
    np.testing.assert_array_equal(r.rewards, 1.0)
    np.testing.assert_array_equal(r.final_steps[0], [2, 2, 5, 5, 8, 8])
    np.testing.assert_array_equal(r.final_steps[1], [0, 1, 0, 1, 0, 1])
    np.testing.assert_array_equal(r.final_obs, 3.0)  # the true successor, not the reset obs
    np.testing.assert_array_equal(r.last_obs, [[1.0], [1.0]])
    assert list(agent.collector.episodes.recent) == [(3.0, 3)] * 6


@pytest.mark.parametrize("factory", [terminating, truncating])
def test_next_step_reset_boundaries(factory):
    agent = _make(factory, "next")
    r = agent.collector.collect(10, 0)
    valid = np.ones(10, bool)
    valid[[3, 7]] = False  # the step after each episode end is a reset; its action is ignored
    ends = np.zeros(10, bool)
    ends[[2, 6]] = True
    for n in range(2):
        np.testing.assert_array_equal(r.obs[:, n, 0], [0, 1, 2, 3, 0, 1, 2, 3, 0, 1])
        np.testing.assert_array_equal(r.valid[:, n], valid)
        np.testing.assert_array_equal(r.episode_end[:, n], ends)
        np.testing.assert_array_equal(r.terminated[:, n], ends if factory is terminating else 0)
    assert len(r.final_steps[0]) == 0 and len(r.final_obs) == 0
    np.testing.assert_array_equal(r.last_obs, [[2.0], [2.0]])
    # Reset steps count neither in the return nor in the length.
    assert list(agent.collector.episodes.recent) == [(3.0, 3)] * 4

    agent._freeze(r)
    assert agent.learner.obs.shape[0] == r.valid.sum() == 16
    assert not (agent.learner.obs == 3.0).any()  # no reset step in the batch


def _spy_gae(monkeypatch):
    calls = []
    real = ppo.trainer.gae

    def spy(*args):
        out = real(*args)
        calls.append([np.array(a, copy=True) for a in args[:5]] + [a.copy() for a in out])
        return out

    monkeypatch.setattr(ppo.trainer, "gae", spy)
    return calls


def _advantages(monkeypatch, factory, mode, steps=10):
    agent = _make(factory, mode, steps, norm_adv="off")
    with torch.no_grad():
        agent.model.value_head.bias.fill_(5.0)  # values well away from 0
    calls = _spy_gae(monkeypatch)
    r = agent.collector.collect(steps, 0)
    agent._freeze(r)
    rewards, values, next_values, terminated, episode_end, adv, ret = calls[-1]
    value_of = {x: float(agent.learner.values(np.array([[x]], np.float32))[0]) for x in range(4)}
    return agent, r, values, next_values, adv, value_of


@pytest.mark.parametrize("mode", ["inprocess", "same", "next"])
def test_truncation_bootstraps_from_the_final_observation(monkeypatch, mode):
    _, r, values, next_values, trunc_adv, v = _advantages(monkeypatch, truncating, mode)
    _, _, _, _, term_adv, _ = _advantages(monkeypatch, terminating, mode)
    ends = np.argwhere(r.episode_end)
    assert len(ends) > 0
    for t, n in ends:
        # V(final observation), never the value of the reset observation that follows.
        assert next_values[t, n] == pytest.approx(v[3], abs=1e-6)
        assert abs(v[3] - v[0]) > 1e-3
        # Termination drops the bootstrap, truncation keeps it: they differ by gamma V(s_final).
        assert trunc_adv[t, n] - term_adv[t, n] == pytest.approx(GAMMA * v[3], abs=1e-5)
        assert abs(GAMMA * v[3]) > 1.0
    # Everywhere else, the successor is the next stored observation, or s_T at the end.
    inner = ~r.episode_end[:-1]
    np.testing.assert_allclose(next_values[:-1][inner], values[1:][inner], atol=1e-6)
    last = r.last_obs[:, 0].astype(int)
    np.testing.assert_allclose(next_values[-1], [v[x] for x in last], atol=1e-6)


@pytest.mark.parametrize("mode", ["inprocess", "next"])
def test_episode_ending_on_the_last_step(monkeypatch, mode):
    """An episode that ends on the rollout's last step bootstraps from its final observation;
    under next-step reset the following rollout starts with an invalid reset step."""
    agent, r, _, next_values, _, v = _advantages(monkeypatch, truncating, mode, steps=3)
    assert r.episode_end[-1].all()
    np.testing.assert_allclose(next_values[-1], v[3], atol=1e-6)
    following = agent.collector.collect(3, 6)
    expected_valid = [False, True, True] if mode == "next" else [True, True, True]
    np.testing.assert_array_equal(following.valid[:, 0], expected_valid)


def test_returns_are_advantages_plus_values(monkeypatch):
    agent, r, values, _, adv, _ = _advantages(monkeypatch, truncating, "next")
    keep = r.valid.reshape(-1)
    np.testing.assert_allclose(agent.learner.advantages, adv.reshape(-1)[keep], atol=1e-6)
    np.testing.assert_allclose(agent.learner.returns, (adv + values).reshape(-1)[keep],
                               atol=1e-5)


def test_native_cartpole_next_step_resets_are_not_trained_on():
    agent = PPO(Config(env_id="CartPole-v1", num_envs=8, vector="native", rollout_steps=64,
                       minibatch_size=64, tensorboard=False), verbose=False)
    assert agent.envs.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    agent.collector.reset(seed=0)
    r = agent.collector.collect(64, 0)
    assert r.episode_end.sum() >= 8  # a near-uniform policy ends episodes in ~20 steps
    np.testing.assert_array_equal(r.valid[1:], ~r.episode_end[:-1])
    assert r.valid[0].all()
    assert not (r.episode_end & ~r.valid).any()
    _, _, keep = agent._freeze(r)
    assert len(keep) == agent.learner.obs.shape[0] == r.valid.sum() < 64 * 8
    # CartPole pays 1 per step: a correct count gives return == length for every episode.
    recent = list(agent.collector.episodes.recent)
    assert recent and all(ret == length for ret, length in recent)
    assert len(recent) == r.episode_end.sum()


def test_same_step_cartpole_returns_equal_lengths():
    agent = PPO(Config(env_id="CartPole-v1", num_envs=3, rollout_steps=100, minibatch_size=64,
                       tensorboard=False), verbose=False)
    agent.collector.reset(seed=0)
    r = agent.collector.collect(100, 0)
    recent = list(agent.collector.episodes.recent)
    assert len(recent) == r.episode_end.sum() > 0
    assert all(ret == length for ret, length in recent)


def test_gaussian_actions_stored_unclipped_and_clipped_for_the_env():
    env = BoxActionEnv()
    agent = _agent(env, steps=50, init_log_std=1.5)
    r = agent.collector.collect(50, 0)
    stored = r.actions[:, 0]
    assert stored.dtype == np.float32 and stored.shape == (50, 2)
    assert (np.abs(stored) > 1.0).mean() > 0.3  # std e^1.5: most draws leave [-1, 1]
    received = np.stack(env.received)
    assert np.abs(received).max() <= 1.0
    np.testing.assert_allclose(received, np.clip(stored, -1.0, 1.0))
    # pi_old is the log-prob of the stored (unclipped) action.
    obs = r.obs.reshape(50, -1)
    logp, _ = agent.learner.evaluate(obs, stored)
    agent._freeze(r)
    np.testing.assert_allclose(agent.learner.logp_old, logp, atol=1e-6)
    # predict clips too, since its output goes to an env.
    assert np.abs(agent.predict(np.zeros(1, np.float32))).max() <= 1.0


@pytest.mark.parametrize("vector", ["sync", "async", "native"])
def test_parallel_env_shapes(vector):
    agent = PPO(Config(env_id="CartPole-v1", num_envs=4, vector=vector, rollout_steps=16,
                       minibatch_size=16, tensorboard=False), verbose=False)
    try:
        agent.collector.reset(seed=0)
        r = agent.collector.collect(16, 0)
        assert r.obs.shape == (16, 4, 4) and r.obs.dtype == np.float32
        assert r.actions.shape == (16, 4) and r.actions.dtype == np.int64
        for name in ("rewards", "terminated", "episode_end", "valid"):
            assert getattr(r, name).shape == (16, 4), name
        assert r.last_obs.shape == (4, 4)
        # Each env has its own seed: the four start states differ.
        assert len({tuple(row) for row in r.obs[0]}) == 4
        row = agent.iteration()
        assert row["global_step"] == 16 * 4  # collect() alone does not count
    finally:
        agent.close()


def test_box_action_shapes():
    agent = PPO(Config(env_id="Pendulum-v1", num_envs=2, rollout_steps=8, minibatch_size=8,
                       tensorboard=False), verbose=False)
    agent.collector.reset(seed=0)
    r = agent.collector.collect(8, 0)
    assert r.obs.shape == (8, 2, 3)
    assert r.actions.shape == (8, 2, 1) and r.actions.dtype == np.float32


def test_discrete_observations_are_one_hot():
    agent = PPO(Config(env_id="FrozenLake-v1", rollout_steps=32, minibatch_size=32,
                       tensorboard=False), verbose=False)
    assert agent.model.actor[0].in_features == 16
    agent.collector.reset(seed=0)
    r = agent.collector.collect(32, 0)
    obs = r.obs.reshape(32, 16)
    np.testing.assert_array_equal(obs.sum(1), 1.0)
    assert set(np.unique(obs)) == {0.0, 1.0}
    assert obs[0, 0] == 1.0  # FrozenLake starts in state 0
    assert agent.predict(5) in range(4)
    assert agent.predict(np.array([0, 5, 15])).shape == (3,)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (DictObsEnv, "unsupported observation space Dict"),
        (MultiDiscreteActionEnv, "unsupported action space MultiDiscrete"),
        (IntBoxActionEnv, "unsupported action space Box"),
    ],
)
def test_unsupported_spaces(env, message):
    with pytest.raises(ConfigError, match=message):
        PPO(Config(env_id="x", rollout_steps=8, minibatch_size=8), env=env(), verbose=False)


def test_env_instance_allows_one_env():
    with pytest.raises(ConfigError, match="factory"):
        PPO(Config(env_id="x", num_envs=2, rollout_steps=8, minibatch_size=8),
            env=terminating(), verbose=False)


def test_non_finite_reward_is_named():
    agent = _agent(lambda: NaNRewardEnv(), steps=10, num_envs=2)
    with pytest.raises(EnvValueError, match=r"env 0 returned a non-finite reward near global"):
        agent.collector.collect(10, 0)


def test_observation_normalization_covers_the_final_observation():
    agent = _make(truncating, "inprocess", steps=6, normalize_obs=True)
    r = agent.collector.collect(6, 0)
    # Replay the statistics: the reset observations, then each step's returned observations.
    stats = RunningMeanStd((1,))
    stats.update(np.zeros((2, 1)))
    expected_final = []
    for t in range(6):
        if t % L == L - 1:
            expected_final.append((3.0 - stats.mean) / np.sqrt(stats.var + 1e-8))
        stats.update(np.full((2, 1), float((t + 1) % L)))
    np.testing.assert_allclose(r.final_obs[::2], expected_final, atol=1e-5)
    np.testing.assert_allclose(agent.obs_normalizer.stats.mean, stats.mean)
    assert not np.allclose(r.final_obs, 3.0)


def test_reward_scaling_leaves_episode_returns_raw():
    agent = _make(terminating, "inprocess", normalize_reward=True)
    r = agent.collector.collect(10, 0)
    assert not np.allclose(r.rewards, 1.0)
    assert list(agent.collector.episodes.recent) == [(3.0, 3)] * 6


def test_one_env_instance_works():
    env = gym.make("CartPole-v1")
    agent = PPO(Config(env_id="CartPole-v1", rollout_steps=16, minibatch_size=8,
                       tensorboard=False), env=env, verbose=False)
    agent.learn(32)
    assert agent.global_step == 32


def test_reward_scaler_ignores_reset_steps():
    from ppo.normalization import RewardScaler

    scaler = RewardScaler(num_envs=2, gamma=0.9, clip=10.0)
    scaler(np.array([1.0, 2.0]), np.array([False, True]))
    count = scaler.stats.count
    scaler(np.array([1.0, 0.0]), np.array([False, False]), valid=np.array([True, False]))
    assert scaler.stats.count == pytest.approx(count + 1)
    scaler(np.array([0.0, 0.0]), np.array([False, False]), valid=np.array([False, False]))
    assert scaler.stats.count == pytest.approx(count + 1)


def _episodes_step_by_step(rewards, valid, ended):
    """The plain formula: accumulate every step, close episodes as they end."""
    returns, lengths, finished = np.zeros(rewards.shape[1]), np.zeros(rewards.shape[1], int), []
    for t in range(len(rewards)):
        returns += np.where(valid[t], rewards[t], 0.0)
        lengths += valid[t]
        for i in np.flatnonzero(ended[t]):
            finished.append((returns[i], lengths[i]))
            returns[i], lengths[i] = 0.0, 0
    return returns, lengths, finished


def test_episode_statistics_per_rollout_match_the_step_by_step_formula():
    rng = np.random.default_rng(0)
    rewards = rng.normal(size=(150, 4))
    valid = rng.random((150, 4)) > 0.1
    ended = rng.random((150, 4)) < 0.08
    stats = EpisodeStats(num_envs=4, window=1000)
    for chunk in np.split(np.arange(150), 3):  # episodes carried across rollouts
        stats.record(rewards[chunk], valid[chunk], ended[chunk])
    returns, lengths, finished = _episodes_step_by_step(rewards, valid, ended)
    assert stats.episodes == len(finished) > 20
    np.testing.assert_allclose([r for r, _ in stats.recent], [r for r, _ in finished],
                               rtol=1e-12, atol=1e-12)
    assert [n for _, n in stats.recent] == [n for _, n in finished]
    np.testing.assert_allclose(stats.returns, returns, atol=1e-12)
    np.testing.assert_array_equal(stats.lengths, lengths)
