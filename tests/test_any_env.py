"""Any env a user brings: composite spaces learned to their known optima, invalid-action
masking, env arguments and wrappers kept through every way back to a run, episode info in the
metrics, the user's own networks, and one-line errors for what cannot be trained."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import helpers_envs as h
from optimal import evaluate_by_episodes
from ppo import PPO, Config
from ppo.advantages import prepare_batch
from ppo.checkpoint import CheckpointError, load_checkpoint
from ppo.cli import main
from ppo.config import load_toml
from ppo.evaluation import evaluate, run_episode
from ppo.learners.ppo_numpy import NumpyPPO
from ppo.learners.ppo_torch import TorchPPO

TESTS = Path(__file__).parent

# A contextual bandit's settings: no discounting, so each step's reward is its advantage.
BANDIT = dict(env_id="bandit", num_envs=4, rollout_steps=64, minibatch_size=64, epochs=10,
              lr=3e-3, anneal_lr=True, ent_coef=0.0, gamma=0.0, gae_lambda=0.0,
              normalize_obs=False, tensorboard=False, threads=1, total_timesteps=8192)


def _greedy_return(agent, env, episodes=200):
    """Mean return of the agent's deterministic actions on `env`."""
    return evaluate_by_episodes(env, lambda obs: agent.predict(obs, deterministic=True)[0],
                                episodes).mean


