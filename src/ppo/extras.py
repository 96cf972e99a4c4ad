"""Optional features and the pip extra that installs each: training needs none of them, and a
feature whose extra is missing says in one line what to install."""

from __future__ import annotations

import importlib.util

from ppo.config import ConfigError

# Extra -> the modules it installs that the feature imports.
EXTRAS = {
    "video": ("imageio", "imageio_ffmpeg"),
    "atari": ("ale_py", "cv2"),
    "mujoco": ("mujoco",),
    "wandb": ("wandb",),
    "tune": ("optuna",),
}


def installed(extra: str) -> bool:
    return all(importlib.util.find_spec(module) is not None for module in EXTRAS[extra])


def require(extra: str, feature: str) -> None:
    """Raise ConfigError (one line, exit status 2 from the CLI) when `extra` is missing."""
    if not installed(extra):
        raise ConfigError(f'{feature} needs the {extra} extra: pip install -e ".[{extra}]"')
