"""Recurrent policies: pi_old's log-probs are those of collection time, the state is reset at
episode starts and carried across rollouts, minibatches are whole env sequences, a resumed run
is exact, and predict carries the state as Stable-Baselines3's RecurrentPPO does."""

import numpy as np
import pytest
import torch

from ppo.advantages import prepare_batch
from ppo.agent import PPO
from ppo.config import Config
from ppo.recurrent import LSTMState
from ppo.spaces import obs_tensor
from test_resume import _interrupted_copy, _weights


def _config(**overrides) -> Config:
    values = {"env_id": "ppo.wrappers:CartPoleNoVelocity-v1", "policy": "lstm", "num_envs": 4,
              "rollout_steps": 32, "minibatch_size": 64, "epochs": 2, "lstm_hidden_size": 16,
              "hidden_sizes": [16], "tensorboard": False, **overrides}
    return Config(**values)


@pytest.mark.parametrize("shared_trunk", [True, False])
def test_old_logprobs_equal_a_fresh_evaluation_with_the_stored_states(shared_trunk):
    agent = PPO(_config(shared_trunk=shared_trunk), verbose=False)
    agent._start_envs()
    agent.collector.collect(32, 0)  # the second rollout starts from a carried state
    rollout = agent.collector.collect(32, 0)
    seq = rollout.sequences
    assert seq.starts.any() and torch.count_nonzero(seq.initial_state.h) > 0
    with torch.no_grad():
        logp, _, values = agent.model.evaluate_steps(
            obs_tensor(rollout.obs.reshape(128, -1), "cpu"),
            torch.as_tensor(rollout.actions.reshape(128, -1)), None, seq.initial_state,
            seq.starts)
    np.testing.assert_allclose(rollout.logp.reshape(-1), logp.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rollout.values.reshape(-1), values.numpy(), rtol=1e-5, atol=1e-5)
    batch = prepare_batch(rollout, agent.learner.evaluate, agent.learner.values, agent.config)
    np.testing.assert_array_equal(batch.logp_old, rollout.logp.reshape(-1))
    agent.close()


def test_rollout_marks_episode_starts_where_episodes_ended():
    agent = PPO(_config(), verbose=False)
    agent._start_envs()
    first = agent.collector.collect(32, 0)
    second = agent.collector.collect(32, 0)
    assert first.sequences.starts[0].all()  # fresh envs
    np.testing.assert_array_equal(first.sequences.starts[1:], first.episode_end[:-1])
    np.testing.assert_array_equal(second.sequences.starts[0], first.episode_end[-1])
    agent.close()


def test_state_is_reset_at_episode_start():
    agent = PPO(_config(), verbose=False)
    model = agent.model
    obs = torch.randn(6 * 2, 2)
    starts = np.zeros((6, 2), bool)
    starts[3, 0] = True  # env 0 starts a new episode at step 3
    carried = model.initial_state(2)
    carried = LSTMState(torch.randn_like(carried.h), torch.randn_like(carried.c))
    with torch.no_grad():
        whole = model.steps(obs, carried, starts).params.reshape(6, 2, -1)
        fresh = model.steps(obs.reshape(6, 2, -1)[3:, :1].reshape(3, -1),
                            model.initial_state(1), np.zeros((3, 1), bool)).params
    torch.testing.assert_close(whole[3:, 0], fresh)
    assert not torch.allclose(whole[:3, 0], whole[:3, 1])
    agent.close()


def test_minibatches_are_whole_env_sequences():
    agent = PPO(_config(), verbose=False)
    agent._start_envs()
    batch = prepare_batch(agent.collector.collect(32, 0), agent.learner.evaluate,
                          agent.learner.values, agent.config)
    agent.learner.load(batch)
    assert agent.learner.minibatch_units(batch) == (4, 2)  # 4 envs, 2 per minibatch of 64
    mb, (logp, _, _) = agent.learner.minibatch(np.array([3, 1]))
    np.testing.assert_array_equal(mb.numpy().reshape(32, 2) % 4, [[3, 1]] * 32)
    np.testing.assert_allclose(logp.detach().numpy(), batch.logp_old[mb.numpy()], rtol=1e-5,
                               atol=1e-6)
    agent.close()


def test_resumed_lstm_run_ends_with_the_same_weights(tmp_path):
    cfg = _config(total_timesteps=6 * 128, checkpoint_every=2, run_dir=str(tmp_path / "whole"))
    whole = PPO(cfg, verbose=False)
    whole.learn()
    whole.close()
    _interrupted_copy(tmp_path / "whole", tmp_path / "killed", update=2)
    resumed = PPO.resume(tmp_path / "killed", verbose=False)
    assert resumed.update == 2
    resumed.learn()
    resumed.close()
    assert torch.equal(_weights(whole.model), _weights(resumed.model))


def test_predict_returns_the_state_and_resets_it_at_episode_start():
    agent = PPO(_config(), verbose=False)
    obs = np.array([0.01, -0.02], np.float32)
    action, state = agent.predict(obs, deterministic=True)
    assert action in (0, 1)
    assert state[0].shape == state[1].shape == (1, 1, 16)  # (h, c): layers, envs, hidden
    _, carried = agent.predict(obs, state, episode_start=[False], deterministic=True)
    assert not np.array_equal(carried[0], state[0])
    _, restarted = agent.predict(obs, carried, episode_start=[True], deterministic=True)
    np.testing.assert_array_equal(restarted[0], state[0])
    agent.close()


def test_evaluation_carries_the_state():
    from ppo.evaluation import evaluate

    agent = PPO(_config(), verbose=False)
    calls = []
    predict = agent.predict

    def spy(obs, state=None, episode_start=None, **kwargs):
        calls.append((state, episode_start))
        return predict(obs, state, episode_start, **kwargs)

    agent.predict = spy
    evaluate(agent, episodes=1, deterministic=True, seed=0)
    assert calls[0] == (None, [True])
    assert all(state is not None and start == [False] for state, start in calls[1:])
    agent.close()


def test_an_lstm_run_evaluates_from_the_cli(tmp_path):
    from click.testing import CliRunner

    from ppo.cli import main

    run_dir = tmp_path / "run"
    cfg = _config(num_envs=4, rollout_steps=32, minibatch_size=128, total_timesteps=128,
                  run_dir=str(run_dir))
    PPO(cfg, verbose=False).learn().close()
    result = CliRunner().invoke(main, ["eval", str(run_dir), "--episodes", "2"])
    assert result.exit_code == 0, result.output
    assert "return" in result.output
