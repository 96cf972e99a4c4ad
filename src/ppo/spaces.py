"""What the engine makes of Gymnasium spaces: observations as one float vector per step (plus
images, kept as uint8), and actions as independent heads (Categorical, diagonal Gaussian,
Bernoulli) over flat columns.

Observations: Box (flattened), Discrete (one-hot), MultiDiscrete (one-hot per component),
MultiBinary, and Dict / Tuple of these, nested too, each part encoded by its kind and
concatenated. Text parts are dropped. Images (uint8 Box, see `is_image`) are kept as they
are, for a CNN that scales them inside the network. A batch of observations (`Obs`) is one
array, (N, width) float32 for vectors or (N, *shape) uint8 for one image, or a dict of such
arrays when images come with other parts: "vector" for the concatenated vector parts, one
key per image. The `obs_*` helpers index, reshape and convert either kind.

Actions: Discrete, Box (float), MultiDiscrete, MultiBinary, and Tuple / Dict of these. A
rollout stores an action as `columns` numbers: the index of each categorical, the value of
each Gaussian or Bernoulli dimension.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from ppo.config import ConfigError

OBSERVATION_KINDS = "Box, Discrete, MultiDiscrete, MultiBinary, and Dict or Tuple of these"
ACTION_KINDS = "Discrete, float Box, MultiDiscrete, MultiBinary, and Dict or Tuple of these"
# A uint8 Box at least this tall and wide, with 1 to 4 channels, is an image.
MIN_IMAGE_SIZE = 32
# Past this many numbers per observation, an MLP's first layer alone needs gigabytes.
MAX_WIDTH = 2**24


VECTOR = "vector"  # the key of the vector parts in a dict batch

Obs = np.ndarray | dict[str, np.ndarray]


class ObservationError(ValueError):
    """An observation that does not fit the env's observation space."""


def is_image(space: spaces.Space) -> bool:
    """uint8 (H, W), (H, W, C) or (C, H, W) with H and W >= 32 and 1 to 4 channels."""
    if not (isinstance(space, spaces.Box) and space.dtype == np.uint8):
        return False
    shape = space.shape
    if len(shape) == 2:
        return min(shape) >= MIN_IMAGE_SIZE
    if len(shape) != 3:
        return False
    channels_last = shape[2] <= 4 and min(shape[:2]) >= MIN_IMAGE_SIZE
    channels_first = shape[0] <= 4 and min(shape[1:]) >= MIN_IMAGE_SIZE
    return channels_last or channels_first


@dataclass(frozen=True)
class ImageShape:
    """An image's layout: channels first (C, H, W), channels last (H, W, C), or no channel
    axis (H, W: one channel)."""

    channels: int
    height: int
    width: int
    channels_last: bool
    has_channels: bool


def image_shape(shape: tuple[int, ...]) -> ImageShape:
    """Where the channels are, as Stable-Baselines3 decides it: the smallest axis, first
    when it is the first one, else last."""
    if len(shape) == 2:
        return ImageShape(1, shape[0], shape[1], False, False)
    if int(np.argmin(shape)) == 0:
        return ImageShape(shape[0], shape[1], shape[2], False, True)
    return ImageShape(shape[2], shape[0], shape[1], True, True)


# ---------------------------------------------------------------------- observation batches
def obs_map(obs: Obs, fn: Callable[[np.ndarray], Any]) -> Any:
    """fn applied to the array, or to each array of a dict batch."""
    return {k: fn(v) for k, v in obs.items()} if isinstance(obs, dict) else fn(obs)


def obs_take(obs: Obs, index: Any) -> Obs:
    """The steps `index` of a batch (any NumPy index along the first axes)."""
    return obs_map(obs, lambda x: x[index])


def obs_flatten(obs: Obs, lead: int) -> Obs:
    """The first `lead` axes merged into one: (T, N, ...) -> (T * N, ...) for lead 2."""
    return obs_map(obs, lambda x: x.reshape(-1, *x.shape[lead:]))


def obs_unflatten(obs: Obs, lead: tuple[int, ...]) -> Obs:
    """The first axis split into `lead`: (T * N, ...) -> (T, N, ...)."""
    return obs_map(obs, lambda x: x.reshape(*lead, *x.shape[1:]))


