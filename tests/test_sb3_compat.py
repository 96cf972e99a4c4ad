"""ppo.sb3: the PPO examples of Stable-Baselines3's documentation (the PPO page, the Examples
page, the Callbacks and Custom Policy guides), written from their documented usage with the
import lines changed and short budgets; SB3's argument semantics and defaults; what is
refused; SB3's own VecEnvs and callbacks where SB3 is installed."""

import importlib.util
import math
import warnings
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch as th
from gymnasium import spaces

from helpers_envs import CounterEnv, DictObsEnv, terminating
from ppo.config import ConfigError
from ppo.sb3 import (
    PPO,
    BaseCallback,
    CallbackList,
    DummyVecEnv,
    SubprocVecEnv,
    evaluate_policy,
    make_vec_env,
    set_random_seed,
)
from ppo.sb3.mapping import schedule

has_sb3 = importlib.util.find_spec("stable_baselines3") is not None
needs_sb3 = pytest.mark.skipif(not has_sb3, reason="stable-baselines3 not installed")

# Short budgets: one rollout of 64 steps per env.
SHORT = {"n_steps": 64, "batch_size": 32, "n_epochs": 2}


def _params(module):
    return sum(p.numel() for p in module.parameters())


def _widths(sequential):
    return [m.out_features for m in sequential if isinstance(m, torch.nn.Linear)]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the examples save into the working directory


# ---------------------------------------------------------------- the documentation's examples
def test_ppo_page_example_train_save_load_predict():
    # The PPO page: 4 parallel CartPoles, learn, save, delete, load, run the policy.
    vec_env = make_vec_env("CartPole-v1", n_envs=4)
    model = PPO("MlpPolicy", vec_env, verbose=1, n_steps=64)
    model.learn(total_timesteps=1000)
    model.save("ppo_cartpole")
    del model  # remove to demonstrate saving and loading
    model = PPO.load("ppo_cartpole")
    obs = vec_env.reset()
    for _ in range(20):
        action, _states = model.predict(obs)
        obs, rewards, dones, info = vec_env.step(action)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # made without a render mode, as in SB3
            vec_env.render("human")
    assert action.shape == (4,) and _states is None
    assert obs.shape == (4, 4) and rewards.dtype == np.float32 and len(info) == 4
    assert model.num_timesteps == 1024  # whole rollouts: 4 x 64 steps each, as SB3 counts


def test_ppo_page_note_subproc_vec_env_on_cpu():
    env = make_vec_env("CartPole-v1", n_envs=2, vec_env_cls=SubprocVecEnv)
    model = PPO("MlpPolicy", env, device="cpu", **SHORT)
    model.learn(total_timesteps=100)
    assert model.num_timesteps == 128 and str(model.device) == "cpu"
    env.close()


def _make_env(env_id: str, rank: int, seed: int = 0) -> Callable[[], gym.Env]:
    """The Examples page's helper for multiprocessing (without its human rendering)."""

    def _init() -> gym.Env:
        env = gym.make(env_id)
        env.reset(seed=seed + rank)
        return env

    set_random_seed(seed)
    return _init


def test_multiprocessing_example():
    env_id, num_cpu = "CartPole-v1", 2
    vec_env = SubprocVecEnv([_make_env(env_id, i) for i in range(num_cpu)])
    model = PPO("MlpPolicy", vec_env, verbose=1, **SHORT)
    model.learn(total_timesteps=128)
    obs = vec_env.reset()
    for _ in range(10):
        action, _states = model.predict(obs)
        obs, rewards, dones, info = vec_env.step(action)
    assert obs.shape == (2, 4)
    vec_env.close()


def test_learning_rate_schedule_example():
    def linear_schedule(initial_value: float) -> Callable[[float], float]:
        def func(progress_remaining: float) -> float:
            return progress_remaining * initial_value

        return func

    model = PPO("MlpPolicy", "CartPole-v1", learning_rate=linear_schedule(0.001), verbose=1,
                **SHORT)
    model.learn(total_timesteps=256)
    cfg = model._agent.config
    assert cfg.lr == 0.001 and cfg.anneal_lr
    # SB3 sets the rate after each rollout from the steps done: the last, 256 of 256.
    assert model._agent.learner.lr == pytest.approx(0.0)
    model.learn(total_timesteps=128, reset_num_timesteps=True)
    assert model.num_timesteps == 128
    assert model._agent.learner.lr == pytest.approx(0.0)
    model.learn(total_timesteps=128, reset_num_timesteps=False)
    assert model.num_timesteps == 256  # the schedule ran over 256: 128 more of them


