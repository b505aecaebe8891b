"""Security of a real server TLS and mutual TLS with throwaway
certificates made here with ``cryptography``, certificate rotation without a
restart, bearer tokens (accepted, rejected, rotated), per-method
authorisation decided before existence is revealed, which services stay
open, the refusal to serve unauthenticated on a public address, secrets kept
out of logs and metrics, and bounded inputs."""

from __future__ import annotations

import io
import json
import logging
import queue
import socket
import ssl
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from psycopg.conninfo import conninfo_to_dict

from controlplane_resolver.config import Settings
from controlplane_resolver.dev import demo
from controlplane_resolver.errors import ConfigError
from controlplane_resolver.runtime.logs import JsonFormatter
from controlplane_resolver.serving.server import ResolverApp
from controlplane_resolver_client import ResolverClient, ResolverError, pb
from controlplane_resolver_client.v1 import SERVICE_NAME, resolver_pb2_grpc

from support.credentials import CONSOLE_TOKEN, ENGINE_TOKEN, Pki, Tokens, classify, write_atomically
from support.databases import Databases, Tenant
from support.polling import wait_until
from support.servers import Running

# ------------------------------------------------------------------ helpers


def failure_code(call: Callable[[], Any]) -> grpc.StatusCode:
    with pytest.raises(ResolverError) as failed:
        call()
    return failed.value.code


def served_serial(port: int, ca_pem: bytes) -> int:
    """The serial of the certificate a brand-new TLS connection to ``port``
    is shown (a raw ``ssl`` socket offering ALPN h2, as a gRPC client does)."""
    context = ssl.create_default_context(cadata=ca_pem.decode())
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


# ---------------------------------------------------------------------- TLS


def test_tls_handshake_needs_the_servers_ca(start_server, pki: Pki) -> None:
    running = start_server(**pki.settings())
    with ResolverClient(running.address, tls_ca=pki.server_ca.pem) as trusted:
        assert classify(trusted)
    # By name too: the certificate names localhost as well as 127.0.0.1.
    with ResolverClient(f"localhost:{running.app.port}", tls_ca=pki.server_ca.pem) as by_name:
        assert classify(by_name)
    # Plaintext to a TLS port fails, and so does TLS verified with the wrong CA.
    with ResolverClient(running.address) as plaintext:
        assert failure_code(lambda: classify(plaintext, timeout=3)) == grpc.StatusCode.UNAVAILABLE
    with ResolverClient(running.address, tls_ca=pki.stranger_ca.pem) as wrong_ca:
        assert failure_code(lambda: classify(wrong_ca, timeout=3)) == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_requires_a_client_certificate_from_the_client_ca(
    start_server, pki: Pki
) -> None:
    running = start_server(**pki.settings(mutual=True))
    with ResolverClient(
        running.address, tls_ca=pki.server_ca.pem, tls_cert=pki.client.cert, tls_key=pki.client.key
    ) as member:
        assert classify(member)
    with ResolverClient(running.address, tls_ca=pki.server_ca.pem) as anonymous:
        assert failure_code(lambda: classify(anonymous, timeout=3)) == grpc.StatusCode.UNAVAILABLE
    with ResolverClient(
        running.address,
        tls_ca=pki.server_ca.pem,
        tls_cert=pki.stranger.cert,
        tls_key=pki.stranger.key,
    ) as stranger:
        assert failure_code(lambda: classify(stranger, timeout=3)) == grpc.StatusCode.UNAVAILABLE


def test_rotated_certificate_is_served_to_new_connections_without_restart(
    start_server, pki: Pki
) -> None:
    running = start_server(**pki.settings())
    port = running.app.port
    assert served_serial(port, pki.server_ca.pem) == pki.server.serial
    established = ResolverClient(running.address, tls_ca=pki.server_ca.pem)
    assert classify(established)

    renewed = pki.server_ca.issue("resolver", server=True)
    assert renewed.serial != pki.server.serial
    later = time.time() + 5
    write_atomically(pki.key_file, renewed.key, later)
    write_atomically(pki.cert_file, renewed.cert, later)

    assert served_serial(port, pki.server_ca.pem) == renewed.serial
    assert running.app.certificates.reloads == 1
    # The established connection keeps working, and new clients connect.
    assert classify(established)
    established.close()
    with ResolverClient(running.address, tls_ca=pki.server_ca.pem) as fresh:
        assert classify(fresh)


