"""SIGKILL to re-grant: how soon a vanished session holder's resource goes to
the next waiter.

Per trial, two fresh client processes, each with its own channel:

- the holder opens a session (`OpenSession`, the broker's default keep-alive
  timeout, a keep-alive every third of it), acquires the Calculator with that
  `session_id`, says so, and keeps the session alive (it would close it
  cleanly and exit after `HOLDER_LIFETIME` seconds if nobody killed it);
- the waiter connects, and on the bench's word sends `AcquireLease` with
  `max_wait` (it waits in the queue) and reports `time.monotonic()` as soon
  as the grant arrives, then releases and exits.

The bench waits until `ListWaiters` shows the waiter queued, takes
`time.monotonic()` and sends SIGKILL to the holder's pid. Re-grant time =
waiter's grant arrived - kill sent (CLOCK_MONOTONIC is one clock for the
machine). The kernel closes a killed process's sockets, so the broker sees
the session stream break; if it noticed only by the keep-alive timeout, the
time would be that timeout plus up to one expiry sweep.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import statistics
import time

from bench.broker_process import (
    CHANNEL_OPTIONS,
    RPC_TIMEOUT,
    START_TIMEOUT,
    Broker,
    acquire_request,
    stop_processes,
)

RESOURCE = "regrant-000"
MAX_WAIT = 30.0  # longer than the default keep-alive timeout (10 s) plus a sweep
HOLDER_LIFETIME = 60.0  # a holder nobody killed closes its session then
TARGET_S = 1.0

# ----------------------------------------------------------------- clients


def regrant_holder(address: str, name: str, conn) -> None:
    """Opens a session, acquires `name` bound to it, sends ("holding",
    lease_id) on `conn`, and keeps the session alive until it is killed (or
    `HOLDER_LIFETIME` passes: then it closes the session and exits)."""
    import queue

    import grpc

    from broker.v1 import lease_service_pb2, lease_service_pb2_grpc

    channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    outbox: queue.Queue = queue.Queue()

    def messages():
        yield lease_service_pb2.OpenSessionRequest(holder=f"bench-holder@{name}")
        while (message := outbox.get()) is not None:
            yield message

    try:
        grpc.channel_ready_future(channel).result(timeout=START_TIMEOUT)
        stub = lease_service_pb2_grpc.LeaseServiceStub(channel)
        answers = stub.OpenSession(messages(), timeout=HOLDER_LIFETIME + RPC_TIMEOUT)
        first = next(answers)
        period = first.keepalive_timeout.ToNanoseconds() / 3e9
        granted = stub.AcquireLease(
            acquire_request(name, f"bench-holder@{name}", session_id=first.session_id),
            timeout=RPC_TIMEOUT,
        )
        conn.send(("holding", granted.lease.lease_id))
        deadline = time.monotonic() + HOLDER_LIFETIME
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(period, left))
            outbox.put(lease_service_pb2.OpenSessionRequest())
            next(answers)
        outbox.put(lease_service_pb2.OpenSessionRequest(close=True))
        outbox.put(None)
        for _ in answers:
            pass
    except Exception as error:  # reported to the bench, which fails the trial
        conn.send(("error", f"holder: {error!r}"[:500]))
    finally:
        outbox.put(None)
        channel.close()


def regrant_waiter(address: str, name: str, conn) -> None:
    """Connects, sends ("ready",), waits for "go", then acquires `name`
    waiting in the queue; sends ("granted", monotonic time) as soon as the
    grant arrives, then releases."""
    import grpc

    from broker.v1 import lease_service_pb2, lease_service_pb2_grpc

    channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    try:
        grpc.channel_ready_future(channel).result(timeout=START_TIMEOUT)
        stub = lease_service_pb2_grpc.LeaseServiceStub(channel)
        request = acquire_request(name, f"bench-waiter@{name}", max_wait=MAX_WAIT)
        conn.send(("ready",))
        if not conn.poll(START_TIMEOUT) or conn.recv() != "go":
            return
        granted = stub.AcquireLease(request, timeout=MAX_WAIT + RPC_TIMEOUT)
        granted_at = time.monotonic()
        conn.send(("granted", granted_at))
        stub.ReleaseLease(
            lease_service_pb2.ReleaseLeaseRequest(
                lease_id=granted.lease.lease_id, secret=granted.secret
            ),
            timeout=RPC_TIMEOUT,
        )
    except Exception as error:
        conn.send(("error", f"waiter: {error!r}"[:500]))
    finally:
        channel.close()


# ------------------------------------------------------------------ result


@dataclasses.dataclass
class RegrantResult:
    trials: list[float]  # seconds from the kill to the grant, one per good trial
    errors: int
    first_error: str

    clients = 2  # the holder and the waiter

    @property
    def median_ms(self) -> float:
        return statistics.median(self.trials) * 1e3 if self.trials else float("nan")

    @property
    def max_ms(self) -> float:
        return max(self.trials) * 1e3 if self.trials else float("nan")

    def row(self) -> str:
        each = " ".join(f"{t * 1e3:.1f}" for t in self.trials)
        return (
            f"{self.clients:>7} {len(self.trials):>6} {self.median_ms:>9.1f} "
            f"{self.max_ms:>7.1f} {self.errors:>6}  {each}"
        )

    def targets(self) -> str:
        ok = self.max_ms <= TARGET_S * 1e3
        return f"# target: <= {TARGET_S * 1e3:g} ms {'met' if ok else 'MISSED'} (max)"

    def points(self) -> list[dict]:
        return [
            {"name": name, "clients": self.clients, "value": value, "unit": "ms"}
            for name, value in (
                ("sigkill_regrant_median", round(self.median_ms, 3)),
                ("sigkill_regrant_max", round(self.max_ms, 3)),
            )
        ]


HEADER = (
    "# SIGKILL to re-grant: a session holder (OpenSession, default keep-alive timeout) "
    "holds one Calculator, a waiter queues for it (AcquireLease, "
    f"max_wait {MAX_WAIT:g} s); kill -9 the holder -> the waiter's grant arrives\n"
    "clients trials median ms  max ms errors  each trial, ms"
)


class TrialError(RuntimeError):
    pass


def expect(conn, what: str, timeout: float) -> tuple:
    """The next message on `conn`, which must be `what`."""
    if not conn.poll(timeout):
        raise TrialError(f"no {what!r} from the client in {timeout:g} s")
    try:
        message = conn.recv()
    except EOFError:
        raise TrialError(f"the client exited before {what!r}") from None
    if message[0] != what:
        raise TrialError(" ".join(map(str, message)))
    return message


def wait_queued(channel, timeout: float) -> None:
    """Returns once the broker's queue has a waiter."""
    from broker.v1 import lease_service_pb2, lease_service_pb2_grpc

    stub = lease_service_pb2_grpc.LeaseServiceStub(channel)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        page = stub.ListWaiters(lease_service_pb2.ListWaitersRequest(), timeout=RPC_TIMEOUT)
        if page.waiters:
            return
        time.sleep(0.005)
    raise TrialError(f"the waiter was not queued in {timeout:g} s")