def _weights(module):
    return torch.cat([p.detach().reshape(-1).clone() for p in module.parameters()])


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _metrics(run_dir):
    with open(Path(run_dir) / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------- composite spaces, learned
@pytest.mark.parametrize("cls", [h.ContextualMultiDiscreteEnv, h.ContextualMultiBinaryEnv,
                                 h.DictObsContextEnv, h.TupleObsContextEnv,
                                 h.TupleActionContextEnv])
def test_composite_spaces_reach_the_known_optimum(cls):
    """MultiDiscrete and MultiBinary actions, Dict (nested, with text) and Tuple observations,
    Tuple actions: 8k steps and the deterministic policy earns the optimum exactly (as it
    did for seeds 0-7 when these settings were chosen)."""
    agent = PPO(Config(**BANDIT), env=cls, verbose=False).learn()
    env = cls()
    assert _greedy_return(agent, env) == env.optimal_return
    assert isinstance(agent.learner, NumpyPPO)  # the fast path takes every one of these spaces


def test_dict_actions_reach_near_the_optimum_and_act_within_their_space():
    """Dict of Discrete, MultiBinary and Box: the Box part's optimum is reached in the limit."""
    env = h.DictActionContextEnv()
    agent = PPO(Config(**BANDIT), env=h.DictActionContextEnv, verbose=False).learn()
    assert _greedy_return(agent, env) >= env.optimal_return - 0.05
    obs, _ = env.reset(seed=0)
    for deterministic in (True, False):
        action, _ = agent.predict(obs, deterministic=deterministic)
        assert env.action_space.contains(action)


def test_text_parts_of_a_dict_observation_are_dropped_with_a_note(capsys):
    PPO(Config(**BANDIT), env=h.DictObsContextEnv, verbose=True).close()
    note = [line for line in capsys.readouterr().err.splitlines() if "mission" in line]
    assert note == ["note: observation parts mission are text and are not shown to the networks"]


# ---------------------------------------------------------------- action masking
def _masked_run(cls, seed, total=8192):
    """Train on `cls(invalid="waste")` (an invalid action costs -1 and the step); returns the
    agent and the share of training steps that were invalid."""
    sent = {"steps": 0, "invalid": 0}

    class Count(gym.Wrapper):
        def step(self, action):
            sent["steps"] += 1
            sent["invalid"] += int(not self.env.unwrapped.valid[int(action)])
            return self.env.step(action)

    cfg = Config(**{**BANDIT, "gamma": 0.99, "gae_lambda": 0.95, "total_timesteps": total,
                    "seed": seed})
    agent = PPO(cfg, env=lambda: Count(cls(invalid="waste")), verbose=False).learn()
    return agent, sent["invalid"] / sent["steps"]


def test_masked_ppo_reaches_the_optimum_where_unmasked_ppo_wastes_most_steps():
    """Each step 2 of 8 actions are valid and the observation does not say which. With the
    mask (either convention) PPO takes the better valid action every time within 8k steps;
    without it three quarters of its steps are invalid and its return stays below zero."""
    for cls in (h.MaskedChoiceEnv, h.InfoMaskedChoiceEnv):
        agent, wasted = _masked_run(cls, seed=0)
        env = cls(invalid="waste")
        assert wasted == 0.0
        assert np.mean([run_episode(agent, env, True, s) for s in range(100)]) == 8.0
    agent, wasted = _masked_run(h._MaskedChoiceTask, seed=0)  # the same task, no mask given
    env = h._MaskedChoiceTask(invalid="waste")
    assert wasted > 0.7
    assert np.mean([run_episode(agent, env, True, s) for s in range(100)]) < 0.0


@pytest.mark.parametrize("cls", ["MaskedChoiceEnv", "InfoMaskedChoiceEnv",
                                 "MaskedMultiChoiceEnv"])
@pytest.mark.parametrize("vector", ["sync", "async"])
def test_no_invalid_action_is_ever_sent(cls, vector):
    """Through RefuseInvalidActions (which raises on an invalid action): training with
    evaluations during it, then evaluation sampled and deterministic."""
    cfg = Config(env_id=f"helpers_envs:{cls}", wrappers=["helpers_envs:RefuseInvalidActions"],
                 num_envs=2, rollout_steps=64, minibatch_size=64, total_timesteps=512,
                 vector=vector, eval_every=2, eval_episodes=3, eval_deterministic=False,
                 tensorboard=False)
    agent = PPO(cfg, verbose=False)
    try:
        agent.learn()
        assert agent.update == 4
        for deterministic in (False, True):
            returns = evaluate(agent, 20, deterministic, seed=1)
            assert (returns >= 0).all()  # an invalid action would also have cost -1
    finally:
        agent.close()


def test_pi_old_log_probs_are_masked():
    """With 2 of 8 actions valid and a near-uniform new policy, pi_old's log-prob of every
    stored action is log(1/2), where the unmasked policy would say log(1/8)."""
    agent = PPO(Config(**BANDIT), env=h.MaskedChoiceEnv, verbose=False)
    agent.collector.start(seed=0)
    rollout = agent.collector.collect(64, 0)
    batch = prepare_batch(rollout, agent.learner.evaluate, agent.learner.values, agent.config)
    assert batch.masks is not None and (batch.masks.sum(-1) == 2).all()
    np.testing.assert_allclose(batch.logp_old, np.log(1 / 2), atol=0.05)
    unmasked, _ = agent.learner.evaluate(batch.obs, batch.actions)
    np.testing.assert_allclose(unmasked, np.log(1 / 8), atol=0.05)


# ---------------------------------------------------------------- env arguments and wrappers
def test_env_kwargs_and_wrappers_round_trip(tmp_path):
    """From a TOML file (a wrapper with kwargs) and flags (env kwargs as TOML literals), into
    config.toml and the checkpoint, and back through `ppo eval` and PPO.load (ppo's own
    wrappers need no naming; a foreign module's do: tests/test_untrusted_files.py)."""
    wrapper = "ppo.wrappers:ObservationSubset"
    config = tmp_path / "run.toml"
    config.write_text(f'[[wrappers]]\npath = "{wrapper}"\nkwargs = {{indices = [0, 2]}}\n')
    run = tmp_path / "run"
    result = _invoke("train", "--env", "CartPole-v1", "--config", config, "--wrapper", wrapper,
                     "--env-kwargs", "sutton_barto_reward=true", "--defaults", "plain",
                     "--rollout-steps", 64, "--minibatch-size", 32, "--total-timesteps", 128,
                     "--no-tensorboard", "--quiet", "--run-dir", run)
    assert result.exit_code == 0, result.output
    expected = {"env_kwargs": {"sutton_barto_reward": True},
                "wrappers": [{"path": wrapper, "kwargs": {"indices": [0, 2]}}]}
    stored = load_toml(run / "config.toml")
    assert {k: stored[k] for k in expected} == expected
    _, meta = load_checkpoint(sorted((run / "checkpoints").glob("update_*"))[-1])
    assert {k: meta["config"][k] for k in expected} == expected

    # Sutton and Barto's CartPole reward: 0 a step, -1 when the pole falls; an untrained
    # policy's episodes end by falling, so -1.0 says the env argument came back.
    result = _invoke("eval", run, "--episodes", 3, "--wrapper", wrapper)
    assert result.exit_code == 0, result.output
    assert "CartPole-v1: return -1.0 +- 0.0 over 3 episodes" in result.stdout
    unnamed = _invoke("eval", run, "--episodes", 3)
    assert unnamed.exit_code == 0 and "return -1.0 +- 0.0" in unnamed.stdout

    agent = PPO.load(run, wrappers=[wrapper])
    assert agent.config.env_kwargs == expected["env_kwargs"]
    assert agent.config.wrappers == expected["wrappers"]
    assert agent.envs.single_observation_space.shape == (2,)
    assert (evaluate(agent, 3, True, seed=0) == -1.0).all()
    assert PPO.load(run).config.wrappers == expected["wrappers"]


def test_module_registered_env_ids_and_env_kwargs_in_python():
    """Gymnasium's 'module:Env-v0' ids import the module that registers them; env_kwargs go to
    its constructor."""
    agent = PPO(Config(env_id="ppo.wrappers:CartPoleNoVelocity-v1",
                       env_kwargs={"sutton_barto_reward": True}, rollout_steps=32,
                       minibatch_size=32, tensorboard=False), verbose=False)
    agent.learn(128)
    assert agent.envs.single_observation_space.shape == (2,)
    assert agent.collector.episodes.mean_return() == -1.0


# ---------------------------------------------------------------- episode info
@pytest.mark.parametrize("vector", ["sync", "async"])
def test_episode_info_is_averaged_into_the_metrics(tmp_path, vector):
    """SuccessInfoEnv: 3-step episodes, is_success 1 on every other one. After U updates of
    2 envs x 12 steps each env has ended 4U episodes in lockstep; the column is the mean over
    the last 100 episodes (50 per env) of the end-of-episode values, nothing else."""
    cfg = Config(env_id="helpers_envs:SuccessInfoEnv", num_envs=2, rollout_steps=12,
                 minibatch_size=24, total_timesteps=24 * 20, vector=vector, tensorboard=False,
                 run_dir=str(tmp_path / "run"))
    PPO(cfg, verbose=False).learn().close()
    rows = _metrics(tmp_path / "run")
    assert [k for k in rows[0] if k.startswith("info/")] == ["info/is_success"]
    for row in rows:
        ended = 4 * int(row["update"])  # episodes per env so far: numbered 0 .. ended - 1
        window = range(max(0, ended - 50), ended)
        assert float(row["info/is_success"]) == pytest.approx(np.mean([k % 2 for k in window]))


# ---------------------------------------------------------------- networks
def test_relu_and_separate_widths_train_on_the_numpy_fast_path(tmp_path):
    run = tmp_path / "run"
    result = _invoke("train", "--env", "CartPole-v1", "--defaults", "plain", "--activation",
                     "relu", "--no-shared-trunk", "--actor-hidden-sizes", "32",
                     "--critic-hidden-sizes", "16,16", "--rollout-steps", 64,
                     "--minibatch-size", 32, "--total-timesteps", 128, "--no-tensorboard",
                     "--quiet", "--run-dir", run)
    assert result.exit_code == 0, result.output
    agent = PPO.load(run)
    assert isinstance(agent.learner, NumpyPPO)
    model = agent.model
    assert [m.out_features for m in model.actor if isinstance(m, nn.Linear)] == [32]
    assert [m.out_features for m in model.critic if isinstance(m, nn.Linear)] == [16, 16]
    assert all(isinstance(m, nn.ReLU) for m in [*model.actor, *model.critic]
               if not isinstance(m, nn.Linear))
    before = _weights(model)
    agent.learn(128)
    assert not torch.equal(before, _weights(model))


class Features(nn.Module):
    """A user's feature extractor: one ReLU layer of 32."""

    def __init__(self, width):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(width, 32), nn.ReLU())

    def forward(self, x):
        return self.net(x)


