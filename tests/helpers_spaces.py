"""Action spaces of every head kind and mix, and stored actions for them, shared by the tests of
the distributions, the networks and the learners."""

from __future__ import annotations

import numpy as np
from gymnasium import spaces

from ppo.spaces import ActionSpec

ACTION_SPACES = {
    "discrete": spaces.Discrete(4),
    "box": spaces.Box(-1.0, 1.0, (3,), np.float32),
    "multidiscrete": spaces.MultiDiscrete([3, 2]),
    "multibinary": spaces.MultiBinary(3),
    "tuple": spaces.Tuple((spaces.Discrete(3), spaces.Box(-1.0, 1.0, (2,), np.float32))),
    "dict": spaces.Dict({"buttons": spaces.MultiBinary(2), "move": spaces.Discrete(3)}),
}


def stored_actions(spec: ActionSpec, n: int, rng: np.random.Generator) -> np.ndarray:
    """Actions as a rollout stores them: an index per categorical head, a value per Gaussian
    dimension (often outside an env's bounds), 0 or 1 per Bernoulli dimension."""
    actions = np.empty((n, spec.columns), spec.dtype)
    for head in spec.heads:
        width = head.columns.stop - head.columns.start
        if head.kind == "categorical":
            actions[:, head.columns] = rng.integers(0, head.size, (n, 1))
        elif head.kind == "gaussian":
            actions[:, head.columns] = 3.0 * rng.normal(size=(n, width))
        else:
            actions[:, head.columns] = rng.integers(0, 2, (n, width))
    return actions


def action_masks(spec: ActionSpec, actions: np.ndarray, rng: np.random.Generator,
                 valid: float = 0.6) -> np.ndarray:
    """Random masks of the categorical heads' valid actions (about `valid` of them), each
    leaving the stored action valid: the masks a rollout would have recorded with them."""
    masks = rng.random((len(actions), spec.mask_size)) < valid
    for head in spec.heads:
        if head.kind == "categorical":
            chosen = actions[:, head.columns.start].astype(np.int64)
            masks[np.arange(len(actions)), head.mask.start + chosen] = True
    return masks
