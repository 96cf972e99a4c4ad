"""PPO-Clip on PyTorch and Gymnasium."""

from ppo.agent import PPO
from ppo.config import Config

__all__ = ["PPO", "Config"]
