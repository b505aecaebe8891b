"""The resolver's own errors. The domain raises these; only the gRPC edge
(servicer.py) knows which status each becomes.

Each error carries a machine-readable ``reason`` (an ``ErrorInfo`` reason on
the wire) and a message that names the cause and, where there is one, the
fix. Messages never contain secrets (DSNs, API keys).
"""

from __future__ import annotations


class ResolverError(Exception):
    """Base class: ``reason`` is UPPER_SNAKE_CASE, stable, machine-readable."""

    reason = "INTERNAL"

    def __init__(
        self, message: str, *, reason: str | None = None, metadata: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason
        self.metadata = dict(metadata or {})


class InvalidArgument(ResolverError):
    reason = "INVALID_ARGUMENT"


class NotFound(ResolverError):
    """Confirmed absent: the database answered and the row is not there."""

    reason = "NOT_FOUND"


class Unavailable(ResolverError):
    """A database could not answer (down, pool exhausted, timed out). Never
    reported as absence: the caller should retry."""

    reason = "DATABASE_UNAVAILABLE"


class DeadlineExceeded(ResolverError):
    """The caller's deadline passed before an answer was ready."""

    reason = "DEADLINE_EXCEEDED"
