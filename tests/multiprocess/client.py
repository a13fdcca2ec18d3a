"""A lab client for the dead-client tests, run as a subprocess
(`python -m tests.multiprocess.client ...` from the repository root).

It optionally opens a session (keep-alives every sixth of its timeout, so a
frozen client is noticed soon after the timeout), acquires one calculator by
name through `WatchAcquireLease`, and says so on stdout, one line each:
`session <id>`, `waiting <waiter id>`, `holding <lease id>`. Then it blocks,
renewing nothing, until it is killed or its `--lifetime` runs out, so a test
that forgets it never leaves it behind for long.
"""

from __future__ import annotations

import argparse
import threading
from collections.abc import Iterator

import grpc

from broker.api.convert import duration
from broker.field_values import to_field_value
from broker.v1 import lease_pb2, lease_service_pb2, lease_service_pb2_grpc


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True, help="the broker's HOST:PORT")
    parser.add_argument("--holder", required=True)
    parser.add_argument("--resource", default="calc-1", help="the calculator to acquire")
    parser.add_argument("--ttl", type=float, default=60.0, help="the lease's TTL, seconds")
    parser.add_argument(
        "--session", type=float, default=0.0, help="open a session with this keep-alive timeout"
    )
    parser.add_argument("--max-wait", type=float, default=0.0, help="how long to wait in line")
    parser.add_argument("--lifetime", type=float, default=60.0, help="exit after this long")
    return parser.parse_args(argv)


def say(line: str) -> None:
    print(line, flush=True)


def open_session(stub, holder: str, timeout: float, stop: threading.Event) -> str:
    """Opens a session kept alive by a background stream; returns its id."""

    def keep_alives() -> Iterator[lease_service_pb2.OpenSessionRequest]:
        yield lease_service_pb2.OpenSessionRequest(
            keepalive_timeout=duration(timeout), holder=holder
        )
        while not stop.wait(timeout / 6):
            yield lease_service_pb2.OpenSessionRequest()

    responses = stub.OpenSession(keep_alives())
    session_id = next(responses).session_id

    def drain() -> None:
        try:
            for _ in responses:
                pass
        except grpc.RpcError:
            pass

    threading.Thread(target=drain, daemon=True).start()
    return session_id


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop = threading.Event()
    with grpc.insecure_channel(args.address) as channel:
        stub = lease_service_pb2_grpc.LeaseServiceStub(channel)
        session_id = ""
        if args.session:
            session_id = open_session(stub, args.holder, args.session, stop)
            say(f"session {session_id}")
        request = lease_service_pb2.AcquireLeaseRequest(
            requirements=[
                lease_pb2.Requirement(
                    kind="Calculator",
                    constraints=[
                        lease_pb2.Constraint(field="name", equals=to_field_value(args.resource))
                    ],
                )
            ],
            ttl=duration(args.ttl),
            holder=args.holder,
            max_wait=duration(args.max_wait) if args.max_wait else None,
            session_id=session_id,
        )
        watch = stub.WatchAcquireLease(
            lease_service_pb2.WatchAcquireLeaseRequest(request=request), timeout=args.lifetime
        )
        for message in watch:
            if message.WhichOneof("event") == "waiting":
                say(f"waiting {message.waiting.waiter_id}")
            else:
                say(f"holding {message.granted.lease.lease_id}")
        stop.wait(args.lifetime)
        stop.set()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
