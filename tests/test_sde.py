"""gSDE (sde.py): the state-dependent Gaussian against torch.distributions, the NumPy gradients
against autograd, the exploration matrices' schedule, exact resume, and a short learning run."""

import copy
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from gymnasium import spaces

from ppo import PPO, Config, distributions, sde
from ppo.advantages import Batch
from ppo.checkpoint import CheckpointError, checkpoint_path
from ppo.cli import main
from ppo.config import ConfigError
from ppo.learners import make_learner
from ppo.networks import build
from ppo.spaces import ActionSpec

MIXED = spaces.Dict({"a": spaces.Box(-1.0, 1.0, (3,), np.float32), "b": spaces.Discrete(4),
                     "c": spaces.Box(-2.0, 2.0, (2,), np.float32)})


def _sde_case(space, n=128, latent=16, seed=0):
    """Distribution parameters, latent features, a log std matrix and actions, at random."""
    rng = np.random.default_rng(seed)
    spec = ActionSpec(space)
    params = rng.normal(size=(n, spec.num_params)).astype(np.float32)
    z = np.tanh(rng.normal(size=(n, latent))).astype(np.float32)
    log_std = (rng.normal(size=(latent, spec.log_std_size)) * 0.5 - 1.0).astype(np.float32)
    actions = np.empty((n, spec.columns), np.float32)
    for head in spec.heads:
        if head.kind == "gaussian":
            actions[:, head.columns] = rng.normal(size=(n, head.size))
        else:
            actions[:, head.columns] = rng.integers(0, head.size, (n, 1))
    return spec, params, z, log_std, actions


def _std(z, log_std):
    """The action's std given s: sqrt(sum_j z_j^2 sigma_ji^2), with the variance floor."""
    return torch.sqrt(z.pow(2) @ torch.exp(log_std).pow(2) + sde.VARIANCE_FLOOR)


