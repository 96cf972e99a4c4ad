"""What a run says on the console: a line per update with its progress and ETA (plain text,
so that logs of detached runs show them too), the step count when rounding to whole rollouts
changes it, and a summary at the end."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np


def figure(x: float, sign: bool = False) -> str:
    """A return as people read it: one decimal from 10 up, three significant digits below
    (Blackjack's -0.0442, MiniGrid's 0.965 would both read as 0.0 or 1.0 otherwise)."""
    if math.isnan(x):
        return "n/a"
    spec = "+" if sign else ""
    return f"{x:{spec}.1f}" if abs(x) >= 10 or x == 0 else f"{x:{spec}.3g}"


class Progress(NamedTuple):
    """How far a run is: env steps done of the total, seconds elapsed, seconds left (NaN
    until a step has been timed)."""

    step: int
    total: int
    elapsed: float
    eta: float


def progress(step: int, total: int, start_step: int, elapsed: float) -> Progress:
    """Progress at `step`, `elapsed` seconds after this session started at `start_step`;
    the ETA assumes the remaining steps go at this session's rate so far."""
    done = step - start_step
    eta = (total - step) * elapsed / done if done > 0 else math.nan
    return Progress(step, total, elapsed, max(eta, 0.0))


def duration(seconds: float) -> str:
    """H:MM:SS; '?' when unknown."""
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


def console_line(row: dict[str, Any], at: Progress | None = None) -> str:
    """The line printed after an update; with `at`, the step of the total, the percentage done,
    the time elapsed and the ETA."""
    ret = row["episodic_return"]
    ret_text = "   n/a" if math.isnan(ret) else figure(ret, sign=True)
    step = f"step {row['global_step']}"
    if at is not None:
        step += f"/{at.total} ({100 * at.step / at.total:.0f}%)"
    if "eval_return" in row:
        ret_text += f" eval={figure(row['eval_return'], sign=True)}"
    line = (
        f"update {row['update']:03d} {step} return={ret_text} "
        f"kl={row['approx_kl']:.3f} clipfrac={row['clipfrac']:.2f} "
        f"loss_pi={row['policy_loss']:+.3f} loss_v={row['value_loss']:.3g} "
        f"entropy={row['entropy']:.3f} ev={row['explained_variance']:.2f} sps={row['sps']:.0f}"
    )
    if at is not None:
        line += f" elapsed={duration(at.elapsed)} eta={duration(at.eta)}"
    return line


def planned_steps(start_step: int, end_step: int, steps_per_update: int) -> int:
    """The env step a run ends at: it trains whole updates until it reaches end_step."""
    updates = max(0, -(-(end_step - start_step) // steps_per_update))
    return start_step + updates * steps_per_update


def rounding_note(start_step: int, end_step: int, steps_per_update: int) -> str | None:
    """A line saying how many steps the run will take, when that is not the end_step asked
    for; None when it is. steps_per_update: rollout_steps x num_envs (x processes)."""
    actual = planned_steps(start_step, end_step, steps_per_update)
    if actual == end_step:
        return None
    updates = (actual - start_step) // steps_per_update
    return (f"total_timesteps {end_step} is not a whole number of updates of "
            f"{steps_per_update} steps: the run trains to step {actual} ({updates} "
            f"update{'s' if updates != 1 else ''} to go)")


def run_summary(metrics: dict[str, np.ndarray], checkpoints: dict[int, Path],
                best_file: Path | None = None) -> list[str]:
    """Lines for the end of a run: final and best return (each the mean of the last 100
    episodes at an update), the best evaluation, training wall-clock, and where the last
    checkpoint and the best one are (the best evaluation's `best_file` when the run evaluated,
    else the checkpointed update with the highest return). `metrics`: the metrics.csv
    columns; `checkpoints`: update -> checkpoint file."""
    if not len(metrics.get("update", [])):
        return ["no update was logged"]
    returns, steps = metrics["episodic_return"], metrics["global_step"]
    updates = metrics["update"].astype(int)
    lines = []
    if np.isfinite(returns).any():
        best = int(np.nanargmax(returns))
        final = returns[-1]
        lines += [f"final return {figure(final, sign=True)} at step "
                  f"{steps[-1]:.0f} (mean of the last 100 episodes)",
                  f"best return {figure(returns[best], sign=True)} at step {steps[best]:.0f} "
                  f"(update {updates[best]})"]
    else:
        lines.append("no episode has finished: no return yet")
    evaluations = metrics.get("eval_return", np.zeros(0))
    if np.isfinite(evaluations).any():
        best = int(np.nanargmax(evaluations))
        lines.append(f"best evaluation {figure(evaluations[best], sign=True)} at step "
                     f"{steps[best]:.0f} (update {updates[best]})")
    lines.append(f"wall-clock {duration(float(np.sum(metrics['time_total'])))} of training")
    if checkpoints:
        lines.append(f"last checkpoint: {checkpoints[max(checkpoints)]}")
    if best_file is not None and best_file.is_file() and np.isfinite(evaluations).any():
        top = figure(np.nanmax(evaluations), sign=True)
        lines.append(f"best checkpoint: {best_file} (evaluation {top})")
    elif checkpoints:
        by_update = dict(zip(updates.tolist(), returns.tolist(), strict=True))
        scored = {u: by_update[u] for u in checkpoints if math.isfinite(by_update.get(u, math.nan))}
        if scored:
            best_update = max(scored, key=scored.get)
            lines.append(f"best checkpoint: {checkpoints[best_update]} "
                         f"(return {figure(scored[best_update], sign=True)})")
    return lines
