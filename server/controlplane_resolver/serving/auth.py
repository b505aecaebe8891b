"""Token authentication and per-method authorisation (a server interceptor).

The tokens file has one client a line::

    # NAME   TOKEN                      METHODS (optional; default "*")
    engine   s3cr3t-engine-token        *
    console  s3cr3t-console-token       ResolveAuthenticatedEnv ResolveEnv

``*`` allows every method except ``ResolveAuthenticatedEnv``, which returns
API keys and must be named explicitly. Several lines may carry the same name
(old and new token during a rotation). The file is re-read when it changes.

Callers send ``authorization: Bearer <token>``. Tokens are compared in
constant time. A missing or unknown token is ``UNAUTHENTICATED`` with no
detail; a known token calling a method it may not call is
``PERMISSION_DENIED`` — decided here, before any handler runs, so a denied
caller never learns whether a row exists.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from controlplane_resolver import callinfo
from controlplane_resolver.errors import ConfigError

log = logging.getLogger(__name__)

SERVICE_PREFIX = "/controlplane.resolver.v1.ControlPlaneResolverService/"
SECRET_METHOD = "ResolveAuthenticatedEnv"
HEALTH_PREFIX = "/grpc.health.v1.Health/"
HEALTH_WATCH = HEALTH_PREFIX + "Watch"
REFLECTION_PREFIX = "/grpc.reflection."


class TokenFileError(ConfigError):
    """The tokens file is missing, unreadable or malformed (the message
    names the file and line, never a token)."""


def token_digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


@dataclass(frozen=True)
class Client:
    name: str
    #: SHA-256 of the token, not the token: digests compare in constant time
    #: at one length (a token's length leaks nothing), and no repr or log
    #: of a client can show a token.
    token_digest: bytes = field(repr=False)
    #: Short method names; ``"*"`` means every method but the secret one.
    methods: frozenset[str] = frozenset({"*"})

    def may_call(self, method: str) -> bool:
        if method in self.methods:
            return True
        return "*" in self.methods and method != SECRET_METHOD


def parse_tokens(text: str, source: str = "tokens file") -> list[Client]:
    """Parse the tokens file format. Raises :class:`TokenFileError` naming
    the line (never the token)."""
    clients = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) < 2:
            raise TokenFileError(f"{source} line {number}: expected 'NAME TOKEN [METHOD …]'")
        name, token, methods = parts[0], parts[1], parts[2:] or ["*"]
        if len(token) < 16:
            raise TokenFileError(
                f"{source} line {number}: the token of {name!r} is shorter "
                "than 16 characters; use a long random token"
            )
        clients.append(
            Client(
                name, token_digest(token.encode()), frozenset(m.rsplit("/", 1)[-1] for m in methods)
            )
        )
    if not clients:
        # An empty file is far likelier a truncated rewrite (or a mistake)
        # than a wish to refuse every caller.
        raise TokenFileError(f"{source} has no client lines")
    return clients


class TokenFile:
    """The tokens file, re-read when its mtime, size or inode changes (checked at
    most once per ``check_interval_s``). A broken rewrite (unreadable,
    malformed or empty) keeps the previous tokens and logs the problem; at
    start-up the same problems raise :class:`TokenFileError`. Rewrite the
    file by renaming a complete new one over it: a reader can catch an
    in-place rewrite half-written."""

    def __init__(
        self,
        path: str,
        *,
        check_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self._interval = check_interval_s
        self._clock = clock
        self._lock = threading.Lock()
        try:
            self._signature = self._stat()
            text = self._read()
        except OSError as exc:
            raise TokenFileError(f"cannot read the tokens file: {exc}") from None
        self.clients = parse_tokens(text, path)
        self._checked = clock()
        self.reloads = 0

    def _stat(self) -> tuple[int, int, int]:
        # The inode too: a file replaced by rename (how secret mounts
        # rotate) within one mtime tick and with the same size still counts.
        st = os.stat(self.path)
        return st.st_mtime_ns, st.st_size, st.st_ino

    def _read(self) -> str:
        with open(self.path) as f:
            return f.read()

    def current(self) -> list[Client]:
        now = self._clock()
        if now - self._checked >= self._interval:
            with self._lock:
                if now - self._checked >= self._interval:
                    self._checked = now
                    self._maybe_reload()
        return self.clients

    def _maybe_reload(self) -> None:
        try:
            signature = self._stat()
            if signature == self._signature:
                return
            clients = parse_tokens(self._read(), self.path)
        except (OSError, TokenFileError) as exc:
            log.warning("keeping the previous tokens: %s", exc)
            return
        self._signature = signature
        self.clients = clients
        self.reloads += 1
        log.info("tokens file reloaded: %d client lines", len(clients))

    def authenticate(self, presented: bytes) -> Client | None:
        """The client owning ``presented``, compared in constant time
        against every token (no early exit)."""
        digest = token_digest(presented)
        match = None
        for client in self.current():
            if hmac.compare_digest(client.token_digest, digest) and match is None:
                match = client
        return match


def current_client() -> str | None:
    """The authenticated client's name for the call on this thread, as
    noted in the call's :mod:`callinfo` (``None`` outside a call, or when
    the call carried no valid token)."""
    return callinfo.get("client")


def _as_client(handler: Any, name: str) -> Any:
    """``handler`` with its behaviour run as the client: the name is noted
    in the call's notes on the worker thread that runs the behaviour (this
    interceptor runs on the server's polling thread). The notes outlive the
    behaviour, so the call log written after it still sees the name — a
    thread-local reset on the way out would be gone by then. Needs the
    :class:`~controlplane_resolver.serving.observability.CallInterceptor` outside
    this one (it starts the notes)."""
    if handler is None or handler.unary_unary is None:
        return handler
    behavior = handler.unary_unary

    def as_client(request: Any, context: grpc.ServicerContext) -> Any:
        callinfo.note("client", name)
        return behavior(request, context)

    return handler._replace(unary_unary=as_client)


def _deny(
    handler: Any, code: grpc.StatusCode, message: str, client: str | None = None
) -> grpc.RpcMethodHandler:
    """A handler that ends the call with ``code`` at once, of the same kind
    as the one it stands in for. A unary handler in place of a streaming
    one would wait for a request message the caller may never send (a
    stream that waits for the server hangs until its deadline; one that
    sends nothing gets UNIMPLEMENTED instead of the real code)."""

    def abort(_request: Any, context: grpc.ServicerContext) -> None:
        if client is not None:
            callinfo.note("client", client)
        context.abort(code, message)

    def abort_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        abort(request, context)
        yield  # pragma: no cover - abort() raises; this makes a generator

    if handler is None or handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(abort)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(abort_stream)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(abort)
    return grpc.stream_stream_rpc_method_handler(abort_stream)


class AuthInterceptor(grpc.ServerInterceptor):
    """Checks bearer tokens for every call except the open ones.

    ``open_health``/``open_reflection`` leave those services callable
    without a token (Kubernetes gRPC probes cannot send one).
    """

    def __init__(
        self, tokens: TokenFile, *, open_health: bool = True, open_reflection: bool = False
    ) -> None:
        self.tokens = tokens
        self._open = tuple(
            p
            for p, is_open in ((HEALTH_PREFIX, open_health), (REFLECTION_PREFIX, open_reflection))
            if is_open
        )

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        method = details.method
        if method.startswith(self._open):
            return continuation(details)
        presented = None
        for key, value in details.invocation_metadata or ():
            if key == "authorization" and isinstance(value, str) and value[:7].lower() == "bearer ":
                presented = value[7:].strip().encode()
        client = self.tokens.authenticate(presented) if presented else None
        # Looking the handler up reveals nothing to the caller: it only
        # tells which kind of handler the refusal must be.
        handler = continuation(details)
        if client is None and method == HEALTH_WATCH:
            # A channel's own health watch (gRFC A17, the typed client's
            # service config) carries no token. UNIMPLEMENTED turns the
            # watch off and the channel calls the server; any other refusal
            # would make the channel take the server for unhealthy for good.
            return _deny(
                handler,
                grpc.StatusCode.UNIMPLEMENTED,
                "watching health needs a token here (RESOLVER_OPEN_HEALTH is off): call Check",
            )
        if client is None:
            return _deny(handler, grpc.StatusCode.UNAUTHENTICATED, "missing or invalid credentials")
        short = method.rsplit("/", 1)[-1]
        if not (method.startswith(SERVICE_PREFIX) and client.may_call(short)) and not (
            not method.startswith(SERVICE_PREFIX) and "*" in client.methods
        ):
            return _deny(
                handler,
                grpc.StatusCode.PERMISSION_DENIED,
                f"client {client.name!r} may not call {short}",
                client.name,
            )
        return _as_client(handler, client.name)


def is_loopback(addr: str) -> bool:
    """True for ``127.x.x.x:port``, ``[::1]:port`` and ``localhost:port``."""
    host = addr.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
