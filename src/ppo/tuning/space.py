"""The search space of `ppo tune`: which settings a trial samples, and from what.

A TOML file with one table per setting (a Config field), each either

    [lr]                        [rollout_steps]
    low = 1e-5                  choices = [32, 64, 128]
    high = 2e-3
    log = true

`low`/`high` is a uniform range (log-uniform with `log = true`), of integers when both bounds
are integers; `choices` is a list of values (lists too, e.g. hidden sizes). Settings that
define the measurement or the run itself (the env, the seed, the budget, evaluation, where
files go) are not tunable.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ppo.config import Config, ConfigError, from_dict, load_toml

if TYPE_CHECKING:
    import optuna

# The sections of `ppo train --help` whose settings shape learning; num_envs too.
TUNABLE_GROUPS = ("PPO", "Network", "Normalization", "TRPO")
FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def tunable(name: str) -> bool:
    return name == "num_envs" or (name in FIELDS and FIELDS[name].metadata["group"]
                                  in TUNABLE_GROUPS)


def default_path() -> Path:
    return Path(str(resources.files("ppo.tuning").joinpath("space.toml")))


@dataclass(frozen=True)
class Dimension:
    """One setting's range (`low`, `high`, `log`) or its `choices`."""

    name: str
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False

    def values(self) -> list[Any]:
        """The values to check a file's entry with: every choice, or both ends of a range."""
        return list(self.choices) if self.choices is not None else [self.low, self.high]

    def sample(self, trial: optuna.Trial) -> Any:
        if self.choices is not None:
            # Optuna stores categorical values as plain scalars: lists go by their label.
            labels = {_label(c): c for c in self.choices}
            return labels[trial.suggest_categorical(self.name, list(labels))]
        if isinstance(self.low, int) and isinstance(self.high, int):
            return trial.suggest_int(self.name, self.low, self.high, log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)


def _label(value: Any) -> Any:
    """A choice as Optuna stores it: scalars as they are, lists as "64,64"."""
    return ",".join(map(str, value)) if isinstance(value, list) else value


def fit(values: dict[str, Any]) -> dict[str, Any]:
    """A trial's settings made to fit together: a minibatch never exceeds the rollout (the
    same rule `ppo train` applies to settings the user did not ask for)."""
    batch = (values.get("rollout_steps", Config.rollout_steps)
             * values.get("num_envs", Config.num_envs))
    if values.get("minibatch_size", Config.minibatch_size) > batch:
        values = {**values, "minibatch_size": batch}
    return values


def _dimension(name: str, entry: Any, where: str) -> Dimension:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: {name} must be a table with choices, or low and high")
    keys = set(entry)
    if keys == {"choices"}:
        choices = entry["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: {name} has no choices (an empty range)")
        if len({repr(_label(c)) for c in choices}) != len(choices):
            raise ConfigError(f"{where}: {name} lists a choice twice")
        return Dimension(name, choices=tuple(choices))
    if keys in ({"low", "high"}, {"low", "high", "log"}):
        low, high, log = entry["low"], entry["high"], entry.get("log", False)
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high))
        if not numbers or not isinstance(log, bool):
            raise ConfigError(f"{where}: {name} needs numbers low and high (and log true or "
                              "false)")
        if not low < high:
            raise ConfigError(f"{where}: {name} has an empty range: low {low} must be below "
                              f"high {high}")
        if log and low <= 0:
            raise ConfigError(f"{where}: {name} is log-uniform and needs low > 0, got {low}")
        return Dimension(name, low=low, high=high, log=log)
    raise ConfigError(f"{where}: {name} takes either choices, or low and high (and log); "
                      f"got {', '.join(sorted(keys)) or 'nothing'}")


@dataclass(frozen=True)
class SearchSpace:
    dimensions: tuple[Dimension, ...]
    source: str

    @classmethod
    def load(cls, path: Path | None, base: dict[str, Any]) -> SearchSpace:
        """Read and check a search-space file (default: the shipped one) against the base
        settings trials start from: each value must give valid settings with them."""
        path = default_path() if path is None else Path(path)
        data = load_toml(path)
        if not data:
            raise ConfigError(f"search space {path} names no setting")
        dims = []
        for name, entry in data.items():
            if name not in FIELDS:
                raise ConfigError(f"search space {path}: unknown setting {name!r}")
            if not tunable(name):
                raise ConfigError(f"search space {path}: {name} defines the run or its "
                                  "measurement and is not tuned")
            dim = _dimension(name, entry, f"search space {path}")
            for value in dim.values():
                try:
                    from_dict(fit({**base, name: value}))
                except ConfigError as e:
                    raise ConfigError(f"search space {path}: {name} = {value!r}: {e}") from None
            dims.append(dim)
        return cls(tuple(dims), str(path))

    def to_dict(self) -> dict[str, Any]:
        """The space as its TOML file would say it."""
        return {d.name: ({"choices": list(d.choices)} if d.choices is not None else
                         {"low": d.low, "high": d.high, "log": d.log}) for d in self.dimensions}

    def sample(self, trial: optuna.Trial) -> dict[str, Any]:
        return {d.name: d.sample(trial) for d in self.dimensions}
