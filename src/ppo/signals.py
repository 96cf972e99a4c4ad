"""A clean stop on Ctrl-C or SIGTERM: the signal becomes a flag the training loop checks
between updates, so a stop never interrupts a half-applied update or a checkpoint write."""

from __future__ import annotations

import signal
import threading
from typing import Any


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived; the current update finished and a checkpoint was written."""

    def __init__(self, signum: int, update: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name} after update {update}")
        self.signum = signum


class StopSignals:
    """Within this context, SIGINT and SIGTERM set `received` instead of stopping the process
    (in the main thread; elsewhere Python delivers no signals)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
