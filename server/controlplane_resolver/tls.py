"""TLS and mutual TLS for the server, with certificate rotation.

grpcio calls the fetcher before every new connection's handshake; it
re-reads the files only when one of them changed (mtime and size), so a
rotated certificate is served to new connections without a restart while
established connections keep theirs. A half-written rotation (unreadable
or mismatched files) keeps the previous certificate and logs why.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass

import grpc

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TlsFiles:
    cert: str
    key: str
    #: When set, clients must present a certificate signed by this CA (mTLS).
    client_ca: str | None = None

    def signature(self) -> tuple[tuple[float, int], ...]:
        paths = [self.cert, self.key] + ([self.client_ca] if self.client_ca else [])
        out = []
        for path in paths:
            st = os.stat(path)
            out.append((st.st_mtime, st.st_size))
        return tuple(out)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _configuration(files: TlsFiles) -> grpc.ServerCertificateConfiguration:
    root = _read(files.client_ca) if files.client_ca else None
    return grpc.ssl_server_certificate_configuration([(_read(files.key), _read(files.cert))],
                                                     root_certificates=root)


class RotatingCertificates:
    """The fetcher grpcio calls per handshake. ``reloads`` counts rotations."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self._lock = threading.Lock()
        self._signature = files.signature()
        self.initial = _configuration(files)
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
            try:
                config = _configuration(self.files)
            except OSError as exc:
                log.warning("TLS rotation failed (%s); keeping the current certificate", exc)
                return None
            self._signature = signature
            self.reloads += 1
        log.info("TLS certificate files changed: new connections use the new certificate")
        return config


def server_credentials(files: TlsFiles) -> tuple[grpc.ServerCredentials, RotatingCertificates]:
    """Credentials that pick up rotated files, and the rotation tracker."""
    rotating = RotatingCertificates(files)
    creds = grpc.dynamic_ssl_server_credentials(
        rotating.initial, rotating, require_client_authentication=bool(files.client_ca))
    return creds, rotating