def test_training_saving_loading_and_evaluate_policy():
    # The "Basic Usage" example, with PPO: train, save, load with the env, evaluate, enjoy.
    env = gym.make("CartPole-v1")
    model = PPO("MlpPolicy", env, verbose=1, **SHORT)
    model.learn(total_timesteps=128)
    model.save("ppo_cartpole")
    del model
    model = PPO.load("ppo_cartpole", env=env)
    mean_reward, std_reward = evaluate_policy(model, model.get_env(), n_eval_episodes=10)
    assert mean_reward > 0 and std_reward >= 0
    vec_env = model.get_env()
    obs = vec_env.reset()
    for _ in range(10):
        action, _states = model.predict(obs, deterministic=True)
        obs, rewards, dones, info = vec_env.step(action)
    assert obs.shape == (1, 4)


def test_custom_net_arch_example():
    # The Custom Policy guide: two 32-32 ReLU networks, one for pi, one for vf.
    policy_kwargs = dict(activation_fn=th.nn.ReLU, net_arch=dict(pi=[32, 32], vf=[32, 32]))
    model = PPO("MlpPolicy", "CartPole-v1", policy_kwargs=policy_kwargs, verbose=1, **SHORT)
    model.learn(128)
    model.save("ppo_cartpole")
    del model
    model = PPO.load("ppo_cartpole")
    net = model.policy
    assert _widths(net.actor) == [32, 32] and _widths(net.critic) == [32, 32]
    assert all(isinstance(m, th.nn.ReLU) for m in net.actor if not isinstance(m, th.nn.Linear))
    asymmetric = PPO("MlpPolicy", "CartPole-v1", policy_kwargs={"net_arch": dict(
        pi=[16], vf=[64, 64])}, **SHORT)
    assert _widths(asymmetric.policy.actor) == [16]
    assert _widths(asymmetric.policy.critic) == [64, 64]


class _Counting(BaseCallback):
    """The Callbacks guide's custom callback skeleton, counting what it sees."""

    def __init__(self, stop_at_call: int | None = None, verbose: int = 0):
        super().__init__(verbose)
        self.stop_at_call = stop_at_call
        self.rollouts_started = self.rollouts_ended = 0
        self.started = self.ended = False
        self.seen_infos = 0

    def _on_training_start(self) -> None:
        self.started = True

    def _on_rollout_start(self) -> None:
        self.rollouts_started += 1

    def _on_step(self) -> bool:
        self.seen_infos += len(self.locals["infos"])
        return self.n_calls != self.stop_at_call

    def _on_rollout_end(self) -> None:
        self.rollouts_ended += 1

    def _on_training_end(self) -> None:
        self.ended = True


def test_callbacks_are_called_per_env_step_and_per_rollout():
    model = PPO("MlpPolicy", make_vec_env("CartPole-v1", n_envs=2), **SHORT)
    callback = _Counting()
    model.learn(256, callback=callback)
    assert callback.started and callback.ended
    assert callback.n_calls == 128 and callback.num_timesteps == 256 == model.num_timesteps
    assert callback.rollouts_started == callback.rollouts_ended == 2
    assert callback.seen_infos == 256
    assert callback.training_env is model.get_env() and callback.model is model


def test_a_callback_returning_false_stops_training_at_once():
    model = PPO("MlpPolicy", "CartPole-v1", **SHORT)
    callback = _Counting(stop_at_call=10)
    model.learn(10_000, callback=callback)
    assert callback.n_calls == 10 and model.num_timesteps == 10
    assert model._agent.update == 0  # the rollout in progress is not trained on
    assert callback.ended


def test_a_function_and_a_list_are_callbacks():
    calls = []

    def on_step(locals_, globals_):
        calls.append(locals_["n_steps"])
        return len(calls) < 70

    model = PPO("MlpPolicy", "CartPole-v1", **SHORT)
    both = [_Counting(), CallbackList([_Counting()])]
    model.learn(1000, callback=[on_step, *both])
    assert len(calls) == 70 and model.num_timesteps == 70
    assert both[0].n_calls == both[1].callbacks[0].n_calls == 70


