"""Image observations: the CNN learns a small image task, images are stored as uint8 from the
env to the learner, dict observations mix images and vectors, and bad combinations are one
line with exit status 2."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ppo.advantages import prepare_batch
from ppo.agent import PPO
from ppo.cli import main
from ppo.config import Config
from ppo.encoders import NatureCNN
from ppo.spaces import VECTOR, ObsEncoder, image_shape


def _config(**overrides) -> Config:
    values = {"env_id": "helpers_envs:ImageSideEnv", "num_envs": 2, "rollout_steps": 32,
              "minibatch_size": 32, "epochs": 2, "hidden_sizes": [], "tensorboard": False,
              **overrides}
    return Config(**values)


@pytest.mark.parametrize("shape, expected", [
    ((84, 84, 3), (3, 84, 84, True, True)),
    ((4, 84, 84), (4, 84, 84, False, True)),
    ((96, 64), (1, 96, 64, False, False)),
])
def test_channels_first_or_last_are_detected(shape, expected):
    found = image_shape(shape)
    assert (found.channels, found.height, found.width, found.channels_last,
            found.has_channels) == expected


@pytest.mark.parametrize("first, other, to_other", [
    ((3, 40, 40), (40, 40, 3), lambda x: x.transpose(1, 2, 0)),
    ((1, 40, 40), (40, 40), lambda x: x[0]),
])
def test_the_cnn_sees_the_same_image_in_every_layout(first, other, to_other):
    image = np.random.default_rng(0).integers(0, 256, first, np.uint8)
    cnn, same = NatureCNN(first), NatureCNN(other)
    same.load_state_dict(cnn.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(same(torch.as_tensor(to_other(image)[None])),
                                   cnn(torch.as_tensor(image[None])))


def test_pixels_are_scaled_once_inside_the_network():
    cnn = NatureCNN((1, 40, 40))
    image = torch.full((1, 1, 40, 40), 255, dtype=torch.uint8)
    with torch.no_grad():
        scaled = cnn.net(torch.ones(1, 1, 40, 40).contiguous(memory_format=torch.channels_last))
        torch.testing.assert_close(cnn(image), scaled)


def test_images_are_stored_as_uint8_from_env_to_learner():
    agent = PPO(_config(), verbose=False)
    agent._start_envs()
    rollout = agent.collector.collect(32, 0)
    assert rollout.obs.dtype == np.uint8 and rollout.obs.shape == (32, 2, 40, 40, 1)
    assert rollout.obs.nbytes == 32 * 2 * 40 * 40  # a byte a pixel: 4x less than float32
    assert rollout.last_obs.dtype == np.uint8
    batch = prepare_batch(rollout, agent.learner.evaluate, agent.learner.values, agent.config)
    assert batch.obs.dtype == np.uint8
    agent.learner.load(batch)
    assert agent.learner.obs.dtype == torch.uint8
    agent.close()


def test_recorded_old_logprobs_and_values_equal_a_fresh_evaluation():
    agent = PPO(_config(), verbose=False)
    agent._start_envs()
    rollout = agent.collector.collect(32, 0)
    assert rollout.logp is not None and rollout.values is not None
    obs = rollout.obs.reshape(64, 40, 40, 1)
    logp, values = agent.learner.evaluate(obs, rollout.actions.reshape(64, -1))
    np.testing.assert_allclose(rollout.logp.reshape(-1), logp, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rollout.values.reshape(-1), values, rtol=1e-5, atol=1e-6)
    agent.close()


def test_dict_observations_mix_images_and_normalized_vectors():
    agent = PPO(_config(env_kwargs={"shape": [2, 40, 40], "extra": True}, normalize_obs=True),
                verbose=False)
    agent._start_envs()
    rollout = agent.collector.collect(16, 0)
    assert set(rollout.obs) == {VECTOR, "pixels"}
    assert rollout.obs["pixels"].dtype == np.uint8
    assert rollout.obs["pixels"].shape == (16, 2, 2, 40, 40)
    assert rollout.obs[VECTOR].dtype == np.float32 and rollout.obs[VECTOR].shape == (16, 2, 3)
    assert len(agent.obs_normalizer.stats.mean) == 3  # the vector part alone
    action, state = agent.predict(agent._make_env().reset(seed=0)[0])
    assert action in (0, 1) and state is None
    agent.close()


def test_pure_image_observations_have_nothing_to_normalize():
    agent = PPO(_config(normalize_obs=True), verbose=False)
    assert agent.obs_normalizer is None
    agent.close()


@pytest.mark.slow
def test_cnn_learns_a_small_image_task():
    cfg = _config(num_envs=4, rollout_steps=64, minibatch_size=64, epochs=4, lr=5e-4,
                  total_timesteps=4096, seed=1)
    agent = PPO(cfg, verbose=False)
    agent.learn()
    # 8 steps an episode: random play earns 4, the optimum 8.
    assert agent.collector.episodes.mean_return() > 7.0
    agent.close()


def test_small_mixed_grids_stay_vectors():
    encoder = ObsEncoder(gym.spaces.Box(0, 255, (7, 7, 3), np.uint8))
    assert not encoder.images and encoder.width == 147


@pytest.mark.parametrize("args, message", [
    (["--env", "helpers_envs:ImageSideEnv", "--env-kwargs", "shape=[32, 32, 1]"],
     "too small for the Nature CNN"),
    (["--env", "CartPole-v1", "--policy", "cnn"], "--policy cnn needs image observations"),
    (["--env", "helpers_envs:ImageSideEnv", "--policy", "mlp"], "is an image"),
    (["--env", "CartPole-v1", "--policy", "lstm", "--algo", "trpo"],
     "policy lstm trains with algo ppo only"),
    (["--env", "CartPole-v1", "--policy", "lstm", "--rollout-steps", "64", "--num-envs", "4",
      "--minibatch-size", "100"], "multiple of rollout_steps"),
])
def test_bad_combinations_are_one_line(tmp_path, args, message):
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", *args, "--run-dir", str(run_dir),
                                       "--total-timesteps", "64", "--defaults", "plain"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]
    assert not run_dir.exists()
