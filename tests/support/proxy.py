"""A TCP proxy in front of a server that does to its clients' connections
what the death of a server process (``SIGKILL``) does while another process
listens on the same address (``serve --processes``, ``SO_REUSEPORT``): every
connection reset, and the next connection attempt, which the kernel had
queued on the dead process's listening socket, reset as soon as accepted.
"""

from __future__ import annotations

import queue
import selectors
import socket
import struct
import threading
from collections.abc import Callable
from types import TracebackType


def _reset(sock: socket.socket) -> None:
    """Close ``sock`` with a TCP reset, as the kernel does for a dead
    process's sockets that still hold data or queued connections."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class KillingProxy:
    """Forwards ``127.0.0.1:<port>`` to the server at ``upstream_port``.

    One thread owns every socket (a selector loop); :meth:`kill` and
    :meth:`close` hand it their work and wait until it is done.
    """

    def __init__(self, upstream_port: int) -> None:
        self._upstream_port = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        #: Connections accepted, refused ones included, and refused.
        self.accepted = 0
        self.refused = 0
        self._refuse = 0
        self._peers: dict[socket.socket, socket.socket] = {}
        self._clients: set[socket.socket] = set()
        self._commands: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._wake_read, self._wake_write = socket.socketpair()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._selector.register(self._wake_read, selectors.EVENT_READ)
        self._running = True
        self._thread = threading.Thread(target=self._loop, name="killing-proxy", daemon=True)
        self._thread.start()

    def kill(self, refuse_next: int = 1) -> None:
        """Reset every connection, and the next ``refuse_next`` ones once
        accepted."""

        def kill() -> None:
            self._refuse += refuse_next
            for client in list(self._clients):
                self._drop(client, reset=True)

        self._do(kill)

    def close(self) -> None:
        def close() -> None:
            for client in list(self._clients):
                self._drop(client, reset=False)
            self._running = False

        self._do(close)
        self._thread.join(5)
        for sock in (self._listener, self._wake_read, self._wake_write):
            sock.close()
        self._selector.close()

    def __enter__(self) -> KillingProxy:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------ the loop

    def _do(self, command: Callable[[], None]) -> None:
        done = threading.Event()

        def then_done() -> None:
            command()
            done.set()

        self._commands.put(then_done)
        self._wake_write.send(b"x")
        if not done.wait(5):
            raise AssertionError("the proxy's thread did not answer within 5 s")

    def _loop(self) -> None:
        while self._running:
            for key, _ in self._selector.select():
                sock = key.fileobj
                if sock is self._wake_read:
                    self._wake_read.recv(4096)
                    while not self._commands.empty():
                        self._commands.get()()
                elif sock is self._listener:
                    self._accept()
                elif sock in self._peers:
                    self._forward(sock)

    def _accept(self) -> None:
        client, _ = self._listener.accept()
        self.accepted += 1
        if self._refuse:
            self._refuse -= 1
            self.refused += 1
            _reset(client)
            return
        upstream = socket.create_connection(("127.0.0.1", self._upstream_port))
        self._peers[client], self._peers[upstream] = upstream, client
        self._clients.add(client)
        self._selector.register(client, selectors.EVENT_READ)
        self._selector.register(upstream, selectors.EVENT_READ)

    def _forward(self, sock: socket.socket) -> None:
        peer = self._peers[sock]
        try:
            data = sock.recv(65536)
            if data:
                peer.sendall(data)
                return
        except OSError:
            pass
        self._drop(sock if sock in self._clients else peer, reset=False)

    def _drop(self, client: socket.socket, *, reset: bool) -> None:
        """Close a connection: the client's side (with a reset when
        ``reset``) and the proxy's own connection to the server."""
        upstream = self._peers.pop(client)
        del self._peers[upstream]
        self._clients.discard(client)
        for sock in (client, upstream):
            self._selector.unregister(sock)
        if reset:
            _reset(client)
        else:
            client.close()
        upstream.close()
