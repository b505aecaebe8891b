"""``serve --processes N``: N serving processes sharing one port.

The parent forks the children *before* any gRPC server (or gRPC thread)
exists — gRPC does not survive a fork — and each child builds its own
server, pools, cache and listener, and binds the port with ``SO_REUSEPORT``
only once it is ready (a bound process gets a share of new connections, so
one still starting must not be bound).
The kernel then spreads *connections* (not calls) across the children, so
clients should open several channels or connect through a load balancer.

Each child keeps its own counters; with a metrics address the parent
serves them all, each sample labelled with the child's slot
(process_metrics.py).

The parent only supervises: it forwards SIGTERM/SIGINT to every child,
restarts a child that dies unexpectedly (at most once per second), and
exits when all children have exited after a stop, with the worst exit code.
A child that could not start (a database unreachable: exit
:data:`START_FAILED`) is restarted too, but after :data:`START_ATTEMPTS`
such failures in a row of one slot the parent stops the others and exits
``1``, as a single process would: restarting forever would hide the fault.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

#: A child's exit code when its start-up failed (a database did not answer).
START_FAILED = 4
#: Start-up failures in a row of one slot after which the parent gives up.
START_ATTEMPTS = 3


def supervise(
    processes: int, serve_child: Callable[[int], int], *, start_attempts: int = START_ATTEMPTS
) -> int:
    """Fork ``processes`` children running ``serve_child(slot)`` (slot
    0..N-1, kept across restarts) and supervise them until a stop signal.
    Returns the exit code for the parent."""
    children: dict[int, int] = {}  # pid -> slot
    stopping = False
    last_spawn: dict[int, float] = {}
    start_failures: dict[int, int] = {}
    gave_up = False

    def spawn(slot: int) -> None:
        pid = os.fork()
        if pid == 0:  # child: restore default signal handling, serve, exit
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = 1
            try:
                code = serve_child(slot)
            except BaseException:
                log.exception("worker process %d failed", slot)
            finally:
                os._exit(code)
        children[pid] = slot
        last_spawn[slot] = time.monotonic()
        log.info("worker process %d started (pid %d)", slot, pid)

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for slot in range(processes):
        spawn(slot)
    worst = 0
    while children:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if pid not in children:
            continue
        slot = children.pop(pid)
        code = os.waitstatus_to_exitcode(status)
        if stopping:
            worst = max(worst, code if code > 0 else 0)
            continue
        if code in (2, 3):
            # Configuration refused: restarting cannot help. Stop the rest.
            log.error("worker process %d exited %d (configuration refused); stopping", slot, code)
            worst = code
            forward(signal.SIGTERM, None)
            continue
        if code == START_FAILED:
            start_failures[slot] = start_failures.get(slot, 0) + 1
            if start_failures[slot] >= start_attempts:
                log.error(
                    "worker process %d failed start-up %d times in a row; giving up",
                    slot,
                    start_failures[slot],
                )
                gave_up = True
                forward(signal.SIGTERM, None)
                continue
        else:
            start_failures[slot] = 0
        log.warning(
            "worker process %d (pid %d) exited %d unexpectedly; restarting", slot, pid, code
        )
        wait = 1.0 - (time.monotonic() - last_spawn.get(slot, 0.0))
        if wait > 0:
            time.sleep(wait)  # restart at most once a second per slot
        if not stopping:
            spawn(slot)
    return 1 if gave_up else worst
