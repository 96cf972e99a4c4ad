"""Steps/s of data-parallel `ppo` with 1 and 2 ranks on LunarLander-v3: weak scaling.

Each rank keeps the standard setup, 1 env x 2048 steps per update, with the standard
hyperparameters (ppo's defaults); 2 ranks therefore collect 4096 steps per update and run
the same number of updates as 1 rank. 1 rank is a plain `ppo train`, 2 ranks are
`ppo train --nproc 2` (torchrun, gloo). Runs alternate 1, 2, 1, 2, ... so that drift in
the machine's load hits both alike.

Steps/s is training only: steps over the summed update times from metrics.csv (start-up,
imports and the rendezvous excluded; wall time is reported apart). Scaling efficiency is
sps(2) / (2 x sps(1)): 1.0 is perfect. The load average is sampled around every run,
because on a machine with few cores other processes compete with the ranks.

    python benchmarks/scaling.py                    # 20 updates per run, 3 runs each
    python benchmarks/scaling.py --updates 5 --runs 1
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENV_ID = "LunarLander-v3"
ROLLOUT_STEPS = 2048  # per rank per update, 1 env
RESULTS = Path(__file__).resolve().parent / "results" / "scaling.md"


def run(ranks: int, updates: int, seed: int) -> dict:
    """One `ppo train`; its training steps/s from metrics.csv, wall time and load around it."""
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        command = [sys.executable, "-m", "ppo", "train", "--env", ENV_ID,
                   "--total-timesteps", str(updates * ROLLOUT_STEPS * ranks),
                   "--rollout-steps", str(ROLLOUT_STEPS), "--num-envs", "1",
                   "--seed", str(seed), "--run-dir", str(run_dir), "--quiet",
                   "--no-tensorboard", "--checkpoint-every", str(updates)]
        if ranks > 1:
            command[4:4] = ["--nproc", str(ranks)]
        load_before = os.getloadavg()[0]
        tick = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        wall = time.perf_counter() - tick
        load_after = os.getloadavg()[0]
        with open(run_dir / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
    steps = int(rows[-1]["global_step"])
    total = {c: sum(float(r[c]) for r in rows) for c in ("time_total", "time_optimize")}
    return {"sps": steps / total["time_total"], "wall": wall, "steps": steps,
            "optimize": total["time_optimize"] / total["time_total"],
            "load": (load_before, load_after)}


def report(results: dict[int, list[dict]], args: argparse.Namespace, started: str) -> str:
    sps = {n: statistics.median(r["sps"] for r in runs) for n, runs in results.items()}
    loads = [x for runs in results.values() for r in runs for x in r["load"]]
    lines = [
        "# Scaling benchmark (data-parallel, weak scaling)",
        "",
        f"- date: {started}",
        f"- machine: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}",
        f"- {ENV_ID}, 1 env x {ROLLOUT_STEPS} steps per rank per update, {args.updates} "
        f"updates per run, {args.runs} run(s) each, alternating; seed = run index",
        f"- command: `python benchmarks/scaling.py {' '.join(sys.argv[1:])}`".rstrip(),
        f"- load average (1 min) around the runs: {min(loads):.1f} to {max(loads):.1f}",
    ]
    if args.note:
        lines.append(f"- note: {args.note}")
    lines += [
        "",
        "Steps/s: median (min-max) over runs, training only; wall s: whole command, start-up "
        "included. Efficiency: sps(N) / (N x sps(1)). Optimize: share of the training time "
        "spent in the K epochs of minibatch steps, where the ranks meet at every step.",
        "",
        "| ranks | steps per update | steps/s | efficiency | optimize | wall s | load avg |",
        "|---|---|---|---|---|---|---|",
    ]
    for n, runs in results.items():
        values = [r["sps"] for r in runs]
        load = statistics.median(sum(r["load"]) / 2 for r in runs)
        lines.append(
            f"| {n} | {n * ROLLOUT_STEPS} | {sps[n]:.0f} ({min(values):.0f}-{max(values):.0f}) "
            f"| {sps[n] / (n * sps[1]):.2f} "
            f"| {statistics.median(r['optimize'] for r in runs):.0%} "
            f"| {statistics.median(r['wall'] for r in runs):.1f} | {load:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, default=20, help="updates per run")
    parser.add_argument("--runs", type=int, default=3, help="runs per rank count")
    parser.add_argument("--note", default="", help="a line about the machine's state")
    parser.add_argument("--output", type=Path, default=RESULTS, help="Markdown results file")
    args = parser.parse_args()

    started = datetime.datetime.now().isoformat(timespec="minutes")
    results: dict[int, list[dict]] = {1: [], 2: []}
    for seed in range(args.runs):
        for ranks in results:
            result = run(ranks, args.updates, seed)
            results[ranks].append(result)
            print(f"{ranks} rank(s), seed {seed}: {result['sps']:.0f} steps/s, "
                  f"load {result['load'][0]:.1f} -> {result['load'][1]:.1f}", file=sys.stderr)
    text = report(results, args, started)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)


if __name__ == "__main__":
    main()
