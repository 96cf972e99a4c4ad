"""`ppo.sb3.PPO`: Stable-Baselines3's PPO class (constructor, learn, predict, save, load,
get_env, set_env, policy, num_timesteps, logger) on ppo's engine. See ppo/sb3/__init__.py for
what maps and what is refused.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from ppo.agent import PPO as Agent
from ppo.config import ConfigError, from_dict
from ppo.envs import StopTraining
from ppo.sb3.callbacks import Logger, as_callback
from ppo.sb3.mapping import DEFAULTS, config_values
from ppo.sb3.vec_env import DummyVecEnv, GymnasiumView
from ppo.spaces import is_image

POLICIES = ("MlpPolicy", "MultiInputPolicy", "CnnPolicy")
# SB3's attributes of the same name, read from the engine's config.
CONFIG_ATTRIBUTES = {"n_steps": "rollout_steps", "batch_size": "minibatch_size",
                     "n_epochs": "epochs", "gamma": "gamma", "gae_lambda": "gae_lambda",
                     "ent_coef": "ent_coef", "vf_coef": "vf_coef",
                     "max_grad_norm": "max_grad_norm"}
SUFFIX = ".safetensors"


def _device(device: Any) -> str:
    device = str(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _vec_env(env: Any) -> Any:
    """An SB3-API vec env for what SB3 accepts as env: an id, a gymnasium Env, a VecEnv."""
    if isinstance(env, str):
        from ppo.sb3.vec_env import make_vec_env

        return make_vec_env(env)
    if isinstance(env, gym.Env):
        return DummyVecEnv([lambda: env])
    if type(env).__name__ == "VecNormalize" or _wrapped_by(env, "VecNormalize"):
        raise ConfigError(
            "env: ppo.sb3 does not train on SB3's VecNormalize (its statistics live in the "
            "wrapper and are saved with pickle); train on the env it wraps with "
            "ppo.PPO(Config(normalize_obs=True, normalize_reward=True)), which keeps them in "
            "the agent and its safetensors file")
    if all(hasattr(env, name) for name in ("num_envs", "step_async", "step_wait", "reset")):
        return env
    raise ConfigError(f"env must be an env id, a gymnasium.Env or a VecEnv, got "
                      f"{type(env).__name__}")


def _wrapped_by(venv: Any, name: str) -> bool:
    while venv is not None:
        if type(venv).__name__ == name:
            return True
        venv = getattr(venv, "venv", None)
    return False


def _env_id(venv: Any) -> str:
    """The env id to store with the model, so that PPO.load can rebuild the env."""
    try:
        spec = venv.get_attr("spec", [0])[0]
    except Exception:  # a VecEnv of a library of its own may not answer get_attr
        spec = None
    return spec.id if spec is not None else "unregistered-env"


def _tb_dir(log: Path, name: str, new: bool) -> Path:
    """SB3's run directories: <log>/<name>_<N>, a new N for each learn() that resets the
    step count; ppo writes its TensorBoard events, metrics.csv and checkpoints there."""
    runs = [int(p.name.rpartition("_")[2]) for p in log.glob(f"{name}_*")
            if p.name.rpartition("_")[2].isdigit()]
    last = max(runs, default=0)
    return log / f"{name}_{last + 1 if new or not last else last}"


def _checkpoint_path(path: str | Path, reading: bool) -> Path:
    """Where a model is written or read: SB3 adds .zip to a bare name, ppo.sb3 adds
    .safetensors. SB3's own .zip files hold pickles, which ppo never reads; a .zip path is
    taken to mean the safetensors file beside it (SB3's CheckpointCallback and EvalCallback
    name their files .zip)."""
    path = Path(path)
    if path.suffix == ".zip":
        ours = path.with_suffix(SUFFIX)
        if reading and not ours.exists():
            raise ConfigError(f"{path}: ppo.sb3 reads its own safetensors files, not SB3's "
                              ".zip (which holds pickles)")
        warnings.warn(f"{path}: ppo.sb3 saves safetensors with JSON metadata, not SB3's .zip: "
                      f"{'reading' if reading else 'writing'} {ours.name}", stacklevel=3)
        return ours
    if path.suffix != SUFFIX and not (reading and path.exists()):
        path = path.with_name(path.name + SUFFIX)
    return path


class PPO:
    """Stable-Baselines3's PPO, on ppo's engine: `PPO("MlpPolicy", env, **SB3 arguments)`.

    The arguments mean what they mean in SB3 (stable-baselines3 2.x). Those whose meaning
    ppo cannot reproduce raise ConfigError naming them (see ppo/sb3/__init__.py).
    """

    def __init__(self, policy: str, env: Any, learning_rate: Any = 3e-4, n_steps: int = 2048,
                 batch_size: int = 64, n_epochs: int = 10, gamma: float = 0.99,
                 gae_lambda: float = 0.95, clip_range: Any = 0.2, clip_range_vf: Any = None,
                 normalize_advantage: bool = True, ent_coef: float = 0.0, vf_coef: float = 0.5,
                 max_grad_norm: float = 0.5, use_sde: bool = False, sde_sample_freq: int = -1,
                 rollout_buffer_class: Any = None, rollout_buffer_kwargs: Any = None,
                 target_kl: float | None = None, stats_window_size: int = 100,
                 tensorboard_log: str | None = None, policy_kwargs: dict[str, Any] | None = None,
                 verbose: int = 0, seed: int | None = None, device: Any = "auto",
                 _init_setup_model: bool = True) -> None:
        if policy not in POLICIES:
            raise ConfigError(f"policy must be one of {', '.join(POLICIES)} (ppo builds its "
                              f"own networks; shape them with policy_kwargs), got {policy!r}")
        for name, value, default in (("rollout_buffer_class", rollout_buffer_class, None),
                                     ("rollout_buffer_kwargs", rollout_buffer_kwargs, None),
                                     ("stats_window_size", stats_window_size, 100),
                                     ("_init_setup_model", _init_setup_model, True)):
            if value != default:
                raise ConfigError(f"{name}: only {default} is supported")
        if env is None:
            raise ConfigError("env: ppo.sb3 needs the env at construction")
        args = {k: v for k, v in locals().items() if k in DEFAULTS}
        self.policy_kwargs = dict(policy_kwargs or {})
        self.verbose, self.tensorboard_log = verbose, tensorboard_log
        self.seed = int(np.random.SeedSequence().entropy % 2**31) if seed is None else seed
        self.env = _vec_env(env)
        self._check_policy(policy, self.env.observation_space)
        values = {**config_values(args), "env_id": _env_id(self.env),
                  "num_envs": self.env.num_envs, "seed": self.seed, "device": _device(device),
                  "tensorboard": tensorboard_log is not None}
        self._view = GymnasiumView(self.env)
        self._agent = Agent(from_dict(values), env=self._view, verbose=verbose > 0,
                            features_extractor=self._features_extractor())
        self._setup()

    def _setup(self) -> None:
        self.num_timesteps = 0
        self.logger = Logger(self.verbose)

    @staticmethod
    def _check_policy(policy: str, space: spaces.Space) -> None:
        if policy == "CnnPolicy" and not is_image(space):
            raise ConfigError("policy CnnPolicy is for image observations (a uint8 Box of "
                              "height and width 32 or more); use MlpPolicy")
        if policy == "MlpPolicy" and isinstance(space, spaces.Dict):
            raise ConfigError("policy MlpPolicy: use MultiInputPolicy with Dict observations "
                              "(as SB3 requires)")
        if policy == "MultiInputPolicy" and not isinstance(space, spaces.Dict):
            raise ConfigError("policy MultiInputPolicy is for Dict observations; use MlpPolicy")

    def _features_extractor(self) -> Any:
        """SB3's features_extractor_class(observation_space, **kwargs), on ppo's flat float
        observations: the same input as SB3's only for 1-D Box observations."""
        cls = self.policy_kwargs.get("features_extractor_class")
        if cls is None:
            return None
        space = self.env.observation_space
        if not (isinstance(space, spaces.Box) and len(space.shape) == 1):
            raise ConfigError("policy_kwargs features_extractor_class: ppo feeds extractors "
                              "flat float observations, as SB3 does only for 1-D Box "
                              "observations; this env's are " + str(space))
        kwargs = self.policy_kwargs.get("features_extractor_kwargs") or {}
        return lambda width: cls(space, **kwargs)

    # ------------------------------------------------------------------ SB3's attributes
    @property
    def policy(self) -> torch.nn.Module:
        """The actor-critic network (a torch module: state_dict, parameters, ...)."""
        return self._agent.model

    def __getattr__(self, name: str) -> Any:
        if name in CONFIG_ATTRIBUTES:
            return getattr(self._agent.config, CONFIG_ATTRIBUTES[name])
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def observation_space(self) -> spaces.Space:
        return self._agent.encoder.space

    @property
    def action_space(self) -> spaces.Space:
        return self._agent.action_spec.space

    @property
    def n_envs(self) -> int:
        return self._agent.config.num_envs

    @property
    def device(self) -> torch.device:
        return self._agent.device

    def get_env(self) -> Any:
        return self.env

    def get_vec_normalize_env(self) -> None:
        """None: ppo.sb3 trains on no VecNormalize (SB3's EvalCallback asks)."""
        return None

    def set_env(self, env: Any, force_reset: bool = True) -> None:
        """Train on another env with the same spaces and number of envs; its episodes start
        afresh at the next learn()."""
        venv = _vec_env(env)
        if (venv.observation_space != self.observation_space
                or venv.action_space != self.action_space):
            raise ConfigError("set_env: the env's observation/action spaces differ from the "
                              "model's")
        if venv.num_envs != self.n_envs:
            raise ConfigError(f"set_env: the model trains on {self.n_envs} envs per rollout, "
                              f"this VecEnv has {venv.num_envs}")
        self.env = self._view.venv = venv
        self._agent._envs_ready = False  # the engine resets the envs before collecting

    # ------------------------------------------------------------------ learn
    def learn(self, total_timesteps: int, callback: Any = None, log_interval: int = 1,
              tb_log_name: str = "PPO", reset_num_timesteps: bool = True,
              progress_bar: bool = False) -> PPO:
        """Train for `total_timesteps` env steps (SB3 counts whole rollouts: it stops at the
        first rollout end at or past them). With reset_num_timesteps, the step count and the
        schedules start over and the envs are reset."""
        agent, cfg = self._agent, self._agent.config
        if reset_num_timesteps:
            self.num_timesteps = 0
            agent.global_step = 0
            agent._envs_ready = False
        else:
            total_timesteps += self.num_timesteps
        if self.tensorboard_log is not None:
            agent.run_dir = _tb_dir(Path(self.tensorboard_log), tb_log_name,
                                    new=reset_num_timesteps or agent.run_dir is None)
        callback = as_callback(callback)
        bar = None
        if progress_bar:
            from tqdm import tqdm

            bar = tqdm(total=total_timesteps - self.num_timesteps, unit="step")
        steps_in_rollout = 0

        def on_step(local: dict[str, Any]) -> None:
            nonlocal steps_in_rollout
            if steps_in_rollout == 0 and callback is not None:
                callback.on_rollout_start()
            steps_in_rollout += 1
            self.num_timesteps += self.n_envs
            if bar is not None:
                bar.update(self.n_envs)
            if steps_in_rollout == cfg.rollout_steps:
                steps_in_rollout = 0
                # SB3 sets its schedules after the rollout, from the steps done with it.
                agent.learner.anneal(1.0 - self.num_timesteps / total_timesteps)
            if callback is not None:
                callback.update_locals({**local, "n_steps": steps_in_rollout,
                                        "total_timesteps": total_timesteps})
                if not callback.on_step():
                    raise StopTraining  # at once, as in SB3
                if steps_in_rollout == 0:
                    callback.on_rollout_end()

        if callback is not None:
            callback.init_callback(self)
            callback.on_training_start({"total_timesteps": total_timesteps, "self": self}, {})
        self._view.on_step = on_step
        try:
            # The engine rounds up to whole rollouts, as SB3 does.
            agent.learn(max(0, total_timesteps - agent.global_step))
        except StopTraining:
            pass
        finally:
            self._view.on_step = None
            if bar is not None:
                bar.close()
        if callback is not None:
            callback.on_training_end()
        return self

    # ------------------------------------------------------------------ acting
    def predict(self, observation: Any, state: Any = None, episode_start: Any = None,
                deterministic: bool = False) -> tuple[Any, Any]:
        """The action(s) for one observation or a batch (a VecEnv's), and the recurrent
        state (None: this policy has none)."""
        return self._agent.predict(observation, state, episode_start, deterministic)

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path, exclude: Any = None, include: Any = None) -> None:
        """Write the model as safetensors with JSON metadata (a bare name gets .safetensors,
        as SB3 adds .zip); everything learn() needs to continue is in it."""
        if exclude is not None or include is not None:
            raise ConfigError("save: exclude/include pick attributes to pickle in SB3; ppo "
                              "saves its whole state as tensors and JSON")
        self._agent.save(_checkpoint_path(path, reading=False))

    @classmethod
    def load(cls, path: str | Path, env: Any = None, device: Any = "auto",
             custom_objects: dict[str, Any] | None = None, print_system_info: bool = False,
             force_reset: bool = True, **kwargs: Any) -> PPO:
        """A saved model, on `env` (default: a new env of the id it was trained on). Keyword
        arguments are SB3 PPO arguments to change (e.g. learning_rate); give the same
        policy_kwargs features_extractor_class if the model was trained with one."""
        if custom_objects:
            raise ConfigError("load: custom_objects replace pickled objects in SB3's files; "
                              "ppo's hold none. Pass the arguments to change as keywords")
        path = _checkpoint_path(path, reading=True)
        from ppo.checkpoint import load_checkpoint

        _, meta = load_checkpoint(path)
        stored = meta["config"]
        self = cls.__new__(cls)
        self.policy_kwargs = dict(kwargs.pop("policy_kwargs", None) or {})
        self.verbose = kwargs.pop("verbose", 0)
        self.tensorboard_log = kwargs.pop("tensorboard_log", None)
        self.seed = kwargs.pop("seed", stored["seed"])
        overrides = {"device": _device(device), "seed": self.seed}
        if kwargs:
            changed = {k: kwargs[k] for k in kwargs if k in DEFAULTS}
            if unknown := sorted(set(kwargs) - set(changed)):
                raise ConfigError(f"load: unknown argument(s) {', '.join(unknown)}")
            overrides.update(_changed_values(stored, changed))
        if env is None:
            try:
                from ppo.envs import env_spec

                env_spec(stored["env_id"])
            except ConfigError:
                raise ConfigError(f"load: {path} was trained on an env without a registered "
                                  "id; pass env=") from None
            env = stored["env_id"]
        self.env = _vec_env(env)
        overrides["num_envs"] = self.env.num_envs
        self._view = GymnasiumView(self.env)
        self._agent = Agent.load(path, env=self._view, verbose=self.verbose > 0,
                                 features_extractor=self._features_extractor(), **overrides)
        self._setup()
        self.num_timesteps = self._agent.global_step
        return self

    def __repr__(self) -> str:
        return f"ppo.sb3.PPO({self._agent.config.env_id}, {self.n_envs} envs)"