def test_dict_observations_take_multi_input_policy():
    model = PPO("MultiInputPolicy", DictObsEnv(), **SHORT)
    model.learn(64)
    action, _ = model.predict({"x": np.array([1.0], np.float32)})
    assert model.action_space.contains(int(action))
    with pytest.raises(ConfigError, match="MultiInputPolicy"):
        PPO("MlpPolicy", DictObsEnv())


def test_tensorboard_log_directories_are_numbered_per_learn(tmp_path):
    model = PPO("MlpPolicy", "CartPole-v1", tensorboard_log=str(tmp_path / "tb"), **SHORT)
    model.learn(64)
    model.learn(64, reset_num_timesteps=False)
    model.learn(64, tb_log_name="again")
    assert sorted(p.name for p in (tmp_path / "tb").iterdir()) == ["PPO_1", "again_1"]
    run = tmp_path / "tb" / "PPO_1"
    assert any((run / "tensorboard").iterdir()) and (run / "metrics.csv").is_file()


# ---------------------------------------------------------------- SB3's semantics
def test_defaults_are_sb3s():
    cfg = PPO("MlpPolicy", "CartPole-v1", seed=3)._agent.config
    assert (cfg.rollout_steps, cfg.minibatch_size, cfg.epochs) == (2048, 64, 10)
    assert (cfg.lr, cfg.gamma, cfg.gae_lambda, cfg.clip_eps) == (3e-4, 0.99, 0.95, 0.2)
    assert (cfg.ent_coef, cfg.vf_coef, cfg.max_grad_norm) == (0.0, 0.5, 0.5)
    assert not cfg.clip_value and cfg.norm_adv == "minibatch" and cfg.target_kl is None
    assert not cfg.shared_trunk and cfg.hidden_sizes == [64, 64]
    assert cfg.activation == "tanh" and cfg.ortho_init and cfg.init_log_std == 0.0
    assert cfg.adam_eps == 1e-5 and not (cfg.anneal_lr or cfg.anneal_clip)
    assert not (cfg.normalize_obs or cfg.normalize_reward)
    assert cfg.seed == 3 and cfg.num_envs == 1 and cfg.env_id == "CartPole-v1"


def test_arguments_map_onto_the_config():
    model = PPO("MlpPolicy", make_vec_env("Pendulum-v1", n_envs=2), learning_rate=1e-3,
                n_steps=32, batch_size=16, n_epochs=3, gamma=0.9, gae_lambda=0.8,
                clip_range=lambda p: 0.3 * p, normalize_advantage=False, ent_coef=0.01,
                vf_coef=0.7, max_grad_norm=1.5, target_kl=0.02,
                policy_kwargs=dict(net_arch=[8], log_std_init=-1.0, ortho_init=False,
                                   optimizer_kwargs=dict(eps=1e-7)))
    cfg = model._agent.config
    assert (cfg.lr, cfg.rollout_steps, cfg.minibatch_size, cfg.epochs) == (1e-3, 32, 16, 3)
    assert (cfg.gamma, cfg.gae_lambda, cfg.clip_eps, cfg.anneal_clip) == (0.9, 0.8, 0.3, True)
    assert cfg.norm_adv == "off" and (cfg.ent_coef, cfg.vf_coef) == (0.01, 0.7)
    assert cfg.max_grad_norm == 1.5 and cfg.target_kl == pytest.approx(0.03)  # 1.5 x, as SB3
    assert cfg.hidden_sizes == [8] and cfg.init_log_std == -1.0 and not cfg.ortho_init
    assert cfg.adam_eps == 1e-7 and cfg.num_envs == 2
    assert (model.n_steps, model.batch_size, model.n_epochs, model.gamma) == (32, 16, 3, 0.9)
    assert torch.allclose(model.policy.log_std, torch.full((1,), -1.0))


@pytest.mark.parametrize("value, expected", [
    (3e-4, (3e-4, False)),
    (lambda p: 3e-4, (3e-4, False)),
    (lambda p: p * 1e-3, (1e-3, True)),
])
def test_schedules(value, expected):
    assert schedule("learning_rate", value) == expected


@pytest.mark.parametrize("value", [lambda p: 1e-4 + p * 1e-3, lambda p: 1e-3 * p ** 2])
def test_other_schedules_are_refused(value):
    with pytest.raises(ConfigError, match="learning_rate: only constant schedules and linear"):
        PPO("MlpPolicy", "CartPole-v1", learning_rate=value)


