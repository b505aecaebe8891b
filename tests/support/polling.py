"""Waiting on a condition, with a deadline: how tests synchronise with real
servers, databases and threads (never a bare sleep)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any


def wait_until(
    predicate: Callable[[], Any],
    timeout: float = 5.0,
    interval: float = 0.01,
    what: str = "condition",
) -> Any:
    """Call ``predicate`` until it returns a truthy value and return that
    value; fail the test if ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        time.sleep(interval)  # polling interval, not synchronisation


async def wait_until_async(
    predicate: Callable[[], Any],
    timeout: float = 5.0,
    interval: float = 0.01,
    what: str = "condition",
) -> Any:
    """:func:`wait_until` for a test running on an asyncio loop: the loop
    keeps running (its tasks make the condition true) between checks."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        await asyncio.sleep(interval)  # polling interval, not synchronisation
