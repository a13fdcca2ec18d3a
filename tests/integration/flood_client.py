"""A client that opens many calls at once, run as a subprocess
(`python -m tests.integration.flood_client ...` from the repository root), so
that its own memory and threads are not the broker's.

It opens `--calls` waiting acquires of one calculator (`waiters`) or session
streams (`sessions`), spread over `--channels` connections, reads each call's first answer, and
prints one JSON line counting the outcomes by kind (`waiting`, `session`, or
the status code's name). Then it keeps the calls open until its stdin closes
(or its `--lifetime` runs out), cancels them and exits.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import threading

import grpc

from broker.api.convert import duration
from broker.v1 import lease_pb2, lease_service_pb2, lease_service_pb2_grpc


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True, help="the broker's HOST:PORT")
    parser.add_argument("--calls", type=int, required=True)
    parser.add_argument("--kind", choices=("waiters", "sessions"), required=True)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--lifetime", type=float, default=120.0, help="exit after this long")
    return parser.parse_args(argv)


def open_calls(stubs: list, kind: str, count: int, stop: threading.Event) -> list:
    calls = []
    for n in range(count):
        stub = stubs[n % len(stubs)]
        if kind == "waiters":
            request = lease_service_pb2.AcquireLeaseRequest(
                requirements=[lease_pb2.Requirement(kind="Calculator")],
                holder=f"flood-{n}",
                max_wait=duration(600),
            )
            calls.append(
                stub.WatchAcquireLease(lease_service_pb2.WatchAcquireLeaseRequest(request=request))
            )
        else:

            def messages(n=n):
                yield lease_service_pb2.OpenSessionRequest(
                    holder=f"flood-{n}", keepalive_timeout=duration(300)
                )
                stop.wait()

            calls.append(stub.OpenSession(messages()))
    return calls


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop = threading.Event()
    timer = threading.Timer(args.lifetime, stop.set)
    timer.daemon = True
    timer.start()
    # Each channel its own connection, so the calls arrive side by side.
    channels = [
        grpc.insecure_channel(args.address, options=[("grpc.channel_id", n)])
        for n in range(args.channels)
    ]
    stubs = [lease_service_pb2_grpc.LeaseServiceStub(channel) for channel in channels]
    try:
        calls = open_calls(stubs, args.kind, args.calls, stop)
        outcomes: collections.Counter[str] = collections.Counter()
        for call in calls:
            try:
                first = next(call)
            except grpc.RpcError as error:
                outcomes[error.code().name] += 1
                continue
            if args.kind == "sessions":
                outcomes["session"] += 1
            else:
                outcomes[first.WhichOneof("event")] += 1
        print(json.dumps(outcomes), flush=True)
        threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
        stop.wait()
        for call in calls:
            call.cancel()
    finally:
        for channel in channels:
            channel.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
