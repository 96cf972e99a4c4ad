"""PPO's learners: the NumPy fast path is the torch formula (same losses, gradients and Adam
steps, for every head kind and network), and the step's parts act as they should (advantage
normalization, gradient clipping, entropy bonus, value clipping, the KL stop)."""

import copy
import math

import numpy as np
import pytest
import torch
from gymnasium import spaces

from helpers_spaces import ACTION_SPACES, action_masks, stored_actions
from ppo.advantages import Batch, prepare_batch
from ppo.agent import PPO
from ppo.config import Config
from ppo.learners import make_learner
from ppo.learners.ppo_numpy import NumpyPPO
from ppo.learners.ppo_torch import TorchPPO
from ppo.networks import ActorCritic
from ppo.spaces import ActionSpec

OBS_WIDTH = 8
KINDS = pytest.mark.parametrize("kind", ["torch", "numpy"])


def _model(space, cfg, seed=0):
    torch.manual_seed(seed)
    return ActorCritic(OBS_WIDTH, ActionSpec(space), cfg)


def _pair(space, cfg, seed=0):
    """The torch learner and the NumPy one on two copies of the same network."""
    model = _model(space, cfg, seed)
    twin = copy.deepcopy(model)
    plain = make_learner(cfg.replace(learner="torch"), model, None)
    fast = make_learner(cfg.replace(learner="numpy"), twin, None)
    assert type(plain) is TorchPPO and type(fast) is NumpyPPO
    return plain, fast


def _batch(learner, n=128, seed=0, ratio_spread=0.3, fresh=False, adv_offset=0.0,
           masked=False):
    """A batch for the learner's network. Old log-probs and values away from the current ones
    (ratios on both sides of both hinges, value clipping active for some samples), or, when
    `fresh`, the current ones (every ratio 1); with `masked`, action masks."""
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, OBS_WIDTH)).astype(np.float32)
    spec = learner.model.action_spec
    actions = stored_actions(spec, n, rng)
    masks = action_masks(spec, actions, rng) if masked else None
    logp, values = learner.evaluate(obs, actions, masks)
    advantages = (adv_offset + rng.normal(size=n)).astype(np.float32)
    if fresh:
        return _make_batch(obs, actions, logp, values, advantages, advantages + values, masks)
    logp_old = (logp + rng.normal(scale=ratio_spread, size=n)).astype(np.float32)
    old_values = (values + rng.normal(scale=0.3, size=n)).astype(np.float32)
    returns = (values + rng.normal(size=n)).astype(np.float32)
    return _make_batch(obs, actions, logp_old, old_values, advantages, returns, masks)


def _make_batch(obs, actions, logp_old, values, advantages, returns, masks=None):
    return Batch(obs=obs, actions=actions, masks=masks, logp_old=logp_old, values=values,
                 advantages=advantages, returns=returns, explained_variance=math.nan,
                 gae_inputs=None)


def _flat_grad(learner):
    if isinstance(learner, NumpyPPO):
        return learner.grad.copy()
    return torch.cat([p.grad.reshape(-1) for p in learner.model.parameters()]).numpy()


def _adam_steps(learner):
    return float(learner.optimizer.state_dict()["state"][0]["step"])


def _assert_pinned(plain, fast, batch, steps=4, minibatch=32, what=""):
    """Step both learners on the same minibatches: same statistics, gradients, weights."""
    plain.load(batch)
    fast.load(batch)
    rng = np.random.default_rng(1)
    for step in range(steps):
        index = rng.permutation(len(batch.obs))[:minibatch]
        stats_plain, stats_fast = plain.step(index), fast.step(index)
        np.testing.assert_allclose(stats_fast, stats_plain, rtol=1e-5, atol=1e-6,
                                   err_msg=f"{what}: statistics differ at step {step}")
        grad = _flat_grad(plain)
        np.testing.assert_allclose(_flat_grad(fast), grad, rtol=1e-4,
                                   atol=1e-6 * max(1.0, np.abs(grad).max()),
                                   err_msg=f"{what}: gradients differ at step {step}")
        for (name, p), q in zip(plain.model.named_parameters(), fast.model.parameters(),
                                strict=True):
            np.testing.assert_allclose(q.detach().numpy(), p.detach().numpy(), atol=1e-5,
                                       err_msg=f"{what}: {name} differs after step {step}")
        assert _adam_steps(fast) == _adam_steps(plain) == step + 1


