"""Per-update diagnostics and where they go: metrics.csv, TensorBoard, the console."""

from __future__ import annotations

import csv
import io
import math
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ppo.checkpoint import write_atomic

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
            self.path = path = Path(run_dir) / "metrics.csv"
            _truncate_after(path, first_update - 1)
            new = not path.exists()
            self.columns = list(COLUMNS) if new else _header(path)
            self._open()
            if new:
                self.writer.writeheader()
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=None)
        self.bar = None
        if verbose and sys.stdout.isatty():
            self.bar = tqdm(total=total_updates, initial=first_update - 1, unit="update",
                            dynamic_ncols=True, leave=False)

    def _open(self) -> None:
        self.csv_file = open(self.path, "a", newline="")  # noqa: SIM115 (held for the run)
        self.writer = csv.DictWriter(self.csv_file, fieldnames=self.columns, restval="")

    def _add_columns(self, new: list[str]) -> None:
        """Columns first seen mid-run (an env's episode info): the file is rewritten with
        the wider header, earlier rows with empty cells there."""
        self.csv_file.close()
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
        if self.writer is not None:
            new = [k for k in row if k not in self.columns]
            if new:
                self._add_columns(new)
            self.writer.writerow({k: _fmt(v) for k, v in row.items()})
            self.csv_file.flush()
        if self.tb is not None:
            for key, value in row.items():
                if key not in ("update", "global_step") and not math.isnan(value):
                    tag = key if "/" in key else f"ppo/{key}"
                    self.tb.add_scalar(tag, value, row["global_step"])
        if self.verbose:
            for line in [console_line(row), *self.health.check(row)]:
                if self.bar is not None:
                    self.bar.write(line)
                else:
                    print(line, flush=True)
            if self.bar is not None:
                self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        if self.csv_file is not None:
            self.csv_file.close()


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