def test_predict_single_and_batched_and_deterministic():
    model = PPO("MlpPolicy", "Pendulum-v1", seed=0, **SHORT)
    obs = np.array([1.0, 0.0, 0.5], np.float32)
    one, state = model.predict(obs, deterministic=True)
    batch, _ = model.predict(np.stack([obs, obs]), deterministic=True)
    assert one.shape == (1,) and batch.shape == (2, 1) and state is None
    assert np.allclose(batch[0], one) and np.allclose(model.predict(obs, deterministic=True)[0],
                                                      one)
    assert np.all(np.abs(batch) <= 2.0)  # clipped to the action space, as in SB3


def test_save_load_round_trip_and_continue_training():
    model = PPO("MlpPolicy", "CartPole-v1", seed=1, **SHORT)
    model.learn(128)
    model.save("m")
    obs = np.array([[0.01, 0.2, -0.03, 0.1], [0.0, -0.5, 0.05, 0.3]], np.float32)
    before, _ = model.predict(obs, deterministic=True)
    loaded = PPO.load("m.safetensors", env=make_vec_env("CartPole-v1", n_envs=3))
    after, _ = loaded.predict(obs, deterministic=True)
    assert np.array_equal(before, after) and loaded.num_timesteps == 128
    assert loaded.n_envs == 3 and loaded._agent.config.rollout_steps == 64
    loaded.learn(192, reset_num_timesteps=False)
    assert loaded.num_timesteps == 128 + 192
    changed = PPO.load("m", learning_rate=1e-3, n_epochs=1)
    assert changed._agent.config.lr == 1e-3 and changed._agent.config.epochs == 1


def test_set_env_keeps_the_model_and_checks_the_spaces():
    model = PPO("MlpPolicy", "CartPole-v1", **SHORT)
    other = make_vec_env("CartPole-v1")
    model.set_env(other)
    assert model.get_env() is other
    model.learn(64)
    with pytest.raises(ConfigError, match="spaces differ"):
        model.set_env(gym.make("Acrobot-v1"))
    with pytest.raises(ConfigError, match="trains on 1 envs"):
        model.set_env(make_vec_env("CartPole-v1", n_envs=2))


def test_evaluate_policy_spreads_episodes_evenly_over_the_envs():
    class Fixed:
        def predict(self, obs, state=None, episode_start=None, deterministic=True):
            return np.zeros(len(obs), int), None

    # Env 0's episodes last 2 steps, env 1's 5: each env gives its share of the 5 episodes.
    env = DummyVecEnv([lambda: terminating(2), lambda: terminating(5)])
    returns, lengths = evaluate_policy(Fixed(), env, n_eval_episodes=5,
                                       return_episode_rewards=True)
    assert sorted(returns) == [2.0, 2.0, 5.0, 5.0, 5.0] and sorted(lengths) == [2, 2, 5, 5, 5]
    mean, std = evaluate_policy(Fixed(), env, n_eval_episodes=4)
    assert (mean, std) == (3.5, 1.5)
    with pytest.raises(AssertionError):
        evaluate_policy(Fixed(), env, n_eval_episodes=4, reward_threshold=4.0)
    single, _ = evaluate_policy(Fixed(), terminating(3), n_eval_episodes=2)
    assert single == 3.0


def test_vec_env_follows_sb3s_step_api():
    env = DummyVecEnv([lambda: gym.wrappers.TimeLimit(CounterEnv(), 2), lambda: terminating(3)])
    env.seed(5)
    obs = env.reset()
    assert obs.shape == (2, 1)
    for _ in range(2):
        obs, rewards, dones, infos = env.step(np.zeros(2, int))
    assert dones.tolist() == [True, False]
    assert infos[0]["TimeLimit.truncated"] and infos[0]["terminal_observation"][0] == 2.0
    assert obs[0, 0] == 0.0  # reset on the step the episode ended
    obs, rewards, dones, infos = env.step(np.zeros(2, int))
    assert dones.tolist() == [False, True] and not infos[1]["TimeLimit.truncated"]
    assert env.env_method("reset", indices=0)[0][0][0] == 0.0
    assert env.get_attr("terminate_at") == [None, 3]
    recorded = make_vec_env(terminating, n_envs=1, env_kwargs={"length": 2})
    recorded.reset()
    recorded.step(np.zeros(1, int))
    infos = recorded.step(np.zeros(1, int))[3]
    assert infos[0]["episode"]["r"] == 2.0 and infos[0]["episode"]["l"] == 2