def test_log_prob_and_entropy_are_normal_with_the_state_dependent_std():
    spec, params, z, log_std, actions = _sde_case(spaces.Box(-1.0, 1.0, (3,), np.float32))
    params_t, z_t, log_std_t, actions_t = map(torch.as_tensor, (params, z, log_std, actions))
    normal = torch.distributions.Normal(params_t, _std(z_t, log_std_t))
    expected_logp = normal.log_prob(actions_t).sum(-1)
    expected_entropy = normal.entropy().sum(-1)

    logp, entropy = distributions.log_prob_entropy(spec, params_t, sde.log_std(z_t, log_std_t),
                                                   actions_t)
    torch.testing.assert_close(logp, expected_logp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(entropy, expected_entropy, rtol=1e-5, atol=1e-5)

    dist = distributions.log_prob_entropy_np(spec, params, sde.log_std_np(z, log_std).log_std,
                                             actions)
    np.testing.assert_allclose(dist.logp, expected_logp.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dist.entropy, expected_entropy.numpy(), rtol=1e-5, atol=1e-5)


def test_kl_is_that_of_the_state_dependent_normals():
    spec, params, z, log_std, _ = _sde_case(spaces.Box(-1.0, 1.0, (3,), np.float32))
    params_t, z_t, log_std_t = map(torch.as_tensor, (params, z, log_std))
    new_params, new_log_std = params_t + 0.1, log_std_t - 0.2
    kl = distributions.kl_divergence(spec, (params_t, sde.log_std(z_t, log_std_t)),
                                     (new_params, sde.log_std(z_t, new_log_std)))
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(params_t, _std(z_t, log_std_t)),
        torch.distributions.Normal(new_params, _std(z_t, new_log_std))).sum(-1)
    torch.testing.assert_close(kl, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("space", [spaces.Box(-1.0, 1.0, (3,), np.float32), MIXED],
                         ids=["box", "dict-box-discrete-box"])
def test_numpy_gradients_equal_autograd(space):
    spec, params, z, log_std, actions = _sde_case(space)
    rng = np.random.default_rng(1)
    d_logp = rng.normal(size=len(params)).astype(np.float32)
    d_mean_entropy = 0.37

    params_t = torch.tensor(params, dtype=torch.float64, requires_grad=True)
    log_std_t = torch.tensor(log_std, dtype=torch.float64, requires_grad=True)
    logp, entropy = distributions.log_prob_entropy(
        spec, params_t, sde.log_std(torch.tensor(z, dtype=torch.float64), log_std_t),
        torch.tensor(actions, dtype=torch.float64))
    ((torch.tensor(d_logp, dtype=torch.float64) * logp).sum()
     + d_mean_entropy * entropy.mean()).backward()

    rows = sde.log_std_np(z, log_std)
    dist = distributions.log_prob_entropy_np(spec, params, rows.log_std, actions)
    d_rows = np.empty_like(rows.log_std)
    d_params = distributions.log_prob_entropy_backward_np(spec, dist.cache, d_logp,
                                                          d_mean_entropy, d_rows)
    np.testing.assert_allclose(d_params, params_t.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(sde.log_std_backward_np(rows, d_rows), log_std_t.grad.numpy(),
                               rtol=1e-4, atol=1e-5)


BOX2 = spaces.Box(-2.0, 2.0, (2,), np.float32)


def _model(cfg, space=BOX2, obs_width=5):
    torch.manual_seed(cfg.seed)
    return build(obs_width, ActionSpec(space), cfg)


def test_the_std_gives_the_actor_no_gradient():
    """The latent features are detached from the variance (SB3's default): the entropy, a
    function of the std alone, moves only the log std matrix."""
    cfg = Config(use_sde=True, shared_trunk=False, init_log_std=-0.5)
    model = _model(cfg)
    obs = torch.randn(32, 5)
    _, entropy, _ = model.evaluate(obs, torch.zeros(32, 2))
    entropy.mean().backward()
    assert model.log_std.shape == (64, 2)
    assert model.log_std.grad.abs().sum() > 0
    assert all(p.grad is None or not p.grad.any() for p in model.actor.parameters())


@pytest.mark.parametrize("algo", ["ppo", "trpo"])
def test_numpy_learner_steps_as_the_torch_one(algo):
    cfg = Config(use_sde=True, shared_trunk=False, init_log_std=-0.5, ent_coef=0.01, lr=1e-3,
                 norm_adv="minibatch", clip_value=False, algo=algo)
    model = _model(cfg)
    twin = copy.deepcopy(model)
    fast = make_learner(cfg.replace(learner="numpy"), model, None)
    plain = make_learner(cfg.replace(learner="torch"), twin, None)
    rng = np.random.default_rng(0)
    n = 256
    obs = rng.normal(size=(n, 5)).astype(np.float32)
    actions = rng.normal(size=(n, 2)).astype(np.float32)
    logp, values = plain.evaluate(obs, actions)
    np.testing.assert_allclose(fast.evaluate(obs, actions)[0], logp, rtol=1e-5, atol=1e-5)
    batch = Batch(obs, actions, None,
                  (logp + rng.normal(scale=0.2, size=n)).astype(np.float32), values,
                  rng.normal(size=n).astype(np.float32),
                  (values + rng.normal(size=n)).astype(np.float32), 0.0, None)
    if algo == "trpo":  # the policy step is torch's in both; the critic fit differs
        fast.update(batch, np.random.default_rng(1))
        plain.update(batch, np.random.default_rng(1))
    else:
        fast.load(batch)
        plain.load(batch)
        for _ in range(5):
            index = rng.permutation(n)[:64]
            np.testing.assert_allclose(fast.step(index)[:5], plain.step(index)[:5],
                                       rtol=1e-4, atol=1e-5)
    for (name, p), q in zip(twin.named_parameters(), model.parameters(), strict=True):
        np.testing.assert_allclose(q.detach().numpy(), p.detach().numpy(), atol=1e-5,
                                   err_msg=name)


def _pendulum(**extra):
    values = {"env_id": "Pendulum-v1", "use_sde": True, "num_envs": 3, "rollout_steps": 12,
              "minibatch_size": 12, "epochs": 1, "total_timesteps": 72, "tensorboard": False,
              "shared_trunk": False, **extra}
    return Config(**values)


def _record_exploration(agent):
    """Each collected step's exploration matrices; checks a = mu(s) + z(s)^T E per env."""
    seen = []
    policy = agent.policy
    sample = policy.sample

    def recording(obs, noise, mask=None):
        action = sample(obs, noise, mask)
        latent, params = policy.policy_latent(obs)
        np.testing.assert_allclose(action, params + np.einsum("nl,nla->na", latent,
                                                              policy.exploration),
                                   rtol=1e-5, atol=1e-5)
        seen.append(policy.exploration.copy())
        return action

    policy.sample = recording
    return seen


@pytest.mark.parametrize("freq, learner", [(4, "numpy"), (5, "torch"), (-1, "numpy")])
def test_matrices_hold_between_draws_and_change_on_schedule(freq, learner):
    agent = PPO(_pendulum(sde_sample_freq=freq, learner=learner), verbose=False)
    seen = _record_exploration(agent)
    agent.learn()
    assert len(seen) == 24 and seen[0].shape == (3, 64, 1)
    every = 12 if freq == -1 else freq
    for i in range(1, len(seen)):
        t = i % 12  # the step within its rollout: a rollout starts with new matrices
        if t % every == 0:
            assert (seen[i] != seen[i - 1]).all(), i
        else:
            assert np.array_equal(seen[i], seen[i - 1]), i
    for matrices in seen:  # each env its own
        assert not np.array_equal(matrices[0], matrices[1])
        assert not np.array_equal(matrices[1], matrices[2])


def test_deviations_have_the_state_dependent_variance():
    agent = PPO(_pendulum(init_log_std=-0.7), verbose=False)
    obs = np.random.default_rng(0).normal(size=(1, 3)).astype(np.float32)
    latent, params = agent.policy.policy_latent(obs)
    agent.policy.resample_exploration(np.random.default_rng(1), 20000)
    deviations = sde.noise(np.repeat(latent, 20000, 0), agent.policy.exploration)
    variance = float(((latent**2) @ np.exp(2 * agent.model.log_std.detach().numpy()))[0, 0])
    assert deviations.mean() == pytest.approx(0.0, abs=4 * np.sqrt(variance / 20000))
    assert deviations.var() == pytest.approx(variance, rel=0.05)


def test_deterministic_predict_takes_the_mean_and_sampling_draws_fresh_matrices():
    agent = PPO(_pendulum(), verbose=False)
    obs = np.array([0.3, -0.9, 0.5], np.float32)
    mean = agent.model.policy(torch.as_tensor(obs[None])).detach().numpy()[0]
    action, _ = agent.predict(obs, deterministic=True)
    np.testing.assert_allclose(action, np.clip(mean, -2.0, 2.0), rtol=1e-6)
    first, _ = agent.predict(obs)
    second, _ = agent.predict(obs)
    assert first != second


def _weights(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize("freq, learner", [(4, "numpy"), (5, "torch"), (-1, "numpy")])
def test_resumed_run_ends_with_the_same_weights(tmp_path, freq, learner):
    cfg = _pendulum(sde_sample_freq=freq, learner=learner, num_envs=2, rollout_steps=96,
                    minibatch_size=64, epochs=2, total_timesteps=6 * 192, checkpoint_every=2,
                    normalize_obs=True, run_dir=str(tmp_path / "whole"))
    whole = PPO(cfg, verbose=False).learn()
    killed = tmp_path / "killed"
    (killed / "checkpoints").mkdir(parents=True)
    shutil.copy(tmp_path / "whole" / "config.toml", killed / "config.toml")
    shutil.copy(checkpoint_path(tmp_path / "whole", 2), killed / "checkpoints")
    resumed = PPO.resume(killed, verbose=False)
    assert resumed.update == 2
    resumed.learn()
    assert torch.equal(_weights(whole.model), _weights(resumed.model))


def test_saved_agent_loads_with_its_matrix_of_log_stds(tmp_path):
    agent = PPO(_pendulum(init_log_std=-1.5), verbose=False).learn()
    loaded = PPO.load(agent.save(tmp_path / "agent.safetensors"))
    assert loaded.config.use_sde and loaded.model.log_std.shape == (64, 1)
    assert torch.equal(_weights(loaded.model), _weights(agent.model))
    obs = np.array([0.1, 0.2, 0.3], np.float32)
    assert loaded.predict(obs, deterministic=True)[0] == agent.predict(obs, deterministic=True)[0]
    with pytest.raises(CheckpointError, match="does not fit this network"):
        PPO.load(tmp_path / "agent.safetensors", use_sde=False)


def test_bad_input_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="^use_sde needs continuous actions$"):
        PPO(Config(env_id="CartPole-v1", use_sde=True), verbose=False)
    with pytest.raises(ConfigError, match="sde_sample_freq must be -1"):
        Config(sde_sample_freq=0).validate()
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--env", "CartPole-v1", "--use-sde",
                                       "--run-dir", str(run_dir), "--quiet"])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == ["error: use_sde needs continuous actions"]
    assert not Path(run_dir).exists()


