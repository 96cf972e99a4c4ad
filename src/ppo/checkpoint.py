"""Checkpoint files and run directories: what an agent saves, how it is written and read.

Tensors are stored as safetensors, everything else as JSON in its header. Nothing is ever
unpickled. A SHA-256 of the tensor payload in the header catches truncated, corrupted or
edited files; writes go to a temporary file that is renamed into place, so a kill mid-write
leaves the previous checkpoint intact.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import tomli_w
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from ppo.config import Config, ConfigError, from_dict
from ppo.spaces import describe

if TYPE_CHECKING:
    from ppo.agent import PPO

FORMAT = "ppo-checkpoint/1"
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
    """Read and verify a checkpoint; raise CheckpointError with a one-line reason."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror}") from None
    try:
        tensors = load_safetensors(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len]).get("__metadata__") or {}
    except (SafetensorError, ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not a valid ppo checkpoint ({e})") from None
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a ppo checkpoint (format {header.get('format')!r})")
    meta_json = header.get("meta", "")
    # Checkpoints written before meta_sha256 existed carry only the tensor digest.
    meta_ok = "meta_sha256" not in header or (
        header["meta_sha256"] == hashlib.sha256(meta_json.encode()).hexdigest())
    if header.get("sha256") != _digest(tensors) or not meta_ok:
        raise CheckpointError(f"{path} is corrupted: its contents do not match its checksum")
    try:
        return tensors, json.loads(meta_json)
    except ValueError as e:
        raise CheckpointError(f"{path} is corrupted: unreadable metadata ({e})") from None


def best_path(run_dir: Path) -> Path:
    """Where the best evaluation's agent is kept, beside the numbered checkpoints."""
    return Path(run_dir) / "checkpoints" / "best.safetensors"


def holds_run(run_dir: Path) -> bool:
    """Whether a run was started in this directory (a fresh run must not reuse it)."""
    return (Path(run_dir) / "config.toml").is_file()


def checkpoint_path(run_dir: Path, update: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"update_{update:06d}.safetensors"


def latest_checkpoint(run_dir: Path) -> Path:
    """The newest complete checkpoint of a run (temporary files never match the name)."""
    found = [
        (int(m.group(1)), p)
        for p in (Path(run_dir) / "checkpoints").glob("update_*.safetensors")
        if (m := CHECKPOINT_NAME.match(p.name))
    ]
    if not found:
        raise CheckpointError(f"no checkpoint in {run_dir}: nothing to resume or evaluate")
    return max(found)[1]


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
    """The config a checkpoint was trained with, with the caller's overrides."""
    try:
        return from_dict({**stored, **overrides})
    except ConfigError as e:
        raise CheckpointError(f"{source} holds an unusable config: {e}") from None


def restore(agent: PPO, tensors: dict[str, torch.Tensor], meta: dict[str, Any],
            source: Path) -> None:
    """Load a checkpoint's state into an agent built from its config."""
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
    if fresh and holds_run(run_dir):
        raise ConfigError(f"{run_dir} already holds a run; use --resume or another --run-dir")
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    config = config.replace(run_dir=str(run_dir))
    write_atomic(config_file, tomli_w.dumps(config.to_dict()).encode())
    return config
