"""Progress of a loop over images: a tqdm bar on a terminal, plain periodic lines otherwise.

Under horovodrun the output is not a terminal and every line gets a ``[0]<stderr>:``
prefix, so a bar's carriage returns pile up into one unreadable line; there a line every
``every`` seconds (and one at the end) says how far the loop is.
"""
from __future__ import annotations

import sys
import time

from dcsp_dist.core.console import say


class _Lines:
    """The part of tqdm's interface the loops use: update(n), close()."""

    def __init__(self, total: int, desc: str, unit: str, every: float):
        self.total, self.desc, self.unit, self.every = total, desc, unit, every
        self.count, self.start = 0, time.time()
        self.last = self.start

    def update(self, n: int = 1) -> None:
        self.count += n
        now = time.time()
        if now - self.last >= self.every:
            self.last = now
            self._line(now)

    def _line(self, now: float) -> None:
        rate = self.count / max(now - self.start, 1e-9)
        say(f"{self.desc}: {self.count}/{self.total} {self.unit} ({rate:.1f} {self.unit}/s)", err=True)

    def close(self) -> None:
        self._line(time.time())


class _Off:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def progress(total: int, desc: str, unit: str = "img", enabled: bool = True, every: float = 30.0):
    """A progress reporter for ``total`` items (tqdm on a terminal, else plain lines)."""
    if not enabled:
        return _Off()
    if sys.stderr.isatty():
        from tqdm import tqdm
        return tqdm(total=total, desc=desc, unit=unit, mininterval=2)
    return _Lines(total, desc, unit, every)