# ---------------------------------------------------------------- refused
@pytest.mark.parametrize("kwargs, needle", [
    ({"clip_range_vf": 0.2}, "clip_range_vf"),
    ({"policy": "CnnPolicy"}, "CnnPolicy"),
    ({"policy": object}, "policy must be one of"),
    ({"rollout_buffer_class": object}, "rollout_buffer_class"),
    ({"stats_window_size": 50}, "stats_window_size"),
    ({"batch_size": 1}, "batch_size must be > 1"),
    ({"policy_kwargs": {"activation_fn": th.nn.ELU}}, "activation_fn"),
    ({"policy_kwargs": {"optimizer_class": th.optim.SGD}}, "optimizer_class"),
    ({"policy_kwargs": {"optimizer_kwargs": {"weight_decay": 0.1}}}, "weight_decay"),
    ({"policy_kwargs": {"share_features_extractor": False}}, "share_features_extractor"),
    ({"policy_kwargs": {"net_arch": [dict(pi=[4])]}}, "net_arch"),
    ({"policy_kwargs": {"no_such": 1}}, "no_such"),
    ({"env": object()}, "env must be"),
])
def test_what_cannot_be_honoured_is_refused_by_name(kwargs, needle):
    args = {"policy": "MlpPolicy", "env": "CartPole-v1", **kwargs}
    with pytest.raises(ConfigError) as info:
        PPO(args.pop("policy"), args.pop("env"), **args)
    assert needle in str(info.value)


def test_zip_paths_and_other_refusals_of_files():
    model = PPO("MlpPolicy", "CartPole-v1", **SHORT)
    with pytest.warns(UserWarning, match="not SB3's .zip: writing m.safetensors"):
        model.save("m.zip")
    with pytest.warns(UserWarning, match="reading m.safetensors"):
        PPO.load("m.zip")
    with pytest.raises(ConfigError, match="not SB3's .zip"):
        PPO.load("other.zip")
    with pytest.raises(ConfigError, match="custom_objects"):
        PPO.load("m", custom_objects={"learning_rate": 0.0})
    with pytest.raises(ConfigError, match="exclude/include"):
        model.save("m", exclude=["env"])
    with pytest.raises(ConfigError, match="monitor_dir"):
        make_vec_env("CartPole-v1", monitor_dir="logs")
    with pytest.raises(ConfigError, match="features_extractor_class"):
        PPO("MultiInputPolicy", DictObsEnv(),
            policy_kwargs={"features_extractor_class": lambda space: torch.nn.Identity()})


