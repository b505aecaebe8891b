"""Log lines that input can trigger, bounded: nothing a caller sends may
grow the log (or the memory that decides what to log) without bound.

* :class:`RateLimitedWarning` — one message, at most one line per interval;
  the next line says how many were held back.
* :class:`BoundedReporter` — ERROR lines keyed by what they report: one
  line per distinct key per interval, a bounded memory of keys, and a cap
  on lines per interval in all.

(The call log's lines of untrusted calls are budgeted by its own token
bucket, ``serving.observability.LineBudget``.)
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from typing import Any


class RateLimitedWarning:
    """A WARNING that writes at most one line per ``interval_s``: for warnings
    a caller's input can trigger, which must not grow the log without bound.
    A line written after others were held back says how many."""

    def __init__(self, logger: logging.Logger, message: str, interval_s: float = 60.0) -> None:
        self.logger = logger
        self.message = message
        #: Read at every call: a change applies from the next one.
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._last: float | None = None
        self._suppressed = 0

    def warn(self, *args: Any) -> None:
        """Log ``message % args``, unless a line was written less than
        ``interval_s`` ago (then count it as suppressed)."""
        now = time.monotonic()
        with self._lock:
            if self._last is not None and now - self._last < self.interval_s:
                self._suppressed += 1
                return
            suppressed, self._suppressed, self._last = self._suppressed, 0, now
        if suppressed:
            self.logger.warning(
                f"{self.message} (%d more like it suppressed since the last such line)",
                *args,
                suppressed,
            )
        else:
            self.logger.warning(self.message, *args)


class BoundedReporter:
    """ERROR lines about ``subject`` (e.g. ignored configuration values: an
    unreadable active shard set, an override or a pin outside it), each
    ``"<subject>: <detail> (<what>)"``: one line per distinct key
    per ``interval_s``, remembering at most ``max_entries`` keys (the oldest
    forgotten first), and at most ``max_lines`` lines per ``interval_s`` in
    all, so neither memory nor the log grows with what callers send."""

    def __init__(
        self,
        logger: logging.Logger,
        subject: str,
        *,
        interval_s: float = 3600.0,
        max_entries: int = 10_000,
        max_lines: int = 100,
    ) -> None:
        self.logger = logger
        #: What the lines are about, their prefix (e.g. "shard placement").
        self.subject = subject
        self.interval_s = interval_s
        self.max_entries = max_entries
        self.max_lines = max_lines
        self._lock = threading.Lock()
        self._seen: OrderedDict[tuple[object, ...], float] = OrderedDict()
        self._window_start = -math.inf
        self._window_lines = 0
        #: Lines written in all (for tests and curiosity).
        self.lines = 0

    def report(self, what: str, key: tuple[object, ...], detail: str) -> None:
        """Log ``detail`` unless ``(what, *key)`` was reported less than
        ``interval_s`` ago, or ``max_lines`` lines were written in the
        current interval."""
        now = time.monotonic()
        full_key = (what, *key)
        with self._lock:
            last = self._seen.get(full_key)
            if last is not None and now - last < self.interval_s:
                return
            if now - self._window_start >= self.interval_s:
                self._window_start, self._window_lines = now, 0
            if self._window_lines >= self.max_lines:
                return
            self._window_lines += 1
            self._seen[full_key] = now
            self._seen.move_to_end(full_key)
            while len(self._seen) > self.max_entries:
                self._seen.popitem(last=False)
            self.lines += 1
        self.logger.error("%s: %s (%s)", self.subject, detail, what)