# ---------------------------------------------------------------- NumPy pinned to torch
NETWORKS = {
    "shared-tanh": dict(shared_trunk=True),
    "separate-relu": dict(shared_trunk=False, activation="relu"),
    # Unclipped gradients, so that the comparison sees them raw.
    "separate-widths-noclip": dict(shared_trunk=False, actor_hidden_sizes=[32, 16],
                                   critic_hidden_sizes=[24], max_grad_norm=0.0),
    "heads-only": dict(hidden_sizes=[]),
}


@pytest.mark.parametrize("network", NETWORKS)
@pytest.mark.parametrize("name", ACTION_SPACES)
def test_same_losses_gradients_and_steps(name, network):
    cfg = Config(ent_coef=0.05, lr=1e-3, init_log_std=-0.3, **NETWORKS[network])
    plain, fast = _pair(ACTION_SPACES[name], cfg)
    _assert_pinned(plain, fast, _batch(plain), what=f"{name}, {network}")


@pytest.mark.parametrize("name", ["tuple", "dict"])
@pytest.mark.parametrize("norm_adv", ["batch", "minibatch"])
@pytest.mark.parametrize("clip_value", [True, False])
@pytest.mark.parametrize("old_from_current", [False, True], ids=["frozen", "from-current"])
def test_same_steps_for_every_option(name, norm_adv, clip_value, old_from_current):
    cfg = Config(norm_adv=norm_adv, clip_value=clip_value, ent_coef=0.05, lr=1e-3,
                 old_logprobs_from_current=old_from_current, shared_trunk=False)
    plain, fast = _pair(ACTION_SPACES[name], cfg)
    _assert_pinned(plain, fast, _batch(plain, seed=2), what=name)


@pytest.mark.parametrize("name", ["multidiscrete", "tuple"])
def test_same_steps_with_action_masks(name):
    cfg = Config(ent_coef=0.05, lr=1e-3, shared_trunk=False)
    plain, fast = _pair(ACTION_SPACES[name], cfg)
    batch = _batch(plain, masked=True)
    unmasked_logp, _ = plain.evaluate(batch.obs, batch.actions)
    assert not np.allclose(plain.evaluate(batch.obs, batch.actions, batch.masks)[0],
                           unmasked_logp)  # the masks change the distribution
    _assert_pinned(plain, fast, batch, what=f"{name}, masked")


@pytest.mark.parametrize("clip_value", [True, False])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_same_value_steps(clip_value, activation):
    """The critic-only step (TRPO's critic fit), with Adam holding the critic alone."""
    cfg = Config(shared_trunk=False, clip_value=clip_value, value_clip_eps=0.05,
                 activation=activation, lr=1e-3)
    model = _model(ACTION_SPACES["tuple"], cfg)
    twin = copy.deepcopy(model)
    plain = TorchPPO(model, torch.optim.Adam(model.critic_parameters(), lr=1e-3, eps=1e-5),
                     cfg)
    fast = NumpyPPO(twin, torch.optim.Adam(twin.critic_parameters(), lr=1e-3, eps=1e-5), cfg)
    batch = _batch(plain)
    plain.load(batch)
    fast.load(batch)
    actor = [p.detach().clone() for p in twin.actor_parameters()]
    rng = np.random.default_rng(1)
    for step in range(4):
        index = rng.permutation(128)[:32]
        (loss_plain, applied_plain), (loss_fast, applied_fast) = (
            plain.value_step(index), fast.value_step(index))
        assert applied_plain and applied_fast
        assert loss_fast == pytest.approx(loss_plain, rel=1e-5)
        for p, q in zip(model.parameters(), twin.parameters(), strict=True):
            np.testing.assert_allclose(q.detach().numpy(), p.detach().numpy(), atol=1e-5,
                                       err_msg=f"step {step}")
    for before, p in zip(actor, twin.actor_parameters(), strict=True):
        assert torch.equal(before, p.detach())  # the critic's fit never moves the actor
    assert _adam_steps(plain) == _adam_steps(fast) == 4


def _cartpole_batches(**settings):
    """The same first rollout, prepared once, and two learners on the same initial weights."""
    agents = [PPO(Config(env_id="CartPole-v1", rollout_steps=64, num_envs=2, minibatch_size=32,
                         tensorboard=False, learner=learner, **settings), verbose=False)
              for learner in ("torch", "numpy")]
    agents[0].collector.start(seed=0)
    rollout = agents[0].collector.collect(64, 0)
    batch = prepare_batch(rollout, agents[0].learner.evaluate, agents[0].learner.values,
                          agents[0].config)
    return [agent.learner for agent in agents], batch


