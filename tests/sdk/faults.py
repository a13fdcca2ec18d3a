"""Brokers that fail as real ones do, for the SDK's failover tests. Each is
a fault injector on 127.0.0.1 and a free port, standing in for a broker (or
the network in front of one), never for the SDK under test:

- `FreezableProxy`: a TCP proxy in front of a real broker that can freeze as
  a SIGSTOPped process does: connections are still accepted (the kernel
  does that), but not a byte goes through either way. Without a target it
  is frozen from the start: a port that accepts and never answers.
- `StalledBroker`: a gRPC server that takes every call and answers none
  until it is closed; it counts the calls it got, by method.
- `LosesFirstReply`: a server interceptor for a `Forwarder` (a gRPC server
  that relays every unary call to a real broker): it lets the first call of
  one method reach the broker, then answers UNAVAILABLE, as if the reply
  had been lost on the way back.
"""

from __future__ import annotations

import collections
import contextlib
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_status import rpc_status

CHUNK = 65536
JOIN_TIMEOUT = 5.0
FORWARD_TIMEOUT = 10.0


class FreezableProxy:
    """Relays TCP connections to `target` until `freeze()`; from then on it
    holds every byte, and every new connection, until `close()`."""

    def __init__(self, target: tuple[str, int] | None = None) -> None:
        self.target = target
        self.accepted = 0
        self._flowing = threading.Event()
        if target is not None:
            self._flowing.set()
        self._closed = False
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._spawn(self._accept)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def freeze(self) -> None:
        """Stops relaying, both ways, on every connection, old and new."""
        self._flowing.clear()

    def close(self) -> None:
        """Breaks every connection and joins every thread."""
        with self._lock:
            self._closed = True
            sockets = list(self._sockets)
        self._flowing.set()  # frees the pumps held by a freeze, which then see `_closed`
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self._threads:
            thread.join(JOIN_TIMEOUT)
            assert not thread.is_alive(), f"proxy thread {thread.name} did not stop"

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _keep(self, sock: socket.socket) -> bool:
        """Registers a socket to close at the end; False once closed."""
        with self._lock:
            if self._closed:
                sock.close()
                return False
            self._sockets.append(sock)
            return True

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            self.accepted += 1
            if self._keep(connection) and self.target is not None:
                self._spawn(self._relay, connection)

    def _relay(self, connection: socket.socket) -> None:
        self._flowing.wait()
        if self._closed:
            return
        try:
            upstream = socket.create_connection(self.target)
        except OSError:
            return
        if self._keep(upstream):
            self._spawn(self._pump, upstream, connection)
            self._pump(connection, upstream)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        while True:
            try:
                data = source.recv(CHUNK)
            except OSError:
                return
            self._flowing.wait()  # frozen: hold the data, read nothing more
            if not data or self._closed:
                with contextlib.suppress(OSError):
                    sink.shutdown(socket.SHUT_WR)
                return
            try:
                sink.sendall(data)
            except OSError:
                return


class StalledBroker(grpc.GenericRpcHandler):
    """A gRPC server that accepts every call of any method and answers
    none until `close()`; `calls` counts the calls by method name."""

    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._server = grpc.server(ThreadPoolExecutor(max_workers=16), handlers=[self])
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.calls.values())

    def close(self) -> None:
        self._released.set()
        self._server.stop(0).wait(JOIN_TIMEOUT)

    def service(self, handler_call_details):
        name = handler_call_details.method.rsplit("/", 1)[-1]

        def stall(request, context):
            with self._lock:
                self.calls[name] += 1
            self._released.wait()
            context.abort(grpc.StatusCode.UNAVAILABLE, "the stalled broker stopped")

        def stall_stream(request, context):
            stall(request, context)
            yield from ()

        if name == "OpenSession":
            return grpc.stream_stream_rpc_method_handler(stall_stream)
        if name == "WatchAcquireLease":
            return grpc.unary_stream_rpc_method_handler(stall_stream)
        return grpc.unary_unary_rpc_method_handler(stall)


class Forwarder(grpc.GenericRpcHandler):
    """Relays every unary call, as bytes, to the broker on `channel`, and
    its failures with their status details."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._channel = channel

    def service(self, handler_call_details):
        upstream = self._channel.unary_unary(handler_call_details.method)

        def forward(request: bytes, context) -> bytes:
            try:
                return upstream(request, timeout=FORWARD_TIMEOUT)
            except grpc.RpcError as error:
                status = rpc_status.from_call(error)
                if status is None:
                    context.abort(error.code(), error.details())
                context.abort_with_status(rpc_status.to_status(status))

        return grpc.unary_unary_rpc_method_handler(forward)


class LosesFirstReply(grpc.ServerInterceptor):
    """Lets every call of `method` (e.g. `ReleaseLease`) reach the broker;
    the first one's reply, whatever it was, is replaced by UNAVAILABLE.
    `calls` counts the calls of `method`."""

    def __init__(self, method: str) -> None:
        self.method = method
        self.calls = 0
        self._lock = threading.Lock()

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler_call_details.method.rsplit("/", 1)[-1] != self.method:
            return handler
        relay = handler.unary_unary

        def lose_first(request, context):
            with self._lock:
                self.calls += 1
                first = self.calls == 1
            if not first:
                return relay(request, context)
            with contextlib.suppress(Exception):  # the broker's answer, lost either way
                relay(request, context)
            context.set_trailing_metadata(())  # drops the details of a failure relayed
            context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset before the reply")

        return grpc.unary_unary_rpc_method_handler(lose_first)


class ForwardingServer:
    """A `Forwarder` to the broker at `address`, behind `interceptors`."""

    def __init__(self, address: str, *interceptors: grpc.ServerInterceptor) -> None:
        self._channel = grpc.insecure_channel(address)
        self._server = grpc.server(
            ThreadPoolExecutor(max_workers=8),
            handlers=[Forwarder(self._channel)],
            interceptors=interceptors,
        )
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self._server.stop(0).wait(JOIN_TIMEOUT)
        self._channel.close()
