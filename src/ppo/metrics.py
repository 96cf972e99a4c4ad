"""Per-update diagnostics and where they go: metrics.csv, TensorBoard, Weights & Biases, the
console."""

from __future__ import annotations

import csv
import io
import math
import secrets
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from ppo.checkpoint import CHECKPOINT_NAME, write_atomic
from ppo.config import Config
from ppo.console import Progress, console_line, progress, run_summary
from ppo.extras import require

COLUMNS = (
    "update", "global_step", "episodic_return", "episodic_length", "episodes",
    "approx_kl", "clipfrac", "policy_loss", "value_loss", "entropy", "explained_variance",
    "learning_rate", "epochs_run", "nonfinite_steps", "sps",
    "time_env", "time_act", "time_advantages", "time_optimize", "time_total",
)
# The seed's healthy ranges: the ratchet misbehaves outside them.
KL_LIMIT = 0.02
CLIPFRAC_BAND = (0.1, 0.3)


class HealthCheck:
    """Warns once per stretch of trouble: a sign outside its range for `patience` updates."""

    def __init__(self, patience: int = 3, clipfrac: bool = True) -> None:
        self.patience = patience
        self.streaks = {"kl": 0, "clipfrac": 0}
        # TRPO has no clip: its clip fraction is for comparison, no sign of trouble.
        self.clipfrac = clipfrac

    def check(self, row: dict[str, Any]) -> list[str]:
        signs = {
            "kl": (row["approx_kl"] > KL_LIMIT,
                   f"approx KL has stayed above {KL_LIMIT} (now {row['approx_kl']:.3f}): "
                   "steps leave the trust region; lower lr or epochs, or set --target-kl"),
            "clipfrac": (not CLIPFRAC_BAND[0] <= row["clipfrac"] <= CLIPFRAC_BAND[1],
                         f"clip fraction has stayed outside {CLIPFRAC_BAND[0]}-{CLIPFRAC_BAND[1]} "
                         f"(now {row['clipfrac']:.3f}): the ratchet is "
                         + ("idle" if row["clipfrac"] < CLIPFRAC_BAND[0] else "pinned")),
        }
        if not self.clipfrac:
            del signs["clipfrac"]
        warnings = []
        for name, (bad, message) in signs.items():
            self.streaks[name] = self.streaks[name] + 1 if bad else 0
            if self.streaks[name] == self.patience:
                warnings.append(f"warning: update {row['update']}: {message}")
        return warnings