# ---------------------------------------------------------------- with SB3 installed
@needs_sb3
def test_sb3s_own_vec_envs_and_callbacks_work(tmp_path):
    from stable_baselines3.common.callbacks import (
        CheckpointCallback,
        EvalCallback,
        StopTrainingOnRewardThreshold,
    )
    from stable_baselines3.common.env_util import make_vec_env as sb3_make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy as sb3_evaluate_policy

    vec_env = sb3_make_vec_env("CartPole-v1", n_envs=2, seed=0)
    model = PPO("MlpPolicy", vec_env, seed=0, **SHORT)
    stop = StopTrainingOnRewardThreshold(reward_threshold=-math.inf)  # stops at once
    evaluation = EvalCallback(gym.make("CartPole-v1"), eval_freq=100, n_eval_episodes=2,
                              best_model_save_path=str(tmp_path / "best"),
                              callback_on_new_best=stop)
    checkpoints = CheckpointCallback(save_freq=50, save_path=str(tmp_path / "ck"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.learn(10_000, callback=[checkpoints, evaluation])
    assert model.num_timesteps == 200  # EvalCallback's 100th call, 2 envs a step
    assert (tmp_path / "best" / "best_model.safetensors").is_file()
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [
        "rl_model_100_steps.safetensors", "rl_model_200_steps.safetensors"]
    ours = evaluate_policy(model, vec_env, n_eval_episodes=4, return_episode_rewards=True)
    theirs = sb3_evaluate_policy(model, vec_env, n_eval_episodes=4, return_episode_rewards=True)
    assert len(ours[0]) == len(theirs[0]) == 4


@needs_sb3
def test_network_and_settings_match_sb3s_ppo():
    from stable_baselines3 import PPO as SB3PPO

    for env_id, kwargs in [("CartPole-v1", {}), ("Pendulum-v1", {"policy_kwargs": dict(
            net_arch=dict(pi=[32], vf=[16, 16]), activation_fn=th.nn.ReLU)}),
            ("Pendulum-v1", {"use_sde": True, "sde_sample_freq": 4,
                             "policy_kwargs": dict(log_std_init=-2.0)})]:
        theirs = SB3PPO("MlpPolicy", env_id, n_steps=64, target_kl=0.01, **kwargs)
        ours = PPO("MlpPolicy", env_id, n_steps=64, target_kl=0.01, **kwargs)
        cfg = ours._agent.config
        assert _params(ours.policy) == _params(theirs.policy)
        assert cfg.rollout_steps == theirs.n_steps and cfg.minibatch_size == theirs.batch_size
        assert cfg.epochs == theirs.n_epochs and cfg.lr == theirs.lr_schedule(1.0)
        assert cfg.clip_eps == theirs.clip_range(1.0) and cfg.ent_coef == theirs.ent_coef
        assert cfg.target_kl == pytest.approx(1.5 * theirs.target_kl)
        assert cfg.adam_eps == theirs.policy.optimizer.defaults["eps"]
        assert cfg.use_sde == theirs.use_sde and cfg.sde_sample_freq == theirs.sde_sample_freq
        if cfg.use_sde:
            assert torch.equal(ours.policy.log_std, theirs.policy.log_std)  # (64, 1) of -2


@needs_sb3
def test_sb3s_feature_extractor_on_flat_observations():
    from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

    class Custom(BaseFeaturesExtractor):
        def __init__(self, observation_space: spaces.Box, features_dim: int = 8):
            super().__init__(observation_space, features_dim)
            self.net = th.nn.Sequential(th.nn.Linear(observation_space.shape[0], features_dim),
                                        th.nn.ReLU())

        def forward(self, observations: th.Tensor) -> th.Tensor:
            return self.net(observations)

    policy_kwargs = dict(features_extractor_class=Custom,
                         features_extractor_kwargs=dict(features_dim=12))
    model = PPO("MlpPolicy", "CartPole-v1", policy_kwargs=policy_kwargs, **SHORT)
    model.learn(64)
    assert isinstance(model.policy.encoder, Custom) and model.policy.actor[0].in_features == 12
    model.save("custom")
    loaded = PPO.load("custom", policy_kwargs=policy_kwargs)
    obs = np.zeros(4, np.float32)
    assert model.predict(obs, deterministic=True)[0] == loaded.predict(obs,
                                                                       deterministic=True)[0]


@needs_sb3
def test_sb3s_vec_normalize_and_zip_files_are_refused(tmp_path):
    from stable_baselines3 import PPO as SB3PPO
    from stable_baselines3.common.vec_env import DummyVecEnv as SB3DummyVecEnv
    from stable_baselines3.common.vec_env import VecNormalize

    env = VecNormalize(SB3DummyVecEnv([lambda: gym.make("Pendulum-v1")]), norm_obs=True)
    with pytest.raises(ConfigError, match="VecNormalize"):
        PPO("MlpPolicy", env)
    SB3PPO("MlpPolicy", "CartPole-v1", n_steps=64).save(tmp_path / "sb3_model")
    with pytest.raises(ConfigError, match="not SB3's .zip"):
        PPO.load(tmp_path / "sb3_model.zip")


@needs_sb3
def test_dict_observations_example_with_an_image_part():
    # The Examples page's SimpleMultiObsEnv: a vector part and an image part (Nature CNN).
    from stable_baselines3.common.envs import SimpleMultiObsEnv

    model = PPO("MultiInputPolicy", SimpleMultiObsEnv(random_start=False), **SHORT)
    model.learn(64)
    obs = model.env.reset()
    assert model.predict(obs, deterministic=True)[0].shape == (1,)
    with pytest.raises(ConfigError, match="CnnPolicy is for image observations"):
        PPO("CnnPolicy", "CartPole-v1")


def test_gsde_as_in_sb3s_pendulum_usage():
    env = make_vec_env("Pendulum-v1", n_envs=1)
    model = PPO("MlpPolicy", env, gamma=0.98, use_sde=True, sde_sample_freq=4,
                learning_rate=1e-3, **SHORT)
    model.learn(total_timesteps=64)
    cfg = model._agent.config
    assert cfg.use_sde and cfg.sde_sample_freq == 4 and cfg.gamma == 0.98
    assert model.policy.log_std.shape == (64, 1)
    action, _ = model.predict(env.reset())
    assert action.shape == (1, 1)
