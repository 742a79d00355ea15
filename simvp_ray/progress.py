"""Progress of long work (conversion, prediction, evaluation): counts, rate and time left.

On a terminal a bar redrawn in place; in a log (stderr not a terminal) a line every `every_s`
seconds and one at the end, so a job's log shows it is alive without flooding.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

BAR = 24  # characters of the bar
REDRAW_S = 0.2  # terminal redraws at most this often


class Progress:
    """`add(n)` as work is done, `close()` at the end (also as a context manager)."""

    def __init__(self, what: str, total: int, unit: str, *, stream: TextIO | None = None,
                 every_s: float = 10.0) -> None:
        self.what, self.total, self.unit = what, max(int(total), 0), unit
        self.stream = stream or sys.stderr
        self.terminal = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every_s = REDRAW_S if self.terminal else every_s
        self.done = 0
        self.start = self.last = time.monotonic()
        self.closed = False

    def text(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        share = self.done / self.total if self.total else 1.0
        bar = f"[{'#' * round(BAR * share):<{BAR}}] " if self.terminal else ""
        eta = f"eta {left:.0f}s" if left == left else "eta ?"
        return (f"{self.what}: {bar}{self.done}/{self.total} {self.unit} ({100 * share:.0f}%)  "
                f"{rate:.1f} {self.unit}/s  {eta}")

    def add(self, count: int = 1) -> None:
        self.done += int(count)
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            self._emit()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._emit(end=True)

    def _emit(self, end: bool = False) -> None:
        if self.terminal:
            self.stream.write("\r" + self.text() + ("\n" if end else ""))
        else:
            self.stream.write(self.text() + "\n")
        self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
