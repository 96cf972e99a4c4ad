"""Settings that fit the env, and the order in which a run's settings are merged.

`ppo train --env X` starts from the settings shipped for X (settings/<X>.toml, `/` in an id
written as `-`), or, for a task without a file, from the settings for its kind of task
(settings/kinds/: discrete or continuous actions); a preset, a config file and flags
override them, in that order. A preset is a whole recipe: it replaces the env's settings
rather than adding to them. Settings the user did not ask for are made to fit together:
TRPO gets separate networks, and a minibatch never exceeds the rollout.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ppo.config import Config, from_dict, load_toml


@dataclass(frozen=True)
class Resolved:
    """A run's merged settings and one line saying where the base settings came from."""

    values: dict[str, Any]
    source: str


def _file(*parts: str) -> Path:
    return Path(str(resources.files("ppo.settings").joinpath(*parts)))


def task_file(env_id: str) -> Path | None:
    """The settings shipped for a task ('module:' prefixes aside), if any."""
    path = _file(env_id.rpartition(":")[2].replace("/", "-") + ".toml")
    return path if path.is_file() else None


def kind_of(values: dict[str, Any]) -> str:
    """`discrete` or `continuous`, by the action space of the env these settings build."""
    from gymnasium import spaces

    from ppo.envs import make_env

    env = make_env(from_dict({k: values[k] for k in ("env_id", "env_kwargs", "wrappers")
                              if k in values}))
    try:
        actions = env.action_space
    finally:
        env.close()
    leaves = list(actions.spaces.values()) if isinstance(actions, spaces.Dict) else (
        list(actions.spaces) if isinstance(actions, spaces.Tuple) else [actions])
    return "continuous" if any(isinstance(s, spaces.Box) for s in leaves) else "discrete"


DEFAULTS = ("task", "kind", "plain")


def resolve(flags: dict[str, Any], config_file: dict[str, Any] | None = None,
            preset: dict[str, Any] | None = None, defaults: str = "task") -> Resolved:
    """Plain defaults < the env's settings (unless a preset is given) < preset < config
    file < flags. `defaults`: task (the task's own settings, else its kind's), kind (its
    kind's), or plain (Config's)."""
    asked = {**(preset or {}), **(config_file or {}), **flags}
    env_id = asked.get("env_id", Config.env_id)
    base: dict[str, Any] = {}
    if preset is not None:
        source = "settings: the preset's"
    elif defaults == "plain":
        source = "settings: the plain defaults (Config)"
    elif defaults == "task" and (path := task_file(env_id)) is not None:
        base = load_toml(path)
        source = (f"settings: shipped for {env_id} ({path.name}; its header says where they "
                  "come from); --defaults plain for the plain defaults")
    else:
        kind = kind_of({"env_id": env_id, **asked})
        base = load_toml(_file("kinds", f"{kind}.toml"))
        why = "asked for" if defaults == "kind" else f"{env_id} has no file of its own"
        source = (f"settings: for {kind}-action tasks ({why}); --defaults plain for the plain "
                  "defaults")
    values = {**base, **asked}
    if values.get("algo") == "trpo" and "shared_trunk" not in asked:
        values["shared_trunk"] = False  # the natural-gradient step moves the actor alone
    if "minibatch_size" not in asked and "minibatch_size" in values:
        batch = (values.get("rollout_steps", Config.rollout_steps)
                 * values.get("num_envs", Config.num_envs))
        values["minibatch_size"] = min(values["minibatch_size"], batch)
    values["env_id"] = env_id
    return Resolved(values, source)
