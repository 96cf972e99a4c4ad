"""Figures: the clipped objective and its gradient, learning curves, the clip-range ablation,
and performance profiles.

Everything is drawn on standalone `matplotlib.figure.Figure` objects rendered by the Agg
canvas, so no pyplot state is created or leaked: safe headless, in tests and in loops.
"""

from __future__ import annotations

import math
import tomllib
from collections import Counter
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import EngFormatter

from ppo.metrics import CLIPFRAC_BAND, KL_LIMIT, read_metrics
from ppo.stats import performance_profile, stratified_bootstrap

FORMATS = (".png", ".pdf", ".svg")
CURVE_COLUMNS = ("global_step", "episodic_return", "approx_kl", "clipfrac")
IGNORED_CONFIG_KEYS = ("seed", "run_dir")


def clipped_objective(r: np.ndarray, adv: float, eps: float) -> np.ndarray:
    """L^CLIP(r) = min(r*A, clip(r, 1-eps, 1+eps)*A) for a fixed advantage A."""
    r = np.asarray(r, dtype=float)
    return np.minimum(r * adv, np.clip(r, 1.0 - eps, 1.0 + eps) * adv)


def clipped_objective_grad(r: np.ndarray, adv: float, eps: float) -> np.ndarray:
    """dL^CLIP/dr: A where the unclipped term r*A is the minimum (ties included, as at the
    hinges themselves), 0 where the clipped term is strictly smaller: the flat, fenced side."""
    r = np.asarray(r, dtype=float)
    unclipped_active = r * adv <= np.clip(r, 1.0 - eps, 1.0 + eps) * adv
    return np.where(unclipped_active, float(adv), 0.0)


def plot_objective(eps: float, out: Path) -> Path:
    """L^CLIP and its gradient against the ratio r, for A = +1 and A = -1.

    Shows the seed's ratchet: beyond a hinge on the side the advantage pushes towards, the
    objective is flat and the gradient is zero. The ratio axis spans [0, 2], widened to show
    the upper hinge when eps > 0.6. Any eps > 0 is accepted, as training accepts it: for
    eps >= 1 the lower hinge 1-eps <= 0 lies outside the ratio's range r > 0, so only the
    upper hinge is drawn (and with A < 0 the clip never bites).
    """
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite number > 0, got {eps}")
    r_max = max(2.0, 1.25 * (1.0 + eps))
    hinges = [h for h in (1.0 - eps, 1.0 + eps) if 0.0 < h < r_max]
    r = np.union1d(np.linspace(0.0, r_max, 2001), hinges)

    fig = Figure(figsize=(10, 6.5), layout="constrained")
    axes = fig.subplots(2, 2, sharex=True)
    for col, adv in enumerate((1.0, -1.0)):
        top, bottom = axes[0, col], axes[1, col]
        grad = clipped_objective_grad(r, adv, eps)
        for ax in (top, bottom):
            ax.fill_between(r, 0, 1, where=grad == 0, transform=ax.get_xaxis_transform(),
                            color="tab:red", alpha=0.12 if ax is bottom else 0.06, lw=0,
                            label="zero gradient" if ax is bottom else None)
            for h in hinges:
                ax.axvline(h, color="0.3", ls=":", lw=1.2)
            ax.axhline(0, color="0.6", lw=0.8)
            ax.grid(alpha=0.3)
        top.plot(r, r * adv, ls="--", color="0.5", label=r"$rA$ (unclipped)")
        top.plot(r, clipped_objective(r, adv, eps), color="tab:blue", lw=2,
                 label=r"$L^{CLIP} = \min(rA,\ \mathrm{clip}(r, 1-\epsilon, 1+\epsilon)A)$")
        for h in hinges:
            below = h < 1.0
            top.text(h + (-0.02 if below else 0.02) * r_max, 0.93,
                     f"1{'−' if below else '+'}ε = {h:g}", transform=top.get_xaxis_transform(),
                     ha="right" if below else "left", va="top", fontsize=9)
        # Break the line at the jumps so the step is not drawn as a steep slope.
        jumps = np.flatnonzero(np.diff(grad)) + 1
        bottom.plot(np.insert(r, jumps, np.nan), np.insert(grad, jumps, np.nan),
                    color="tab:blue", lw=2, label=r"$dL^{CLIP}/dr$")
        bottom.set_ylim(min(adv, 0.0) - 0.5, max(adv, 0.0) + 0.5)
        top.set_title(f"A {'>' if adv > 0 else '<'} 0 (A = {adv:+g})")
        top.set_ylabel(r"$L^{CLIP}(r)$")
        bottom.set_ylabel(r"$dL^{CLIP}/dr$")
        bottom.set_xlabel(r"ratio $r = \pi_\theta(a|s)\ /\ \pi_{old}(a|s)$")
        top.legend(loc="lower right" if adv > 0 else "lower left", fontsize=8)
        bottom.legend(loc="center right" if adv > 0 else "center left", fontsize=8)
    axes[0, 0].set_xlim(0.0, r_max)
    fig.suptitle(f"PPO-Clip objective, ε = {eps:g}")
    return _save(fig, out)


