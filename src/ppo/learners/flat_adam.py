"""The optimizer state of the NumPy fast path: Adam's moments and step count per parameter,
kept the way torch.optim.Adam keeps them, with its `state_dict` layout, so checkpoints are
the same whichever learner wrote them. The update itself runs on flat vectors in
ppo_numpy.py. Constructing torch's Adam would import torch._dynamo (~1.2 s of start-up)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


class FlatAdam:
    """`param_groups` and `state` as torch.optim.Adam has them; no `step` of its own."""

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float, eps: float,
                 betas: tuple[float, float] = (0.9, 0.999)) -> None:
        self.param_groups = [{"params": list(params), "lr": lr, "betas": betas, "eps": eps,
                              "weight_decay": 0.0, "amsgrad": False, "maximize": False}]
        self.state: dict[torch.nn.Parameter, dict[str, torch.Tensor]] = {}

    def state_dict(self) -> dict[str, Any]:
        params = self.param_groups[0]["params"]
        group = {k: v for k, v in self.param_groups[0].items() if k != "params"}
        return {"state": {i: dict(self.state[p]) for i, p in enumerate(params)
                          if p in self.state},
                "param_groups": [{**group, "params": list(range(len(params)))}]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        params = self.param_groups[0]["params"]
        self.state = {params[i]: {k: torch.as_tensor(v) for k, v in slots.items()}
                      for i, slots in state_dict["state"].items()}
        self.param_groups[0]["lr"] = state_dict["param_groups"][0]["lr"]
