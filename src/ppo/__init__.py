"""PPO-Clip on PyTorch and Gymnasium."""

from ppo.config import Config
from ppo.agent import PPO

__all__ = ["PPO", "Config"]
