"""Console progress lines: stage start/end with elapsed seconds, training steps with loss, rate, ETA.

Every long-running entry (notebook runs, ``irkit batch grid``, the CIR table, the trainers)
prints the same few line shapes on stderr, so a user watching the console sees what runs now
and how long the rest will take:

    2026-11-30,21:04:05 | stage 4/9 started: (a) Data and attribute vocabulary
    2026-11-30,21:04:06 | stage 4/9 done in 1.2 s: (a) Data and attribute vocabulary
    train epoch 1/4 step 25/100: loss 3.2053 (epoch mean 3.4120), 0.84 step/s, ETA 1:29
"""

from __future__ import annotations

import sys
import time
from typing import Optional, TextIO

TIME_FORMAT = "%Y-%m-%d,%H:%M:%S"


def format_duration(seconds: float) -> str:
    """``59.4`` -> ``"59 s"``, ``89`` -> ``"1:29"``, ``3725`` -> ``"1:02:05"`` (h:mm:ss)."""
    if seconds != seconds or seconds < 0:  # NaN or negative: unknown
        return "?"
    total = int(round(seconds))
    if total < 60:
        return f"{total} s"
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def console_line(message: str, stream: Optional[TextIO] = None) -> None:
    """Write ``<date,time> | message`` to ``stream`` (default stderr) and flush it at once."""
    stream = stream if stream is not None else sys.stderr
    stream.write(f"{time.strftime(TIME_FORMAT)} | {message}\n")
    stream.flush()


class StepRate:
    """Steps per second since a start point and the time the remaining steps will take.

    ``done`` counts steps finished in this process (a resumed run starts at its saved step:
    only the steps taken here measure the rate).
    """

    def __init__(self, total_steps: int, done: int = 0, clock: Optional[callable] = None) -> None:
        self.total_steps = int(total_steps)
        self.start_done = int(done)
        self.clock = clock or time.perf_counter
        self.started = self.clock()

    def rate(self, done: int) -> float:
        """Steps per second over the steps taken since the start (0.0 before the first)."""
        elapsed = self.clock() - self.started
        taken = done - self.start_done
        return taken / elapsed if taken > 0 and elapsed > 0 else 0.0

    def eta_seconds(self, done: int) -> float:
        """Seconds left for ``total_steps - done`` steps at :meth:`rate` (NaN while unknown)."""
        rate = self.rate(done)
        return max(self.total_steps - done, 0) / rate if rate > 0 else float("nan")

    def describe(self, done: int) -> str:
        """``"0.84 step/s, ETA 1:29"``."""
        rate = self.rate(done)
        return f"{rate:.3g} step/s, ETA {format_duration(self.eta_seconds(done))}"
