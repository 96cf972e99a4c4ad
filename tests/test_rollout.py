"""The collector: episode boundaries under both Gymnasium autoreset modes, bootstraps, shapes."""

from functools import partial

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from helpers_envs import (
    BoxActionEnv,
    DictObsEnv,
    InfoMaskedChoiceEnv,
    IntBoxActionEnv,
    MaskedChoiceEnv,
    MaskedMultiChoiceEnv,
    MultiDiscreteActionEnv,
    NaNRewardEnv,
    SequenceObsEnv,
    TextActionEnv,
    terminating,
    truncating,
)
from ppo.advantages import gae, prepare_batch
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
    agent.collector.start(seed=0)
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

    batch = _prepare(agent, r)
    assert batch.obs.shape[0] == r.valid.sum() == 16
    assert not (batch.obs == 3.0).any()  # no reset step in the batch


def _prepare(agent, rollout):
    return prepare_batch(rollout, agent.learner.evaluate, agent.learner.values, agent.config)


def _advantages(factory, mode, steps=10):
    """A rollout of counter envs, its prepared batch (advantages not normalized), and the
    critic's value of each observation 0..3."""
    agent = _make(factory, mode, steps, norm_adv="off")
    with torch.no_grad():
        agent.model.value_head.bias.fill_(5.0)  # values well away from 0
    r = agent.collector.collect(steps, 0)
    batch = _prepare(agent, r)
    value_of = {x: float(agent.learner.values(np.array([[x]], np.float32))[0]) for x in range(4)}
    return agent, r, batch, value_of


def _expected_gae(r, v):
    """GAE of the kept steps with the successors the counter envs must have: an episode that
    ends has final observation 3 (never the reset observation that follows); otherwise the
    successor is the next stored observation, or s_T at the rollout's end."""
    values = np.vectorize(v.get)(r.obs[..., 0].astype(int)).astype(np.float32)
    next_values = np.empty_like(values)
    next_values[:-1] = values[1:]
    next_values[-1] = [v[int(x)] for x in r.last_obs[:, 0]]
    next_values[r.episode_end] = v[3]
    adv, ret = gae(r.rewards, values, next_values, r.terminated, r.episode_end, GAMMA, 0.95)
    keep = r.valid.reshape(-1)
    return adv.reshape(-1)[keep], ret.reshape(-1)[keep]


@pytest.mark.parametrize("mode", ["inprocess", "same", "next"])
def test_truncation_bootstraps_from_the_final_observation(mode):
    _, r, trunc, v = _advantages(truncating, mode)
    _, r_term, term, _ = _advantages(terminating, mode)
    assert abs(v[3] - v[0]) > 1e-3  # a wrong successor would show
    np.testing.assert_allclose(trunc.advantages, _expected_gae(r, v)[0], atol=1e-5)
    np.testing.assert_allclose(term.advantages, _expected_gae(r_term, v)[0], atol=1e-5)
    ends = np.argwhere(r.episode_end)
    assert len(ends) > 0
    kept = np.flatnonzero(r.valid.reshape(-1))
    for t, n in ends:
        # Termination drops the bootstrap, truncation keeps it: they differ by gamma V(s_final).
        i = np.searchsorted(kept, t * r.valid.shape[1] + n)
        assert trunc.advantages[i] - term.advantages[i] == pytest.approx(GAMMA * v[3], abs=1e-5)
    assert abs(GAMMA * v[3]) > 1.0


@pytest.mark.parametrize("mode", ["inprocess", "next"])
def test_episode_ending_on_the_last_step(mode):
    """An episode that ends on the rollout's last step bootstraps from its final observation;
    under next-step reset the following rollout starts with an invalid reset step."""
    agent, r, batch, v = _advantages(truncating, mode, steps=3)
    assert r.episode_end[-1].all()
    np.testing.assert_allclose(batch.advantages, _expected_gae(r, v)[0], atol=1e-5)
    following = agent.collector.collect(3, 6)
    expected_valid = [False, True, True] if mode == "next" else [True, True, True]
    np.testing.assert_array_equal(following.valid[:, 0], expected_valid)


def test_returns_are_advantages_plus_values():
    _, r, batch, v = _advantages(truncating, "next")
    _, returns = _expected_gae(r, v)
    np.testing.assert_allclose(batch.returns, returns, atol=1e-5)
    np.testing.assert_allclose(batch.returns, batch.advantages + batch.values, atol=1e-5)


def test_native_cartpole_next_step_resets_are_not_trained_on():
    agent = PPO(Config(env_id="CartPole-v1", num_envs=8, vector="native", rollout_steps=64,
                       minibatch_size=64, tensorboard=False), verbose=False)
    assert agent.envs.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    agent.collector.start(seed=0)
    r = agent.collector.collect(64, 0)
    assert r.episode_end.sum() >= 8  # a near-uniform policy ends episodes in ~20 steps
    np.testing.assert_array_equal(r.valid[1:], ~r.episode_end[:-1])
    assert r.valid[0].all()
    assert not (r.episode_end & ~r.valid).any()
    batch = _prepare(agent, r)
    assert len(batch.obs) == len(batch.advantages) == r.valid.sum() < 64 * 8
    # CartPole pays 1 per step: a correct count gives return == length for every episode.
    recent = list(agent.collector.episodes.recent)
    assert recent and all(ret == length for ret, length in recent)
    assert len(recent) == r.episode_end.sum()


