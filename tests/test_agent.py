"""The PPO loop, piece by piece: a batch frozen under pi_old, GAE once from the values alive at
collection, K epochs of fresh shuffles cut into minibatches, the KL stop, promotion; then the
agent's API, counters and failures."""

import copy
import csv

import numpy as np
import pytest
import torch

from helpers_envs import CounterEnv
from helpers_spaces import ACTION_SPACES
from ppo.advantages import gae, prepare_batch
from ppo.agent import PPO
from ppo.config import Config, from_dict
from ppo.learners import NonFiniteError

LEARNERS = pytest.mark.parametrize("learner", ["numpy", "torch"])


def _agent(learner="auto", **kw):
    settings = dict(env_id="CartPole-v1", rollout_steps=64, num_envs=2, minibatch_size=32,
                    tensorboard=False, learner=learner)
    settings.update(kw)
    agent = PPO(Config(**settings), verbose=False)
    agent.collector.start(seed=agent.config.seed)
    return agent


def _batch(agent, rollout=None, cfg=None):
    """Steps 1 and 2 of the loop: collect a rollout (unless given), prepare it."""
    if rollout is None:
        rollout = agent.collector.collect(agent.config.rollout_steps, agent.global_step)
    return prepare_batch(rollout, agent.learner.evaluate, agent.learner.values,
                         cfg or agent.config)


