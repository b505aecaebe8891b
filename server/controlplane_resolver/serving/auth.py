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

Under mutual TLS, the certificate grants file gives the resolver's methods
per client certificate, in the same shape::

    # IDENTITY (certificate CN or SAN)   METHODS (optional; default "*")
    engine.workers.svc                    *
    console                               ResolveAuthenticatedEnv ResolveEnv

A certificate may call a method of the resolver's service when a line whose
identity is its subject CN or one of its subject alternative names allows
it (``*`` as above). Other certificates, and other methods, are
``PERMISSION_DENIED``, decided before the handler's own code runs
(:class:`CertificateGrantsInterceptor`). The file is re-read when it changes.
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
    """The tokens file (or the certificate grants file) is missing,
    unreadable or malformed (the message names the file and line, never a
    token)."""


def _allows(methods: frozenset[str], method: str) -> bool:
    """Whether ``methods`` (short names, ``*``) allow ``method``."""
    if method in methods:
        return True
    return "*" in methods and method != SECRET_METHOD


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
        return _allows(self.methods, method)


@dataclass(frozen=True)
class Grant:
    """The methods one client certificate identity may call."""

    identity: str
    methods: frozenset[str] = frozenset({"*"})

    def may_call(self, method: str) -> bool:
        return _allows(self.methods, method)


def parse_grants(text: str, source: str = "certificate grants file") -> list[Grant]:
    """Parse the certificate grants file format. Raises
    :class:`TokenFileError` naming the line."""
    grants = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        identity, *methods = line.split()
        short = [m.rsplit("/", 1)[-1] for m in methods or ["*"]]
        for m in short:
            if m != "*" and not m.isidentifier():
                raise TokenFileError(
                    f"{source} line {number}: {m!r} is not a method name; expected "
                    "'IDENTITY [METHOD …]' (methods like ResolveEnv, or *)"
                )
        grants.append(Grant(identity, frozenset(short)))
    if not grants:
        raise TokenFileError(f"{source} has no identity lines")
    return grants


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
            raise TokenFileError(f"cannot read the {self.what} {path}: {exc}") from None
        self.clients: list[Any] = self._parse(text)
        self._checked = clock()
        self.reloads = 0

    #: What the file is, and what it holds, in messages.
    what = "tokens file"
    entries = "tokens"

    def _parse(self, text: str) -> list[Any]:
        return parse_tokens(text, self.path)

    def _stat(self) -> tuple[int, int, int]:
        # The inode too: a file replaced by rename (how secret mounts
        # rotate) within one mtime tick and with the same size still counts.
        st = os.stat(self.path)
        return st.st_mtime_ns, st.st_size, st.st_ino

    def _read(self) -> str:
        with open(self.path) as f:
            return f.read()

    def current(self) -> list[Any]:
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
            clients = self._parse(self._read())
        except (OSError, TokenFileError) as exc:
            log.warning("keeping the previous %s: %s", self.entries, exc)
            return
        self._signature = signature
        self.clients = clients
        self.reloads += 1
        log.info("%s reloaded: %d lines", self.what, len(clients))

    def authenticate(self, presented: bytes) -> Client | None:
        """The client owning ``presented``, compared in constant time
        against every token (no early exit)."""
        digest = token_digest(presented)
        match = None
        for client in self.current():
            if hmac.compare_digest(client.token_digest, digest) and match is None:
                match = client
        return match


class GrantsFile(TokenFile):
    """The certificate grants file, re-read as :class:`TokenFile` is."""

    what = "certificate grants file"
    entries = "grants"

    def _parse(self, text: str) -> list[Any]:
        return parse_grants(text, self.path)

    def allows(self, identities: list[str], method: str) -> bool:
        """Whether a certificate with these identities may call ``method``
        (a short name)."""
        return any(g.identity in identities and g.may_call(method) for g in self.current())


def certificate_identities(context: grpc.ServicerContext) -> list[str]:
    """The client certificate's subject CN and subject alternative names."""
    auth = context.auth_context() or {}
    names = [
        *auth.get("x509_common_name", ()),
        *auth.get("x509_subject_alternative_name", ()),
    ]
    return [n.decode(errors="replace") if isinstance(n, bytes) else str(n) for n in names]


class CertificateGrantsInterceptor(grpc.ServerInterceptor):
    """Checks the client certificate of every call to the resolver's
    service against the grants file (mutual TLS). Other services (health,
    reflection) are not governed by it. The check runs on the worker thread
    before the handler's own code: the certificate is known there only."""

    def __init__(self, grants: GrantsFile) -> None:
        self.grants = grants

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = continuation(details)
        method = details.method
        if handler is None or handler.unary_unary is None or not method.startswith(SERVICE_PREFIX):
            return handler
        short = method[len(SERVICE_PREFIX) :]
        behavior = handler.unary_unary
        grants = self.grants

        def granted(request: Any, context: grpc.ServicerContext) -> Any:
            identities = certificate_identities(context)
            if not grants.allows(identities, short):
                shown = identities[0] if identities else "without an identity"
                callinfo.note("client", shown)
                context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"client certificate {shown!r} may not call {short}: grant it in "
                    "RESOLVER_TLS_CLIENT_GRANTS_FILE",
                )
            return behavior(request, context)

        return handler._replace(unary_unary=granted)


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
