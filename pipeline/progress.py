"""A small progress reporter for long stages: a redrawn line on a terminal, a few lines in logs."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Call with (done, total); prints ``label  done/total  pct  elapsed`` to ``stream``."""

    def __init__(self, label: str, *, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.start = time.perf_counter()
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_decile = -1

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total <= 0:
            return
        frac = done / total
        elapsed = time.perf_counter() - self.start
        text = f"{self.label}  {done}/{total}  {100 * frac:5.1f}%  {elapsed:6.1f}s"
        if self.tty:
            end = "\n" if done >= total else ""
            self.stream.write("\r" + text + end)
            self.stream.flush()
        else:
            decile = int(10 * frac)
            if decile != self._last_decile or done >= total:
                self._last_decile = decile
                self.stream.write(text + "\n")
                self.stream.flush()
