"""What every learner shares: its statistics, the NaN/Inf guard, and its saved state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from ppo.advantages import Batch
from ppo.config import Config


class NonFiniteError(RuntimeError):
    """Too many steps in a row produced NaN/Inf; none of them was applied."""


class StepStats(NamedTuple):
    """One gradient step's diagnostics (a TRPO update counts as one step)."""

    approx_kl: float
    clipfrac: float
    policy_loss: float
    value_loss: float
    entropy: float
    nonfinite: float  # steps skipped because the loss or gradient was not finite


@dataclass(frozen=True)
class UpdateStats:
    """An update's diagnostics: means over its steps, and counts."""

    approx_kl: float
    clipfrac: float
    policy_loss: float
    value_loss: float
    entropy: float
    nonfinite_steps: int
    epochs_run: int

    @classmethod
    def of(cls, steps: list[StepStats], epochs_run: int) -> UpdateStats:
        table = np.array(steps, np.float64)
        means = table.mean(axis=0)
        return cls(*means[:5].tolist(), int(table[:, 5].sum()), epochs_run)


class Learner:
    """update(batch, rng) -> UpdateStats; state()/load_state() for checkpoints."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 cfg: Config) -> None:
        self.model, self.optimizer, self.cfg = model, optimizer, cfg
        self.nonfinite_streak = 0
        self.clip_eps = cfg.clip_eps

    def update(self, batch: Batch, rng: np.random.Generator) -> UpdateStats:
        raise NotImplementedError

    def evaluate(self, obs: np.ndarray, actions: np.ndarray, masks: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        """log pi(a|s) and V(s) under the current weights, for a whole rollout."""
        raise NotImplementedError

    def values(self, obs: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def count_nonfinite(self, skipped: float, what: str = "minibatch steps") -> None:
        self.nonfinite_streak = self.nonfinite_streak + 1 if skipped else 0
        if self.nonfinite_streak >= self.cfg.max_nonfinite_steps:
            raise NonFiniteError(
                f"{self.nonfinite_streak} {what} in a row had a NaN/Inf loss or gradient; "
                "none was applied, the last checkpoint is intact. Lower lr or check the env's "
                "rewards")

    def anneal(self, remaining: float) -> None:
        """Linear schedules: learning rate and clip range (where annealed) scaled by the
        fraction of the run still to go."""
        if self.cfg.anneal_lr:
            for group in self.optimizer.param_groups:
                group["lr"] = self.cfg.lr * remaining
        if self.cfg.anneal_clip:
            self.clip_eps = self.cfg.clip_eps * remaining

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Adam's moments as tensors; learning rate, step count and NaN streak as metadata."""
        tensors = {}
        for index, slots in self.optimizer.state_dict()["state"].items():
            for slot, value in slots.items():
                tensors[f"optim.{index}.{slot}"] = torch.as_tensor(value)
        return tensors, {"lr": self.lr, "nonfinite_streak": self.nonfinite_streak}

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        opt = self.optimizer.state_dict()
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, index, slot = key.split(".")
                opt["state"].setdefault(int(index), {})[slot] = value
        for group in opt["param_groups"]:
            group["lr"] = meta["lr"]
        self.optimizer.load_state_dict(opt)
        self.nonfinite_streak = meta["nonfinite_streak"]
