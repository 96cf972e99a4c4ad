"""The seed's loop, piece by piece: frozen pi_old, GAE once, K shuffled epochs, promotion."""

import copy
import csv

import numpy as np
import pytest
import torch

import ppo.trainer
from ppo.advantages import gae
from ppo.config import Config, from_dict
from ppo.trainer import PPO, NonFiniteError

LEARNERS = ["numpy", "torch"]


def _agent(learner="auto", **kw):
    settings = dict(env_id="CartPole-v1", rollout_steps=64, num_envs=2, minibatch_size=32,
                    tensorboard=False, learner=learner)
    settings.update(kw)
    agent = PPO(Config(**settings), verbose=False)
    agent.collector.reset(seed=agent.config.seed)
    return agent


def _record_steps(agent):
    """Wrap learner.step: for each minibatch, its index, the frozen log-probs, the ratio
    under the weights at that moment, and the step's stats."""
    records = []
    learner = agent.learner
    real = learner.step

    def step(index, kl_limit=None):
        obs, actions = np.asarray(learner.obs), np.asarray(learner.actions)
        logp_now, _ = learner.evaluate(obs[index], actions[index])
        logp_old = _numpy(learner.logp_old)
        stats = real(index, kl_limit=kl_limit)
        records.append({"index": np.array(index), "logp_old": logp_old,
                        "ratio": np.exp(logp_now - logp_old[index]), "stats": stats})
        return stats

    learner.step = step
    return records


def _numpy(x):
    return x.detach().cpu().numpy().copy() if isinstance(x, torch.Tensor) else np.array(x)


def _spy_gae(monkeypatch, events):
    real = ppo.trainer.gae

    def spy(*args):
        events.append(("gae", [np.array(a, copy=True) for a in args]))
        return real(*args)

    monkeypatch.setattr(ppo.trainer, "gae", spy)


# ---------------------------------------------------------------- 1. frozen pi_old
@pytest.mark.parametrize("learner", LEARNERS)
def test_first_minibatch_ratio_is_one_and_old_logprobs_stay_frozen(learner):
    agent = _agent(learner)
    before = copy.deepcopy(agent.model)
    records = _record_steps(agent)
    row = agent.iteration()
    first = records[0]
    np.testing.assert_allclose(first["ratio"], 1.0, atol=1e-6)
    assert first["stats"][0] == pytest.approx(0.0, abs=1e-9)  # approx KL
    assert first["stats"][1] == 0.0  # clip fraction
    # The same frozen log-probs for every minibatch of every epoch ...
    for record in records[1:]:
        np.testing.assert_array_equal(record["logp_old"], first["logp_old"])
    # ... and they are pi_old's: the weights that collected the data.
    obs = torch.as_tensor(np.asarray(agent.learner.obs))
    actions = torch.as_tensor(np.asarray(agent.learner.actions))
    with torch.no_grad():
        logp_collect = before.evaluate(obs, actions)[0].numpy()
    np.testing.assert_allclose(first["logp_old"], logp_collect, atol=1e-5)
    # The policy moved, so later ratios are not all 1 and the fence had something to do.
    assert max(np.abs(r["ratio"] - 1).max() for r in records[1:]) > 1e-3
    assert row["approx_kl"] > 0


@pytest.mark.parametrize("learner", LEARNERS)
def test_fresh_old_logprobs_pitfall_is_caught(learner):
    """The seed's bug (pi_old recomputed from current weights) makes every ratio 1 forever:
    the check above would fail on it."""
    agent = _agent(learner, pitfall_fresh_old_logprobs=True, lr=1e-2)
    records = _record_steps(agent)
    agent.iteration()
    assert all(r["stats"][0] == 0.0 and r["stats"][1] == 0.0 for r in records)
    assert max(np.abs(r["ratio"] - 1).max() for r in records[1:]) > 1e-3  # weights did move


def test_policy_is_promoted_after_the_update():
    agent = _agent()
    obs = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
    agent.iteration()
    out, _ = agent.model(torch.as_tensor(obs))
    np.testing.assert_allclose(agent.policy.policy_output(obs), out.detach().numpy(), atol=1e-5)


