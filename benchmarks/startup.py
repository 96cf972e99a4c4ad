"""Where the time from `ppo train` to its first update goes.

Two measurements, each repeated in fresh processes (median, min-max):

  1. Whole commands as a user types them: `ppo --help`, `ppo train --help`, and
     `ppo train --quiet --total-timesteps 2048 --no-tensorboard` (one update of the default
     LunarLander-v3 setup, final checkpoint included).
  2. The same `ppo train` taken apart in one child process, each phase timed in the order
     `ppo train` runs it: the interpreter up to `import ppo.cli`, NumPy, Gymnasium, torch, the
     rest of `ppo.agent`, `torch._dynamo` (imported by the first `torch.optim.Adam(...)`,
     timed here apart), the agent's construction (env, model, learner), the first rollout of
     2048 steps, the update's minibatch steps, and the final checkpoint.

    python benchmarks/startup.py --runs 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "startup.md"
PPO_BIN = str(Path(sys.executable).with_name("ppo"))
COMMANDS = {
    "ppo --help": [PPO_BIN, "--help"],
    "ppo train --help": [PPO_BIN, "train", "--help"],
    "ppo train, 2048 steps": [PPO_BIN, "train", "--defaults", "plain", "--quiet",
                              "--total-timesteps", "2048", "--no-tensorboard"],
}


def child_phases(spawned: float) -> dict[str, tuple[float, float]]:
    """(wall, CPU) seconds per phase of one `ppo train` of a single update, in the order it
    runs them; the interpreter's start-up is counted in wall-clock only."""
    phases: dict[str, tuple[float, float]] = {}
    mark, cpu_mark = time.time(), time.process_time()
    phases["interpreter start"] = (mark - spawned, cpu_mark)

    def lap(name: str) -> None:
        nonlocal mark, cpu_mark
        now, cpu_now = time.time(), time.process_time()
        phases[name] = (now - mark, cpu_now - cpu_mark)
        mark, cpu_mark = now, cpu_now

    import ppo.cli  # noqa: F401  (click and ppo.config: what `ppo --help` imports)
    lap("import ppo.cli (click)")
    import numpy  # noqa: F401
    lap("import numpy")
    import gymnasium  # noqa: F401
    lap("import gymnasium")
    import torch  # noqa: F401
    lap("import torch")
    from ppo.agent import PPO
    from ppo.config import Config
    lap("import the rest of ppo.agent")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Config(total_timesteps=2048, tensorboard=False, run_dir=str(Path(tmp) / "run"))
        agent = PPO(cfg, verbose=False)
        lap("construct PPO (env, model, learner)")
        agent.learn()
        lap("learn: first rollout + update + checkpoint")
        agent.close()
        lap("close")
        import csv
        with open(Path(tmp) / "run" / "metrics.csv") as f:
            row = next(csv.DictReader(f))
    rollout = float(row["time_env"]) + float(row["time_act"])
    optimize = float(row["time_advantages"]) + float(row["time_optimize"])
    outside = phases["learn: first rollout + update + checkpoint"][0] - float(row["time_total"])
    phases["  of which: rollout (env + act)"] = (rollout, float("nan"))
    phases["  of which: advantages + minibatch steps"] = (optimize, float("nan"))
    phases["  of which: outside the update (reset, checkpoint, metrics)"] = (outside,
                                                                             float("nan"))
    phases["exit"] = (-time.time(), 0.0)  # completed by the parent when the process is gone
    return phases


def time_command(cmd: list[str]) -> tuple[float, float]:
    """Wall-clock and CPU (user + system) seconds of one command, start-up to exit."""
    with tempfile.TemporaryDirectory() as tmp:
        tick = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=tmp, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - tick
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit(f"{' '.join(cmd)} failed")
        return wall, usage.ru_utime + usage.ru_stime


def spread(values: list[float]) -> str:
    if any(v != v for v in values):  # NaN: not measured
        return "-"
    return (f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"
            if len(values) > 1 else f"{values[0]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--note", help="free text for the results file, e.g. machine load")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--child", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child_phases(args.child)), flush=True)
        os._exit(0)  # as the `ppo` program ends (ppo.cli.entry): no interpreter teardown

    commands: dict[str, list[tuple[float, float]]] = {name: [] for name in COMMANDS}
    phases: dict[str, list[tuple[float, float]]] = {}
    loads = []
    for run in range(args.runs):
        loads.append(os.getloadavg()[0])
        for name, cmd in COMMANDS.items():
            commands[name].append(time_command(cmd))
        out = subprocess.run([sys.executable, __file__, "--child", str(time.time())],
                             check=True, capture_output=True, text=True).stdout
        ended = time.time()
        result = json.loads(out.splitlines()[-1])
        result["exit"] = (ended + result["exit"][0], float("nan"))
        for name, seconds in result.items():
            phases.setdefault(name, []).append(tuple(seconds))
        print(f"run {run + 1}/{args.runs}: " + ", ".join(
            f"{name} {values[-1][0]:.2f} s" for name, values in commands.items()), flush=True)

    lines = ["# Start-up", "", f"- command: `python benchmarks/startup.py "
             f"{' '.join(sys.argv[1:])}`", f"- {args.runs} runs, fresh processes; "
             f"load average (1 min) at the start of each run: "
             f"{', '.join(f'{x:.1f}' for x in loads)} on {os.cpu_count()} CPUs"]
    if args.note:
        lines.append(f"- note: {args.note}")
    lines += ["", "Whole commands, seconds, median (min-max). CPU: user + system time of "
              "the process, less sensitive than wall-clock to other work on the machine.", "",
              "| command | wall s | CPU s |", "|---|---|---|"]
    lines += [f"| `{name}` | {spread([w for w, _ in values])} | "
              f"{spread([c for _, c in values])} |" for name, values in commands.items()]
    lines += ["", "`ppo train` of one 2048-step update taken apart (one process, phases in "
              "the order they run), seconds:", "", "| phase | wall s | CPU s |", "|---|---|---|"]
    lines += [f"| {name} | {spread([w for w, _ in values])} | "
              f"{spread([c for _, c in values])} |" for name, values in phases.items()]
    text = "\n".join(lines) + "\n"
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print("\n" + text)


if __name__ == "__main__":
    main()
