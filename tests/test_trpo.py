"""TRPO: conjugate gradient, the Fisher-vector product against the explicit Hessian of the KL,
a line search that never leaves the trust region, and the agent end to end."""

import csv

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from gymnasium import spaces
from torch.nn.utils import parameters_to_vector

import ppo.learners.trpo
from ppo.advantages import prepare_batch
from ppo.agent import PPO
from ppo.checkpoint import checkpoint_path, latest_checkpoint
from ppo.cli import main
from ppo.config import Config, ConfigError
from ppo.learners.ppo_numpy import NumpyPPO
from ppo.learners.trpo import (
    conjugate_gradient,
    fisher_vector_product,
    frozen,
    line_search,
    mean_kl,
    policy_distribution,
)
from ppo.networks import ActorCritic
from ppo.spaces import ActionSpec

SPACES = {"discrete": spaces.Discrete(3),
          "gaussian": spaces.Box(-1.0, 1.0, (2,), dtype=np.float32),
          "bernoulli": spaces.MultiBinary(2),
          "mixed": spaces.Tuple((spaces.Discrete(3), spaces.Box(-1.0, 1.0, (2,), np.float32)))}


def _trpo(**kw):
    settings = dict(env_id="CartPole-v1", algo="trpo", shared_trunk=False, rollout_steps=128,
                    num_envs=2, minibatch_size=64, epochs=2, tensorboard=False)
    settings.update(kw)
    return Config(**settings)


# ---------------------------------------------------------------- the math
def test_conjugate_gradient_solves_a_random_spd_system():
    rng = np.random.default_rng(0)
    m = rng.normal(size=(12, 12))
    a = m @ m.T + 0.5 * np.eye(12)
    b = rng.normal(size=12)
    a_t = torch.as_tensor(a)
    x = conjugate_gradient(lambda v: a_t @ v, torch.as_tensor(b), iters=50)
    np.testing.assert_allclose(x.numpy(), np.linalg.solve(a, b), rtol=1e-6, atol=1e-8)
    # Few iterations already point the right way: the truncated solve the step uses.
    x10 = conjugate_gradient(lambda v: a_t @ v, torch.as_tensor(b), iters=10).numpy()
    assert x10 @ np.linalg.solve(a, b) > 0


def _tiny(kind):
    """A small actor moved away from its near-uniform init, and a batch of states, in float64."""
    torch.manual_seed(0)
    cfg = Config(hidden_sizes=[5], shared_trunk=False, init_log_std=-0.3)
    model = ActorCritic(3, ActionSpec(SPACES[kind]), cfg).double()
    with torch.no_grad():
        for p in model.actor_parameters():
            p.add_(0.5 * torch.randn_like(p))
    return model, torch.randn(16, 3, dtype=torch.float64)


