"""PPO-Clip on PyTorch and Gymnasium."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ppo.config import Config

if TYPE_CHECKING:
    from ppo.agent import PPO

__all__ = ["PPO", "Config"]


def __getattr__(name: str) -> Any:
    """`ppo.PPO` on first use: importing torch costs ~1.3 s of CPU, which `ppo --help` and
    `from ppo import Config` should not pay."""
    if name == "PPO":
        value = importlib.import_module("ppo.agent").PPO
        globals()["PPO"] = value
        return value
    raise AttributeError(f"module 'ppo' has no attribute {name!r}")