class WholeNetwork(nn.Module):
    """A user's whole actor-critic: a shared ReLU layer, logits and a value."""

    def __init__(self, width, spec):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(width, 64), nn.ReLU())
        self.logits = nn.Linear(64, spec.num_params)
        self.value = nn.Linear(64, 1)

    def forward(self, x):
        z = self.body(x)
        return self.logits(z), self.value(z).squeeze(-1)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["features_extractor", "network"])
def test_a_users_torch_module_trains_on_the_torch_learner(tmp_path, kind):
    """No learner asked for: the user's module goes to the torch learner, learns the
    MultiDiscrete task to its optimum, and comes back from a checkpoint given again."""
    module = {"features_extractor": Features, "network": WholeNetwork}[kind]
    agent = PPO(Config(**BANDIT), env=h.ContextualMultiDiscreteEnv, verbose=False,
                **{kind: module})
    assert isinstance(agent.learner, TorchPPO)
    own = agent.model.encoder if kind == "features_extractor" else agent.model.module
    before = _weights(own)
    agent.learn()
    assert not torch.equal(before, _weights(own))
    env = h.ContextualMultiDiscreteEnv()
    assert _greedy_return(agent, env) == env.optimal_return

    path = agent.save(tmp_path / "agent.safetensors")
    loaded = PPO.load(path, env=h.ContextualMultiDiscreteEnv, **{kind: module})
    obs = np.eye(4, dtype=np.float32)
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0],
                                  agent.predict(obs, deterministic=True)[0])
    with pytest.raises(CheckpointError, match="pass the same one"):
        PPO.load(path, env=h.ContextualMultiDiscreteEnv)


