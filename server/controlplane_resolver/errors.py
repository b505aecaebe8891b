"""Every public error of the server, in one module.

* :class:`OperationError` and its kinds: what an operation of the resolver
  raises (an id is malformed, a row is absent, a database cannot answer).
  Only the gRPC edge (``serving/servicer.py``) knows which status each
  becomes; docs/errors.md lists them.
* :class:`ConfigError`: a setting is missing or malformed (exit 2).
* :class:`Refusal`: a configuration that would lose or hide data (exit 3).
* :class:`StartCancelled`: start-up was asked to stop while it waited.

Every message names the cause and, where there is one, the fix. Messages
never contain secrets (DSNs, API keys, tokens).
"""

from __future__ import annotations


class OperationError(Exception):
    """Base class: ``reason`` is UPPER_SNAKE_CASE, stable, machine-readable."""

    reason = "INTERNAL"

    def __init__(
        self, message: str, *, reason: str | None = None, metadata: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason
        self.metadata = dict(metadata or {})


class InvalidArgument(OperationError):
    reason = "INVALID_ARGUMENT"


class NotFound(OperationError):
    """Confirmed absent: the database answered and the row is not there."""

    reason = "NOT_FOUND"


class FailedPrecondition(OperationError):
    """The request is well formed but the server's configuration cannot
    serve it (a gen-2 id naming a shard that is not configured). Retrying
    does not help; configuring the server does."""

    reason = "FAILED_PRECONDITION"


#: The retry delay of a SHUTTING_DOWN answer: retry at once, elsewhere. Not
#: 0: a grpc-retry-pushback-ms of 0 leaves grpc C-core clients (grpcio)
#: waiting until their deadline instead of retrying.
SHUTTING_DOWN_RETRY_S = 0.01


class Unavailable(OperationError):
    """A database could not answer (down, pool exhausted, timed out). Never
    reported as absence: the caller should retry, after ``retry_after_s``
    (sent as a ``google.rpc.RetryInfo`` detail)."""

    reason = "DATABASE_UNAVAILABLE"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: dict[str, str] | None = None,
        retry_after_s: float = 1.0,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.retry_after_s = retry_after_s


class Shed(Unavailable):
    """:class:`Unavailable` without the database having been tried: its
    bulkhead was full (it may be healthy and busy). ``metadata.cause`` is
    ``bulkhead``."""


class DeadlineExceeded(OperationError):
    """The caller's deadline passed before an answer was ready."""

    reason = "DEADLINE_EXCEEDED"


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names it and the fix."""


class Refusal(Exception):
    """A configuration that would lose or hide data. The message says why
    and how to fix it; ``code`` is machine-readable (docs/design.md, "Split
    mode and safety interlocks")."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class StartCancelled(Exception):
    """Start-up was cancelled (a signal arrived) while waiting for a database."""
