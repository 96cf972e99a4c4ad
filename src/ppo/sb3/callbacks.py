"""Stable-Baselines3's callback protocol: `init_callback(model)`, `on_training_start(locals,
globals)`, then per rollout `on_rollout_start()`, after every env step `update_locals(locals)`
and `on_step()` (False stops training at once, the rollout in progress untrained), and
`on_rollout_end()`, and finally `on_training_end()`. SB3's own callback classes follow it, and
so do BaseCallback and CallbackList here, for code that should not need SB3 installed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


class Logger:
    """What `self.logger` of a callback offers: `record` values, `dump` them (printed as one
    line when the model is verbose), `name_to_value`."""

    def __init__(self, verbose: int = 0) -> None:
        self.verbose = verbose
        self.name_to_value: dict[str, Any] = {}

    def record(self, key: str, value: Any, exclude: Any = None) -> None:
        self.name_to_value[key] = value

    def record_mean(self, key: str, value: Any, exclude: Any = None) -> None:
        self.name_to_value[key] = value

    def dump(self, step: int = 0) -> None:
        if self.verbose and self.name_to_value:
            shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                             for k, v in self.name_to_value.items())
            print(f"step {step}: {shown}", file=sys.stderr)
        self.name_to_value.clear()


class BaseCallback:
    """SB3's BaseCallback: subclass it and write `_on_step` (and any of `_init_callback`,
    `_on_training_start`, `_on_rollout_start`, `_on_rollout_end`, `_on_training_end`).
    `self.model`, `self.training_env`, `self.logger`, `self.n_calls` (steps seen),
    `self.num_timesteps` (env steps, summed over envs), `self.locals` are set as in SB3."""

    def __init__(self, verbose: int = 0) -> None:
        self.verbose = verbose
        self.n_calls = 0
        self.num_timesteps = 0
        self.locals: dict[str, Any] = {}
        self.globals: dict[str, Any] = {}
        self.parent: BaseCallback | None = None
        self.model: Any = None

    @property
    def training_env(self) -> Any:
        return self.model.get_env()

    @property
    def logger(self) -> Logger:
        return self.model.logger

    def init_callback(self, model: Any) -> None:
        self.model = model
        self._init_callback()

    def on_training_start(self, locals_: dict[str, Any], globals_: dict[str, Any]) -> None:
        self.locals, self.globals = locals_, globals_
        self.num_timesteps = self.model.num_timesteps
        self._on_training_start()

    def on_rollout_start(self) -> None:
        self._on_rollout_start()

    def on_step(self) -> bool:
        self.n_calls += 1
        self.num_timesteps = self.model.num_timesteps
        return self._on_step()

    def update_locals(self, locals_: dict[str, Any]) -> None:
        self.locals.update(locals_)

    def on_rollout_end(self) -> None:
        self._on_rollout_end()

    def on_training_end(self) -> None:
        self._on_training_end()

    def _init_callback(self) -> None:
        pass

    def _on_training_start(self) -> None:
        pass

    def _on_rollout_start(self) -> None:
        pass

    def _on_step(self) -> bool:
        """False stops training."""
        raise NotImplementedError

    def _on_rollout_end(self) -> None:
        pass

    def _on_training_end(self) -> None:
        pass


class CallbackList(BaseCallback):
    """Several callbacks, called in order; training stops if any on_step returns False (all
    of them are still called, as in SB3)."""

    def __init__(self, callbacks: list[Any]) -> None:
        super().__init__()
        self.callbacks = list(callbacks)

    def _init_callback(self) -> None:
        for callback in self.callbacks:
            callback.init_callback(self.model)

    def on_training_start(self, locals_: dict[str, Any], globals_: dict[str, Any]) -> None:
        super().on_training_start(locals_, globals_)
        for callback in self.callbacks:
            callback.on_training_start(locals_, globals_)

    def _on_rollout_start(self) -> None:
        for callback in self.callbacks:
            callback.on_rollout_start()

    def _on_step(self) -> bool:
        return all([callback.on_step() for callback in self.callbacks])

    def update_locals(self, locals_: dict[str, Any]) -> None:
        super().update_locals(locals_)
        for callback in self.callbacks:
            callback.update_locals(locals_)

    def _on_rollout_end(self) -> None:
        for callback in self.callbacks:
            callback.on_rollout_end()

    def _on_training_end(self) -> None:
        for callback in self.callbacks:
            callback.on_training_end()


class ConvertCallback(BaseCallback):
    """A plain function as SB3 takes one: `fn(locals, globals)` after every env step; a
    returned False stops training."""

    def __init__(self, fn: Callable[[dict[str, Any], dict[str, Any]], bool | None]) -> None:
        super().__init__()
        self.fn = fn

    def _on_step(self) -> bool:
        return self.fn(self.locals, self.globals) is not False


def as_callback(callback: Any) -> Any:
    """One callback object for learn()'s argument: None, a callback (ours or SB3's: anything
    with on_step and init_callback), a list of them, or a function."""
    if callback is None:
        return None
    if isinstance(callback, list):
        return CallbackList([as_callback(c) for c in callback])
    if hasattr(callback, "on_step") and hasattr(callback, "init_callback"):
        return callback
    if callable(callback):
        return ConvertCallback(callback)
    raise TypeError(f"callback must be a BaseCallback, a list of them or a function, got "
                    f"{type(callback).__name__}")
