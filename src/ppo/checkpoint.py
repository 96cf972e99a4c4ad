"""Checkpoint files: tensors as safetensors, everything else as JSON in its header.

Nothing is ever unpickled. A SHA-256 of the tensor payload in the header catches truncated,
corrupted or edited files; writes go to a temporary file that is renamed into place, so a
kill mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

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
    # clone(): parameters may be views of one shared buffer, which safetensors refuses.
    tensors = {k: v.detach().cpu().clone() for k, v in tensors.items()}
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