def _assert_same_update(plain, fast, batch):
    stats = [learner.update(batch, np.random.default_rng(3)) for learner in (plain, fast)]
    for field in ("approx_kl", "clipfrac", "policy_loss", "value_loss", "entropy"):
        assert getattr(stats[1], field) == pytest.approx(getattr(stats[0], field), rel=1e-4,
                                                         abs=1e-6), field
    assert stats[0].epochs_run == stats[1].epochs_run
    for p, q in zip(plain.model.parameters(), fast.model.parameters(), strict=True):
        np.testing.assert_allclose(q.detach().numpy(), p.detach().numpy(), atol=1e-5)
    assert _adam_steps(plain) == _adam_steps(fast)
    return stats[0]


def test_same_update_with_advantages_per_epoch():
    (plain, fast), batch = _cartpole_batches(advantages_per_epoch=True, epochs=3)
    stats = _assert_same_update(plain, fast, batch)
    assert stats.epochs_run == 3 and _adam_steps(plain) == 3 * 4


def test_same_kl_stop():
    (plain, fast), batch = _cartpole_batches(target_kl=1e-4, lr=1e-2)
    stats = _assert_same_update(plain, fast, batch)
    assert stats.epochs_run == 1  # stopped within the first epoch, on both


# ---------------------------------------------------------------- the step's parts
def _learner(kind, cfg, seed=0):
    model = _model(spaces.Discrete(2), cfg.replace(shared_trunk=False, hidden_sizes=[16, 16]),
                   seed)
    return make_learner(cfg.replace(learner=kind), model, None)


@KINDS
@pytest.mark.parametrize("norm_adv", ["batch", "minibatch", "off"])
def test_minibatch_normalization_mode(kind, norm_adv):
    """At ratio 1 the policy loss is -mean(A_mb): 0 when normalized per minibatch, the raw
    mean otherwise (batch normalization happens before the learner, in prepare_batch)."""
    learner = _learner(kind, Config(norm_adv=norm_adv, ent_coef=0.0))
    batch = _batch(learner, n=64, fresh=True, adv_offset=3.0)
    learner.load(batch)
    index = np.arange(16)
    stats = learner.step(index)
    expected = 0.0 if norm_adv == "minibatch" else -batch.advantages[index].mean()
    assert stats.policy_loss == pytest.approx(expected, abs=1e-5)
    assert stats.approx_kl == pytest.approx(0.0, abs=1e-7)
    assert stats.clipfrac == 0.0


@KINDS
def test_grad_norm_clipping_bounds_the_global_norm(kind):
    def grads(max_grad_norm):
        learner = _learner(kind, Config(max_grad_norm=max_grad_norm))
        learner.load(_batch(learner, n=64, fresh=True, adv_offset=50.0))  # a large gradient
        learner.step(np.arange(64))
        return _flat_grad(learner)

    raw = grads(0.0)  # 0 turns clipping off
    raw_norm = np.linalg.norm(raw)
    assert raw_norm > 1.0
    clipped = grads(0.5)
    assert np.linalg.norm(clipped) == pytest.approx(0.5, rel=1e-4)
    np.testing.assert_allclose(clipped, raw * 0.5 / raw_norm, rtol=1e-3, atol=1e-7)
    # Under the limit nothing changes.
    np.testing.assert_allclose(grads(float(10 * raw_norm)), raw, rtol=1e-6, atol=1e-9)


@KINDS
def test_entropy_bonus_raises_entropy(kind):
    """With zero advantages and the value loss off, the only push is the entropy bonus."""
    learner = _learner(kind, Config(vf_coef=0.0, ent_coef=0.5, lr=1e-2, max_grad_norm=0.0))
    # Start from a peaked policy so there is entropy to gain.
    with torch.no_grad():
        learner.model.policy_head.bias.copy_(torch.tensor([3.0, -3.0]))
    batch = _batch(learner, n=64, fresh=True)
    learner.load(_make_batch(batch.obs, batch.actions, batch.logp_old, batch.values,
                             np.zeros(64, np.float32), batch.values))
    before = learner.step(np.arange(64)).entropy
    for _ in range(20):
        after = learner.step(np.arange(64)).entropy
    assert after > before + 0.05