def _changed_values(stored: dict[str, Any], changed: dict[str, Any]) -> dict[str, Any]:
    """The Config values that SB3 arguments given to load() change."""
    base = {**DEFAULTS, **changed}
    values = config_values(base)
    keys = {"learning_rate": ("lr", "anneal_lr"), "clip_range": ("clip_eps", "anneal_clip"),
            "n_steps": ("rollout_steps",), "batch_size": ("minibatch_size",),
            "n_epochs": ("epochs",), "normalize_advantage": ("norm_adv",),
            "target_kl": ("target_kl",), "gamma": ("gamma",), "gae_lambda": ("gae_lambda",),
            "ent_coef": ("ent_coef",), "vf_coef": ("vf_coef",),
            "max_grad_norm": ("max_grad_norm",), "use_sde": ("use_sde",),
            "sde_sample_freq": ("sde_sample_freq",), "clip_range_vf": ()}
    out = {}
    for arg in changed:
        if arg == "policy_kwargs":
            raise ConfigError("load: the network is the saved one; policy_kwargs may only "
                              "give its features_extractor_class again")
        out.update({k: values[k] for k in keys[arg] if k in values})
    if "target_kl" in changed and changed["target_kl"] is None and stored.get("target_kl"):
        raise ConfigError("load: target_kl=None can't unset the saved model's target_kl")
    return {k: v for k, v in out.items() if v is not None}
