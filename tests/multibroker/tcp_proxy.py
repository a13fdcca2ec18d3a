"""A small TCP proxy on 127.0.0.1 that can be cut, blackholed and restored,
to make a database unreachable for one broker without touching the database.

`cut()` stops accepting (the listening socket closes: new connections are
refused) and shuts down every open connection both ways. `blackhole()`
keeps everything open but lets no byte through either way, as a stalled
network would: open connections carry nothing, new ones are accepted and get
nothing. `restore()` undoes either: it listens again on the same port after
a cut, and lets the held bytes flow again after a blackhole.

(The proxy's own kernel still acknowledges what it is sent, so a blackhole
here is seen by the peers as a silent server, not as lost packets: TCP
timeouts on the broker's side do not fire, only deadlines of its own and
the server's timeouts do.)

Each connection is pumped by one thread; every thread is joined by `close()`."""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from urllib.parse import urlparse, urlunparse

CHUNK = 65536
JOIN_TIMEOUT = 5.0

Pair = tuple[socket.socket, socket.socket]


class TcpProxy:
    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.port = 0
        self._lock = threading.Lock()
        # Signalled when bytes may flow again or a connection was cut.
        self._changed = threading.Condition(self._lock)
        self._blackholed = False
        self._pairs: list[Pair] = []
        self._threads: list[threading.Thread] = []
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self.accepted = 0
        self.restore()

    # ------------------------------------------------------------- control

    def url_for(self, database_url: str) -> str:
        """`database_url` with this proxy's address in place of the server's."""
        parsed = urlparse(database_url)
        userinfo = parsed.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@127.0.0.1:{self.port}" if userinfo else f"127.0.0.1:{self.port}"
        return urlunparse(parsed._replace(netloc=netloc))

    def restore(self) -> None:
        """Listens again after a cut (on the same port once one was chosen),
        and lets bytes flow again after a blackhole."""
        with self._changed:
            self._blackholed = False
            self._changed.notify_all()
        if self._listener is not None:
            return
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._acceptor = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._acceptor.start()

    def blackhole(self) -> None:
        """Holds every byte, both ways, on open and new connections alike."""
        with self._changed:
            self._blackholed = True

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
        with self._changed:
            pairs, self._pairs = self._pairs, []
            self._changed.notify_all()  # pumps held by a blackhole see their pair gone
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

    def _may_flow(self, pair: Pair) -> bool:
        """Waits while the proxy is blackholed; False once `pair` was cut."""
        with self._changed:
            self._changed.wait_for(lambda: not self._blackholed or pair not in self._pairs)
            return pair in self._pairs

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        """Copies bytes both ways until either side closes or the proxy is
        cut; while it is blackholed, reads nothing, so nothing passes."""
        pair = (client, upstream)
        peer = {client: upstream, upstream: client}
        with selectors.DefaultSelector() as selector:
            selector.register(client, selectors.EVENT_READ)
            selector.register(upstream, selectors.EVENT_READ)
            try:
                while True:
                    for key, _ in selector.select():
                        if not self._may_flow(pair):
                            return
                        data = key.fileobj.recv(CHUNK)
                        if not data:
                            return
                        peer[key.fileobj].sendall(data)
            except OSError:
                return
            finally:
                with self._lock, contextlib.suppress(ValueError):
                    self._pairs.remove(pair)
                for sock in pair:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                    sock.close()
