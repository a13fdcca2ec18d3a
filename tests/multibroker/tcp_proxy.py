"""A small TCP proxy on 127.0.0.1 that can be cut and restored, to make a
database unreachable for one broker without touching the database.

`cut()` stops accepting (the listening socket closes: new connections are
refused) and shuts down every open connection both ways; `restore()` listens
again on the same port. Each connection is pumped by one thread; every thread
is joined by `close()`."""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading

CHUNK = 65536
JOIN_TIMEOUT = 5.0


class TcpProxy:
    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.port = 0
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._threads: list[threading.Thread] = []
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self.accepted = 0
        self.restore()

    # ------------------------------------------------------------- control

    def restore(self) -> None:
        """Listens (again, on the same port once one was chosen)."""
        assert self._listener is None, "already listening"
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._acceptor = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._acceptor.start()

    def cut(self) -> None:
        """Refuses new connections and breaks every open one."""
        listener, self._listener = self._listener, None
        if listener is not None:
            # Wakes the blocked accept(), which then sees the socket shut.
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        if self._acceptor is not None:
            self._acceptor.join(JOIN_TIMEOUT)
            assert not self._acceptor.is_alive(), "the proxy's acceptor did not stop"
            self._acceptor = None
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        self._join_pumps()

    def close(self) -> None:
        self.cut()

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._pairs)

    def upstream_ports(self) -> set[int]:
        """The local ports of the open connections to the target, as the
        target sees them (e.g. `pg_stat_activity.client_port`)."""
        ports = set()
        with self._lock:
            for _, upstream in self._pairs:
                with contextlib.suppress(OSError):
                    ports.add(upstream.getsockname()[1])
        return ports

    # ------------------------------------------------------------- workings

    def _join_pumps(self) -> None:
        with self._lock:
            threads, self._threads = self._threads, []
        for thread in threads:
            thread.join(JOIN_TIMEOUT)
            assert not thread.is_alive(), "a proxy pump did not stop"

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            pump = threading.Thread(target=self._pump, args=(client, upstream), daemon=True)
            with self._lock:
                if self._listener is not listener:  # cut meanwhile
                    client.close()
                    upstream.close()
                    return
                self.accepted += 1
                self._pairs.append((client, upstream))
                self._threads.append(pump)
            pump.start()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        """Copies bytes both ways until either side closes or the proxy is cut."""
        peer = {client: upstream, upstream: client}
        with selectors.DefaultSelector() as selector:
            selector.register(client, selectors.EVENT_READ)
            selector.register(upstream, selectors.EVENT_READ)
            try:
                while True:
                    for key, _ in selector.select():
                        data = key.fileobj.recv(CHUNK)
                        if not data:
                            return
                        peer[key.fileobj].sendall(data)
            except OSError:
                return
            finally:
                with self._lock, contextlib.suppress(ValueError):
                    self._pairs.remove((client, upstream))
                for sock in (client, upstream):
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                    sock.close()