def obs_empty(like: Obs, lead: tuple[int, ...]) -> Obs:
    """An uninitialized buffer of `lead` steps, each laid out as a step of the batch `like`
    (same dtypes: images stay uint8)."""
    return obs_map(like, lambda x: np.empty((*lead, *x.shape[1:]), x.dtype))


def obs_set(buffer: Obs, index: Any, obs: Obs) -> None:
    """buffer[index] = obs, for each array."""
    if isinstance(buffer, dict):
        for key, array in buffer.items():
            array[index] = obs[key]
    else:
        buffer[index] = obs


def obs_concat(batches: list[Obs]) -> Obs:
    if isinstance(batches[0], dict):
        return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    return np.concatenate(batches)


def obs_copy(obs: Obs) -> Obs:
    return obs_map(obs, np.copy)


def obs_len(obs: Obs) -> int:
    return len(next(iter(obs.values()))) if isinstance(obs, dict) else len(obs)


def obs_equal(a: Obs, b: Obs) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(
            np.array_equal(a[k], b[k]) for k in a)
    return np.array_equal(a, b)


def obs_finite(obs: Obs) -> np.ndarray:
    """Per step, whether its floating-point parts are all finite (integer images always are)."""
    def finite(x: np.ndarray) -> np.ndarray:
        if x.dtype.kind != "f":
            return np.ones(len(x), bool)
        return np.isfinite(x.reshape(len(x), -1)).all(1)
    if isinstance(obs, dict):
        return np.logical_and.reduce([finite(x) for x in obs.values()])
    return finite(obs)


def vector_part(obs: Obs) -> np.ndarray | None:
    """The (N, width) float32 vector parts of a batch (None: images only)."""
    if isinstance(obs, dict):
        return obs.get(VECTOR)
    return obs if obs.dtype == np.float32 else None


def with_vector(obs: Obs, vector: np.ndarray) -> Obs:
    """The batch with its vector parts replaced (normalized)."""
    return {**obs, VECTOR: vector} if isinstance(obs, dict) else vector


def obs_tensor(obs: Obs, device: torch.device | str) -> torch.Tensor | dict[str, torch.Tensor]:
    """The batch as torch tensors on `device` (uint8 images stay uint8: 4x less to move)."""
    return obs_map(obs, lambda x: torch.as_tensor(x, device=device))


def obs_arrays(prefix: str, obs: Obs) -> dict[str, np.ndarray]:
    """Named arrays of a batch, for a checkpoint: `prefix`, or `prefix.key` for each key."""
    if isinstance(obs, dict):
        return {f"{prefix}.{k}": v for k, v in obs.items()}
    return {prefix: obs}


def obs_from_arrays(prefix: str, arrays: dict[str, np.ndarray]) -> Obs | None:
    """The counterpart of `obs_arrays`; None when the arrays hold no such batch."""
    if prefix in arrays:
        return arrays[prefix]
    found = {k[len(prefix) + 1:]: v for k, v in arrays.items() if k.startswith(prefix + ".")}
    return found or None


def is_text(space: spaces.Space) -> bool:
    """Text, or a space of strings of a library's own (MiniGrid's MissionSpace)."""
    if isinstance(space, spaces.Text):
        return True
    known = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary,
             spaces.Dict, spaces.Tuple)
    return not isinstance(space, known) and isinstance(space.sample(), str)


def _leaves(space: spaces.Space, path: str) -> list[tuple[str, spaces.Space]]:
    """(path, space) of every part of a nested Dict / Tuple, in Gymnasium's order."""
    if isinstance(space, spaces.Dict):
        return [leaf for key, sub in space.spaces.items() for leaf in _leaves(sub, f"{path}.{key}")]
    if isinstance(space, spaces.Tuple):
        return [leaf for i, sub in enumerate(space.spaces) for leaf in _leaves(sub, f"{path}[{i}]")]
    return [(path, space)]


def _pick(batch: Any, path: str) -> Any:
    """The part of a batched nested observation at `path` (as built by `_leaves`)."""
    for token in path.replace("[", ".[").split(".")[1:]:
        batch = batch[int(token[1:-1])] if token.startswith("[") else batch[token]
    return batch