def test_half_written_rotation_keeps_serving_the_previous_certificate(
    start_server, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    running = start_server(**pki.settings())
    port = running.app.port
    caplog.set_level(logging.WARNING, logger="controlplane_resolver.serving.tls")
    renewed = pki.server_ca.issue("resolver", server=True)
    # The certificate arrives before its key: the pair does not match.
    write_atomically(pki.cert_file, renewed.cert, time.time() + 5)
    assert served_serial(port, pki.server_ca.pem) == pki.server.serial
    with ResolverClient(running.address, tls_ca=pki.server_ca.pem) as during:
        assert classify(during)
    assert running.app.certificates.reloads == 0
    assert len([r for r in caplog.records if "not applied" in r.getMessage()]) == 1
    # The key follows: now the new pair is served.
    write_atomically(pki.key_file, renewed.key, time.time() + 10)
    assert served_serial(port, pki.server_ca.pem) == renewed.serial
    assert running.app.certificates.reloads == 1


def test_mismatched_certificate_and_key_at_start_is_a_configuration_error(
    start_server, pki: Pki
) -> None:
    other = pki.server_ca.issue("resolver", server=True)
    pki.key_file.write_bytes(other.key)
    # Not "could not listen … is the port in use?": the files are named.
    with pytest.raises(ConfigError, match="not a usable certificate and matching key") as refused:
        start_server(**pki.settings())
    assert str(pki.key_file) in str(refused.value)


def test_client_certificates_call_only_the_methods_granted_to_them(
    start_server, pki: Pki, tmp_path: Path, cp, tenant: Tenant
) -> None:
    grants = tmp_path / "grants"
    # By SAN (the engine's certificate names engine-node-1 as a DNS name
    # too) and by CN.
    write_atomically(grants, b"engine-node-1 ClassifyRunId ResolveEnv\nconsole *\n")
    running = start_server(
        **pki.settings(mutual=True), tls_client_grants_file=str(grants), listen_enabled=False
    )
    env_id = tenant.environment(cp)
    console = pki.client_ca.issue("console", server=False)
    unlisted = pki.client_ca.issue("unlisted", server=False)

    def connect(issued: Any) -> ResolverClient:
        return ResolverClient(
            running.address, tls_ca=pki.server_ca.pem, tls_cert=issued.cert, tls_key=issued.key
        )

    with connect(pki.client) as engine:
        assert classify(engine)
        assert engine.resolve_env(env_id).id == env_id
        denied = rejection(lambda: engine.resolve_authenticated_env(env_id))
        assert denied.code == grpc.StatusCode.PERMISSION_DENIED
        assert "'engine-node-1' may not call ResolveAuthenticatedEnv" in denied.message
        assert rejection(lambda: engine.assert_env_exists(env_id)).code == (
            grpc.StatusCode.PERMISSION_DENIED
        )
    with connect(console) as by_star:
        assert by_star.resolve_env(env_id).id == env_id
        # "*" is every method but the one that returns API keys.
        assert rejection(lambda: by_star.resolve_authenticated_env(env_id)).code == (
            grpc.StatusCode.PERMISSION_DENIED
        )
    with connect(unlisted) as stranger:
        assert rejection(lambda: classify(stranger)).code == grpc.StatusCode.PERMISSION_DENIED
        # Health is not governed by the grants.
        health = health_pb2_grpc.HealthStub(stranger.channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == 1
    # Granted by a rewrite of the file, without a restart.
    write_atomically(
        grants,
        b"engine-node-1 ClassifyRunId ResolveEnv\nconsole * ResolveAuthenticatedEnv\n",
        grants.stat().st_mtime + 1,
    )
    with connect(console) as granted:

        def secret_allowed() -> bool:
            try:
                return granted.resolve_authenticated_env(env_id).id == env_id
            except ResolverError as exc:
                assert exc.code == grpc.StatusCode.PERMISSION_DENIED
                return False

        wait_until(secret_allowed, timeout=10, what="the rewritten grants to apply")


def test_grants_without_mutual_tls_are_a_configuration_error(databases: Databases) -> None:
    with pytest.raises(ConfigError, match="needs --tls-client-ca"):
        Settings.load(
            {
                "CONTROL_PLANE_DATABASE_URL": databases.control_plane,
                "RESOLVER_TLS_CLIENT_GRANTS_FILE": "/nonexistent",
            }
        )


# ------------------------------------------------------------------- tokens


def client_for(running: Running, token: str | None) -> ResolverClient:
    return ResolverClient(running.address, token=token, timeout=5)


def rejection(call: Callable[[], Any]) -> ResolverError:
    with pytest.raises(ResolverError) as failed:
        call()
    return failed.value


def test_valid_token_works_missing_or_wrong_token_is_unauthenticated_without_detail(
    start_server, tokens: Tokens, cp, tenant: Tenant
) -> None:
    running = start_server(auth_tokens_file=str(tokens.path))
    env_id = tenant.environment(cp)
    with client_for(running, ENGINE_TOKEN) as engine:
        assert engine.resolve_env(env_id).id == env_id
    wrong_token = "wrong-token-" + "w" * 24
    failures = []
    for token in (None, wrong_token, ENGINE_TOKEN[:-1], "x"):
        with client_for(running, token) as caller:
            failures.append(rejection(lambda: caller.resolve_env(env_id)))
    assert {f.code for f in failures} == {grpc.StatusCode.UNAUTHENTICATED}
    # Every failure looks the same: nothing says whether the token was
    # missing, unknown or close to a real one, and no ErrorInfo reason.
    assert len({(f.message, f.reason) for f in failures}) == 1
    assert failures[0].reason is None
    for secret in (wrong_token, ENGINE_TOKEN, "engine", "console"):
        assert secret not in failures[0].message
    # A malformed header is the same failure.
    channel = grpc.insecure_channel(running.address)
    stub = resolver_pb2_grpc.ControlPlaneResolverServiceStub(channel)
    for header in (ENGINE_TOKEN, f"Basic {ENGINE_TOKEN}", "Bearer "):
        with pytest.raises(grpc.RpcError) as failed:
            stub.ResolveEnv(
                pb.ResolveEnvRequest(environment_id=env_id),
                timeout=5,
                metadata=(("authorization", header),),
            )
        assert failed.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert failed.value.details() == failures[0].message
    channel.close()


def test_with_health_closed_the_typed_client_still_calls(start_server, tokens: Tokens) -> None:
    # The channel's health watch carries no token: refused UNIMPLEMENTED, it
    # turns the watch off (gRFC A17); refused otherwise, it would take the
    # server for unhealthy and never call it.
    running = start_server(auth_tokens_file=str(tokens.path), open_health=False)
    with client_for(running, ENGINE_TOKEN) as engine:
        assert classify(engine)
    with grpc.insecure_channel(running.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.RpcError) as checked:
            health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert checked.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_token_rotation_adds_then_retires_a_token_without_restart(
    start_server, tokens: Tokens
) -> None:
    running = start_server(auth_tokens_file=str(tokens.path))
    old = client_for(running, ENGINE_TOKEN)
    new_token = "engine-token-2-" + "n" * 24
    new = client_for(running, new_token)
    assert classify(old)
    assert failure_code(lambda: classify(new)) == grpc.StatusCode.UNAUTHENTICATED

    def accepted(client: ResolverClient) -> bool:
        try:
            return bool(classify(client))
        except ResolverError as exc:
            assert exc.code == grpc.StatusCode.UNAUTHENTICATED, exc
            return False

    # Both lines at once: the new token starts working (within the reload
    # interval) and the old one keeps working.
    tokens.write(
        f"engine  {ENGINE_TOKEN}  *",
        f"engine  {new_token}  *",
        f"console {CONSOLE_TOKEN} ResolveAuthenticatedEnv ResolveEnv",
    )
    wait_until(lambda: accepted(new), timeout=5)
    assert accepted(old)
    # The old line goes: the old token is rejected, the new one still works.
    tokens.write(
        f"engine  {new_token}  *", f"console {CONSOLE_TOKEN} ResolveAuthenticatedEnv ResolveEnv"
    )
    wait_until(lambda: not accepted(old), timeout=5)
    assert accepted(new)
    assert running.app.tokens.reloads == 2
    old.close()
    new.close()


def test_broken_rewrite_of_the_tokens_file_keeps_the_previous_tokens(
    start_server, tokens: Tokens, caplog: pytest.LogCaptureFixture
) -> None:
    running = start_server(auth_tokens_file=str(tokens.path))
    caplog.set_level(logging.WARNING, logger="controlplane_resolver.serving.auth")
    with client_for(running, ENGINE_TOKEN) as engine, client_for(running, CONSOLE_TOKEN) as console:
        # A malformed line: everything is kept, the good lines too.
        tokens.write(f"engine  {ENGINE_TOKEN}  *", "console short-token")
        wait_until(lambda: classify(engine) and "line 2" in caplog.text, timeout=5)
        assert console.resolve_env(demo.new_cuid()) is None  # authenticated, absent
        # An empty file (as a rewrite in place looks half-way) is kept too.
        tokens.write("# nothing yet")
        wait_until(lambda: classify(engine) and "no client lines" in caplog.text, timeout=5)
        assert console.resolve_env(demo.new_cuid()) is None  # authenticated, absent
    assert running.app.tokens.reloads == 0
    assert "keeping the previous tokens" in caplog.text
    # The problem is named by line, never by the token.
    for secret in (ENGINE_TOKEN, "short-token"):
        assert secret not in caplog.text


def test_unusable_tokens_file_at_start_is_a_configuration_error(
    databases: Databases, tmp_path: Path, tokens: Tokens
) -> None:
    malformed = tmp_path / "malformed"
    malformed.write_text(f"engine {ENGINE_TOKEN} *\nconsole short-token\n")
    empty = tmp_path / "empty"
    empty.write_text("# engine some-token-to-come *\n")
    for path, problem in (
        (malformed, "line 2"),
        (empty, "no client lines"),
        (tmp_path / "missing", "cannot read"),
    ):
        with pytest.raises(ConfigError, match=problem) as refused:
            ResolverApp(public_settings(databases, auth_tokens_file=str(path)))
        assert "short-token" not in str(refused.value)
    # The parsed tokens cannot be printed: clients keep digests only.
    from controlplane_resolver.serving.auth import TokenFile

    clients = TokenFile(str(tokens.path)).clients
    assert [c.name for c in clients] == ["engine", "console"]
    assert ENGINE_TOKEN not in repr(clients) and CONSOLE_TOKEN not in repr(clients)


def test_star_allows_everything_but_the_secret_method_which_must_be_named(
    start_server, tokens: Tokens, cp, tenant: Tenant
) -> None:
    running = start_server(auth_tokens_file=str(tokens.path))
    env_id = tenant.environment(cp)
    api_key = cp.execute(
        'SELECT "apiKey" FROM "RuntimeEnvironment" WHERE "id" = %s', (env_id,)
    ).fetchone()[0]
    with client_for(running, ENGINE_TOKEN) as engine, client_for(running, CONSOLE_TOKEN) as console:
        assert engine.resolve_env(env_id).id == env_id
        assert engine.assert_env_exists(env_id)
        denied = rejection(lambda: engine.resolve_authenticated_env(env_id))
        assert denied.code == grpc.StatusCode.PERMISSION_DENIED
        assert api_key not in denied.message
        assert console.resolve_authenticated_env(env_id).api_key == api_key
        assert console.resolve_env(env_id).id == env_id
        # A line that names methods allows only those.
        assert (
            rejection(lambda: console.assert_env_exists(env_id)).code
            == grpc.StatusCode.PERMISSION_DENIED
        )


def test_permission_denied_is_decided_before_existence_is_revealed(
    start_server, tokens: Tokens, cp, tenant: Tenant
) -> None:
    running = start_server(auth_tokens_file=str(tokens.path))
    existing = tenant.environment(cp)
    absent = demo.new_cuid()
    with client_for(running, ENGINE_TOKEN) as engine, client_for(running, CONSOLE_TOKEN) as console:
        for client, call in (
            (engine, ResolverClient.resolve_authenticated_env),
            (console, ResolverClient.assert_env_exists),
        ):
            seen = [rejection(lambda: call(client, env_id)) for env_id in (existing, absent)]
            assert [s.code for s in seen] == [grpc.StatusCode.PERMISSION_DENIED] * 2
            assert seen[0].message == seen[1].message
            assert (seen[0].reason, seen[0].metadata) == (seen[1].reason, seen[1].metadata)
            assert existing not in seen[0].message
    # Nothing was loaded for the denied calls: the handler never ran.
    assert len(running.app.cache) == 0


def health_status(address: str, token: str | None = None) -> int:
    with grpc.insecure_channel(address) as channel:
        metadata = (("authorization", f"Bearer {token}"),) if token else None
        return (
            health_pb2_grpc.HealthStub(channel)
            .Check(
                health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5, metadata=metadata
            )
            .status
        )


def reflected_services(address: str, token: str | None = None) -> list[str]:
    with grpc.insecure_channel(address) as channel:
        metadata = (("authorization", f"Bearer {token}"),) if token else None
        responses = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
            timeout=5,
            metadata=metadata,
        )
        first = next(iter(responses))
        return [s.name for s in first.list_services_response.service]


def rpc_code(call: Callable[[], Any]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as failed:
        call()
    return failed.value.code()


def test_health_is_open_and_reflection_closed_by_default(start_server, tokens: Tokens) -> None:
    running = start_server(auth_tokens_file=str(tokens.path))
    serving = health_pb2.HealthCheckResponse.SERVING
    assert health_status(running.address) == serving
    assert rpc_code(lambda: reflected_services(running.address)) == grpc.StatusCode.UNAUTHENTICATED
    # A token allowed every method may reflect; one limited to named
    # methods may not.
    assert SERVICE_NAME in reflected_services(running.address, ENGINE_TOKEN)
    assert (
        rpc_code(lambda: reflected_services(running.address, CONSOLE_TOKEN))
        == grpc.StatusCode.PERMISSION_DENIED
    )
    # A refused stream ends at once, whether it sends nothing or waits for
    # the server before sending (not UNIMPLEMENTED, not a hang until its deadline).
    with grpc.insecure_channel(running.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        assert (
            rpc_code(lambda: list(stub.ServerReflectionInfo(iter([]), timeout=5)))
            == grpc.StatusCode.UNAUTHENTICATED
        )
        pending: queue.Queue[Any] = queue.Queue()

        def requests_when_told() -> Iterator[Any]:
            while (request := pending.get()) is not None:
                yield request

        started = time.monotonic()
        waiting = stub.ServerReflectionInfo(requests_when_told(), timeout=5)
        assert rpc_code(lambda: next(waiting)) == grpc.StatusCode.UNAUTHENTICATED
        assert time.monotonic() - started < 2
        pending.put(None)


def test_health_closed_and_reflection_open_when_configured_so(start_server, tokens: Tokens) -> None:
    running = start_server(
        auth_tokens_file=str(tokens.path), open_health=False, open_reflection=True
    )
    assert rpc_code(lambda: health_status(running.address)) == grpc.StatusCode.UNAUTHENTICATED
    assert health_status(running.address, ENGINE_TOKEN) == health_pb2.HealthCheckResponse.SERVING
    assert SERVICE_NAME in reflected_services(running.address)


# ------------------------------------------- refusing to serve unauthenticated


def public_settings(databases: Databases, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "control_plane_database_url": databases.control_plane,
        "addr": "0.0.0.0:0",
        "listen_enabled": False,
    }
    values.update(overrides)
    return Settings(**values)


def accepted(settings: Settings) -> None:
    """Assert ``settings`` pass the authentication check (the app is built,
    which is where the check runs, then let go without serving)."""
    ResolverApp(settings).stop(grace=0)


def test_public_address_without_authentication_is_refused_unless_allowed(
    databases: Databases, start_server, tokens: Tokens, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    for addr in ("0.0.0.0:0", "[::]:0", "10.1.2.3:50051"):
        with pytest.raises(ConfigError, match="without authentication"):
            ResolverApp(public_settings(databases, addr=addr))
    # Loopback needs nothing, but says it serves without authentication.
    caplog.set_level(logging.WARNING, logger="controlplane_resolver.serving.server")
    accepted(public_settings(databases, addr="127.0.0.1:0"))
    accepted(public_settings(databases, addr="localhost:0"))
    accepted(public_settings(databases, addr="[::1]:0"))
    assert "WITHOUT authentication" in caplog.text
    # Tokens, client certificates, or the explicit flag make it acceptable.
    accepted(public_settings(databases, auth_tokens_file=str(tokens.path)))
    accepted(public_settings(databases, **pki.settings(mutual=True)))
    caplog.clear()
    running = start_server(addr="0.0.0.0:0", allow_unauthenticated=True)
    assert classify(running.client)
    assert "serving 0.0.0.0:0 WITHOUT authentication" in caplog.text


# ----------------------------------------------------------- secrets stay out


def with_password(dsn: str, password: str) -> str:
    """``dsn`` with a password added (the session clusters trust local
    connections, so it is accepted and ignored)."""
    parts = conninfo_to_dict(dsn)
    return (
        f"postgresql://{parts['user']}:{password}@{parts['host']}:{parts['port']}/{parts['dbname']}"
    )


@pytest.fixture
def captured_logs() -> Iterator[dict[str, io.StringIO]]:
    """Everything logged at DEBUG and above, as JSON lines and as text."""
    streams = {"json": io.StringIO(), "text": io.StringIO()}
    handlers = []
    for name, formatter in (
        ("json", JsonFormatter()),
        ("text", logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")),
    ):
        handler = logging.StreamHandler(streams[name])
        handler.setFormatter(formatter)
        handler.setLevel(logging.DEBUG)
        handlers.append(handler)
    root = logging.getLogger()
    previous = root.level
    root.setLevel(logging.DEBUG)
    for handler in handlers:
        root.addHandler(handler)
    try:
        yield streams
    finally:
        for handler in handlers:
            root.removeHandler(handler)
        root.setLevel(previous)


def test_api_keys_dsns_and_tokens_never_reach_logs_errors_or_metrics(
    databases: Databases,
    start_server,
    tokens: Tokens,
    cp,
    tenant: Tenant,
    captured_logs: dict[str, io.StringIO],
) -> None:
    password = "pg-passw0rd-" + demo.new_cuid()
    running = start_server(
        control_plane_database_url=with_password(databases.control_plane, password),
        run_ops_database_url=with_password(databases.run_ops, password),
        auth_tokens_file=str(tokens.path),
        metrics_addr="127.0.0.1:0",
    )
    parent = tenant.environment(cp, "DEVELOPMENT")
    child = tenant.environment(
        cp,
        "PREVIEW",
        parent_environment_id=parent,
        is_branchable_environment=False,
        branch_name="feature-x",
    )
    environment_ids = (parent, child)
    api_keys = [
        cp.execute(
            'SELECT "apiKey" FROM "RuntimeEnvironment" WHERE "id" = %s', (env_id,)
        ).fetchone()[0]
        for env_id in environment_ids
    ]
    run_id = demo.insert_run(
        cp,
        id=demo.new_cuid(),
        environment_id=child,
        project_id=tenant.project_id,
        organization_id=tenant.organization_id,
    )
    # Corrupt (a NULL inside "runTags"): reading it is an unexpected error.
    broken_run = demo.insert_run(
        cp,
        id=demo.new_cuid(),
        environment_id=child,
        project_id=tenant.project_id,
        run_tags=["ok", None],
    )
    wrong_token = "almost-a-token-" + "z" * 24
    errors: list[ResolverError] = []

    def failing(call: Callable[[], Any]) -> None:
        with pytest.raises(ResolverError) as failed:
            call()
        errors.append(failed.value)

    with (
        client_for(running, CONSOLE_TOKEN) as console,
        client_for(running, ENGINE_TOKEN) as engine,
        client_for(running, wrong_token) as stranger,
    ):
        answer = console.resolve_authenticated_env(child)
        assert answer.api_key == api_keys[1]
        assert answer.parent_environment.api_key == api_keys[0]
        assert console.resolve_authenticated_env(child).api_key == api_keys[1]  # cached
        assert console.resolve_authenticated_env(demo.new_cuid()) is None
        failing(lambda: engine.read_run(broken_run))  # INTERNAL
        failing(lambda: engine.resolve_authenticated_env(child))  # PERMISSION_DENIED
        failing(lambda: stranger.resolve_env(child))  # UNAUTHENTICATED
        failing(lambda: engine.resolve_env("not an id!"))  # INVALID_ARGUMENT
        assert engine.read_run(run_id).run.id == run_id
        assert [r.environment_id for r in engine.batch_resolve_envs(list(environment_ids))] == list(
            environment_ids
        )
        engine.invalidate(environment_id=child)
        assert console.resolve_authenticated_env(child).api_key == api_keys[1]
    assert [e.code for e in errors] == [
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.INVALID_ARGUMENT,
    ]
    with urllib.request.urlopen(
        f"http://127.0.0.1:{running.app.metrics_port}/metrics", timeout=5
    ) as response:
        metrics = response.read().decode()
    running.app.stop(grace=1)

    logged_json = captured_logs["json"].getvalue()
    logged_text = captured_logs["text"].getvalue()
    # The capture saw the session: call lines, the INTERNAL traceback, start-up.
    calls = [
        json.loads(line)
        for line in logged_json.splitlines()
        if line.startswith("{") and '"latency_ms"' in line
    ]
    assert {"ResolveAuthenticatedEnv", "ReadRun", "BatchResolveEnvs"} <= {
        c["method"] for c in calls
    }
    assert "unexpected error" in logged_text and "Traceback" in logged_text
    assert "grpc_server_handled_total" in metrics
    secrets = {
        "password": password,
        "engine token": ENGINE_TOKEN,
        "console token": CONSOLE_TOKEN,
        "presented token": wrong_token,
        **{f"api key {i}": key for i, key in enumerate(api_keys)},
    }
    sinks = {
        "json log": logged_json,
        "text log": logged_text,
        "metrics": metrics,
        "errors": "\n".join(f"{e} {e.metadata}" for e in errors),
    }
    leaks = [
        (secret, sink)
        for secret, value in secrets.items()
        for sink, text in sinks.items()
        if value in text
    ]
    assert not leaks


# ------------------------------------------------------------- bounded inputs


def test_oversized_inputs_are_refused(server: Running) -> None:
    client = server.client
    # Past the 1 MiB receive limit: refused by gRPC before any handler runs.
    huge = "a" * ((1 << 20) + 1)
    assert failure_code(lambda: client.resolve_env(huge)) == grpc.StatusCode.RESOURCE_EXHAUSTED
    # Within the message limit but over the id limit.
    too_long = rejection(lambda: client.resolve_env("a" * 256))
    assert (too_long.code, too_long.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ID")
    ids = [demo.new_cuid() for _ in range(1001)]
    for call in (lambda: client.batch_resolve_envs(ids), lambda: client.batch_read_runs(ids)):
        refused = rejection(call)
        assert (refused.code, refused.reason) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "BATCH_TOO_LARGE",
        )
    # The limits are exact: 1000 ids are fine, and the server still serves.
    assert len(client.batch_resolve_envs(ids[:1000])) == 1000
    assert classify(client)