def group_runs(run_dirs: Sequence[Path], labels: Sequence[str] | None = None
               ) -> dict[str, list[Path]]:
    """Runs grouped by configuration, keyed by a legend label, in order of first appearance.

    With labels, runs sharing a label form a group. Otherwise the key is the run's
    config.toml without seed and run_dir, and the label names the config keys that differ
    between groups (e.g. "clip_eps=1.0"); a key on which most groups agree is shown only
    for the groups that depart from it, so a baseline among several variants shows as
    "baseline". A single group is labelled by its env id.
    """
    run_dirs = [Path(d) for d in run_dirs]
    if labels is not None:
        if len(labels) != len(run_dirs):
            raise ValueError(f"got {len(labels)} labels for {len(run_dirs)} run directories")
        grouped: dict[str, list[Path]] = {}
        for label, run_dir in zip(labels, run_dirs, strict=True):
            grouped.setdefault(label, []).append(run_dir)
        return grouped

    by_config: dict[str, tuple[dict[str, Any], list[Path]]] = {}
    for run_dir in run_dirs:
        config = _read_config(run_dir)
        by_config.setdefault(repr(sorted(config.items())), (config, []))[1].append(run_dir)
    configs = [config for config, _ in by_config.values()]
    if len(configs) == 1:
        return {str(configs[0].get("env_id", run_dirs[0].name)): run_dirs}
    keys = sorted({k for c in configs for k in c})
    differing = [k for k in keys if len({repr(c.get(k)) for c in configs}) > 1]
    majority = {}
    for k in differing:
        (top, n), *rest = Counter(repr(c.get(k)) for c in configs).most_common()
        if n > 1 and (not rest or rest[0][1] < n):
            majority[k] = top
    grouped = {}
    for config, dirs in by_config.values():
        shown = [f"{k}={config.get(k)}" for k in differing
                 if majority.get(k) != repr(config.get(k))]
        grouped[", ".join(shown) or "baseline"] = dirs
    return grouped


def plot_runs(run_dirs: Sequence[Path], out: Path, labels: Sequence[str] | None = None,
              title: str = "Learning curves") -> Path:
    """Learning curves: return, approx KL and clip fraction against env steps, one colour
    per configuration, mean over its runs with a min-max band. The seed's healthy ranges
    (KL < 0.02, clip fraction 0.1-0.3) are shaded green."""
    if not run_dirs:
        raise ValueError("no run directories to plot")
    curves = _group_curves(group_runs(run_dirs, labels), CURVE_COLUMNS[1:])

    fig = Figure(figsize=(9, 9), layout="constrained")
    ax_ret, ax_kl, ax_clip = fig.subplots(3, 1, sharex=True)
    healthy = {
        ax_kl: ax_kl.axhspan(0, KL_LIMIT, color="tab:green", alpha=0.12, lw=0,
                             label=f"healthy: KL < {KL_LIMIT}"),
        ax_clip: ax_clip.axhspan(*CLIPFRAC_BAND, color="tab:green", alpha=0.12, lw=0,
                                 label=f"healthy: {CLIPFRAC_BAND[0]}-{CLIPFRAC_BAND[1]}"),
    }
    for i, (label, (n, grid, stats)) in enumerate(curves.items()):
        color = f"C{i % 10}"
        for ax, column in zip((ax_ret, ax_kl, ax_clip), CURVE_COLUMNS[1:], strict=True):
            _draw_band(ax, grid, stats[column], color, f"{label} (n={n})")
    # Symlog keeps KL = 0 visible (the recomputed-old-logprobs pitfall) and exploding KL readable.
    ax_kl.set_yscale("symlog", linthresh=1e-3)
    ax_kl.set_ylim(bottom=0)
    ax_clip.set_ylim(bottom=0)
    ax_ret.set_ylabel("episodic return")
    ax_kl.set_ylabel("approx KL (symlog)")
    ax_clip.set_ylabel("clip fraction")
    ax_clip.set_xlabel("environment steps")
    ax_clip.xaxis.set_major_formatter(EngFormatter())
    ax_ret.legend(fontsize=8, loc="best")
    for ax, span in healthy.items():
        ax.legend(handles=[span], fontsize=8, loc="best")
    for ax in (ax_ret, ax_kl, ax_clip):
        ax.grid(alpha=0.3)
    fig.suptitle(f"{title} (mean over runs, band: min-max)")
    return _save(fig, out)