@dataclass(frozen=True)
class _ObsPart:
    path: str
    space: spaces.Space
    width: int
    normalize: bool  # real-valued: running mean/std normalization applies
    image: bool = False


def _obs_part(path: str, space: spaces.Space) -> _ObsPart | None:
    name = path.lstrip(".") or "observation"
    if is_text(space):
        return None
    if is_image(space):
        return _ObsPart(path, space, 0, False, image=True)
    if isinstance(space, spaces.Box):
        return _ObsPart(path, space, int(np.prod(space.shape)), True)
    if isinstance(space, spaces.Discrete):
        return _ObsPart(path, space, int(space.n), False)
    if isinstance(space, spaces.MultiDiscrete):
        return _ObsPart(path, space, int(space.nvec.sum()), False)
    if isinstance(space, spaces.MultiBinary):
        return _ObsPart(path, space, int(np.prod(space.shape)), False)
    raise ConfigError(f"unsupported observation space {type(space).__name__} ({name}): "
                      f"ppo takes {OBSERVATION_KINDS}")


def _one_hot(values: np.ndarray, n: int) -> np.ndarray:
    return np.eye(n, dtype=np.float32)[values]


def _image_key(part: _ObsPart) -> str:
    return part.path.lstrip(".") or "image"


class ObsEncoder:
    """A batch of raw observations -> what the networks see: the (N, width) float32 matrix of
    the vector parts, the uint8 image as it is, or a dict of both (see `Obs`)."""

    def __init__(self, space: spaces.Space) -> None:
        self.space = space
        found = [(path, sub) for path, sub in _leaves(space, "")]
        self.dropped = [path.lstrip(".") for path, sub in found if is_text(sub)]
        parts = [part for path, sub in found if (part := _obs_part(path, sub)) is not None]
        if not parts:
            raise ConfigError("the observation space has no part ppo can use: "
                              f"ppo takes {OBSERVATION_KINDS}")
        self.parts = [part for part in parts if not part.image]
        # Image parts by their batch key, with their shape as the space gives it.
        self.images = {_image_key(part): part for part in parts if part.image}
        self.width = sum(part.width for part in self.parts)
        if self.width > MAX_WIDTH:
            raise ConfigError(f"observations encode to {self.width:,} numbers each, more than "
                              f"the {MAX_WIDTH:,} an MLP's first layer can hold in memory")
        # Columns that observation normalization applies to (one-hot and binary parts: none).
        self.normalized_columns = np.concatenate(
            [np.full(part.width, part.normalize) for part in self.parts] or [np.zeros(0, bool)])
        self.plain_box = isinstance(space, spaces.Box)
        self.shape = space.shape if self.plain_box else None
        # The batch is one array (vectors, or a single image), or a dict of them.
        self.mixed = bool(self.images) and not self.plain_box
        if self.mixed and VECTOR in self.images:
            raise ConfigError(f"an image observation part may not be named {VECTOR!r}")

    def image_shapes(self) -> dict[str, tuple[int, ...]]:
        """Each image's shape per step, by its batch key (a plain image: key "image")."""
        return {key: part.space.shape for key, part in self.images.items()}

    def zeros(self, n: int) -> Obs:
        """A batch of n blank observations, laid out as `__call__` returns them."""
        images = {key: np.zeros((n, *shape), np.uint8)
                  for key, shape in self.image_shapes().items()}
        vector = np.zeros((n, self.width), np.float32)
        if not self.mixed:
            return next(iter(images.values())) if images else vector
        return {**({VECTOR: vector} if self.parts else {}), **images}

    def __call__(self, batch: Any) -> Obs:
        if self.plain_box:
            obs = np.asarray(batch)
            if obs.shape[1:] != self.shape:
                raise ObservationError(
                    f"observation of shape {obs.shape[1:]}, the space says {self.shape}")
            if obs.dtype.kind not in "biuf":
                raise ObservationError(f"observation of dtype {obs.dtype}, not numbers")
            if self.images:
                return obs.astype(np.uint8, copy=False)
            return obs.astype(np.float32, copy=False).reshape(len(obs), self.width)
        encoded = [self._encode(part, _pick(batch, part.path)) for part in self.parts]
        vector = (encoded[0] if len(encoded) == 1 else np.concatenate(encoded, axis=1)
                  ) if encoded else None
        if not self.mixed:
            return vector
        images = {key: self._image(part, _pick(batch, part.path))
                  for key, part in self.images.items()}
        return images if vector is None else {VECTOR: vector, **images}

    @staticmethod
    def _image(part: _ObsPart, values: Any) -> np.ndarray:
        values = np.asarray(values)
        if values.shape[1:] != part.space.shape:
            raise ObservationError(f"{_image_key(part)} has shape {values.shape[1:]}, the space "
                                   f"says {part.space.shape}")
        return values.astype(np.uint8, copy=False)

    @staticmethod
    def _encode(part: _ObsPart, values: Any) -> np.ndarray:
        space, values = part.space, np.asarray(values)
        name = part.path.lstrip(".") or "observation"
        if isinstance(space, spaces.Discrete):
            index = values.astype(np.int64).reshape(-1) - int(space.start)
            if index.min(initial=0) < 0 or index.max(initial=0) >= space.n:
                raise ObservationError(f"{name} = {values.tolist()} is outside {space}")
            return _one_hot(index, int(space.n))
        if isinstance(space, spaces.MultiDiscrete):
            index = values.reshape(len(values), -1).astype(np.int64) - space.start.reshape(-1)
            nvec = space.nvec.reshape(-1)
            if index.shape[1] != len(nvec) or (index < 0).any() or (index >= nvec).any():
                raise ObservationError(f"{name} = {values.tolist()} is outside {space}")
            return np.concatenate([_one_hot(index[:, j], int(n)) for j, n in enumerate(nvec)],
                                  axis=1)
        flat = values.reshape(len(values), -1)
        if flat.shape[1] != part.width:
            raise ObservationError(
                f"{name} has {flat.shape[1]} numbers per step, the space says {part.width}")
        if flat.dtype.kind not in "biuf":
            raise ObservationError(f"{name} of dtype {flat.dtype}, not numbers")
        return flat.astype(np.float32)

    def batch_of_one(self, obs: Any) -> Any | None:
        """`obs` as a batch of one if it is a single observation of the space, else None
        (a batch, presumably: the encoder checks it)."""
        if self.plain_box:
            if np.ndim(obs) < len(self.shape) + 1 and np.shape(obs) != self.shape:
                raise ObservationError(
                    f"observation of shape {np.shape(obs)}, the space says {self.shape}")
            return np.asarray(obs)[None] if np.shape(obs) == self.shape else None
        if isinstance(self.space, spaces.Discrete):
            return np.asarray(obs).reshape(1) if np.ndim(obs) == 0 else None
        part = self.parts[0] if self.parts else next(iter(self.images.values()))
        first = _pick(obs, part.path)
        if np.shape(first) != (part.space.shape or ()):
            return None
        return _nest_map(self.space, obs, lambda x: np.asarray(x)[None])


