"""A session with the broker: one `OpenSession` stream kept alive in the
background, to which leases are bound (`AcquireLeaseRequest.session_id`).

While the stream lives and keep-alives flow, the broker renews the session's
leases. Closing the session (`close=true`) releases them; if the stream
breaks instead (this process died, its connection dropped) or the
keep-alives stop, the broker ends them as expired within seconds, so nothing
is held for long by a client that vanished.

A daemon thread reads the broker's answers; gRPC's own request thread draws
the keep-alives from a generator that sends one every third of the
session's keep-alive timeout, waiting on an Event so that `close()` ends it
at once. The broker answers every keep-alive; when no answer has come for a
whole keep-alive timeout, the broker holding the stream has stopped
answering (it froze: its connection may still look alive), so the session is
lost and its stream cancelled, and the client opens another elsewhere. By
then that broker would have ended the session itself had it been running.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable, Iterator
from types import TracebackType

import grpc

from broker.v1 import lease_service_pb2, lease_service_pb2_grpc
from sdk.errors import BrokerError, DeadlineExceededError, from_rpc_error

logger = logging.getLogger(__name__)

OPEN_TIMEOUT = 10.0


class Session:
    """A session: `open()` it, bind leases to `session_id`, then `close()`.

    Args:
        stub: the broker's lease service.
        holder: who holds the session, as leases show it.
        keepalive_timeout: seconds the session lives without a keep-alive
            (1 s to the broker's `sessions.max_keepalive_timeout`); None takes
            the broker's default.

        on_lost: called with the error once the session is lost after it
            opened (from a thread of the session's).

    `lost` is set when the session ended without `close()`: the stream broke,
    the broker refused a keep-alive (FAILED_PRECONDITION: the session had
    already ended), or no answer came for a whole keep-alive timeout
    (`DeadlineExceededError`). Its leases are then gone, or live on only by
    their own renewals.
    """

    def __init__(
        self,
        stub: lease_service_pb2_grpc.LeaseServiceStub,
        *,
        holder: str = "",
        keepalive_timeout: float | None = None,
        on_lost: Callable[[BrokerError], None] | None = None,
    ) -> None:
        self._stub = stub
        self._on_lost = on_lost
        self._first = lease_service_pb2.OpenSessionRequest(holder=holder)
        if keepalive_timeout is not None:
            self._first.keepalive_timeout.FromTimedelta(
                datetime.timedelta(seconds=keepalive_timeout)
            )
        self.lost = threading.Event()
        self.error: BrokerError | None = None
        self._answer: lease_service_pb2.OpenSessionResponse | None = None
        self._answered = threading.Event()  # the first answer came, or the stream ended
        self._last_answer = 0.0  # time.monotonic() of the latest answer
        self._stopping = threading.Event()  # no more keep-alives
        self._closing = False  # close() was called: the stream's end is expected
        self._state_lock = threading.Lock()
        # The stream: a call that iterates over the broker's answers.
        self._call: grpc._CallIterator[lease_service_pb2.OpenSessionResponse] | None = None
        self._reader = threading.Thread(target=self._read, name="broker-session", daemon=True)

    # ------------------------------------------------------------ public

    @property
    def session_id(self) -> str:
        """The id to bind leases to, known once the broker answered."""
        return self._answered_once().session_id

    @property
    def keepalive_timeout(self) -> float:
        """Seconds the session lives without a keep-alive, as the broker set it."""
        return self._answered_once().keepalive_timeout.ToTimedelta().total_seconds()

    @property
    def expire_time(self) -> datetime.datetime:
        """When the session ends unless another keep-alive comes."""
        return self._answered_once().expire_time.ToDatetime(tzinfo=datetime.UTC)

    def open(self, timeout: float = OPEN_TIMEOUT) -> Session:
        """Opens the stream and waits up to `timeout` seconds for the broker's
        first answer; raises the broker's error if it refused the session."""
        with self._state_lock:
            if self._call is not None:
                raise RuntimeError("a Session is opened once")
            self._call = self._stub.OpenSession(self._requests())
        self._reader.start()
        try:
            answered = self._answered.wait(timeout)
        except BaseException:  # Ctrl-C: no session left behind
            self._cancel()
            raise
        if not answered:
            self._cancel()
            raise DeadlineExceededError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"the broker did not open the session within {timeout:g} s",
            )
        if self._answer is None:
            self._reader.join()
            raise self.error or BrokerError(grpc.StatusCode.UNKNOWN, "the session did not open")
        return self

    def close(self, timeout: float = OPEN_TIMEOUT) -> None:
        """Ends the session cleanly: sends `close=true`, which releases its
        leases, and waits up to `timeout` seconds for the broker to end the
        stream (then cancels it). Closing again does nothing."""
        with self._state_lock:
            if self._closing:
                return
            self._closing = True
            call = self._call
        self._stopping.set()
        if call is None:
            return
        self._reader.join(timeout)
        if self._reader.is_alive():
            logger.warning("the broker did not end session %s in time; cancelling", self._id())
            self._cancel()
            self._reader.join()

    def __enter__(self) -> Session:
        return self if self._call is not None else self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # ----------------------------------------------------------- private

    def _answered_once(self) -> lease_service_pb2.OpenSessionResponse:
        if self._answer is None:
            raise RuntimeError("the session is not open: call open() first")
        return self._answer

    def _id(self) -> str:
        return self._answer.session_id if self._answer is not None else "(unopened)"

    def _cancel(self) -> None:
        """Breaks the stream as a vanished client would: the broker ends the
        session's leases as expired."""
        if self._call is not None:
            self._call.cancel()

    def _requests(self) -> Iterator[lease_service_pb2.OpenSessionRequest]:
        """The request stream, drawn by gRPC's thread: the opening message,
        a keep-alive every third of the timeout, and `close` at the end."""
        yield self._first
        self._answered.wait()
        if self._answer is None:
            return
        timeout = self.keepalive_timeout
        while not self._stopping.wait(timeout / 3):
            silent = time.monotonic() - self._last_answer
            if silent >= timeout:
                self._lose(
                    DeadlineExceededError(
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"the broker did not answer session {self._id()}'s keep-alives "
                        f"for {silent:.1f} s (its keep-alive timeout is {timeout:g} s)",
                    )
                )
                self._cancel()
                return
            yield lease_service_pb2.OpenSessionRequest()
        if self._closing:
            yield lease_service_pb2.OpenSessionRequest(close=True)

    def _read(self) -> None:
        """Takes each answer of the broker until the stream ends; an end
        that `close()` did not ask for marks the session lost."""
        assert self._call is not None
        try:
            for answer in self._call:
                self._last_answer = time.monotonic()
                self._answer = answer
                self._answered.set()
            if not self._closing:
                self._lose(BrokerError(grpc.StatusCode.UNKNOWN, "the broker ended the session"))
        except grpc.RpcError as error:
            if not self._closing:
                self._lose(from_rpc_error(error))
        finally:
            self._stopping.set()
            self._answered.set()

    def _lose(self, error: BrokerError) -> None:
        """Marks the session lost by `error`; the first loss is the one kept."""
        with self._state_lock:
            if self.lost.is_set():
                return
            self.error = error
            self.lost.set()
        if self._answer is None:
            return  # open() raises the error
        logger.error("session %s is lost: %s", self._answer.session_id, error)
        if self._on_lost is not None:
            self._on_lost(error)
