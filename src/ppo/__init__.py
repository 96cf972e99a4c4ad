"""PPO-Clip on PyTorch and Gymnasium."""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

from ppo.config import Config

if TYPE_CHECKING:
    from ppo.trainer import PPO

__all__ = ["PPO", "Config"]


def __getattr__(name: str) -> Any:
    """`ppo.PPO` on first use: importing torch costs ~2 s, which `ppo --help` and
    `from ppo import Config` should not pay."""
    if name == "PPO":
        module = "ppo.agent" if importlib.util.find_spec("ppo.agent") else "ppo.trainer"
        value = importlib.import_module(module).PPO
        globals()["PPO"] = value
        return value
    raise AttributeError(f"module 'ppo' has no attribute {name!r}")