class Sink(Protocol):
    """Somewhere rows go: one call per update, then close."""

    def log(self, row: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class CsvSink:
    """metrics.csv in the run directory, one row per update; on resume, rows after the
    checkpoint are dropped first so that no update appears twice. Columns first seen mid-run
    (evaluation, an env's episode info) widen the header: the file is rewritten once, earlier
    rows with empty cells there."""

    def __init__(self, run_dir: Path, first_update: int) -> None:
        self.path = Path(run_dir) / "metrics.csv"
        _truncate_after(self.path, first_update - 1)
        new = not self.path.exists()
        self.columns = list(COLUMNS) if new else _header(self.path)
        self._open()
        if new:
            self.writer.writeheader()

    def _open(self) -> None:
        self.file = open(self.path, "a", newline="")  # noqa: SIM115 (held for the run)
        self.writer = csv.DictWriter(self.file, fieldnames=self.columns, restval="")

    def _add_columns(self, new: list[str]) -> None:
        self.file.close()
        with open(self.path, newline="") as f:
            rows = list(csv.reader(f))[1:]
        self.columns += new
        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow(self.columns)
        writer.writerows(r + [""] * (len(self.columns) - len(r)) for r in rows)
        write_atomic(self.path, text.getvalue().encode())
        self._open()

    def log(self, row: dict[str, Any]) -> None:
        new = [k for k in row if k not in self.columns]
        if new:
            self._add_columns(new)
        self.writer.writerow({k: _fmt(v) for k, v in row.items()})
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class TensorBoardSink:
    """TensorBoard scalars ppo/<column> at each update's env step, in <run dir>/tensorboard
    (columns with a group of their own, such as info/is_success, under that name)."""

    def __init__(self, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=None)

    def log(self, row: dict[str, Any]) -> None:
        for key, value in row.items():
            if key not in ("update", "global_step") and not math.isnan(value):
                tag = key if "/" in key else f"ppo/{key}"
                self.writer.add_scalar(tag, value, row["global_step"])

    def close(self) -> None:
        self.writer.close()


WANDB_ID_FILE = "wandb_id"


class WandbSink:
    """Weights & Biases: the resolved config once, then every metrics column per update, with
    global_step as the x-axis. The W&B run is named after the run directory and its id is kept
    there, so a resumed run goes on in the same W&B run. With WANDB_MODE=offline nothing is
    sent: the run is written under <run dir>/wandb, for `wandb sync` later."""

    def __init__(self, run_dir: Path | None, config: dict[str, Any], project: str,
                 group: str | None = None) -> None:
        require("wandb", "--track")
        import wandb

        run_id, name, directory = None, None, None
        if run_dir is not None:
            run_dir = Path(run_dir)
            id_file = run_dir / WANDB_ID_FILE
            if not id_file.is_file():
                write_atomic(id_file, secrets.token_hex(4).encode())
            run_id, name, directory = id_file.read_text().strip(), run_dir.name, str(run_dir)
        self.run = wandb.init(project=project, group=group, name=name, id=run_id,
                              resume="allow", dir=directory, config=config)
        self.run.define_metric("*", step_metric="global_step")

    def log(self, row: dict[str, Any]) -> None:
        self.run.log({k: v for k, v in row.items() if not math.isnan(v)})

    def close(self) -> None:
        self.run.finish()


def tracking_sinks(config: Config) -> list[Sink]:
    """The sinks that `config` asks for beyond metrics.csv and TensorBoard: W&B with --track."""
    if not config.track:
        return []
    return [WandbSink(config.run_dir and Path(config.run_dir), config.to_dict(),
                      config.wandb_project, config.wandb_group)]


class MetricsLogger:
    """One row per update to each sink: metrics.csv and TensorBoard when a run directory is
    given, any others passed in (e.g. `tracking_sinks(config)`), and the console when verbose:
    a line per update with progress and ETA, a progress bar on a terminal."""

    def __init__(self, run_dir: Path | None, verbose: bool, tensorboard: bool,
                 total_updates: int, first_update: int, check_clipfrac: bool = True,
                 sinks: Sequence[Sink] = ()) -> None:
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.verbose, self.health = verbose, HealthCheck(clipfrac=check_clipfrac)
        self.total_updates, self.first_update = total_updates, first_update
        self.started = time.monotonic()
        self.rows: list[dict[str, Any]] = []
        self.sinks: list[Sink] = []
        if self.run_dir is not None:
            self.sinks.append(CsvSink(self.run_dir, first_update))
            if tensorboard:
                self.sinks.append(TensorBoardSink(self.run_dir))
        self.sinks += sinks
        self.bar = None
        if verbose and sys.stdout.isatty():
            self.bar = tqdm(total=total_updates, initial=first_update - 1, unit="update",
                            dynamic_ncols=True, leave=False)

    def log(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        for sink in self.sinks:
            sink.log(row)
        if self.verbose:
            for line in [console_line(row, self.progress(row)), *self.health.check(row)]:
                if self.bar is not None:
                    self.bar.write(line)
                else:
                    print(line, flush=True)
            if self.bar is not None:
                self.bar.update(1)

    def progress(self, row: dict[str, Any]) -> Progress:
        """Where the run stands after this row. Every update takes the same number of env
        steps, so that number is global_step / update."""
        steps_per_update = row["global_step"] // row["update"]
        return progress(row["global_step"], self.total_updates * steps_per_update,
                        (self.first_update - 1) * steps_per_update,
                        time.monotonic() - self.started)

    def summary(self) -> list[str]:
        """End-of-run lines (see console.run_summary) over the whole run, earlier sessions of
        a resumed run included when there is a run directory."""
        checkpoints: dict[int, Path] = {}
        if self.run_dir is not None and (self.run_dir / "metrics.csv").is_file():
            metrics = read_metrics(self.run_dir)
            for path in (self.run_dir / "checkpoints").glob("*.safetensors"):
                if match := CHECKPOINT_NAME.match(path.name):
                    checkpoints[int(match.group(1))] = path
        else:
            metrics = {key: np.array([row.get(key, math.nan) for row in self.rows], dtype=float)
                       for key in ("update", "global_step", "episodic_return", "eval_return",
                                   "time_total")}
        best = None if self.run_dir is None else self.run_dir / "checkpoints" / "best.safetensors"
        return run_summary(metrics, checkpoints, best)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        for sink in self.sinks:
            sink.close()


def read_metrics(run_dir: Path) -> dict[str, np.ndarray]:
    """A run's metrics.csv as column name -> float array; empty or missing cells are NaN
    (episodic_return is empty until the first episode ends)."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        raise ValueError(f"{run_dir}: no metrics.csv (not a run directory, or nothing logged yet)")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        names = [n for n in reader.fieldnames or [] if n]
    columns = {}
    for name in names:
        try:
            columns[name] = np.array(
                [float(row[name]) if row[name] else math.nan for row in rows], dtype=float)
        except ValueError:
            raise ValueError(f"{path}: column {name} holds a value that is not a number") from None
    return columns


def _header(path: Path) -> list[str]:
    with open(path, newline="") as f:
        return next(csv.reader(f), None) or list(COLUMNS)


def _fmt(value: Any) -> Any:
    return "" if isinstance(value, float) and math.isnan(value) else value


def _truncate_after(path: Path, last_update: int) -> None:
    """On resume, drop rows logged after the checkpoint so no update appears twice."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    # A kill mid-write can leave a last line without its newline: drop it too.
    kept = lines[:1] + [
        ln for ln in lines[1:] if ln.endswith("\n") and int(ln.split(",", 1)[0]) <= last_update
    ]
    if len(kept) != len(lines):
        write_atomic(path, "".join(kept).encode())