@KINDS
@pytest.mark.parametrize("clip_value", [True, False])
def test_value_clipping_switch_and_range(kind, clip_value):
    learner = _learner(kind, Config(clip_value=clip_value, value_clip_eps=0.1))
    rng = np.random.default_rng(3)
    fresh = _batch(learner, n=64, fresh=True)
    values = fresh.values
    old_values = (values + rng.normal(scale=0.5, size=64)).astype(np.float32)
    returns = (values + rng.normal(scale=2.0, size=64)).astype(np.float32)
    learner.load(_make_batch(fresh.obs, fresh.actions, fresh.logp_old, old_values,
                             np.zeros(64, np.float32), returns))
    stats = learner.step(np.arange(64))
    unclipped = (values - returns) ** 2
    clipped = (old_values + np.clip(values - old_values, -0.1, 0.1) - returns) ** 2
    expected = np.maximum(unclipped, clipped).mean() if clip_value else unclipped.mean()
    assert stats.value_loss == pytest.approx(expected, rel=1e-5)
    assert np.maximum(unclipped, clipped).mean() > unclipped.mean() * 1.01  # switch matters


@KINDS
@pytest.mark.parametrize("anneal_lr, anneal_clip", [(True, False), (False, True)])
def test_anneal_scales_the_lr_and_the_clip_range(kind, anneal_lr, anneal_clip):
    learner = _learner(kind, Config(lr=1e-3, clip_eps=0.2, anneal_lr=anneal_lr,
                                    anneal_clip=anneal_clip))
    learner.anneal(0.25)
    assert learner.lr == pytest.approx(2.5e-4 if anneal_lr else 1e-3)
    clip = 0.05 if anneal_clip else 0.2
    batch = _batch(learner, n=64)
    learner.load(batch)
    logp, _ = learner.evaluate(batch.obs, batch.actions)
    ratio = np.exp(logp - batch.logp_old)
    stats = learner.step(np.arange(64))
    assert stats.clipfrac == pytest.approx(np.mean(np.abs(ratio - 1) > clip), abs=1e-6)
    assert 0 < stats.clipfrac < 1


@KINDS
def test_kl_limit_skips_the_step(kind):
    learner = _learner(kind, Config(target_kl=1e-6))
    learner.load(_batch(learner, n=64, ratio_spread=1.0))
    before = [p.detach().clone() for p in learner.model.parameters()]
    stats = learner.step(np.arange(64))
    assert stats.approx_kl > 1e-6 and stats.nonfinite == 0
    for a, b in zip(before, learner.model.parameters(), strict=True):
        assert torch.equal(a, b.detach())
    assert learner.optimizer.state_dict()["state"] == {} or _adam_steps(learner) == 0


def test_torch_sees_numpy_updates_and_adam_state():
    """The NumPy learner trains the torch module's own memory, and Adam's state is torch's."""
    learner = _learner("numpy", Config())
    learner.load(_batch(learner, n=64))
    before = [p.detach().clone() for p in learner.model.parameters()]
    learner.step(np.arange(64))
    assert all(not torch.equal(a, b) for a, b in
               zip(learner.model.parameters(), before, strict=True))
    state = learner.optimizer.state_dict()["state"]
    assert _adam_steps(learner) == 1.0
    assert torch.count_nonzero(state[0]["exp_avg"]) > 0


# ---------------------------------------------------------------- learning
@pytest.mark.slow
def test_same_learning_in_distribution_on_cartpole():
    """Float rounding makes single runs diverge; over seeds both paths must learn alike."""
    from ppo.cli import load_preset
    from ppo.config import from_dict

    def steps_to_solve(learner: str, seed: int) -> int:
        cfg = from_dict({**load_preset("cartpole"), "seed": seed, "learner": learner,
                         "tensorboard": False})
        agent = PPO(cfg, verbose=False)
        try:
            while agent.global_step < cfg.total_timesteps:
                if agent.iteration()["episodic_return"] >= 475:
                    return agent.global_step
            return cfg.total_timesteps * 2  # unsolved counts as far off
        finally:
            agent.close()

    fast = [steps_to_solve("numpy", s) for s in range(3)]
    plain = [steps_to_solve("torch", s) for s in range(3)]
    assert max(fast) <= 200_000 and max(plain) <= 200_000, (fast, plain)
    assert 2 / 3 <= np.median(fast) / np.median(plain) <= 3 / 2, (fast, plain)
