"""Learning benchmark: train one configuration over several seeds and tabulate time to solve.

    python benchmarks/learning.py --name NAME --seeds 0 1 2 3 4 --threshold 200 --jobs 2 \\
        --out-dir DIR -- <ppo train flags...>

Each seed runs `python -m ppo train --quiet --seed S --run-dir DIR/NAME/seedS <flags>` in its
own process (console output in DIR/NAME/seedS.log), at most --jobs at a time. A seed whose run
already finished is skipped and an interrupted one is resumed from its last checkpoint, so the
command can simply be repeated. DIR/NAME/results.md then gives per seed the final mean return,
the first step at which the mean return over the last 100 episodes beat the threshold, the
training wall-clock up to that update (sum of `time_total`) and in all.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

WINDOW = 100  # episodic_return is the mean over the last 100 episodes: count it from then on
RESERVED = ("--seed", "--run-dir", "--resume", "--quiet")


@dataclass
class SeedResult:
    seed: int
    rows: list[dict[str, str]]
    threshold: float
    failed: str = ""

    def _solved_at(self) -> int | None:
        for i, row in enumerate(self.rows):
            ret = row["episodic_return"]
            if ret and int(row["episodes"]) >= WINDOW and float(ret) > self.threshold:
                return i
        return None

    def table_row(self) -> tuple[list[str], int | None, float | None]:
        """The Markdown cells, plus steps and seconds to solve (None when not solved)."""
        if not self.rows:
            return [str(self.seed), self.failed or "no metrics", *["-"] * 6], None, None
        last = self.rows[-1]
        times = [float(r["time_total"]) for r in self.rows]
        kls = [float(r["approx_kl"]) for r in self.rows]
        clips = [float(r["clipfrac"]) for r in self.rows]
        at = self._solved_at()
        steps = None if at is None else int(self.rows[at]["global_step"])
        seconds = None if at is None else sum(times[: at + 1])
        final = float(last["episodic_return"]) if last["episodic_return"] else math.nan
        cells = [
            str(self.seed),
            f"{final:.1f}" + (f" ({self.failed})" if self.failed else ""),
            "not solved" if steps is None else f"{steps:,}",
            "-" if seconds is None else _duration(seconds),
            f"{int(last['global_step']):,}",
            _duration(sum(times)),
            f"{statistics.median(kls):.4f}",
            f"{statistics.median(clips):.3f}",
        ]
        return cells, steps, seconds


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _read_metrics(run_dir: Path) -> list[dict[str, str]]:
    path = run_dir / "metrics.csv"
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _finished(run_dir: Path) -> bool:
    config = run_dir / "config.toml"
    rows = _read_metrics(run_dir)
    if not config.exists() or not rows:
        return False
    total = tomllib.loads(config.read_text())["total_timesteps"]
    return int(rows[-1]["global_step"]) >= total


def _train(seed: int, run_dir: Path, flags: list[str]) -> str:
    """Train (or resume) one seed; return '' on success, else a short failure note."""
    if _finished(run_dir):
        print(f"seed {seed}: finished run in {run_dir}, skipped", flush=True)
        return ""
    ppo = [sys.executable, "-m", "ppo", "train", "--quiet"]
    if any((run_dir / "checkpoints").glob("*.safetensors")):
        command = [*ppo, "--resume", str(run_dir)]
    else:
        shutil.rmtree(run_dir, ignore_errors=True)  # started but never checkpointed
        command = [*ppo, "--seed", str(seed), "--run-dir", str(run_dir), *flags]
    print(f"seed {seed}: {shlex.join(command)}", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    log_path = run_dir.with_name(f"{run_dir.name}.log")
    with open(log_path, "a") as log:
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    print(f"seed {seed}: exit {code}", flush=True)
    return "" if code == 0 else f"exit {code}, see {log_path.name}"


def write_results(path: Path, name: str, flags: list[str], threshold: float,
                  results: list[SeedResult]) -> str:
    header = ["seed", "final return", "steps to solve", "wall-clock to solve", "steps run",
              "total wall-clock", "median approx_kl", "median clipfrac"]
    lines = [
        f"# {name}",
        "",
        f"`ppo train {shlex.join(flags)}`, solved = mean return over the last {WINDOW} "
        f"episodes > {threshold:g}. Wall-clock is training time summed over updates.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    solved_steps, solved_seconds = [], []
    for result in results:
        cells, steps, seconds = result.table_row()
        lines.append("| " + " | ".join(cells) + " |")
        if steps is not None:
            solved_steps.append(steps)
            solved_seconds.append(seconds)
    summary = f"Solved: {len(solved_steps)}/{len(results)} seeds"
    if solved_steps:
        summary += (f"; median over solved seeds: {statistics.median(solved_steps):,.0f} steps, "
                    f"{_duration(statistics.median(solved_seconds))} to solve")
    lines += ["", summary + "."]
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="Benchmark name: DIR/NAME holds its runs.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--threshold", type=float, required=True,
                        help="Solved once the mean return over the last 100 episodes beats it.")
    parser.add_argument("--jobs", type=int, default=2, help="Training processes at a time.")
    parser.add_argument("--out-dir", type=Path, default=Path("benchmarks/runs"))
    parser.add_argument("flags", nargs=argparse.REMAINDER,
                        help="After `--`: flags passed to `ppo train`.")
    args = parser.parse_args()
    flags = args.flags[1:] if args.flags[:1] == ["--"] else args.flags
    if reserved := [f for f in flags if f.split("=")[0] in RESERVED]:
        parser.error(f"{', '.join(reserved)} are set by the benchmark itself")
    if len(set(args.seeds)) != len(args.seeds):
        parser.error("--seeds must be distinct")
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")

    bench_dir = args.out_dir / args.name
    bench_dir.mkdir(parents=True, exist_ok=True)
    run_dirs = {seed: bench_dir / f"seed{seed}" for seed in args.seeds}
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        failures = dict(zip(args.seeds, pool.map(
            lambda seed: _train(seed, run_dirs[seed], flags), args.seeds), strict=True))
    results = [SeedResult(seed, _read_metrics(run_dirs[seed]), args.threshold, failures[seed])
               for seed in args.seeds]
    print(write_results(bench_dir / "results.md", args.name, flags, args.threshold, results))
    return 1 if any(failures.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
