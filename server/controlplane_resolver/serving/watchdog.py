"""Liveness: is the gRPC server still finishing calls?

The health port (``RESOLVER_HEALTH_ADDR``) has threads of its own, so it
keeps answering even when every worker thread of the main server is stuck
(a deadlock, a call that never returns): on its own, its SERVING would keep
a wedged process alive forever. :class:`ProgressWatchdog` watches two
numbers the call interceptor keeps anyway — calls started and calls
finished — and declares the process stuck when calls were in flight and
none finished for ``stuck_after_s``. The app then reports NOT_SERVING, so
the liveness probe restarts the process.

Every wait inside a call is bounded (the database timeout, fill and batch
waits, the caller's deadline), so a healthy process finishes *some* call
well within the default minute, even while its databases are down: calls
then fail fast or time out, and a failed call is a finished call. The
watchdog costs the calls nothing: it reads counters that exist already.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable

log = logging.getLogger(__name__)


class ProgressWatchdog:
    """``progress()`` returns (calls started, calls finished), both only
    ever growing. ``on_change(stuck)`` is called whenever the verdict flips,
    from the thread that called :meth:`check` (the watchdog's own, once
    :meth:`start`\\ ed)."""

    def __init__(
        self,
        progress: Callable[[], tuple[float, float]],
        stuck_after_s: float,
        on_change: Callable[[bool], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._progress = progress
        self._stuck_after_s = stuck_after_s
        self._on_change = on_change
        self._clock = clock
        self._finished = -1.0
        self._since = clock()
        self.stuck = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> bool:
        """Look once; True while the server is live (idle, or finishing calls)."""
        started, finished = self._progress()
        now = self._clock()
        if finished != self._finished or started <= finished:
            # Progress since the last look, or nothing in flight to wait for.
            self._finished, self._since = finished, now
        stuck = now - self._since >= self._stuck_after_s
        if stuck != self.stuck:
            self.stuck = stuck
            if stuck:
                log.error(
                    "no call has finished for %.1fs while %d were in flight: the server's "
                    "worker threads are stuck; reporting NOT_SERVING so that the liveness probe "
                    "restarts this process. Thread stacks:\n%s",
                    now - self._since,
                    started - finished,
                    _thread_stacks(),
                )
            else:
                log.warning("calls finish again; reporting SERVING")
            self._on_change(stuck)
        return not stuck

    def start(self) -> None:
        """Check on a thread of its own, a few times per ``stuck_after_s``."""
        interval = min(1.0, self._stuck_after_s / 4)

        def run() -> None:
            while not self._stop.wait(interval):
                self.check()

        self._thread = threading.Thread(target=run, name="progress-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def _thread_stacks() -> str:
    """Every thread's stack (code locations only, no values: nothing secret)."""
    names = {t.ident: t.name for t in threading.enumerate()}
    return "\n".join(
        f"--- {names.get(ident, ident)}\n" + "".join(traceback.format_stack(frame))
        for ident, frame in sys._current_frames().items()
    )
