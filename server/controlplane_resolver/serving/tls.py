"""TLS and mutual TLS for the server, with certificate rotation.

grpcio calls the fetcher before every new connection's handshake; it
re-reads the files only when one of them changed (mtime, size or inode), so
a rotated certificate is served to new connections without a restart while
established connections keep theirs. A half-written rotation (unreadable
files, or a certificate whose key has not arrived yet) keeps the previous
certificate and logs why once; the next change of the files is tried again.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from dataclasses import dataclass

import grpc

from controlplane_resolver.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TlsFiles:
    cert: str
    key: str
    #: When set, clients must present a certificate signed by this CA (mTLS).
    client_ca: str | None = None

    def signature(self) -> tuple[tuple[int, int, int], ...]:
        # The inode too: a file replaced by rename (how secret mounts
        # rotate) within one mtime tick and with the same size still counts.
        paths = [self.cert, self.key] + ([self.client_ca] if self.client_ca else [])
        out = []
        for path in paths:
            st = os.stat(path)
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(out)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _check(files: TlsFiles) -> None:
    """Raise ``ssl.SSLError`` (an ``OSError``) unless the files hold a
    certificate chain, the private key that matches it and, when given, a
    CA bundle. grpcio would otherwise take a mismatched pair, fail every
    handshake's set-up and say only "failed to bind" at start-up."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(files.cert, files.key)
    if files.client_ca:
        context.load_verify_locations(cafile=files.client_ca)


def _configuration(files: TlsFiles) -> grpc.ServerCertificateConfiguration:
    _check(files)
    root = _read(files.client_ca) if files.client_ca else None
    return grpc.ssl_server_certificate_configuration(
        [(_read(files.key), _read(files.cert))], root_certificates=root
    )


class RotatingCertificates:
    """The fetcher grpcio calls per handshake. ``reloads`` counts rotations
    that took effect (a rejected half-written one is not counted)."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self._lock = threading.Lock()
        self._signature = files.signature()
        try:
            self.initial = _configuration(files)
        except OSError as exc:
            raise ConfigError(
                f"the TLS files ({files.cert}, {files.key}"
                + (f", {files.client_ca}" if files.client_ca else "")
                + f") are not a usable certificate and matching key: {exc}"
            ) from None
        self.reloads = 0

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        try:
            signature = self.files.signature()
        except OSError as exc:
            log.warning("TLS files unreadable (%s); keeping the current certificate", exc)
            return None
        with self._lock:
            if signature == self._signature:
                return None
            # Remembered whatever happens next: a broken state is reported
            # once, not on every handshake, and retried when the files change.
            self._signature = signature
            try:
                config = _configuration(self.files)
                changed_while_reading = self.files.signature() != signature
            except OSError as exc:
                log.warning(
                    "TLS rotation not applied (%s); keeping the current certificate "
                    "until the files change again",
                    exc,
                )
                return None
            if changed_while_reading:
                # Still being written: the next handshake reads it again.
                self._signature = ()
                return None
            self.reloads += 1
        log.info("TLS certificate files changed: new connections use the new certificate")
        return config


def server_credentials(files: TlsFiles) -> tuple[grpc.ServerCredentials, RotatingCertificates]:
    """Credentials that pick up rotated files, and the rotation tracker.
    Raises :class:`ConfigError` when the files are not a usable pair."""
    rotating = RotatingCertificates(files)
    creds = grpc.dynamic_ssl_server_credentials(
        rotating.initial, rotating, require_client_authentication=bool(files.client_ca)
    )
    return creds, rotating
