"""Training runs as `ppo train` child processes, a few at a time, resumable: what
`ppo train --seeds` and `ppo experiment` start.

Launched again, a finished run is skipped, a run with a checkpoint resumes from it, and a run
that never wrote one starts over. Each child's console output goes to `<run dir>.log` beside
its run directory. Ctrl-C or SIGTERM reaches every child, which checkpoints and stops; no
further run starts.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ppo.checkpoint import CheckpointError, holds_run, latest_checkpoint
from ppo.console import figure
from ppo.metrics import read_metrics

# One thread per child, as `threads` defaults to: children share the cores.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class Stopped(Exception):
    """A stop signal arrived while runs were going: they checkpointed; the rest never started."""

    def __init__(self, signum: int, left: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}: {left} run(s) unfinished; "
                         "the same command resumes them")
        self.signum = signum


@dataclass(frozen=True)
class Job:
    """One run: where it lives, its seed, its length in env steps, and the `ppo train`
    options that define it (neither --seed, --run-dir nor --total-timesteps)."""

    run_dir: Path
    seed: int
    steps: int
    args: tuple[str, ...] = ()

    @property
    def log(self) -> Path:
        return self.run_dir.with_name(f"{self.run_dir.name}.log")


def last_metrics(run_dir: Path) -> dict[str, float]:
    """The last row of a run's metrics.csv; empty when it has logged nothing yet."""
    if not (Path(run_dir) / "metrics.csv").is_file():
        return {}
    columns = read_metrics(run_dir)
    return {k: float(v[-1]) for k, v in columns.items() if len(v)}


def finished(job: Job) -> bool:
    return last_metrics(job.run_dir).get("global_step", 0) >= job.steps


def command(job: Job) -> list[str]:
    """The child's command line: resume from the last checkpoint, or start afresh (clearing
    a run that died before its first checkpoint)."""
    base = [sys.executable, "-m", "ppo", "train", "--quiet"]
    try:
        latest_checkpoint(job.run_dir)
        return [*base, "--resume", str(job.run_dir), "--total-timesteps", str(job.steps)]
    except CheckpointError:
        pass
    if job.run_dir.exists():
        shutil.rmtree(job.run_dir)
    return [*base, *job.args, "--seed", str(job.seed), "--total-timesteps", str(job.steps),
            "--run-dir", str(job.run_dir)]


def outcome(job: Job, code: int) -> str:
    """One line on a run that ended."""
    if code != 0:
        return f"{job.run_dir}: failed (exit {code}), see {job.log}"
    final = last_metrics(job.run_dir).get("episodic_return", math.nan)
    return f"{job.run_dir}: done, final return {figure(final)}"


def run_jobs(jobs: Sequence[Job], parallel: int,
             report: Callable[[str], Any] = print) -> dict[Path, int]:
    """Run the unfinished jobs, `parallel` at a time, reporting each as it ends; return the
    exit status of each run started. Raises Stopped after a stop signal."""
    todo = [job for job in jobs if not finished(job)]
    for job in todo:
        if job.run_dir.exists() and not holds_run(job.run_dir) and any(job.run_dir.iterdir()):
            raise CheckpointError(f"{job.run_dir} holds files that are not a run; "
                                  "move them away or choose another directory")
    running: set[subprocess.Popen] = set()
    lock = threading.Lock()
    stop: list[int] = []

    def run(job: Job) -> int | None:
        with lock:
            if stop:
                return None
            cmd = command(job)
            job.run_dir.parent.mkdir(parents=True, exist_ok=True)
            with open(job.log, "a") as log:
                process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                           env={**os.environ, **ONE_THREAD})
            running.add(process)
        try:
            return process.wait()
        finally:
            with lock:
                running.discard(process)

    def forward(signum: int, _: Any) -> None:
        with lock:
            stop.append(signum)
            for process in running:
                process.send_signal(signum)

    handlers = {}
    if threading.current_thread() is threading.main_thread():
        handlers = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    codes = {}
    try:
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            futures = {pool.submit(run, job): job for job in todo}
            for future in as_completed(futures):
                job, code = futures[future], future.result()
                if code is not None:
                    codes[job.run_dir] = code
                    report(outcome(job, code))
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    if stop:
        raise Stopped(stop[0], sum(not finished(job) for job in todo))
    return codes
