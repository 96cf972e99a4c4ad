"""Checkpoint files and run directories: what an agent saves, how it is written and read.

Tensors are stored as safetensors, everything else as JSON in its header. Nothing is ever
unpickled. A SHA-256 of the tensor payload in the header catches truncated, corrupted or
edited files; writes go to a temporary file that is renamed into place, so a kill mid-write
leaves the previous checkpoint intact.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import math
import os
import re
import stat
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import tomli_w
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from ppo.config import (
    Config,
    ConfigError,
    from_dict,
    keep_wrapper_tables,
    read_regular_file,
    refuse_unnamed_imports,
)
from ppo.spaces import describe

if TYPE_CHECKING:
    from ppo.agent import PPO

FORMAT = "ppo-checkpoint/1"
HEADER_KEYS = {"format", "sha256", "meta", "meta_sha256"}
CHECKPOINT_MAX_BYTES = 4 << 30
SAFETENSORS_HEADER_MAX = 100_000_000  # the format's own bound
CHECKPOINT_NAME = re.compile(r"^update_(\d+)\.safetensors$")


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, tampered with, or for another env."""


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        if t.numel():  # an empty tensor has no bytes, and torch can't view it as bytes
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    """Write, fsync, rename: readers see the old file or the whole new one, never a part."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # a full disk says which file it could not write
        tmp.unlink(missing_ok=True)
        raise OSError(e.errno, e.strerror or str(e), str(path)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    # clone(): parameters may be views of one shared buffer, or laid out channels-last
    # (convolutions), which safetensors refuses.
    tensors = {k: v.detach().cpu().clone(memory_format=torch.contiguous_format)
               for k, v in tensors.items()}
    meta_json = json.dumps(meta)
    header = {"format": FORMAT, "sha256": _digest(tensors), "meta": meta_json,
              "meta_sha256": hashlib.sha256(meta_json.encode()).hexdigest()}
    write_atomic(Path(path), save_safetensors(tensors, metadata=header))


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and verify a checkpoint; raise CheckpointError with a one-line reason.

    Verified: a regular file of bounded size, the safetensors layout, our header with both
    checksums (tensors and metadata; a header without the metadata one is refused, as its
    metadata could have been edited), metadata that is a JSON object, and finite floats in
    every tensor. What the tensors and metadata must hold is `check_checkpoint`'s part.
    """
    path = Path(path)
    data = read_regular_file(path, "checkpoint", CHECKPOINT_MAX_BYTES, CheckpointError,
                             inspect=lambda fd, size: _check_layout(path, fd, size))
    try:
        tensors = load_safetensors(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len]).get("__metadata__") or {}
    except (SafetensorError, ValueError, UnicodeDecodeError, AttributeError) as e:
        raise CheckpointError(f"{path} is not a valid ppo checkpoint ({e})") from None
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a ppo checkpoint (format {header.get('format')!r})")
    if set(header) != HEADER_KEYS:
        missing, extra = sorted(HEADER_KEYS - set(header)), sorted(set(header) - HEADER_KEYS)
        raise CheckpointError(
            f"{path} is refused: its header " + (f"lacks {', '.join(missing)}" if missing else
                                                 f"has unknown keys {', '.join(extra)}")
            + "; ppo loads only checkpoints whose contents and metadata it can verify")
    meta_json = header["meta"]
    if (header["sha256"] != _digest(tensors)
            or header["meta_sha256"] != hashlib.sha256(meta_json.encode()).hexdigest()):
        raise CheckpointError(f"{path} is corrupted: its contents do not match its checksum")
    try:
        meta = json.loads(meta_json)
    except ValueError as e:
        raise CheckpointError(f"{path} is corrupted: unreadable metadata ({e})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path} is not a valid ppo checkpoint: its metadata is a JSON "
                              f"{type(meta).__name__}, not an object")
    for name, t in sorted(tensors.items()):
        if (t.is_floating_point() or t.is_complex()) and not torch.isfinite(t).all():
            raise CheckpointError(f"{path} holds non-finite values (NaN or Inf) in {name}")
    return tensors, meta