def test_a_user_network_is_refused():
    class Whole(torch.nn.Module):
        def __init__(self, obs_width, spec):
            super().__init__()
            self.linear = torch.nn.Linear(obs_width, spec.num_params + 1)

        def forward(self, obs):
            out = self.linear(obs)
            return out[:, :-1], out[:, -1]

    with pytest.raises(ConfigError, match="use_sde needs the built-in actor network"):
        PPO(_pendulum(), network=Whole, verbose=False)


@pytest.mark.slow
def test_pendulum_learns_with_gsde():
    """The RL Zoo's Pendulum settings (gSDE, noise matrix drawn every 4 steps), cut to 20k
    steps: the deterministic policy swings up, from an untrained -1100 or so."""
    cfg = Config(env_id="Pendulum-v1", use_sde=True, sde_sample_freq=4, num_envs=4,
                 rollout_steps=1024, minibatch_size=64, epochs=10, lr=1e-3, gamma=0.9,
                 gae_lambda=0.95, ent_coef=0.0, clip_value=False, norm_adv="minibatch",
                 shared_trunk=False, total_timesteps=20480, eval_every=5, eval_episodes=5,
                 tensorboard=False)
    rows = []
    PPO(cfg, verbose=False).learn(callback=lambda row, agent: rows.append(row))
    assert rows[-1]["eval_return"] > -500
