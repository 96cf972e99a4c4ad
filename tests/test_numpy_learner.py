"""The fast path is the plain formula: same losses, same gradients, same Adam step."""

import copy

import numpy as np
import pytest
import torch
from gymnasium import spaces
from ppo.learner import TorchLearner
from ppo.numpy_learner import NumpyLearner

from ppo.config import Config
from ppo.policy import ActorCritic

SPACES = {
    "discrete": spaces.Discrete(4),
    "box": spaces.Box(-1.0, 1.0, (3,), np.float32),
}


def _batch(space, n=256, obs_dim=8, seed=0):
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, obs_dim)).astype(np.float32)
    if isinstance(space, spaces.Discrete):
        actions = rng.integers(0, space.n, n)
    else:
        actions = rng.normal(size=(n, *space.shape)).astype(np.float32)
    return obs, actions, rng


def _pair(space, shared, cfg, seed=0):
    torch.manual_seed(seed)
    model = ActorCritic(8, space, [64, 64], shared, init_log_std=-0.3)
    twin = copy.deepcopy(model)
    plain = TorchLearner(model, torch.optim.Adam(model.parameters(), lr=cfg.lr, eps=1e-5), cfg)
    fast = NumpyLearner(twin, torch.optim.Adam(twin.parameters(), lr=cfg.lr, eps=1e-5), cfg)
    return plain, fast


def _load(learners, obs, actions, rng, ratio_spread=0.3):
    plain = learners[0]
    logp, values = plain.evaluate(obs, actions)
    n = len(obs)
    # Old log-probs and values away from the current ones, so ratios fall on both sides of
    # both hinges and value clipping is active for some samples.
    logp_old = (logp + rng.normal(scale=ratio_spread, size=n)).astype(np.float32)
    old_values = (values + rng.normal(scale=0.3, size=n)).astype(np.float32)
    advantages = rng.normal(size=n).astype(np.float32)
    returns = (values + rng.normal(size=n)).astype(np.float32)
    for learner in learners:
        learner.load_batch(obs, actions, logp_old, old_values)
        learner.set_advantages(advantages, returns)


@pytest.mark.parametrize("space", SPACES.values(), ids=SPACES.keys())
@pytest.mark.parametrize("shared", [False, True], ids=["separate", "shared"])
@pytest.mark.parametrize("norm_adv", ["batch", "minibatch"])
@pytest.mark.parametrize("clip_value", [True, False])
@pytest.mark.parametrize("fresh_old", [False, True], ids=["frozen", "pitfall-fresh"])
def test_same_losses_gradients_and_steps(space, shared, norm_adv, clip_value, fresh_old):
    cfg = Config(norm_adv=norm_adv, clip_value=clip_value, ent_coef=0.05, lr=1e-3,
                 pitfall_fresh_old_logprobs=fresh_old)
    plain, fast = _pair(space, shared, cfg)
    obs, actions, rng = _batch(space)
    _load((plain, fast), obs, actions, rng)
    for step in range(5):
        index = rng.permutation(len(obs))[:64]
        stats_plain = plain.step(index)
        stats_fast = fast.step(index)
        np.testing.assert_allclose(stats_fast, stats_plain, rtol=1e-5, atol=1e-5,
                                   err_msg=f"losses differ at step {step}")
        for (name, p), q in zip(plain.model.named_parameters(), fast.model.parameters(),
                                strict=True):
            np.testing.assert_allclose(q.detach().numpy(), p.detach().numpy(), atol=1e-5,
                                       err_msg=f"{name} differs after step {step}")


@pytest.mark.parametrize("space", SPACES.values(), ids=SPACES.keys())
def test_same_gradient_before_clipping(space):
    """Gradients themselves (no norm clip, one step): compare the torch .grad with ours."""
    cfg = Config(max_grad_norm=0.0, ent_coef=0.02)
    plain, fast = _pair(space, False, cfg)
    obs, actions, rng = _batch(space, n=64)
    _load((plain, fast), obs, actions, rng)
    index = np.arange(64)
    plain.step(index)
    fast.step(index)
    for (name, p), g in zip(plain.model.named_parameters(),
                            _split(fast.grad, fast.model), strict=True):
        np.testing.assert_allclose(g, p.grad.numpy(), atol=1e-5, err_msg=name)


def _split(flat, model):
    out, offset = [], 0
    for p in model.parameters():
        out.append(flat[offset : offset + p.numel()].reshape(p.shape))
        offset += p.numel()
    return out


def test_torch_sees_numpy_updates_and_adam_state():
    cfg = Config()
    _, fast = _pair(SPACES["discrete"], False, cfg)
    obs, actions, rng = _batch(SPACES["discrete"])
    _load((fast,), obs, actions, rng)
    before = [p.detach().clone() for p in fast.model.parameters()]
    fast.step(np.arange(64))
    after = list(fast.model.parameters())
    assert all(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
    state = fast.optimizer.state_dict()["state"]
    assert float(state[0]["step"]) == 1.0
    assert torch.count_nonzero(state[0]["exp_avg"]) > 0


def test_kl_limit_skips_the_step():
    cfg = Config()
    _, fast = _pair(SPACES["discrete"], False, cfg)
    obs, actions, rng = _batch(SPACES["discrete"])
    _load((fast,), obs, actions, rng, ratio_spread=1.0)
    before = fast.theta.copy()
    stats = fast.step(np.arange(64), kl_limit=1e-6)
    assert stats[0] > 1e-6
    np.testing.assert_array_equal(fast.theta, before)


@pytest.mark.slow
def test_same_learning_in_distribution_on_cartpole():
    """Float rounding makes single runs diverge; over seeds both paths must learn alike."""
    from ppo.agent import PPO
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