def _check_layout(path: Path, fd: int, size: int) -> None:
    """Refuse a file whose safetensors header does not describe exactly its size, from the
    header alone: a large file of garbage is refused without being read."""
    try:
        header_len = int.from_bytes(os.pread(fd, 8, 0), "little")
        if size < 8 or header_len > min(size - 8, SAFETENSORS_HEADER_MAX):
            raise ValueError(f"{size} bytes, too short for its header")
        header = json.loads(os.pread(fd, header_len, 8))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"),
                  default=0)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
        raise CheckpointError(f"{path} is not a valid ppo checkpoint ({e})") from None
    if 8 + header_len + end != size:
        raise CheckpointError(f"{path} is not a valid ppo checkpoint: it is {size:,} bytes, "
                              f"its header describes {8 + header_len + end:,}")


class TensorSpec(NamedTuple):
    dtype: torch.dtype
    shape: tuple[int, ...]


def specs_of(tensors: Mapping[str, torch.Tensor]) -> dict[str, TensorSpec]:
    """The dtype and shape of each tensor: what a checkpoint of these tensors must hold."""
    return {k: TensorSpec(v.dtype, tuple(v.shape)) for k, v in tensors.items()}


def adam_specs(optimizer: torch.optim.Optimizer, prefix: str = "optim.") -> dict[str, TensorSpec]:
    """The tensors Adam's state holds once it has stepped, named `{prefix}{index}.{slot}` by
    the parameter's index in the optimizer."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    # torch keeps Adam's step count as a float tensor of the default dtype's precision.
    step = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
    specs = {}
    for index, p in enumerate(params):
        specs[f"{prefix}{index}.step"] = TensorSpec(step, ())
        for slot in ("exp_avg", "exp_avg_sq"):
            specs[f"{prefix}{index}.{slot}"] = TensorSpec(p.dtype, tuple(p.shape))
    return specs


def check_checkpoint(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any], source: Path,
                     expected: Mapping[str, TensorSpec],
                     optional: Iterable[Mapping[str, TensorSpec]] = (),
                     free_prefixes: tuple[str, ...] = (),
                     meta_schema: Any = None) -> None:
    """Refuse, with one line naming `source`, a checkpoint whose structure is not what the
    caller expects: every tensor of `expected` with its dtype and shape; each group of
    `optional` entirely or not at all (Adam's state exists only once it has stepped); no
    other tensor unless its name starts with one of `free_prefixes` (state whose layout its
    owner checks); metadata matching `meta_schema` (default META_SCHEMA)."""
    problem = schema_problem(meta, META_SCHEMA if meta_schema is None else meta_schema, "")
    if problem is None:
        problem = _tensor_problem(tensors, expected, list(optional), free_prefixes)
    if problem is not None:
        raise CheckpointError(f"{source} does not fit this agent: {problem}")


def _tensor_problem(tensors: Mapping[str, torch.Tensor], expected: Mapping[str, TensorSpec],
                    optional: list[Mapping[str, TensorSpec]],
                    free_prefixes: tuple[str, ...]) -> str | None:
    required = dict(expected)
    for group in optional:
        present = [name for name in group if name in tensors]
        if present and len(present) != len(group):
            absent = next(name for name in group if name not in tensors)
            return f"it lacks tensor {absent} (it has {present[0]})"
        if present:
            required.update(group)
    for name, spec in required.items():
        if name not in tensors:
            return f"it lacks tensor {name}"
        got = specs_of({name: tensors[name]})[name]
        if got != spec:
            return (f"tensor {name} is {_spec_text(got)}, expected {_spec_text(spec)}")
    extra = sorted(n for n in tensors if n not in required and not n.startswith(free_prefixes))
    if extra:
        return f"it holds unexpected tensor(s) {', '.join(extra[:3])}"
    return None


def _spec_text(spec: TensorSpec) -> str:
    return f"{str(spec.dtype).removeprefix('torch.')} {list(spec.shape)}"


def check_meta(meta: Mapping[str, Any], source: Path, meta_schema: Any = None) -> None:
    """The metadata checks of `check_checkpoint` alone, and its stored config validated:
    what can be checked before an agent exists (its tensors need the agent)."""
    problem = schema_problem(meta, META_SCHEMA if meta_schema is None else meta_schema, "")
    if problem is not None:
        raise CheckpointError(f"{source} does not fit this agent: {problem}")
    try:
        from_dict({k: v for k, v in meta["config"].items() if k != "run_dir"})
    except ConfigError as e:
        raise CheckpointError(f"{source} holds an invalid config: {e}") from None


# ---------------------------------------------------------------- metadata structure
class Int(NamedTuple):
    """An integer (never a bool) in [low, high]."""

    low: int = 0
    high: int | None = None


class Num(NamedTuple):
    """A finite number (never a bool), at least `low`."""

    low: float | None = None


class Nullable(NamedTuple):
    """null, or a value matching `schema`."""

    schema: Any


class Absent(NamedTuple):
    """A key of an object that may be missing (written since a later version), else a value
    matching `schema`."""

    schema: Any


class MapOf(NamedTuple):
    """An object whose keys are strings and whose values match `values`."""

    values: Any


class OneOf(NamedTuple):
    """A value matching one of `schemas`."""

    schemas: tuple[Any, ...]


RNG_STATE = {"bit_generator": "PCG64", "state": {"state": Int(0, 2**128 - 1),
                                                 "inc": Int(0, 2**128 - 1)},
             "has_uint32": Int(0, 1), "uinteger": Int(0, 2**32 - 1)}
# What agent_state writes: keep the two in step. A schema is: a dict (an object with
# exactly these keys), a list of one schema (a list of such items), a tuple (a list of
# exactly these items), a Python type (any value of it: dict, str, bool), a str (that very
# string), Int, Num, Nullable, MapOf or OneOf.
META_SCHEMA = {
    "config": dict, "update": Int(), "global_step": Int(), "best_eval_return": Nullable(Num()),
    "lr": Num(0.0), "nonfinite_streak": Int(),
    "episodes": Int(), "recent_episodes": [(Num(), Int())], "episode_info": MapOf([Num()]),
    "episodes_from_info": Absent(bool),
    "collector": OneOf(({}, {"env_seeds": [Int()], "episodes": [Int()]})),
    "rng": {"action": RNG_STATE, "shuffle": RNG_STATE},
    "spaces": {"observation": str, "action": str}, "custom_network": bool, "saved_at": str,
}


def schema_problem(value: Any, schema: Any, where: str) -> str | None:
    """What is wrong with `value` against `schema` (see META_SCHEMA), or None."""
    name = where or "the metadata"
    if isinstance(schema, Nullable):
        return None if value is None else schema_problem(value, schema.schema, where)
    if isinstance(schema, OneOf):
        problems = [schema_problem(value, sub, where) for sub in schema.schemas]
        return None if None in problems else problems[-1]
    if isinstance(schema, MapOf):
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            return f"{name} is {_json_kind(value)}, not an object"
        return next((p for key, item in value.items()
                     if (p := schema_problem(item, schema.values, _join(where, key)))), None)
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            return f"{name} is {_json_kind(value)}, not an object"
        required = {key for key, sub in schema.items() if not isinstance(sub, Absent)}
        missing, extra = sorted(required - set(value)), sorted(set(value) - set(schema))
        if missing or extra:
            return f"{name} " + (f"lacks {', '.join(missing)}" if missing else
                                 f"has unexpected key(s) {', '.join(map(str, extra[:3]))}")
        return next((p for key, sub in schema.items() if key in value
                     if (p := schema_problem(value[key], getattr(sub, "schema", sub)
                                             if isinstance(sub, Absent) else sub,
                                             _join(where, key)))), None)
    if isinstance(schema, Int):
        ok = (isinstance(value, int) and not isinstance(value, bool) and value >= schema.low
              and (schema.high is None or value <= schema.high))
        return None if ok else f"{name} must be an integer >= {schema.low}, got {value!r:.40}"
    if isinstance(schema, Num):
        ok = (isinstance(value, int | float) and not isinstance(value, bool)
              and math.isfinite(value) and (schema.low is None or value >= schema.low))
        return None if ok else f"{name} must be a finite number, got {value!r:.40}"
    if isinstance(schema, list | tuple):  # after the NamedTuples above, tuples too
        if not isinstance(value, list):
            return f"{name} is {_json_kind(value)}, not a list"
        if isinstance(schema, tuple) and len(value) != len(schema):
            return f"{name} has {len(value)} items, not {len(schema)}"
        items = schema if isinstance(schema, tuple) else schema * len(value)
        return next((p for i, (item, sub) in enumerate(zip(value, items, strict=True))
                     if (p := schema_problem(item, sub, f"{name}[{i}]"))), None)
    if isinstance(schema, str):
        return None if value == schema else f"{name} must be {schema!r}, got {value!r:.40}"
    return None if isinstance(value, schema) else (
        f"{name} is {_json_kind(value)}, not {_json_kind(schema())}")


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _json_kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number", type(None): "null"}.get(type(value), "a value")


def best_path(run_dir: Path) -> Path:
    """Where the best evaluation's agent is kept, beside the numbered checkpoints."""
    return Path(run_dir) / "checkpoints" / "best.safetensors"


def holds_run(run_dir: Path) -> bool:
    """Whether a run was started in this directory (a fresh run must not reuse it): it holds
    any of the run files."""
    return bool(run_files(run_dir))


def checkpoint_path(run_dir: Path, update: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"update_{update:06d}.safetensors"


def latest_checkpoint(run_dir: Path) -> Path:
    """The newest complete checkpoint of a run (temporary files never match the name)."""
    found = checkpoints_newest_first(run_dir)
    if not found:
        raise CheckpointError(f"no checkpoint in {run_dir}: nothing to resume or evaluate")
    return found[0][1]


def checkpoints_newest_first(run_dir: Path) -> list[tuple[int, Path]]:
    """The run's checkpoint files by update, newest first (temporary files never match)."""
    found = [(int(m.group(1)), p) for p in (Path(run_dir) / "checkpoints").glob("update_*")
             if (m := CHECKPOINT_NAME.match(p.name))]
    return sorted(found, reverse=True)


class ValidCheckpoint(NamedTuple):
    path: Path
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]
    skipped: list[str]  # "NAME: why", newest first, for a note to the user


def newest_valid_checkpoint(
    run_dir: Path,
    check: Callable[[dict[str, torch.Tensor], dict[str, Any], Path], None] | None = None,
) -> ValidCheckpoint:
    """The newest checkpoint of a run that loads, whose metadata is for the update its name
    says, and that passes `check` (which raises CheckpointError); the ones skipped on the way,
    with why. CheckpointError naming every one tried when none is valid."""
    found = checkpoints_newest_first(run_dir)
    if not found:
        raise CheckpointError(f"no checkpoint in {run_dir}: nothing to resume or evaluate")
    skipped = []
    for update, path in found:
        try:
            tensors, meta = load_checkpoint(path)
            if meta.get("update") != update:
                raise CheckpointError(f"{path} is named for update {update} but holds update "
                                      f"{meta.get('update')!r}")
            if check is not None:
                check(tensors, meta, path)
            return ValidCheckpoint(path, tensors, meta, skipped)
        except CheckpointError as e:
            why = str(e).replace(f"checkpoint {path}", "it").replace(str(path), "it")
            skipped.append(f"{path.name}: {why}")
    raise CheckpointError(f"no valid checkpoint in {run_dir}: " + "; ".join(skipped[:3])
                          + (f"; and {len(skipped) - 3} more" if len(skipped) > 3 else ""))


# ---------------------------------------------------------------------- an agent's state
def _spaces(agent: PPO) -> dict[str, str]:
    return {"observation": json.dumps(describe(agent.encoder.space)),
            "action": json.dumps(describe(agent.action_spec.space))}


def agent_state(agent: PPO) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Everything a resumed run needs: weights, optimizer, RNG streams, normalization
    statistics, episodes (finished and in progress), counters."""
    tensors = {f"model.{k}": v for k, v in agent.model.state_dict().items()}
    learner_tensors, learner_meta = agent.learner.state()
    collector_arrays, collector_meta = agent.collector.state()
    tensors.update(learner_tensors)
    tensors.update({k: torch.as_tensor(v) for k, v in collector_arrays.items()})
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {
        "config": agent.config.to_dict(),
        "update": agent.update,
        "global_step": agent.global_step,
        "best_eval_return": (None if math.isinf(agent.best_eval_return)
                             else agent.best_eval_return),
        **learner_meta,
        **collector_meta,
        "rng": {"action": agent.action_rng.bit_generator.state,
                "shuffle": agent.shuffle_rng.bit_generator.state},
        "spaces": _spaces(agent),
        "custom_network": agent.custom_network,
        "saved_at": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    return tensors, meta


def save(agent: PPO, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, *agent_state(agent))
    return path


def config_of(stored: dict[str, Any], overrides: dict[str, Any], source: Path) -> Config:
    """The config a checkpoint was trained with, with the caller's overrides. A module its
    env id or a wrapper names is imported only if the overrides name it too (ConfigError)."""
    if not isinstance(stored, dict):
        raise CheckpointError(f"{source} holds an unusable config: a {type(stored).__name__}")
    overrides = keep_wrapper_tables(stored, overrides)
    refuse_unnamed_imports(stored, overrides, str(source))
    try:
        return from_dict({**stored, **overrides})
    except ConfigError as e:
        raise CheckpointError(f"{source} holds an unusable config: {e}") from None


def read_for_load(path: Any, overrides: dict[str, Any], verbose: bool
                  ) -> tuple[Config, dict[str, torch.Tensor], dict[str, Any], Path]:
    """What `PPO.load` builds an agent from: the config (the file's, less its run_dir, with
    `overrides`), the tensors and metadata, and the file they came from. `path`: a checkpoint
    file, or a run directory whose newest valid checkpoint is taken (with `verbose`, saying
    which were skipped)."""
    if not isinstance(path, str | os.PathLike):
        raise ConfigError(f"path must be a str or Path, got {type(path).__name__}")
    path = Path(path)
    if path.is_dir():
        found = newest_valid_checkpoint(path, check=lambda t, m, p: check_meta(m, p))
        for why in found.skipped if verbose else ():
            print(f"note: skipped checkpoint {why}", file=sys.stderr)
        path, tensors, meta = found.path, found.tensors, found.meta
    else:
        tensors, meta = load_checkpoint(path)
        check_meta(meta, path)
    # A file's own idea of where its run lives is never trusted with writes: a loaded agent
    # writes nowhere unless given a run_dir (resume passes the directory it read).
    stored = {k: v for k, v in meta["config"].items() if k != "run_dir"}
    if "num_envs" in overrides and "minibatch_size" not in overrides:
        # Fewer envs (ppo eval's one): a minibatch no larger than the smaller rollout.
        rollout = stored.get("rollout_steps", Config.rollout_steps) * overrides["num_envs"]
        overrides = {**overrides, "minibatch_size": min(
            stored.get("minibatch_size", Config.minibatch_size), rollout)}
    return config_of(stored, overrides, path), tensors, meta, path


def restore(agent: PPO, tensors: dict[str, torch.Tensor], meta: dict[str, Any],
            source: Path) -> None:
    """Load a checkpoint's state into an agent built from its config, after checking that it
    holds what this agent saves: metadata, spaces, every tensor's name, dtype and shape."""
    problem = schema_problem(meta, META_SCHEMA, "")
    if problem is not None:
        raise CheckpointError(f"{source} does not fit this agent: {problem}")
    expected = _spaces(agent)
    if meta["spaces"] != expected:
        raise CheckpointError(
            f"{source} was trained on observation/action spaces {meta['spaces']}, "
            f"this env has {expected}")
    if meta.get("custom_network", False) != agent.custom_network:
        raise CheckpointError(
            f"{source} was trained with a user's feature extractor or network: pass the same "
            "one to PPO.load" if meta.get("custom_network") else
            f"{source} was trained with the built-in network, not the one given")
    fixed = {k: v for k, v in specs_of(agent_state(agent)[0]).items()
             if not k.startswith(("optim.", "collector."))}
    check_checkpoint(tensors, meta, source, fixed, [adam_specs(agent.learner.optimizer)],
                     ("collector.",))
    if (problem := _collector_problem(tensors, meta["collector"])) is not None:
        raise CheckpointError(f"{source} does not fit this agent: {problem}")
    model_state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        agent.model.load_state_dict(model_state)
    except RuntimeError as e:
        raise CheckpointError(f"{source} does not fit this network: "
                              f"{str(e).splitlines()[0]}") from None
    agent.learner.load_state(tensors, meta)
    torch.set_rng_state(tensors["rng.torch"])
    agent.collector.load_state({k: v.numpy() for k, v in tensors.items()}, meta)
    # The checkpoint holds rank 0's action stream; the other ranks start new ones, apart
    # from those of the run's start and of any other resume.
    agent.action_rng.bit_generator.state = meta["rng"]["action"] if agent.rank == 0 else (
        np.random.default_rng([agent.config.seed, 1, agent.rank, meta["update"]])
        .bit_generator.state)
    agent.shuffle_rng.bit_generator.state = meta["rng"]["shuffle"]
    agent.update, agent.global_step = meta["update"], meta["global_step"]
    best = meta.get("best_eval_return")
    agent.best_eval_return = -math.inf if best is None else best
    agent._envs_ready = False
    agent.policy.promote(agent.model)


def _collector_problem(tensors: Mapping[str, torch.Tensor],
                       collector: Mapping[str, Any]) -> str | None:
    """The episodes in progress (see Collector.state): one entry per env throughout."""
    held = {k[len("collector."):]: v for k, v in tensors.items() if k.startswith("collector.")}
    if not collector:
        return f"it holds collector.{min(held)} but no episodes in progress" if held else None
    n = len(collector["env_seeds"])
    if len(collector["episodes"]) != n:
        return "collector.env_seeds and collector.episodes differ in length"
    # A dict observation (images beside vectors) is held as obs.<key>, one tensor per key.
    obs = sorted(k for k in held if k.startswith("obs.")) or ["obs"]
    required = {*obs, "episode_returns", "episode_lengths", *(f"actions.{i}" for i in range(n))}
    if missing := sorted(required - set(held)):
        return f"it lacks tensor collector.{missing[0]}"
    recurrent = {"lstm_h", "lstm_c", "starts"}
    if extra := sorted(set(held) - required - {"discounted_return", "mask", *recurrent}):
        return f"it holds unexpected tensor(s) collector.{', collector.'.join(extra[:3])}"
    for name in (*obs, "episode_returns", "episode_lengths", "discounted_return", "mask",
                 "starts"):
        if name in held and (held[name].ndim == 0 or held[name].shape[0] != n):
            return f"tensor collector.{name} has shape {list(held[name].shape)}, not {n} envs'"
    for name in ("lstm_h", "lstm_c"):  # (layers, envs, hidden)
        if name in held and (held[name].ndim != 3 or held[name].shape[1] != n):
            return f"tensor collector.{name} has shape {list(held[name].shape)}, not {n} envs'"
    return None


def write(agent: PPO) -> Path:
    """The run's checkpoint for the agent's current update; a failed write names the intact
    previous checkpoint."""
    path = checkpoint_path(agent.run_dir, agent.update)
    try:
        return save(agent, path)
    except OSError as e:
        try:
            previous = f"the previous one, {latest_checkpoint(agent.run_dir).name}, is intact"
        except CheckpointError:
            previous = "there is no earlier checkpoint"
        raise CheckpointError(
            f"could not write checkpoint {path}: {e.strerror or e}; {previous}") from None


def claim_run_dir(run_dir: Path, config: Config, fresh: bool) -> Config:
    """Create the run directory and write its config.toml; a fresh run refuses a directory
    that already holds one. Returns the config as written (run_dir set)."""
    config_file = run_dir / "config.toml"
    if fresh and (files := run_files(run_dir)):
        raise ConfigError(f"{run_dir} already holds a run ({', '.join(files)}); use --resume "
                          "or another --run-dir")
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    config = config.replace(run_dir=str(run_dir))
    write_atomic(config_file, tomli_w.dumps(config.to_dict()).encode())
    return config


# ---------------------------------------------------------------- one writer per run directory
# The entries that make a directory a run's: a fresh run never writes into one that has any.
RUN_FILES = ("config.toml", "metrics.csv", "checkpoints", "tensorboard")
LOCK_NAME = ".lock"


class RunDirError(ValueError):
    """A run directory that another process writes, or that cannot be locked."""


def run_files(run_dir: Path) -> list[str]:
    """The run files `run_dir` holds (none if it does not exist)."""
    return [name for name in RUN_FILES if os.path.lexists(Path(run_dir) / name)]


_held: dict[str, tuple[int, int]] = {}  # real path -> (owning thread, depth)
_held_guard = threading.Lock()


@contextlib.contextmanager
def run_dir_lock(run_dir: Path, create: bool = False) -> Iterator[Path]:
    """Hold the run directory for writing: an exclusive flock on `run_dir/.lock`, which the
    OS releases if the process dies. A second holder, in another process or another thread,
    gets RunDirError with one line; the same thread may take it again (the CLI holds it
    around the agent, which takes it too). With `create`, makes the directory first.

    The lock file is removed on release; a file left by a killed process holds no lock.
    Where flock is not supported (some network filesystems) this raises RunDirError."""
    run_dir = Path(run_dir)
    if create:
        run_dir.mkdir(parents=True, exist_ok=True)
    if not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} is not a directory")
    key = os.path.realpath(run_dir)
    me = threading.get_ident()
    with _held_guard:
        owner, depth = _held.get(key, (me, 0))
        if depth and owner == me:
            _held[key] = (me, depth + 1)
    if depth and owner == me:
        try:
            yield run_dir
        finally:
            with _held_guard:
                _held[key] = (me, _held[key][1] - 1)
        return
    fd = _acquire(run_dir / LOCK_NAME, run_dir)
    with _held_guard:
        _held[key] = (me, 1)
    try:
        yield run_dir
    finally:
        with _held_guard:
            del _held[key]
        with contextlib.suppress(OSError):
            if os.path.samestat(os.stat(run_dir / LOCK_NAME, follow_symlinks=False),
                                os.fstat(fd)):
                os.unlink(run_dir / LOCK_NAME)
        os.close(fd)


def _acquire(lock: Path, run_dir: Path) -> int:
    """An fd holding an exclusive flock on `lock`, still linked at that path."""
    while True:
        try:
            # O_NOFOLLOW, and one link only: a planted link never makes us write elsewhere.
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise RunDirError(f"cannot lock run directory {run_dir}: {lock.name} "
                              f"({e.strerror}); remove it if no ppo process runs there") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            os.close(fd)
            raise RunDirError(f"cannot lock run directory {run_dir}: {lock} is not a plain "
                              "file; remove it if no ppo process runs there")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise RunDirError(
                f"run directory {run_dir} is in use by another process"
                + (f" (pid {holder})" if holder.isdigit() else "")
                + ": one process writes a run at a time") from None
        except OSError as e:
            os.close(fd)
            raise RunDirError(f"cannot lock run directory {run_dir}: {e.strerror}") from None
        try:
            same = os.path.samestat(os.stat(lock, follow_symlinks=False), os.fstat(fd))
        except FileNotFoundError:
            same = False
        if same:  # else the holder removed it as we opened it: lock the new one
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd
        os.close(fd)