def _nest_map(space: spaces.Space, value: Any, fn) -> Any:
    if isinstance(space, spaces.Dict):
        return {k: _nest_map(sub, value[k], fn) for k, sub in space.spaces.items()}
    if isinstance(space, spaces.Tuple):
        return tuple(_nest_map(sub, v, fn) for sub, v in zip(space.spaces, value, strict=True))
    return fn(value)


@dataclass(frozen=True)
class Head:
    """One independent part of the action distribution.

    kind: categorical (one index among `size`), gaussian (`size` real dimensions, with a
    state-independent log std), or bernoulli (`size` binary dimensions). `params` are its
    columns of the network's output (logits or means), `columns` its columns of a stored action,
    `log_std` its entries of the log-std parameter, `mask` its entries of an action mask.
    """

    kind: str
    size: int
    params: slice
    columns: slice
    log_std: slice | None = None
    mask: slice | None = None


@dataclass(frozen=True)
class _ActionPart:
    space: spaces.Space
    columns: slice


class ActionSpec:
    """The heads of an action space, and the conversion of stored actions into env actions."""

    def __init__(self, space: spaces.Space) -> None:
        self.space = space
        self._parts: list[_ActionPart] = []
        self.heads: list[Head] = []
        params = columns = log_std = mask = 0
        for path, sub in _leaves(space, ""):
            first_column = columns
            for kind, size, count in _action_heads(path, sub):
                for _ in range(count):
                    self.heads.append(Head(
                        kind, size, slice(params, params + size),
                        slice(columns, columns + (1 if kind == "categorical" else size)),
                        slice(log_std, log_std + size) if kind == "gaussian" else None,
                        slice(mask, mask + size) if kind == "categorical" else None))
                    params += size
                    columns += 1 if kind == "categorical" else size
                    log_std += size if kind == "gaussian" else 0
                    mask += size if kind == "categorical" else 0
            self._parts.append(_ActionPart(sub, slice(first_column, columns)))
        self.num_params, self.columns = params, columns
        self.log_std_size, self.mask_size = log_std, mask
        self.discrete = all(h.kind != "gaussian" for h in self.heads)
        self.dtype = np.int64 if self.discrete else np.float32
        # The common single-part spaces take short paths through the per-step conversion.
        self.single = space if len(self._parts) == 1 and not isinstance(
            space, spaces.Dict | spaces.Tuple) else None

    def to_env(self, actions: np.ndarray) -> Any:
        """(N, columns) stored actions -> a batch of env actions (Box actions clipped)."""
        if isinstance(self.single, spaces.Discrete):
            return actions[:, 0] + self.single.start if self.single.start else actions[:, 0]
        if isinstance(self.single, spaces.Box):
            return np.clip(actions.reshape(len(actions), *self.single.shape),
                           self.single.low, self.single.high)
        parts = [_to_env(part.space, actions[:, part.columns]) for part in self._parts]
        return _assemble(self.space, iter(parts))

    def one_env(self, batch: Any, index: int) -> Any:
        """Env `index`'s action out of a batch from `to_env`."""
        if self.single is not None:
            return batch[index]
        return _nest_map(self.space, batch, lambda x: x[index])


