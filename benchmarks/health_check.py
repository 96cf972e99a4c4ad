"""How often the health check warns, replayed over finished runs' metrics.csv.

    python benchmarks/health_check.py GROUP=GLOB [GROUP=GLOB ...] [--output FILE]

Each GLOB matches run directories (e.g. `runs/zoo/*/task_settings/seed*`). For every run the
check that `ppo train` applies after each update (ppo.metrics.HealthCheck) is replayed on its
rows; the table gives, per group, the runs it warned on, the first update it warned at, and
the highest approx KL seen.
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
    parser.add_argument("groups", nargs="+", metavar="GROUP=GLOB")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    lines = [f"Warning rule: approx KL above {KL_WARNING} for {PATIENCE} updates in a row.", "",
             "| group | runs | warned | first warning at update (per warned run) | "
             "max approx KL (per run) |", "|---|---|---|---|---|"]
    for group in args.groups:
        label, _, pattern = group.partition("=")
        runs = sorted(p for p in map(Path, glob.glob(pattern)) if (p / "metrics.csv").exists())
        firsts, peaks = [], []
        for run in runs:
            kl = read_metrics(run)["approx_kl"]
            firsts.append(first_warning(kl))
            peaks.append(float(np.nanmax(kl)))
        warned = [f for f in firsts if f is not None]
        lines.append(f"| {label} | {len(runs)} | {len(warned)} | "
                     f"{', '.join(map(str, warned)) or '-'} | "
                     f"{', '.join(f'{p:.3f}' for p in peaks)} |")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.output:
        args.output.write_text(text)


if __name__ == "__main__":
    main()