# ---------------------------------------------------------------- 2. GAE once
@pytest.mark.parametrize("learner", LEARNERS)
def test_gae_once_per_rollout_before_the_epochs(monkeypatch, learner):
    agent = _agent(learner, norm_adv="off")
    events = []
    _spy_gae(monkeypatch, events)
    real_step = agent.learner.step
    agent.learner.step = lambda index, kl_limit=None: (
        events.append(("step", None)) or real_step(index, kl_limit))
    rollouts = []
    real_collect = agent.collector.collect
    agent.collector.collect = lambda *a: rollouts.append(real_collect(*a)) or rollouts[-1]
    before = copy.deepcopy(agent.model)
    agent.iteration()
    kinds = [kind for kind, _ in events]
    assert kinds == ["gae"] + ["step"] * (4 * 128 // 32)
    rewards, values, next_values, terminated, episode_end, gamma, lam = events[0][1]
    assert (gamma, lam) == (0.99, 0.95)
    r = rollouts[0]
    # Values alive at collection, bootstrapped from V(s_T).
    with torch.no_grad():
        v_collect = before.value(torch.as_tensor(r.obs.reshape(128, 4))).numpy()
        v_last = before.value(torch.as_tensor(r.last_obs)).numpy()
    np.testing.assert_allclose(values.reshape(-1), v_collect, atol=1e-5)
    running = ~r.episode_end[-1]  # (an env that ended there bootstraps from its final obs)
    assert running.any()
    np.testing.assert_allclose(next_values[-1][running], v_last[running], atol=1e-5)
    # returns = advantages + values
    np.testing.assert_allclose(agent.learner.returns,
                               agent.learner.advantages + agent.learner.old_values, atol=1e-5)
    agent.iteration()
    assert [kind for kind, _ in events].count("gae") == 2


def test_recompute_advantages_pitfall_is_caught(monkeypatch):
    agent = _agent(pitfall_recompute_advantages=True)
    events = []
    _spy_gae(monkeypatch, events)
    agent.iteration()
    assert len(events) == agent.config.epochs  # the check above would fail on it


@pytest.mark.parametrize("learner", LEARNERS)
def test_batch_normalization_of_advantages(monkeypatch, learner):
    for mode in ("batch", "minibatch", "off"):
        agent = _agent(learner, norm_adv=mode)
        events = []
        _spy_gae(monkeypatch, events)
        rollout = agent.collector.collect(64, 0)
        agent._freeze(rollout)
        raw, _ = gae(*events[0][1])
        raw = raw.reshape(-1)
        adv = np.asarray(agent.learner.advantages)
        if mode == "batch":
            assert adv.mean() == pytest.approx(0.0, abs=1e-5)
            assert adv.std(ddof=1) == pytest.approx(1.0, abs=1e-5)
            np.testing.assert_allclose(adv, (raw - raw.mean()) / raw.std(ddof=1), atol=1e-4)
        else:  # minibatch normalization happens in the learner, per step
            np.testing.assert_allclose(adv, raw, atol=1e-6)


def test_explained_variance_value():
    agent = _agent(norm_adv="off")
    row = agent.iteration()
    # Recompute from what was frozen before the update (the learner keeps it).
    returns, values = np.asarray(agent.learner.returns), np.asarray(agent.learner.old_values)
    expected = 1.0 - np.var(returns - values) / np.var(returns)
    assert row["explained_variance"] == pytest.approx(expected, rel=1e-4)


# ---------------------------------------------------------------- 4. epochs, target KL, lr
@pytest.mark.parametrize("learner", LEARNERS)
def test_k_epochs_over_fresh_shuffles(learner):
    agent = _agent(learner, epochs=3)
    records = _record_steps(agent)
    row = agent.iteration()
    assert row["epochs_run"] == 3
    assert len(records) == 3 * 4
    orders = []
    for epoch in range(3):
        chunk = records[4 * epoch: 4 * epoch + 4]
        assert [len(r["index"]) for r in chunk] == [32] * 4
        order = np.concatenate([r["index"] for r in chunk])
        np.testing.assert_array_equal(np.sort(order), np.arange(128))  # each sample once
        orders.append(order)
    assert not np.array_equal(orders[0], orders[1])
    assert not np.array_equal(orders[1], orders[2])
    assert not np.array_equal(orders[0], np.arange(128))
    records.clear()
    agent.iteration()
    assert not np.array_equal(np.concatenate([r["index"] for r in records[:4]]), orders[0])


def test_last_minibatch_may_be_short():
    agent = _agent(rollout_steps=50, minibatch_size=32, epochs=1)  # batch 100
    records = _record_steps(agent)
    agent.iteration()
    assert [len(r["index"]) for r in records] == [32, 32, 32, 4]


@pytest.mark.parametrize("learner", LEARNERS)
def test_target_kl_stops_the_epochs_early(learner):
    agent = _agent(learner, target_kl=1e-9)
    records = _record_steps(agent)
    params_before = [p.detach().clone() for p in agent.model.parameters()]
    row = agent.iteration()
    assert row["epochs_run"] == 1 < agent.config.epochs
    # The first step (KL 0) is taken; the second sees KL above the limit, is not applied,
    # and ends the loop.
    assert len(records) == 2
    assert records[1]["stats"][0] > 1e-9
    assert any(not torch.equal(a, b) for a, b in
               zip(params_before, agent.model.parameters(), strict=True))
    loose = _agent(learner, target_kl=10.0)
    assert loose.iteration()["epochs_run"] == 4


def test_anneal_lr_decays_linearly():
    agent = _agent(anneal_lr=True, lr=1e-3, total_timesteps=4 * 128)
    rates = [agent.iteration()["learning_rate"] for _ in range(4)]
    np.testing.assert_allclose(rates, [1e-3, 0.75e-3, 0.5e-3, 0.25e-3], rtol=1e-9)
    assert agent.optimizer.param_groups[0]["lr"] == pytest.approx(0.25e-3)
    flat = _agent(lr=1e-3, total_timesteps=4 * 128)
    assert [flat.iteration()["learning_rate"] for _ in range(2)] == [1e-3, 1e-3]


@pytest.mark.parametrize("learner", LEARNERS)
def test_annealed_lr_is_the_step_size_used(learner):
    """A zero learning rate must leave the weights alone: the learner reads the annealed lr."""
    agent = _agent(learner, anneal_lr=True, total_timesteps=128)
    agent.global_step = 128  # 1 - global_step / total = 0
    before = [p.detach().clone() for p in agent.model.parameters()]
    agent.iteration()
    for a, b in zip(before, agent.model.parameters(), strict=True):
        torch.testing.assert_close(a, b.detach())


# ---------------------------------------------------------------- API, counters, failures
def test_learn_predict_and_counters():
    agent = _agent()
    agent.learn(total_timesteps=256)
    assert agent.update == 2 and agent.global_step == 256
    agent.learn(total_timesteps=128)
    assert agent.update == 3 and agent.global_step == 384
    obs = np.zeros(4, np.float32)
    action = agent.predict(obs, deterministic=True)
    assert np.ndim(action) == 0 and action in (0, 1)
    assert agent.predict(np.zeros((5, 4), np.float32)).shape == (5,)
    logits, _ = agent.model(torch.zeros(1, 4))
    assert action == int(logits.argmax())


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


@pytest.mark.parametrize("learner", LEARNERS)
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