def plot_return_and_kl(groups: dict[str, list[Path]], out: Path) -> Path:
    """Return (left axis, solid) and approx KL (right axis, log, dashed) of each group on the
    same axes, mean over runs with a min-max band: the seed's eps = 1.0 ablation, where the
    collapse in return follows KL leaving the trust region."""
    if not any(groups.values()):
        raise ValueError("no run directories to plot")
    curves = _group_curves({k: v for k, v in groups.items() if v},
                           ("episodic_return", "approx_kl"))

    fig = Figure(figsize=(10, 5.5), layout="constrained")
    ax_ret = fig.add_subplot()
    ax_kl = ax_ret.twinx()
    ax_kl.axhline(KL_LIMIT, color="tab:green", ls=":", lw=1.5)
    ax_kl.text(1.0, KL_LIMIT, f"KL {KL_LIMIT} ", transform=ax_kl.get_yaxis_transform(),
               ha="right", va="bottom", color="tab:green", fontsize=8)
    handles = []
    for i, (label, (n, grid, stats)) in enumerate(curves.items()):
        color = f"C{i % 10}"
        _draw_band(ax_ret, grid, stats["episodic_return"], color, None)
        kl = stats["approx_kl"]
        # Log scale: zero or negative values cannot be drawn, so they are left out.
        _draw_band(ax_kl, grid, tuple(np.where(s > 0, s, np.nan) for s in kl), color, None,
                   ls="--")
        handles.append(Line2D([], [], color=color, lw=2, label=f"{label} (n={n})"))
    handles += [Line2D([], [], color="0.3", label="return (left)"),
                Line2D([], [], color="0.3", ls="--", label="approx KL (right, log)")]
    ax_kl.set_yscale("log")
    ax_ret.set_xlabel("environment steps")
    ax_ret.set_ylabel("episodic return")
    ax_kl.set_ylabel("approx KL (log)")
    ax_ret.xaxis.set_major_formatter(EngFormatter())
    ax_ret.grid(alpha=0.3)
    ax_ret.legend(handles=handles, fontsize=8, loc="upper left")
    fig.suptitle("Return and approx KL (mean over runs, band: min-max)")
    return _save(fig, out)


def plot_profiles(scores: dict[str, dict[str, np.ndarray]], out: Path,
                  what: str = "final return") -> Path:
    """Performance profiles (Agarwal et al. 2021): for each threshold tau, the fraction of a
    group's runs scoring above it, with a 95% stratified-bootstrap band. One panel per task
    (`scores`: task -> group label -> one score per run), as returns of different tasks
    share no scale."""
    panels = {task: {label: np.asarray(s, dtype=float) for label, s in groups.items() if len(s)}
              for task, groups in scores.items()}
    panels = {task: groups for task, groups in panels.items() if groups}
    if not panels:
        raise ValueError("no scores to draw performance profiles of")
    fig = Figure(figsize=(5.5 * len(panels), 4.5), layout="constrained")
    for ax, (task, groups) in zip(np.atleast_1d(fig.subplots(1, len(panels))), panels.items(),
                                  strict=True):
        every = np.concatenate(list(groups.values()))
        margin = 0.05 * (np.ptp(every) or max(1.0, abs(every[0])))
        taus = np.linspace(every.min() - margin, every.max() + margin, 401)
        for i, (label, s) in enumerate(groups.items()):
            color = f"C{i % 10}"
            low, high = stratified_bootstrap(s, partial(performance_profile, taus=taus))
            ax.fill_between(taus, low, high, step="post", color=color, alpha=0.18, lw=0)
            ax.step(taus, performance_profile(s, taus), where="post", color=color,
                    lw=1.6, label=f"{label} (n={len(s)})")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel(f"{what} τ")
        ax.set_ylabel(f"fraction of runs with {what} > τ")
        ax.set_title(task)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle("Performance profiles (band: 95% stratified-bootstrap CI)")
    return _save(fig, out)


