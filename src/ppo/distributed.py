"""Data-parallel training: several processes (ranks) train one model, each on its own envs.

torchrun starts the ranks (`torchrun --nproc-per-node 2 -m ppo train ...`, or
`ppo train --nproc 2`) and tells each its place through RANK, WORLD_SIZE and LOCAL_RANK.
Every rank starts from the same weights and applies the same updates, so the ranks stay
replicas of one another. What the update depends on is made global:

- the gradient is averaged over ranks at every minibatch step, before the grad-norm clip;
- advantages are normalized by the mean and std of all ranks' batches;
- running normalization statistics and the record of finished episodes are pooled after
  every rollout, so every rank holds the same ones;
- the KL early stop, the NaN/Inf skip and a stop signal are decided alike on every rank.

A plain process (no WORLD_SIZE, or 1) never touches this module's collectives.
"""

from __future__ import annotations

import atexit
import datetime
import gc
import os
import re
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from ppo.config import ConfigError
from ppo.normalization import RunningMeanStd
from ppo.rollout import Collector

# Per-update metrics that differ between ranks; the row logs their mean. The rest (update,
# steps, pooled episodes, learning rate, epochs run, skipped steps) agree by construction.
PER_RANK_METRICS = ("approx_kl", "clipfrac", "policy_loss", "value_loss", "entropy",
                    "explained_variance", "sps")


class DistributedError(RuntimeError):
    """A collective failed: another rank died, or stopped answering for too long."""


@dataclass(frozen=True)
class Moments:
    """Count, mean and sum of squared deviations of a sample: two samples' moments combine
    exactly (Chan et al.'s parallel variance), and a part can be taken back out."""

    count: float
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def empty(cls, shape: tuple[int, ...]) -> Moments:
        return cls(0.0, np.zeros(shape), np.zeros(shape))

    @classmethod
    def of_sample(cls, x: np.ndarray) -> Moments:
        x = np.asarray(x, np.float64)
        mean = x.mean(0) if len(x) else np.zeros(x.shape[1:])
        return cls(float(len(x)), mean, ((x - mean) ** 2).sum(0))

    @classmethod
    def of_stats(cls, stats: RunningMeanStd) -> Moments:
        return cls(stats.count, np.array(stats.mean, np.float64), stats.var * stats.count)

    def __add__(self, other: Moments) -> Moments:
        if other.count == 0:
            return self
        count = self.count + other.count
        delta = other.mean - self.mean
        return Moments(count, self.mean + delta * (other.count / count),
                       self.m2 + other.m2 + delta**2 * (self.count * other.count / count))

    def __sub__(self, part: Moments) -> Moments:
        """The moments of what was added to `part` to make `self`."""
        count = self.count - part.count
        if count == 0:
            return Moments.empty(np.shape(self.mean))
        delta = (self.mean - part.mean) * (self.count / count)
        return Moments(count, part.mean + delta,
                       self.m2 - part.m2 - delta**2 * (part.count * count / self.count))

    def std(self) -> np.ndarray:
        """Sample standard deviation (ddof=1), as NumPy's x.std(ddof=1)."""
        return np.sqrt(self.m2 / (self.count - 1))

    def pack(self) -> np.ndarray:
        return np.concatenate([[self.count], np.ravel(self.mean), np.ravel(self.m2)])

    @classmethod
    def unpack(cls, packed: np.ndarray, shape: tuple[int, ...]) -> Moments:
        size = int(np.prod(shape))
        return cls(float(packed[0]), packed[1 : 1 + size].reshape(shape),
                   packed[1 + size : 1 + 2 * size].reshape(shape))

    def store(self, stats: RunningMeanStd) -> None:
        stats.mean, stats.var, stats.count = self.mean, self.m2 / self.count, self.count


def _first_sentence(error: Exception) -> str:
    """The gist of a torch.distributed error: no source location, no advice."""
    text = re.sub(r"^\[[^\]]*\]\s*", "", " ".join(str(error).split()))
    return text.split(". ")[0].rstrip(".") or type(error).__name__


def _interleave(lists: list[list]) -> list:
    """Merge lists aligned at their ends, round-robin: a window over the result's tail takes
    the most recent items of every list alike."""
    longest = max(map(len, lists), default=0)
    return [items[len(items) - back] for back in range(longest, 0, -1)
            for items in lists if len(items) >= back]