def _action_heads(path: str, space: spaces.Space) -> list[tuple[str, int, int]]:
    """(kind, size, how many such heads) for one part of an action space."""
    if isinstance(space, spaces.Discrete):
        return [("categorical", int(space.n), 1)]
    if isinstance(space, spaces.Box) and np.issubdtype(space.dtype, np.floating):
        return [("gaussian", int(np.prod(space.shape)), 1)]
    if isinstance(space, spaces.MultiDiscrete):
        return [("categorical", int(n), 1) for n in space.nvec.reshape(-1)]
    if isinstance(space, spaces.MultiBinary):
        return [("bernoulli", int(np.prod(space.shape)), 1)]
    name = path.lstrip(".") or "action"
    raise ConfigError(f"unsupported action space {type(space).__name__} ({name}: {space}): "
                      f"ppo takes {ACTION_KINDS}")


def _to_env(space: spaces.Space, columns: np.ndarray) -> np.ndarray:
    n = len(columns)
    if isinstance(space, spaces.Discrete):
        return columns[:, 0].astype(np.int64) + space.start
    if isinstance(space, spaces.Box):
        return np.clip(columns.reshape(n, *space.shape), space.low, space.high).astype(space.dtype)
    if isinstance(space, spaces.MultiDiscrete):
        return (columns.astype(np.int64).reshape(n, *space.shape) + space.start).astype(space.dtype)
    return columns.reshape(n, *space.shape).astype(space.dtype)  # MultiBinary


def _assemble(space: spaces.Space, parts) -> Any:
    if isinstance(space, spaces.Dict):
        return {k: _assemble(sub, parts) for k, sub in space.spaces.items()}
    if isinstance(space, spaces.Tuple):
        return tuple(_assemble(sub, parts) for sub in space.spaces)
    return next(parts)


def describe(space: spaces.Space) -> Any:
    """A JSON-able summary of a space, to check a checkpoint against an env."""
    if isinstance(space, spaces.Dict):
        return ["Dict", {k: describe(sub) for k, sub in space.spaces.items()}]
    if isinstance(space, spaces.Tuple):
        return ["Tuple", [describe(sub) for sub in space.spaces]]
    if isinstance(space, spaces.Discrete):
        return ["Discrete", int(space.n)]
    if isinstance(space, spaces.MultiDiscrete):
        return ["MultiDiscrete", space.nvec.tolist()]
    return [type(space).__name__, list(space.shape or ())]
