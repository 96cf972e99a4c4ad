"""How often the health check warns, replayed over finished runs' metrics.csv.

    python benchmarks/health_check.py --group LABEL GLOB [--group LABEL GLOB ...] [--output FILE]

Each GLOB matches run directories (e.g. `runs/zoo/*/task_settings/seed*`). For every run the
check that `ppo train` applies after each update (ppo.metrics.HealthCheck) is replayed on its
rows; the table gives, per group, the runs it warned on (named by the last two parts of
their path) with the update it first warned at, and the highest approx KL of each run.
"""

from __future__ import annotations

import argparse
import glob
from pathlib import Path

import numpy as np

from ppo.metrics import KL_WARNING, PATIENCE, HealthCheck, read_metrics


def first_warning(approx_kl: np.ndarray) -> int | None:
    """The update (1-based) at which the check first warns, or None."""
    check = HealthCheck()
    for update, kl in enumerate(approx_kl, 1):
        if check.check({"approx_kl": kl, "update": update}):
            return update
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--group", nargs=2, action="append", required=True,
                        metavar=("LABEL", "GLOB"))
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    lines = [f"Warning rule: approx KL above {KL_WARNING} for {PATIENCE} updates in a row.", "",
             "| group | runs | warned | warned runs (first warning at update) | "
             "max approx KL (per run) |", "|---|---|---|---|---|"]
    for label, pattern in args.group:
        runs = sorted(p for p in map(Path, glob.glob(pattern)) if (p / "metrics.csv").exists())
        firsts, peaks = [], []
        for run in runs:
            kl = read_metrics(run)["approx_kl"]
            firsts.append(first_warning(kl))
            peaks.append(float(np.nanmax(kl)))
        warned = [f"{run.parent.parent.name}/{run.parent.name}/{run.name} ({first})"
                  for run, first in zip(runs, firsts, strict=True) if first is not None]
        lines.append(f"| {label} | {len(runs)} | {len(warned)} | "
                     f"{', '.join(warned) or '-'} | "
                     f"{', '.join(f'{p:.3f}' for p in peaks)} |")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.output:
        args.output.write_text(text)


if __name__ == "__main__":
    main()
