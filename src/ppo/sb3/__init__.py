"""Stable-Baselines3's PPO interface on ppo's engine, for code written for SB3: change

    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy

to `from ppo.sb3 import PPO, make_vec_env, evaluate_policy` and the rest runs as before:
`PPO("MlpPolicy", env, learning_rate=..., n_steps=..., ...)`, `learn(total_timesteps,
callback=None, progress_bar=False, reset_num_timesteps=True, tb_log_name="PPO")`,
`predict(obs, state=None, episode_start=None, deterministic=False)`, `save(path)`,
`PPO.load(path, env=None)`, `get_env()`, `set_env(env)`, `policy`, `num_timesteps`.

Every argument means what it means in SB3 2.x: its defaults (separate 64-64 tanh networks,
no value clipping, advantages normalized per minibatch, 2048 steps, minibatches of 64, 10
epochs, lr 3e-4, ...), its learning-rate and clip-range schedules (constant or linear to 0),
its target_kl (stop at 1.5 x target_kl), its callbacks (BaseCallback subclasses, SB3's own
included, called after every env step; False stops at once) and its env kinds (an id, a
gymnasium.Env, a VecEnv: ours or SB3's DummyVecEnv/SubprocVecEnv).

What it refuses, with a ConfigError naming the argument: other schedules; clip_range_vf (SB3
clips the value prediction, ppo clips as OpenAI baselines: the max of clipped and unclipped
errors); SB3's VecNormalize (statistics kept by pickling the wrapper: normalize inside the
agent with ppo.PPO instead); CnnPolicy on other than image observations; custom policy
classes, rollout buffers, optimizers other than Adam; feature extractors on other than 1-D
Box observations; make_vec_env's monitor files; and SB3's .zip files, which hold pickles:
models are saved as safetensors with JSON metadata (`model.save("x")` writes
x.safetensors).
"""

from ppo.sb3.callbacks import BaseCallback, CallbackList
from ppo.sb3.evaluation import evaluate_policy
from ppo.sb3.model import PPO
from ppo.sb3.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, make_vec_env


def set_random_seed(seed: int, using_cuda: bool = False) -> None:
    """Seed Python's, NumPy's and torch's generators (SB3's set_random_seed)."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


__all__ = ["PPO", "BaseCallback", "CallbackList", "DummyVecEnv", "SubprocVecEnv", "VecEnv",
           "evaluate_policy", "make_vec_env", "set_random_seed"]
