"""Throwaway credentials for the security and observability tests: a
certificate authority made with ``cryptography``, server and client
certificates, and a bearer-tokens file (fixtures ``pki`` and ``tokens``,
registered in conftest.py)."""

from __future__ import annotations

import datetime
import ipaddress
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from controlplane_resolver_client import ResolverClient


@dataclass(frozen=True)
class Issued:
    """A PEM key and certificate, with the certificate's serial number."""

    key: bytes
    cert: bytes
    serial: int


class Authority:
    """A throwaway certificate authority that issues leaf certificates."""

    def __init__(self, name: str) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(self.name)
            .issuer_name(self.name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )
        self.pem = self._cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, common_name: str, *, server: bool) -> Issued:
        """A leaf certificate; a server one names 127.0.0.1 and localhost."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        serial = x509.random_serial_number()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        else:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(common_name)]), critical=False
            )
        cert = builder.sign(self._key, hashes.SHA256())
        return Issued(
            key=key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            cert=cert.public_bytes(serialization.Encoding.PEM),
            serial=serial,
        )


def write_atomically(path: Path, data: bytes, mtime: float | None = None) -> None:
    """Replace ``path`` in one step (as a secret mount does) and set its mtime
    explicitly, so a rewrite within one clock tick is still a change."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    stamp = time.time() if mtime is None else mtime
    os.utime(path, (stamp, stamp))


@dataclass
class Pki:
    """Certificates of one test: the server's CA and pair on disk, a client
    CA with a client certificate, and an unrelated CA with its own client."""

    server_ca: Authority
    server: Issued
    cert_file: Path
    key_file: Path
    client_ca: Authority
    client_ca_file: Path
    client: Issued
    stranger_ca: Authority
    stranger: Issued

    def settings(self, *, mutual: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"tls_cert": str(self.cert_file), "tls_key": str(self.key_file)}
        if mutual:
            out["tls_client_ca"] = str(self.client_ca_file)
        return out


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    server_ca = Authority("test server CA")
    server = server_ca.issue("resolver", server=True)
    client_ca = Authority("test client CA")
    stranger_ca = Authority("some other CA")
    files = {name: tmp_path / name for name in ("server.pem", "server.key", "clients-ca.pem")}
    files["server.pem"].write_bytes(server.cert)
    files["server.key"].write_bytes(server.key)
    files["clients-ca.pem"].write_bytes(client_ca.pem)
    return Pki(
        server_ca=server_ca,
        server=server,
        cert_file=files["server.pem"],
        key_file=files["server.key"],
        client_ca=client_ca,
        client_ca_file=files["clients-ca.pem"],
        client=client_ca.issue("engine-node-1", server=False),
        stranger_ca=stranger_ca,
        stranger=stranger_ca.issue("intruder", server=False),
    )


def classify(client: ResolverClient, timeout: float = 5) -> str:
    """A call that touches no database: proves the channel works."""
    response = client.classify_run_id("run_cm4abcdefghijklmnopqrstuv", timeout=timeout)
    assert response is not None
    return response.body


ENGINE_TOKEN = "engine-token-" + "e" * 24
CONSOLE_TOKEN = "console-token-" + "c" * 24


@dataclass
class Tokens:
    """A tokens file on disk and helpers to rewrite it."""

    path: Path

    def write(self, *lines: str) -> None:
        # A rewrite can keep the size and land within one mtime tick: set
        # a distinct mtime so the change is always visible.
        stamp = max(time.time(), self.path.stat().st_mtime + 1 if self.path.exists() else 0)
        write_atomically(self.path, ("\n".join(lines) + "\n").encode(), stamp)


@pytest.fixture
def tokens(tmp_path: Path) -> Tokens:
    t = Tokens(tmp_path / "tokens")
    t.write(
        "# name  token  methods",
        f"engine  {ENGINE_TOKEN}  *",
        f"console {CONSOLE_TOKEN} ResolveAuthenticatedEnv ResolveEnv",
    )
    return t
