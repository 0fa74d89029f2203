"""Training progress: a tqdm bar on a terminal, periodic log lines elsewhere (files, CI, ``nohup``).

Both show the step, the running loss (whatever the loop last passed to :meth:`Progress.set_postfix`), the speed and
the time left. The bar redraws in place, which makes a log file unreadable, so ``mode="auto"`` picks the bar only
when stderr is a terminal; ``"log"`` forces the lines, ``"none"`` shows nothing.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

log = logging.getLogger(__name__)

MODES = ("auto", "bar", "log", "none")


def format_seconds(seconds: float) -> str:
    """``75.2`` -> ``"1 min 15 s"``; ``3725`` -> ``"1 h 02 min"``; under a minute ``"42 s"``."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def as_mode(progress: bool | str) -> str:
    """A trainer's ``progress`` argument as a mode: True -> ``"auto"``, False -> ``"none"``, a mode unchanged."""
    return progress if isinstance(progress, str) else "auto" if progress else "none"


def resolve_mode(mode: str, stream: Any = None) -> str:
    """``"auto"`` -> ``"bar"`` when ``stream`` (default stderr) is a terminal, else ``"log"``; others unchanged."""
    if mode not in MODES:
        raise ValueError(f"progress mode must be one of {MODES}, got {mode!r}")
    if mode != "auto":
        return mode
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return "bar" if isatty is not None and isatty() else "log"


class Progress:
    """Step progress of one training run.

    Args:
        total: the run's last step.
        initial: the step it starts from (a resumed run starts past 0).
        desc: short name shown in front (``"tokenizer"``, ``"gpt"``).
        mode: one of :data:`MODES`.
        enabled: False on non-main ranks (shows nothing).
        every_s: seconds between two log lines (log mode); the first and the last step always get one.
    """

    def __init__(self, total: int, initial: int = 0, desc: str = "train", mode: str = "auto", enabled: bool = True,
                 every_s: float = 30.0) -> None:
        self.total, self.step, self.desc, self.every_s = total, initial, desc, every_s
        self.mode = resolve_mode(mode) if enabled else "none"
        self.postfix: dict[str, str] = {}
        self._start_step, self._t0 = initial, time.perf_counter()
        self._last_line = -float("inf")
        self._bar = None
        if self.mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True)

    def set_postfix(self, **values: Any) -> None:
        """Values shown after the count, e.g. ``loss="0.1234"`` (formatted by the caller)."""
        self.postfix = {k: str(v) for k, v in values.items()}
        if self._bar is not None:
            self._bar.set_postfix(self.postfix, refresh=False)

    def update(self, n: int = 1) -> None:
        self.step += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.mode == "log":
            now = time.perf_counter()
            if self.step - n == self._start_step or self.step >= self.total or now - self._last_line >= self.every_s:
                self._last_line = now
                log.info("%s", self.line(now))

    def line(self, now: float | None = None) -> str:
        """``"gpt: step 300/600 (50%), loss 2.4510, 4.1 step/s, 1 min 13 s left"``."""
        now = time.perf_counter() if now is None else now
        done = self.step - self._start_step
        rate = done / max(now - self._t0, 1e-9)
        parts = [f"{self.desc}: step {self.step}/{self.total} ({100 * self.step / max(self.total, 1):.0f}%)"]
        parts += [f"{k} {v}" for k, v in self.postfix.items()]
        if done:
            parts.append(f"{rate:.3g} step/s")
            parts.append(f"{format_seconds((self.total - self.step) / rate)} left" if self.step < self.total
                         else f"took {format_seconds(now - self._t0)}")
        return ", ".join(parts)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