def trial(context, broker: Broker, channel) -> float:
    """One kill; returns the seconds from SIGKILL to the waiter's grant."""
    holder_end, holder_conn = context.Pipe()
    waiter_end, waiter_conn = context.Pipe()
    holder = context.Process(
        target=regrant_holder, args=(broker.address, RESOURCE, holder_conn), daemon=True
    )
    waiter = context.Process(
        target=regrant_waiter, args=(broker.address, RESOURCE, waiter_conn), daemon=True
    )
    try:
        holder.start()
        waiter.start()
        holder_conn.close()
        waiter_conn.close()
        expect(holder_end, "holding", START_TIMEOUT)
        expect(waiter_end, "ready", START_TIMEOUT)
        waiter_end.send("go")
        wait_queued(channel, RPC_TIMEOUT)
        killed_at = time.monotonic()
        os.kill(holder.pid, signal.SIGKILL)
        (_, granted_at) = expect(waiter_end, "granted", MAX_WAIT + RPC_TIMEOUT)
        waiter.join(RPC_TIMEOUT)
        return granted_at - killed_at
    finally:
        stop_processes([holder, waiter])
        holder_end.close()
        waiter_end.close()


def run_regrant(broker: Broker, trials: int) -> RegrantResult:
    """`trials` kills of a session holder on `RESOURCE` (seeded by the
    caller), each with a fresh holder and waiter."""
    import grpc

    context = multiprocessing.get_context("spawn")
    times: list[float] = []
    errors, first_error = 0, ""
    with grpc.insecure_channel(broker.address, options=CHANNEL_OPTIONS) as channel:
        grpc.channel_ready_future(channel).result(timeout=START_TIMEOUT)
        for _ in range(trials):
            try:
                times.append(trial(context, broker, channel))
            except (TrialError, grpc.RpcError) as error:
                errors += 1
                first_error = first_error or str(error)
    return RegrantResult(times, errors, first_error)