def _weights(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _adam_steps(agent):
    state = agent.learner.optimizer.state_dict()["state"]
    return float(state[0]["step"]) if state else 0.0


class RecordingRng:
    """A stand-in for the shuffle stream that records every permutation it hands out."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.calls = []

    def permutation(self, n):
        order = self.rng.permutation(n)
        self.calls.append((n, order.copy()))
        return order


# ---------------------------------------------------------------- 1. pi_old, frozen
@LEARNERS
def test_batch_holds_pi_old_log_probs_and_values(learner):
    agent = _agent(learner)
    before = copy.deepcopy(agent.model)
    rollout = agent.collector.collect(64, 0)
    batch = _batch(agent, rollout)
    np.testing.assert_array_equal(batch.obs, rollout.obs.reshape(128, 4))
    np.testing.assert_array_equal(batch.actions, rollout.actions.reshape(128, 1))
    with torch.no_grad():
        logp, _, values = before.evaluate(torch.as_tensor(batch.obs),
                                          torch.as_tensor(batch.actions))
    np.testing.assert_allclose(batch.logp_old, logp.numpy(), atol=1e-5)
    np.testing.assert_allclose(batch.values, values.numpy(), atol=1e-5)


@LEARNERS
def test_first_step_has_ratio_one_and_log_probs_stay_frozen(learner):
    """One minibatch (the whole batch), one epoch: the only step sees pi = pi_old. A second
    update on the same batch, after the weights moved, sees KL > 0: the batch's log-probs
    did not follow the weights."""
    agent = _agent(learner, minibatch_size=128, epochs=1)
    batch = _batch(agent)
    logp_old = batch.logp_old.copy()
    first = agent.learner.update(batch, agent.shuffle_rng)
    assert first.approx_kl == pytest.approx(0.0, abs=1e-7)
    assert first.clipfrac == 0.0
    np.testing.assert_array_equal(batch.logp_old, logp_old)
    second = agent.learner.update(batch, agent.shuffle_rng)
    assert second.approx_kl > 1e-7


@LEARNERS
def test_old_logprobs_from_current_ablation_never_sees_a_ratio_off_one(learner):
    """The ablation takes pi_old from the current weights at every step: approx KL and the
    clip fraction stay exactly 0 although the weights move; the check above would fail."""
    agent = _agent(learner, old_logprobs_from_current=True, lr=1e-2)
    standard = _agent(learner, lr=1e-2)
    for _ in range(2):
        before = _weights(agent.model)
        row = agent.iteration()
        assert row["approx_kl"] == 0.0 and row["clipfrac"] == 0.0
        assert not torch.equal(before, _weights(agent.model))
    assert standard.iteration()["approx_kl"] > 0


def test_policy_is_promoted_after_the_update():
    agent = _agent()
    obs = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
    agent.learner.update(_batch(agent), agent.shuffle_rng)
    with torch.no_grad():
        current = agent.model.policy(torch.as_tensor(obs)).numpy()
    assert not np.allclose(agent.policy.params(obs), current, atol=1e-4)  # still pi_old
    agent.policy.promote(agent.model)
    np.testing.assert_allclose(agent.policy.params(obs), current, atol=1e-5)
    agent.iteration()
    with torch.no_grad():
        current = agent.model.policy(torch.as_tensor(obs)).numpy()
    np.testing.assert_allclose(agent.policy.params(obs), current, atol=1e-5)


@LEARNERS
def test_iteration_is_collect_prepare_update_promote(learner):
    """iteration() does exactly the four steps: the same metrics and weights as doing them by
    hand on an identical agent."""
    a, b = _agent(learner), _agent(learner)
    row = a.iteration()
    batch = _batch(b)
    stats = b.learner.update(batch, b.shuffle_rng)
    b.policy.promote(b.model)
    assert torch.equal(_weights(a.model), _weights(b.model))
    for field in ("approx_kl", "clipfrac", "policy_loss", "value_loss", "entropy",
                  "epochs_run"):
        assert row[field] == getattr(stats, field), field
    assert row["explained_variance"] == batch.explained_variance
    obs = batch.obs[:8]
    np.testing.assert_array_equal(a.policy.params(obs), b.policy.params(obs))


# ---------------------------------------------------------------- 2. GAE once
@LEARNERS
def test_advantages_are_gae_with_the_values_alive_at_collection(learner):
    agent = _agent(learner, norm_adv="off")
    before = copy.deepcopy(agent.model)
    rollout = agent.collector.collect(64, 0)
    batch = _batch(agent, rollout)

    def value(obs):
        with torch.no_grad():
            return before.value(torch.as_tensor(obs)).numpy()

    values = value(rollout.obs.reshape(128, 4)).reshape(64, 2)
    next_values = np.empty_like(values)
    next_values[:-1] = values[1:]
    next_values[-1] = value(rollout.last_obs)  # the bootstrap V(s_T)
    assert len(rollout.final_steps[0]) > 0  # some episodes ended: V(final observation)
    next_values[rollout.final_steps] = value(rollout.final_obs)
    advantages, returns = gae(rollout.rewards, values, next_values, rollout.terminated,
                              rollout.episode_end, 0.99, 0.95)
    np.testing.assert_allclose(batch.advantages, advantages.reshape(-1), atol=1e-4)
    np.testing.assert_allclose(batch.returns, returns.reshape(-1), atol=1e-4)
    np.testing.assert_allclose(batch.returns, batch.advantages + batch.values, atol=1e-5)


@LEARNERS
def test_epochs_train_on_the_frozen_batch(learner):
    """Nothing is recomputed between epochs: K epochs are K one-epoch updates on the same
    batch with the same shuffle stream, to the bit."""
    two, one = _agent(learner, epochs=2), _agent(learner, epochs=1)
    batch_two, batch_one = _batch(two), _batch(one)
    two.learner.update(batch_two, np.random.default_rng(5))
    rng = np.random.default_rng(5)
    one.learner.update(batch_one, rng)
    one.learner.update(batch_one, rng)
    assert torch.equal(_weights(two.model), _weights(one.model))


@LEARNERS
def test_advantages_per_epoch_ablation(learner):
    """The ablation recomputes GAE with the current critic before every epoch after the first:
    with one epoch it changes nothing, with two it does."""
    def weights(epochs, ablation):
        agent = _agent(learner, epochs=epochs, advantages_per_epoch=ablation)
        agent.iteration()
        return _weights(agent.model)

    assert torch.equal(weights(1, True), weights(1, False))
    assert not torch.equal(weights(2, True), weights(2, False))


@LEARNERS
def test_advantage_normalization(learner):
    agent = _agent(learner, norm_adv="off")
    rollout = agent.collector.collect(64, 0)
    raw = _batch(agent, rollout)
    for mode in ("batch", "minibatch", "off"):
        batch = _batch(agent, rollout, agent.config.replace(norm_adv=mode))
        np.testing.assert_array_equal(batch.returns, raw.returns)
        if mode == "batch":
            assert batch.advantages.mean() == pytest.approx(0.0, abs=1e-5)
            assert batch.advantages.std(ddof=1) == pytest.approx(1.0, abs=1e-5)
            np.testing.assert_allclose(batch.advantages, (raw.advantages - raw.advantages.mean())
                                       / raw.advantages.std(ddof=1), atol=1e-5)
        else:  # minibatch normalization happens in the learner, per step
            np.testing.assert_array_equal(batch.advantages, raw.advantages)


def test_explained_variance_value():
    agent = _agent(norm_adv="off")
    batch = _batch(agent)
    expected = 1.0 - np.var(batch.returns - batch.values) / np.var(batch.returns)
    assert batch.explained_variance == pytest.approx(expected, rel=1e-6)
    assert -1.0 < batch.explained_variance < 1.0


# ---------------------------------------------------------------- 3. epochs, minibatches, KL
@LEARNERS
def test_k_epochs_over_fresh_shuffles(learner):
    agent = _agent(learner, epochs=3)
    batch = _batch(agent)
    rng = RecordingRng(0)
    stats = agent.learner.update(batch, rng)
    assert stats.epochs_run == 3
    assert [n for n, _ in rng.calls] == [128] * 3  # one permutation of the batch per epoch
    orders = [order for _, order in rng.calls]
    for order in orders:
        np.testing.assert_array_equal(np.sort(order), np.arange(128))  # each sample once
    assert not np.array_equal(orders[0], orders[1])
    assert not np.array_equal(orders[1], orders[2])
    assert _adam_steps(agent) == 3 * 128 / 32
    agent.learner.update(batch, rng)  # the next update draws new shuffles
    assert len(rng.calls) == 6 and not np.array_equal(rng.calls[3][1], orders[0])


@LEARNERS
def test_shuffle_order_decides_the_minibatches(learner):
    """The learner trains on the minibatches cut from the permutation it was handed."""
    def weights(order):
        agent = _agent(learner, epochs=1)
        batch = _batch(agent)

        class Fixed:
            def permutation(self, n):
                return order.copy()

        agent.learner.update(batch, Fixed())
        return _weights(agent.model)

    order = np.random.default_rng(0).permutation(128)
    same_minibatches = np.concatenate([np.sort(order[i : i + 32]) for i in range(0, 128, 32)])
    shuffled = weights(order)
    # The order within a minibatch only changes float rounding; other minibatches, the step.
    assert (shuffled - weights(same_minibatches)).abs().max() < 1e-6
    assert (shuffled - weights(np.arange(128))).abs().max() > 1e-4


@pytest.mark.parametrize("minibatch, steps", [(32, 4), (50, 2), (99, 2), (100, 1)])
@LEARNERS
def test_minibatch_cut_keeps_a_short_last_one(learner, minibatch, steps):
    agent = _agent(learner, rollout_steps=50, minibatch_size=minibatch, epochs=2,
                   norm_adv="minibatch")  # batch 100
    stats = agent.learner.update(_batch(agent), np.random.default_rng(0))
    assert _adam_steps(agent) == 2 * steps
    assert stats.nonfinite_steps == 0  # a minibatch of 1 (99 + 1) is not normalized to NaN


@LEARNERS
def test_target_kl_stops_the_epochs_early(learner):
    agent = _agent(learner, target_kl=1e-9)
    before = _weights(agent.model)
    stats = agent.learner.update(_batch(agent), agent.shuffle_rng)
    # The first step (KL 0) is taken; the second sees KL above the limit, is not applied, and
    # ends the loop.
    assert stats.epochs_run == 1 < agent.config.epochs
    assert _adam_steps(agent) == 1
    assert stats.approx_kl > 0 and stats.nonfinite_steps == 0
    assert not torch.equal(before, _weights(agent.model))
    loose = _agent(learner, target_kl=10.0)
    assert loose.learner.update(_batch(loose), loose.shuffle_rng).epochs_run == 4
    assert _adam_steps(loose) == 4 * 4


def test_anneal_lr_decays_linearly():
    agent = _agent(anneal_lr=True, lr=1e-3, total_timesteps=4 * 128)
    rates = [agent.iteration()["learning_rate"] for _ in range(4)]
    np.testing.assert_allclose(rates, [1e-3, 0.75e-3, 0.5e-3, 0.25e-3], rtol=1e-9)
    assert agent.learner.optimizer.param_groups[0]["lr"] == pytest.approx(0.25e-3)
    flat = _agent(lr=1e-3, total_timesteps=4 * 128)
    assert [flat.iteration()["learning_rate"] for _ in range(2)] == [1e-3, 1e-3]


@LEARNERS
def test_annealed_lr_is_the_step_size_used(learner):
    """A zero learning rate must leave the weights alone: the learner reads the annealed lr."""
    agent = _agent(learner, anneal_lr=True, total_timesteps=128)
    agent.global_step = 128  # 1 - global_step / total = 0
    before = _weights(agent.model)
    agent.iteration()
    torch.testing.assert_close(before, _weights(agent.model))


# ---------------------------------------------------------------- API, counters, failures
@pytest.mark.parametrize("name", ACTION_SPACES)
@pytest.mark.parametrize("learner, algo", [("numpy", "ppo"), ("torch", "ppo"), ("auto", "trpo")])
def test_every_action_kind_trains_and_acts_within_its_space(name, learner, algo):
    space = ACTION_SPACES[name]
    env = CounterEnv(terminate_at=5, action_space=space)
    agent = PPO(Config(env_id="counter", rollout_steps=16, minibatch_size=8, tensorboard=False,
                       learner=learner, algo=algo, shared_trunk=algo == "ppo"),
                env=env, verbose=False)
    before = _weights(agent.model)
    agent.learn(32)
    assert agent.update == 2 and not torch.equal(before, _weights(agent.model))
    assert len(env.received) == 32 and all(space.contains(a) for a in env.received)
    action, _ = agent.predict(np.zeros(1, np.float32), deterministic=True)
    assert space.contains(action)
    actions, _ = agent.predict(np.zeros((3, 1), np.float32))
    assert all(space.contains(agent.action_spec.one_env(actions, i)) for i in range(3))


def test_learn_predict_and_counters():
    agent = _agent()
    agent.learn(total_timesteps=256)
    assert agent.update == 2 and agent.global_step == 256
    agent.learn(total_timesteps=128)
    assert agent.update == 3 and agent.global_step == 384
    action, state = agent.predict(np.zeros(4, np.float32), deterministic=True)
    assert state is None  # a feed-forward policy has no recurrent state
    assert np.ndim(action) == 0 and action in (0, 1)
    logits, _ = agent.model(torch.zeros(1, 4))
    assert action == int(logits.argmax())
    actions, _ = agent.predict(np.zeros((5, 4), np.float32))
    assert actions.shape == (5,)


def test_nonfinite_steps_are_skipped_then_stop():
    agent = _agent(max_nonfinite_steps=3)
    with torch.no_grad():
        agent.model.value_head.weight[0, 0] = float("nan")
    before = [p.detach().clone() for p in agent.model.parameters()]
    with pytest.raises(NonFiniteError, match="3 minibatch steps in a row"):
        agent.iteration()
    for a, b in zip(before, agent.model.parameters(), strict=True):
        torch.testing.assert_close(a, b.detach(), equal_nan=True)


def _metrics(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


TIMING = {"sps", "time_env", "time_act", "time_advantages", "time_optimize", "time_total"}


@LEARNERS
def test_same_seed_same_metrics(tmp_path, learner):
    def run(name, seed):
        cfg = Config(env_id="CartPole-v1", seed=seed, rollout_steps=128, num_envs=2,
                     minibatch_size=64, total_timesteps=4 * 256, tensorboard=False, threads=1,
                     learner=learner, run_dir=str(tmp_path / name))
        PPO(cfg, verbose=False).learn()
        return [{k: v for k, v in row.items() if k not in TIMING}
                for row in _metrics(tmp_path / name / "metrics.csv")]

    a, b, c = run("a", 3), run("b", 3), run("c", 4)
    assert len(a) == 4
    assert a == b
    assert a != c


# ---------------------------------------------------------------- learning
@pytest.mark.slow
def test_cartpole_preset_is_solved_within_200k_steps():
    from ppo.cli import load_preset

    agent = PPO(from_dict({**load_preset("cartpole"), "seed": 0, "tensorboard": False}),
                verbose=False)
    best = -np.inf
    while agent.global_step < 200_000:
        row = agent.iteration()
        best = max(best, row["episodic_return"])
        if row["episodic_return"] >= 475:
            break
    assert row["episodic_return"] >= 475, f"best mean return {best:.1f} in 200k steps"
    assert len(agent.collector.episodes.recent) == 100
