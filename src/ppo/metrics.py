"""Per-update diagnostics and where they go: metrics.csv, TensorBoard, the console."""

from __future__ import annotations

import contextlib
import csv
import datetime
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from tqdm import tqdm

from ppo.checkpoint import RunDirError, write_atomic
from ppo.config import read_regular_file

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


def console_line(row: dict[str, Any]) -> str:
    ret = row["episodic_return"]
    ret_text = "   n/a" if math.isnan(ret) else f"{ret:+.1f}"
    return (
        f"update {row['update']:03d} step {row['global_step']} return={ret_text} "
        f"kl={row['approx_kl']:.3f} clipfrac={row['clipfrac']:.2f} "
        f"loss_pi={row['policy_loss']:+.3f} loss_v={row['value_loss']:.3g} "
        f"entropy={row['entropy']:.3f} ev={row['explained_variance']:.2f} sps={row['sps']:.0f}"
    )


class MetricsLogger:
    """One row per update. Files only when a run directory is given; console when verbose."""

    def __init__(self, run_dir: Path | None, verbose: bool, tensorboard: bool,
                 total_updates: int, first_update: int, check_clipfrac: bool = True) -> None:
        self.verbose, self.health = verbose, HealthCheck(clipfrac=check_clipfrac)
        self.csv_file = self.writer = self.tb = None
        if run_dir is not None:
            path = self.path = Path(run_dir) / "metrics.csv"
            last_update = first_update - 1
            for note in repair_metrics(path, check_metrics(path, last_update), last_update):
                print(note, file=sys.stderr)
            new = not path.exists()
            self.csv_file = open(path, "a", newline="")  # noqa: SIM115 (held for the run)
            self.writer = csv.DictWriter(self.csv_file, fieldnames=COLUMNS, extrasaction="ignore")
            if new:
                with self._naming_file():
                    self.writer.writeheader()
                    self.csv_file.flush()
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=None)
        self.bar = None
        if verbose and sys.stdout.isatty():
            self.bar = tqdm(total=total_updates, initial=first_update - 1, unit="update",
                            dynamic_ncols=True, leave=False)

    def log(self, row: dict[str, Any]) -> None:
        if self.writer is not None:
            with self._naming_file():
                self.writer.writerow({k: _fmt(v) for k, v in row.items()})
                self.csv_file.flush()
        if self.tb is not None:
            for key, value in row.items():
                if key not in ("update", "global_step") and not math.isnan(value):
                    self.tb.add_scalar(f"ppo/{key}", value, row["global_step"])
        if self.verbose:
            for line in [console_line(row), *self.health.check(row)]:
                if self.bar is not None:
                    self.bar.write(line)
                else:
                    print(line, flush=True)
            if self.bar is not None:
                self.bar.update(1)

    @contextlib.contextmanager
    def _naming_file(self) -> Iterator[None]:
        """A failed write (disk full) says which file it was."""
        try:
            yield
        except OSError as e:
            raise OSError(e.errno, e.strerror, str(self.path)) from None

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        if self.csv_file is not None:
            with self._naming_file():  # rows a full disk refused are flushed again here
                self.csv_file.close()


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
    if lines and lines[0] + LINE_END == header:
        lines = lines[1:]
    elif lines and _parse_row(lines[0]) is None:
        problems.append("has an unexpected header")
        lines = lines[1:]
    elif lines:
        problems.append("has no header")
    rows: dict[int, str] = {}
    order, bad_lines = [], []
    for number, line in enumerate(lines, 2):
        update = _parse_row(line)
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


def _parse_row(line: str) -> int | None:
    """The update number of a well-formed metrics row, else None."""
    try:
        fields = next(csv.reader([line]))
        if len(fields) != len(COLUMNS):
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
