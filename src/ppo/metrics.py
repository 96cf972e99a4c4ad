"""Per-update diagnostics and where they go: metrics.csv, TensorBoard, Weights & Biases, the
console."""

from __future__ import annotations

import contextlib
import csv
import datetime
import io
import math
import os
import secrets
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
from tqdm import tqdm

from ppo.checkpoint import CHECKPOINT_NAME, RunDirError, write_atomic
from ppo.config import Config, read_regular_file
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
    """metrics.csv in the run directory, one row per update; on resume it is first made to
    hold exactly the rows up to the checkpoint (see check_metrics). Columns first seen mid-run
    (evaluation, an env's episode info) widen the header: the file is rewritten once, earlier
    rows with empty cells there. A failed write (a full disk) names the file."""

    def __init__(self, run_dir: Path, first_update: int) -> None:
        self.path = Path(run_dir) / "metrics.csv"
        last = first_update - 1
        for note in repair_metrics(self.path, check_metrics(self.path, last), last):
            print(note, file=sys.stderr)
        new = not self.path.exists()
        self.columns = list(COLUMNS) if new else _header(self.path)
        with self._naming_file():
            self._open()
            if new:
                self.writer.writeheader()
                self.file.flush()

    @contextlib.contextmanager
    def _naming_file(self) -> Iterator[None]:
        try:
            yield
        except OSError as e:
            raise OSError(e.errno, e.strerror, str(self.path)) from None

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
        with self._naming_file():
            new = [k for k in row if k not in self.columns]
            if new:
                self._add_columns(new)
            self.writer.writerow({k: _fmt(v) for k, v in row.items()})
            self.file.flush()

    def close(self) -> None:
        with self._naming_file():  # rows a full disk refused are flushed again here
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
    if not os.path.lexists(path):
        raise ValueError(f"{run_dir}: no metrics.csv (not a run directory, or nothing logged yet)")
    text = read_regular_file(path, "metrics file", METRICS_MAX_BYTES, ValueError)
    reader = csv.DictReader(io.StringIO(text.decode("utf-8", errors="replace"), newline=""))
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


METRICS_MAX_BYTES = 1 << 30
LINE_END = "\r\n"  # what csv.writer ends rows with, and so the logger appends


class MetricsRepair(NamedTuple):
    """What metrics.csv must hold for a run resumed after update `last_update`."""

    text: str  # the header and the rows of updates 1..last_update that survive
    changed: bool  # text differs from the file (or the file is missing)
    damage: str | None  # what was wrong beyond a crash's leftovers: the file is kept aside
    missing: list[int]  # updates up to last_update with no row


def check_metrics(path: Path, last_update: int) -> MetricsRepair:
    """Read-only: the repair that makes `path` hold exactly the rows of updates 1 to
    last_update, one each, in order, under the header. Rows past last_update and a last row
    without its newline are what a kill leaves, and are dropped; anything else unexpected
    (a line that is no row, NUL bytes, bad UTF-8, a missing or foreign header, duplicates,
    disorder) is damage. Raises RunDirError for a file that is not a regular one."""
    path = Path(path)
    header = ",".join(COLUMNS) + LINE_END
    if not os.path.lexists(path):
        missing = list(range(1, last_update + 1))
        return MetricsRepair(header, bool(missing), None, missing)
    data = read_regular_file(path, "metrics file", METRICS_MAX_BYTES, RunDirError)
    problems: list[str] = []
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        problems.append("is not UTF-8 text")
        text = data.decode("utf-8", errors="replace")
    if "\0" in text:
        problems.append("holds NUL bytes")
        text = text.replace("\0", "")
    lines = [line.removesuffix("\r") for line in text.split("\n")[:-1]]  # the tail: unfinished
    columns = _header_of(lines[0]) if lines else None
    if columns is not None:
        header, lines = lines[0] + LINE_END, lines[1:]
    elif lines and _parse_row(lines[0], len(COLUMNS)) is None:
        problems.append("has an unexpected header")
        lines = lines[1:]
    elif lines:
        problems.append("has no header")
    rows: dict[int, str] = {}
    order, bad_lines = [], []
    width = len(columns or COLUMNS)
    for number, line in enumerate(lines, 2):
        update = _parse_row(line, width)
        if update is None:
            bad_lines += [number] if line.strip() else []
            continue
        if update in rows:
            problems.append(f"has update {update} twice")
        rows[update] = line + LINE_END
        order.append(update)
    if order != sorted(order):
        problems.append("has its rows out of order")
    if bad_lines:
        problems.append(f"has {len(bad_lines)} line(s) that are no metrics row (line "
                        f"{_ranges(bad_lines)})")
    kept = sorted(u for u in rows if u <= last_update)
    new_text = header + "".join(rows[u] for u in kept)
    missing = sorted(set(range(1, last_update + 1)) - set(kept))
    damage = ", ".join(dict.fromkeys(problems)) if problems else None
    return MetricsRepair(new_text, new_text.encode() != data, damage, missing)


def _header_of(line: str) -> list[str] | None:
    """The columns of a metrics.csv header line: ours first, then any added mid-run (each
    named once); None if the line is no such header."""
    try:
        columns = next(csv.reader([line]))
    except (csv.Error, StopIteration):
        return None
    ok = (tuple(columns[: len(COLUMNS)]) == COLUMNS and all(columns)
          and len(set(columns)) == len(columns))
    return columns if ok else None


def _parse_row(line: str, width: int) -> int | None:
    """The update number of a well-formed metrics row of `width` cells, else None."""
    try:
        fields = next(csv.reader([line]))
        if len(fields) != width:
            return None
        update, step = int(fields[0]), int(fields[1])
        for value in fields[2:]:
            if value:
                float(value)
    except (ValueError, StopIteration, csv.Error):
        return None
    return update if update >= 1 and step >= 0 else None


def repair_metrics(path: Path, repair: MetricsRepair, last_update: int) -> list[str]:
    """Make `path` what `repair` says (a damaged file is first kept aside as
    metrics.csv.damaged-TIME); return notes for the user, one line each."""
    path = Path(path)
    if not repair.changed:
        return []
    notes = []
    if repair.damage is not None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        aside = path.with_name(f"{path.name}.damaged-{stamp}")
        suffix = 1
        while os.path.lexists(aside):
            aside = path.with_name(f"{path.name}.damaged-{stamp}-{suffix}")
            suffix += 1
        os.rename(path, aside)
        kept = repair.text.count(LINE_END) - 1
        notes.append(f"note: {path} {repair.damage}; kept it as {aside.name}, and the new one "
                     f"holds its {kept} valid rows up to update {last_update}")
    write_atomic(path, repair.text.encode())
    if repair.missing:
        notes.append(f"note: {path} has no row for update(s) {_ranges(repair.missing)}; "
                     "those rows are lost")
    return notes


def _ranges(numbers: list[int]) -> str:
    spans, start = [], numbers[0]
    for previous, n in zip(numbers, numbers[1:] + [None], strict=True):
        if n != previous + 1:
            spans.append(str(start) if start == previous else f"{start}-{previous}")
            start = n
    return ", ".join(spans)