class Replicas:
    """This process's view of the group of ranks: who it is, and the collectives PPO needs."""

    def __init__(self, rank: int, world_size: int, device: torch.device, timeout: float) -> None:
        self.rank, self.world_size, self.timeout = rank, world_size, timeout
        # Where collectives run: the CPU under gloo, the rank's own GPU under nccl.
        self.device = device

    # ------------------------------------------------------------------ collectives
    def _collective(self, collective, *args, **kwargs) -> None:
        try:
            collective(*args, **kwargs)
            return
        except RuntimeError as e:  # DistBackendError and gloo's errors alike
            reason = _first_sentence(e)
        raise DistributedError(
            f"rank {self.rank} of {self.world_size} lost contact with the other ranks "
            f"({reason}): another rank died, or did not answer within --dist-timeout "
            f"{self.timeout:g} s; the last checkpoint is intact, resume with --resume")

    def _all_reduce(self, array: np.ndarray, op=dist.ReduceOp.SUM) -> np.ndarray:
        """Reduce a NumPy array over ranks, in place, and return it."""
        tensor = torch.tensor(array, device=self.device)
        self._collective(dist.all_reduce, tensor, op=op)
        array[...] = tensor.cpu().numpy()
        return array

    def _all_gather(self, array: np.ndarray) -> np.ndarray:
        """Every rank's array, stacked in rank order: shape (world_size, *array.shape)."""
        tensor = torch.tensor(array, device=self.device)
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        self._collective(dist.all_gather, parts, tensor)
        return torch.stack(parts).cpu().numpy()

    def mean(self, value: float) -> float:
        return float(self._all_reduce(np.array([value], np.float64))[0]) / self.world_size

    def max(self, value: int) -> int:
        return int(self._all_reduce(np.array([value], np.float64), dist.ReduceOp.MAX)[0])

    def min(self, value: int) -> int:
        return int(self._all_reduce(np.array([value], np.float64), dist.ReduceOp.MIN)[0])

    def average_(self, grad: np.ndarray) -> None:
        """Average a flat NumPy gradient over ranks, in place."""
        self._all_reduce(grad)
        grad /= self.world_size

    def average_gradients_(self, grads: list[torch.Tensor]) -> None:
        """Average torch gradients over ranks in place, as one flat buffer: one collective."""
        flat = torch.cat([g.reshape(-1) for g in grads])
        self._collective(dist.all_reduce, flat)
        flat /= self.world_size
        for g, part in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
            g.copy_(part.view_as(g))

    # ------------------------------------------------------------------ what PPO pools
    def mean_std(self, x: np.ndarray) -> tuple[float, float]:
        """Mean and std (ddof=1) of all ranks' samples together."""
        everyone = self._all_gather(Moments.of_sample(x).pack())
        total = sum((Moments.unpack(p, ()) for p in everyone), Moments.empty(()))
        return float(total.mean), float(total.std())

    @contextmanager
    def pooling(self, collector: Collector) -> Iterator[None]:
        """What the collector adds inside this block to its running statistics (observation
        normalization, reward scaling) and to its record of finished episodes, on any rank,
        ends up in every rank's copy; the copies are identical on entry and on exit."""
        stats = [s.stats for s in (collector.obs_normalizer, collector.reward_scaler)
                 if s is not None]
        episodes = collector.episodes
        stats_before = [Moments.of_stats(s) for s in stats]
        recent_before, count_before = list(episodes.recent), episodes.episodes
        yield
        # What this rank added, in one vector for one all-gather: the moments of its new
        # samples, and its newly finished episodes (a window's worth at most).
        window = episodes.recent.maxlen
        finished = episodes.episodes - count_before
        mine = np.zeros((window, 2))
        kept = min(finished, window)
        if kept:
            mine[:kept] = list(episodes.recent)[-kept:]
        packed = np.concatenate([(Moments.of_stats(s) - b).pack()
                                 for s, b in zip(stats, stats_before, strict=True)]
                                + [[finished], mine.ravel()])
        everyone = self._all_gather(packed)

        # Every rank adds every rank's part, in rank order: the same numbers everywhere.
        start = 0
        for s, before in zip(stats, stats_before, strict=True):
            size = 1 + 2 * before.mean.size
            parts = everyone[:, start : start + size]
            sum((Moments.unpack(p, before.mean.shape) for p in parts), before).store(s)
            start += size
        counts = everyone[:, start].astype(int)
        rows = everyone[:, start + 1 :].reshape(self.world_size, window, 2)
        new = [[(float(r), int(n)) for r, n in rows[rank, : min(c, window)]]
               for rank, c in enumerate(counts)]
        episodes.recent = deque(recent_before + _interleave(new), maxlen=window)
        episodes.episodes = count_before + int(counts.sum())

    def average_metrics(self, row: dict) -> dict:
        """The update's row for the whole group: per-rank metrics averaged over ranks."""
        keys = [k for k in row if k in PER_RANK_METRICS or k.startswith("time_")]
        means = self._all_reduce(np.array([row[k] for k in keys], np.float64))
        return {**row, **{k: float(v) / self.world_size for k, v in zip(keys, means, strict=True)}}

    def close(self) -> None:
        """Free the group while the interpreter is fully alive: gloo's threads that outlive it
        abort the process at exit."""
        if dist.is_initialized():
            gc.collect()  # reference cycles (a failed collective's traceback) hold it
            dist.destroy_process_group()


def join_from_env(device: str, timeout: float) -> Replicas | None:
    """Join the group of ranks torchrun started this process in; None in a plain process.

    The backend is gloo on the CPU and nccl on GPUs, where rank i uses cuda:LOCAL_RANK.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return None
    if "RANK" not in os.environ:
        raise DistributedError("WORLD_SIZE is set but RANK is not: start the ranks with torchrun")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        if device != "cuda":
            raise ConfigError(f"device {device!r}: under torchrun give --device cuda; "
                              "each rank then uses cuda:LOCAL_RANK")
        where, backend = torch.device("cuda", local_rank), "nccl"
        torch.cuda.set_device(where)
    else:
        where, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
        except (RuntimeError, ValueError) as e:
            raise DistributedError(
                f"rank {rank} could not join the other ranks: {_first_sentence(e)}") from None
    replicas = Replicas(rank, world_size, where, timeout)
    atexit.register(replicas.close)  # PPO.close() frees the group; this, if it was not called
    return replicas
