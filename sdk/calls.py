"""Waiting for gRPC calls so that Ctrl-C is safe.

gRPC's blocking waits run Python code inside its own locks; a Ctrl-C that
lands there can leave a lock of the channel held, and the next call (even
the release of a lease, or closing the client) then hangs forever. So the
caller's thread never blocks inside gRPC: gRPC's threads put each outcome on
a `queue.SimpleQueue` (implemented in C, so an interrupt leaves no lock
held), which the caller reads in short slices, as gRPC itself does, so that
Ctrl-C is seen at once on every platform. An interrupted wait cancels its
call, which the broker sees at once (a waiting acquire leaves the queue).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

import grpc

_END = object()
SLICE = 0.1  # seconds between two looks for Ctrl-C while waiting


def _take(items: queue.SimpleQueue[Any]) -> Any:
    while True:
        try:
            return items.get(timeout=SLICE)
        except queue.Empty:
            continue


def result(future: grpc.Future) -> Any:
    """The response of a unary call started with `.future()`; raises its
    `grpc.RpcError`. Any exception while waiting (Ctrl-C) cancels the call."""
    outcomes: queue.SimpleQueue[tuple[Any, BaseException | None]] = queue.SimpleQueue()

    def done(finished: grpc.Future) -> None:
        try:
            outcomes.put((finished.result(), None))
        except BaseException as error:  # the call's failure, handed to the waiter
            outcomes.put((None, error))

    future.add_done_callback(done)
    try:
        response, error = _take(outcomes)
    except BaseException:
        future.cancel()
        raise
    if error is not None:
        raise error
    return response


def responses(call: Any) -> Iterator[Any]:
    """The responses of a server-streaming call, read by a daemon thread;
    raises the call's `grpc.RpcError`. Leaving the iteration early, by an
    exception (Ctrl-C) or by closing it, cancels the call."""
    items: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def pump() -> None:
        try:
            for response in call:
                items.put(response)
            items.put(_END)
        except BaseException as error:  # the call's failure, handed to the reader
            items.put(error)

    threading.Thread(target=pump, name="broker-stream", daemon=True).start()
    try:
        while (item := _take(items)) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        call.cancel()