# ---------------------------------------------------------------- bad input
BAD = [
    (["--env", "CartPole-v1", "--wrapper", "no_such_module:Wrapper"],
     ["cannot load wrapper", "no_such_module:Wrapper"]),
    (["--env", "CartPole-v1", "--wrapper", "ppo.wrappers:NoSuchWrapper"],
     ["cannot load wrapper", "NoSuchWrapper"]),
    (["--env", "CartPole-v1", "--env-kwargs", "no_such_argument=1"],
     ["cannot make env 'CartPole-v1'", "no_such_argument"]),
    (["--env", "LunarLander-v3", "--env-kwargs", "gravity=5.0"],
     ["cannot make env 'LunarLander-v3'", "gravity"]),
    (["--env", "CartPole-v1", "--env-kwargs", "continuous"], ["--env-kwargs takes KEY=VALUE"]),
    (["--env", "helpers_envs:TextActionEnv"], ["unsupported action space Text"]),
    (["--env", "CartPole-v1", "--wrapper", "helpers_envs:SequenceObservation"],
     ["unsupported observation space Sequence"]),
    (["--env", "CartPole-v1", "--wrapper", "ppo.wrappers:ObservationSubset"],
     ["wrapper 'ppo.wrappers:ObservationSubset' failed", "indices"]),
]


@pytest.mark.parametrize(("flags", "needles"), BAD, ids=[" ".join(f) for f, _ in BAD])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, monkeypatch, flags, needles):
    monkeypatch.chdir(tmp_path)  # nothing may appear here either (e.g. a default runs/ directory)
    result = _invoke("train", *flags, "--total-timesteps", 64, "--run-dir", tmp_path / "run")
    assert result.exit_code == 2, (result.output, result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert list(tmp_path.iterdir()) == []


def test_bad_input_in_a_real_process(tmp_path):
    proc = subprocess.run(
        [Path(sys.executable).parent / "ppo", "train", "--env", "CartPole-v1", "--wrapper",
         "helpers_envs:SequenceObservation", "--run-dir", str(tmp_path / "run")],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
        env={**os.environ, "PYTHONPATH": str(TESTS)})
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")
    assert list(tmp_path.iterdir()) == []