def test_same_step_cartpole_returns_equal_lengths():
    agent = PPO(Config(env_id="CartPole-v1", num_envs=3, rollout_steps=100, minibatch_size=64,
                       tensorboard=False), verbose=False)
    agent.collector.start(seed=0)
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
    np.testing.assert_allclose(_prepare(agent, r).logp_old, logp, atol=1e-6)
    # predict clips too, since its output goes to an env.
    assert np.abs(agent.predict(np.zeros(1, np.float32))[0]).max() <= 1.0


@pytest.mark.parametrize("vector", ["sync", "async", "native"])
def test_parallel_env_shapes(vector):
    agent = PPO(Config(env_id="CartPole-v1", num_envs=4, vector=vector, rollout_steps=16,
                       minibatch_size=16, tensorboard=False), verbose=False)
    try:
        agent.collector.start(seed=0)
        r = agent.collector.collect(16, 0)
        assert r.obs.shape == (16, 4, 4) and r.obs.dtype == np.float32
        assert r.actions.shape == (16, 4, 1) and r.actions.dtype == np.int64
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
    agent.collector.start(seed=0)
    r = agent.collector.collect(8, 0)
    assert r.obs.shape == (8, 2, 3)
    assert r.actions.shape == (8, 2, 1) and r.actions.dtype == np.float32


def test_discrete_observations_are_one_hot():
    agent = PPO(Config(env_id="FrozenLake-v1", rollout_steps=32, minibatch_size=32,
                       tensorboard=False), verbose=False)
    assert agent.model.actor[0].in_features == 16
    agent.collector.start(seed=0)
    r = agent.collector.collect(32, 0)
    obs = r.obs.reshape(32, 16)
    np.testing.assert_array_equal(obs.sum(1), 1.0)
    assert set(np.unique(obs)) == {0.0, 1.0}
    assert obs[0, 0] == 1.0  # FrozenLake starts in state 0
    assert agent.predict(5)[0] in range(4)
    assert agent.predict(np.array([0, 5, 15]))[0].shape == (3,)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (SequenceObsEnv, "unsupported observation space Sequence"),
        (TextActionEnv, "unsupported action space Text"),
        (IntBoxActionEnv, "unsupported action space Box"),
    ],
)
def test_unsupported_spaces(env, message):
    with pytest.raises(ConfigError, match=message):
        PPO(Config(env_id="x", rollout_steps=8, minibatch_size=8), env=env(), verbose=False)


@pytest.mark.parametrize("env", [DictObsEnv, MultiDiscreteActionEnv])
def test_composite_spaces_train(env):
    agent = PPO(Config(env_id="x", rollout_steps=8, minibatch_size=8, tensorboard=False),
                env=env(), verbose=False)
    agent.learn(16)
    assert agent.global_step == 16


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


@pytest.mark.parametrize("env", [MaskedChoiceEnv, InfoMaskedChoiceEnv, MaskedMultiChoiceEnv],
                         ids=["method", "info", "multidiscrete"])
@pytest.mark.parametrize("vector", ["inprocess", "next-step"])
def test_masked_envs_never_see_an_invalid_action(env, vector):
    """Masks from `action_masks()` or info["action_mask"], through same-step and next-step
    resets: every action valid (an invalid one earns -1), and the masks go with the batch."""
    source = (lambda: env()) if vector == "inprocess" else SyncVectorEnv(
        [env] * 2, autoreset_mode=AutoresetMode.NEXT_STEP)
    agent = PPO(Config(env_id="masked", num_envs=2, rollout_steps=64, minibatch_size=32,
                       tensorboard=False), env=source, verbose=False)
    agent.collector.start(seed=0)
    for _ in range(2):
        r = agent.collector.collect(64, 0)
        assert r.episode_end.sum() >= 8  # masks renewed across resets too
        assert (r.rewards[r.valid] >= 0).all()
        assert r.masks is not None and r.masks.shape == (64, 2, agent.action_spec.mask_size)
        for head, column in zip(agent.action_spec.heads, range(r.actions.shape[-1]),
                                strict=True):
            taken = np.take_along_axis(r.masks[..., head.mask],
                                       r.actions[..., column:column + 1], axis=-1)
            assert taken[r.valid].all()
        batch = _prepare(agent, r)
        np.testing.assert_array_equal(batch.masks, r.masks.reshape(128, -1)[r.valid.reshape(-1)])
        agent.learner.update(batch, agent.shuffle_rng)
        agent.policy.promote(agent.model)