@pytest.mark.parametrize("kind", SPACES)
def test_fisher_vector_product_matches_the_hessian_of_the_kl(kind):
    model, obs = _tiny(kind)
    params = model.actor_parameters()
    names = {id(p): n for n, p in model.named_parameters()}
    x0 = parameters_to_vector(params).detach()
    old = frozen(policy_distribution(model, obs))

    def kl_at(x):
        chunks = torch.split(x, [p.numel() for p in params])
        tensors = {names[id(p)]: c.view_as(p) for p, c in zip(params, chunks, strict=True)}
        out, _ = torch.func.functional_call(model, tensors, (obs,))
        log_std = None if model.log_std is None else tensors["log_std"]
        return mean_kl(model, old, (out, log_std))

    hessian = torch.autograd.functional.hessian(kl_at, x0)
    assert hessian.abs().max() > 1e-2  # a real curvature, not a vacuous zero
    fvp = fisher_vector_product(mean_kl(model, old, policy_distribution(model, obs)), params,
                                0.1)
    eye = torch.eye(len(x0), dtype=torch.float64)
    fisher = torch.stack([fvp(e) for e in eye], dim=1)
    torch.testing.assert_close(fisher, hessian + 0.1 * eye, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("kind", SPACES)
def test_mean_kl_is_zero_at_pi_old_and_positive_away(kind):
    model, obs = _tiny(kind)
    old = frozen(policy_distribution(model, obs))
    assert mean_kl(model, old, old).item() == pytest.approx(0.0, abs=1e-12)
    with torch.no_grad():
        for p in model.actor_parameters():
            p.add_(0.1 * torch.randn_like(p))
        assert mean_kl(model, old, policy_distribution(model, obs)).item() > 0


def test_line_search_backtracks_into_the_trust_region():
    # Surrogate sum(x), "KL" |x|^2: the full step is 40,000 times over the bound.
    tried = []

    def evaluate(x):
        tried.append((x.sum().item(), (x**2).sum().item()))
        return tried[-1]

    x, fraction = line_search(evaluate, torch.zeros(4), torch.full((4,), 10.0), max_kl=0.01)
    assert fraction == 0.5**8  # the first fraction with 400 * fraction^2 <= 0.01
    assert (x**2).sum().item() <= 0.01 and x.sum().item() > 0
    assert all(kl > 0.01 for _, kl in tried[1:-1])


def test_line_search_gives_up_rather_than_leave_the_region():
    x0 = torch.tensor([1.0, -2.0])
    kl = lambda x: ((x - x0) ** 2).sum().item()  # noqa: E731
    # Too few tries to get inside, a step that lowers the surrogate, a NaN surrogate.
    cases = [(lambda x: (x.sum().item(), kl(x)), torch.full((2,), 10.0), 5),
             (lambda x: (x.sum().item(), kl(x)), torch.full((2,), -0.01), 10),
             (lambda x: (float("nan"), kl(x)), torch.full((2,), 0.01), 10)]
    for evaluate, fullstep, steps in cases:
        x, fraction = line_search(evaluate, x0, fullstep, max_kl=0.01, steps=steps)
        assert fraction == 0.0 and torch.equal(x, x0)


# ---------------------------------------------------------------- the learner
def test_every_accepted_step_is_within_max_kl_even_when_the_full_step_overshoots(monkeypatch):
    """A Fisher product 10^4 times too small makes the full step ~100x too long: the line
    search must still land inside delta."""
    real_fvp, real_search = ppo.learners.trpo.fisher_vector_product, ppo.learners.trpo.line_search
    fractions = []

    def weak_fvp(*args):
        fvp = real_fvp(*args)
        return lambda v: 1e-4 * fvp(v)

    def spy(*args, **kwargs):
        x, fraction = real_search(*args, **kwargs)
        fractions.append(fraction)
        return x, fraction

    monkeypatch.setattr(ppo.learners.trpo, "fisher_vector_product", weak_fvp)
    monkeypatch.setattr(ppo.learners.trpo, "line_search", spy)
    agent = PPO(_trpo(max_kl=0.005), verbose=False)
    for _ in range(3):
        row = agent.iteration()
        assert 0 < row["approx_kl"] <= 0.005
    assert all(0 < f < 1 for f in fractions), fractions


def test_rejected_step_restores_the_actor_and_the_critic_still_learns(monkeypatch):
    # The reversed natural gradient lowers the surrogate at every fraction: no step is taken.
    real_cg = ppo.learners.trpo.conjugate_gradient
    monkeypatch.setattr(ppo.learners.trpo, "conjugate_gradient",
                        lambda *a, **k: -real_cg(*a, **k))
    agent = PPO(_trpo(), verbose=False)
    actor = [p.detach().clone() for p in agent.model.actor_parameters()]
    critic = [p.detach().clone() for p in agent.learner.optimizer.param_groups[0]["params"]]
    row = agent.iteration()
    for before, p in zip(actor, agent.model.actor_parameters(), strict=True):
        assert torch.equal(before, p)
    assert any(not torch.equal(b, p) for b, p in
               zip(critic, agent.learner.optimizer.param_groups[0]["params"], strict=True))
    assert row["approx_kl"] == 0.0 and row["policy_loss"] == pytest.approx(0.0, abs=1e-6)


def test_adam_holds_the_critic_only_and_runs_its_epochs():
    agent = PPO(_trpo(), verbose=False)
    held = {id(p) for p in agent.learner.optimizer.param_groups[0]["params"]}
    assert held.isdisjoint(id(p) for p in agent.model.actor_parameters())
    assert held == {id(p) for p in (*agent.model.critic.parameters(),
                                    *agent.model.value_head.parameters())}
    row = agent.iteration()
    assert row["epochs_run"] == 2
    # 256 samples in minibatches of 64, 2 epochs.
    assert float(agent.learner.optimizer.state_dict()["state"][0]["step"]) == 8


@pytest.mark.parametrize("clip_value", [True, False])
def test_numpy_critic_fit_matches_torch(clip_value):
    """The CPU fast path of the critic's Adam steps against the plain torch formula."""
    fits = []
    for learner in ("numpy", "torch"):
        agent = PPO(_trpo(learner=learner, clip_value=clip_value, value_clip_eps=0.05),
                    verbose=False)
        assert isinstance(agent.learner.critic_fit, NumpyPPO) == (learner == "numpy")
        agent.collector.start(seed=0)
        rollout = agent.collector.collect(agent.config.rollout_steps, 0)
        agent.learner.critic_fit.load(prepare_batch(rollout, agent.learner.evaluate,
                                                    agent.learner.values, agent.config))
        actor = [p.detach().clone() for p in agent.model.actor_parameters()]
        loss, skipped = agent.learner.fit_value(np.random.default_rng(0))
        for before, p in zip(actor, agent.model.actor_parameters(), strict=True):
            assert torch.equal(before, p)  # the critic's fit never moves the actor
        fits.append((loss, skipped, [p.detach().clone() for p in
                                     agent.learner.optimizer.param_groups[0]["params"]]))
    (loss_np, skipped_np, critic_np), (loss_t, skipped_t, critic_t) = fits
    assert skipped_np == skipped_t == 0
    assert loss_np == pytest.approx(loss_t, rel=1e-5)
    for a, b in zip(critic_np, critic_t, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- end to end
def test_trpo_learns_cartpole():
    agent = PPO(_trpo(rollout_steps=512, num_envs=4, epochs=5, lr=1e-3, ent_coef=0.0,
                      total_timesteps=32_768), verbose=False).learn()
    assert agent.collector.episodes.mean_return() > 100  # ~22 at random


def _same_weights(a, b):
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items(),
                                  strict=True):
        assert ka == kb and torch.equal(va, vb), ka


def test_pendulum_run_saves_loads_and_resumes(tmp_path):
    cfg = _trpo(env_id="Pendulum-v1", normalize_obs=True, normalize_reward=True,
                total_timesteps=3 * 256, checkpoint_every=2, run_dir=str(tmp_path / "run"))
    agent = PPO(cfg, verbose=False).learn()
    loaded = PPO.load(tmp_path / "run")
    _same_weights(agent, loaded)
    assert loaded.learner.optimizer.state_dict()["state"].keys() == \
        agent.learner.optimizer.state_dict()["state"].keys()
    assert (loaded.update, loaded.config.algo) == (3, "trpo")
    # Two copies of the checkpoint take the same next update.
    a, b = PPO.load(tmp_path / "run"), PPO.load(tmp_path / "run")
    for x in (a, b):
        x.iteration()
    _same_weights(a, b)
    resumed = PPO.resume(tmp_path / "run", verbose=False, total_timesteps=4 * 256).learn()
    assert resumed.update == 4
    assert latest_checkpoint(tmp_path / "run") == checkpoint_path(tmp_path / "run", 4)


def test_cli_trains_with_algo_trpo_and_logs_the_same_columns(tmp_path):
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(main, [
        "train", "--algo", "trpo", "--no-shared-trunk", "--env", "CartPole-v1",
        "--defaults", "plain", "--rollout-steps", "64", "--minibatch-size", "32",
        "--total-timesteps", "128", "--no-tensorboard", "--quiet", "--run-dir", str(run_dir)])
    assert result.exit_code == 0, result.output
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and float(rows[-1]["approx_kl"]) <= 0.01
    assert 'algo = "trpo"' in (run_dir / "config.toml").read_text()


def test_cli_refuses_trpo_with_a_shared_trunk():
    result = CliRunner().invoke(main, ["train", "--algo", "trpo", "--shared-trunk", "--env",
                                       "CartPole-v1"])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "--no-shared-trunk" in result.stderr


@pytest.mark.parametrize("changes, named", [
    ({"shared_trunk": True}, "separate actor and critic"),
    ({"max_kl": 0.0}, "max_kl"),
    ({"max_kl": -0.01}, "max_kl"),
    ({"cg_iters": 0}, "cg_iters"),
    ({"cg_damping": -0.1}, "cg_damping"),
    ({"line_search_steps": 0}, "line_search_steps"),
    ({"target_kl": 0.02}, "target_kl"),
    ({"old_logprobs_from_current": True}, "old_logprobs_from_current"),
    ({"advantages_per_epoch": True}, "advantages_per_epoch"),
])
def test_bad_trpo_settings_are_named(changes, named):
    with pytest.raises(ConfigError, match=named):
        _trpo(**changes).validate()