Stats = tuple[np.ndarray, np.ndarray, np.ndarray]


def _group_curves(groups: dict[str, list[Path]], columns: Sequence[str]
                  ) -> dict[str, tuple[int, np.ndarray, dict[str, Stats]]]:
    """Per group: runs that logged anything, the union of their step grids, and per column
    the (mean, min, max) over runs of each run's curve interpolated onto that grid.

    Runs with no rows yet are skipped; a step outside a run's logged range does not count it.
    """
    result = {}
    for label, run_dirs in groups.items():
        runs = [m for m in (_load(d, ("global_step", *columns)) for d in run_dirs)
                if len(m["global_step"])]
        if not runs:
            continue
        grid = np.unique(np.concatenate([m["global_step"] for m in runs]))
        stats = {c: _mean_min_max([_interp(grid, m["global_step"], m[c]) for m in runs])
                 for c in columns}
        result[label] = (len(runs), grid, stats)
    if not result:
        names = ", ".join(str(d) for dirs in groups.values() for d in dirs)
        raise ValueError(f"no run has logged an update yet: {names}")
    return result


def _load(run_dir: Path, columns: Sequence[str]) -> dict[str, np.ndarray]:
    metrics = read_metrics(run_dir)
    missing = [c for c in columns if c not in metrics]
    if missing:
        raise ValueError(f"{Path(run_dir) / 'metrics.csv'} lacks column(s): {', '.join(missing)}")
    return metrics


def _read_config(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "config.toml"
    try:
        config = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(
            f"{run_dir}: no config.toml (not a run directory?) to group runs by") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path} is not valid TOML: {e}") from None
    return {k: v for k, v in config.items() if k not in IGNORED_CONFIG_KEYS}


def _interp(grid: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """y on the grid, linear between its finite points, NaN outside them."""
    finite = np.isfinite(x) & np.isfinite(y)
    if not finite.any():
        return np.full(grid.shape, np.nan)
    return np.interp(grid, x[finite], y[finite], left=np.nan, right=np.nan)


def _mean_min_max(curves: list[np.ndarray]) -> Stats:
    """Mean, min and max over the finite values at each point (NaN where there are none)."""
    stack = np.stack(curves)
    finite = np.isfinite(stack)
    count = finite.sum(axis=0)
    some = count > 0
    mean = np.where(some, np.where(finite, stack, 0.0).sum(axis=0) / np.maximum(count, 1), np.nan)
    low = np.where(some, np.where(finite, stack, np.inf).min(axis=0), np.nan)
    high = np.where(some, np.where(finite, stack, -np.inf).max(axis=0), np.nan)
    return mean, low, high


def _draw_band(ax: Axes, grid: np.ndarray, stats: Stats, color: str, label: str | None,
               ls: str = "-") -> None:
    mean, low, high = stats
    ax.fill_between(grid, low, high, color=color, alpha=0.18, lw=0)
    ax.plot(grid, mean, color=color, lw=1.6, ls=ls, label=label)


def _save(fig: Figure, out: Path) -> Path:
    """Render with Agg to out (format from its suffix; none means PNG) and return the path."""
    out = Path(out)
    if not out.suffix:
        out = out.with_suffix(".png")
    if out.suffix.lower() not in FORMATS:
        raise ValueError(f"cannot write {out}: image format must be one of {', '.join(FORMATS)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(out, dpi=150)
    return out


def plot_evaluations(groups: dict[str, list[Path]], out: Path, title: str,
                     target: float | None = None) -> Path:
    """The deterministic evaluation return (solid) and the training return (dashed) against
    env steps, per group: mean over its runs with a min-max band; the target as a line."""
    curves = _group_curves(groups, ("eval_return", "episodic_return"))
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    for i, (label, (n, grid, stats)) in enumerate(curves.items()):
        color = f"C{i % 10}"
        _draw_band(ax, grid, stats["eval_return"], color, f"{label} (n={n}): evaluation")
        ax.plot(grid, stats["episodic_return"][0], color=color, lw=1, ls="--",
                label=f"{label}: training episodes")
    if target is not None:
        ax.axhline(target, color="0.3", lw=1, ls=":", label=f"target {target:g}")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("return")
    ax.xaxis.set_major_formatter(EngFormatter())
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.suptitle(f"{title} (mean over runs, band: min-max)")
    return _save(fig, out)
