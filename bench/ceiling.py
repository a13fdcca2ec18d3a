"""The ceiling probe: bare gRPC plus one conditional UPDATE per call.

What a broker on this machine cannot beat, measured in the same run so the
broker's figures can be read as ratios to it. A subprocess (`python -m
bench.ceiling serve`) runs a `grpc.aio` server with two unary methods that
take and answer the broker's own messages (`AcquireLeaseRequest` ->
`AcquireLeaseResponse`, `ReleaseLeaseRequest` -> `ReleaseLeaseResponse`), so
the wire costs the same, and does one statement each on a SQLite file with
the broker's pragmas (WAL, synchronous=normal):

    acquire  UPDATE resource SET holder=?, lease_id=?, version=version+1
             WHERE name=? AND holder IS NULL
    release  UPDATE resource SET holder=NULL, lease_id=NULL
             WHERE name=? AND lease_id=?

No rules, no queue, no events, no thread hop: the statement runs on the
event loop. The clients are `bench.throughput`'s (same processes, threads
and channels), only their worker calls these two methods.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import uuid
from collections.abc import Sequence

from bench.broker_process import REPO_ROOT, Broker, wait_listening

SERVICE = "bench.Ceiling"
ACQUIRE = f"/{SERVICE}/Acquire"
RELEASE = f"/{SERVICE}/Release"
READY_PREFIX = "broker listening on "  # what `wait_listening` reads


# ------------------------------------------------------------------ server


def open_database(path: str, names: Sequence[str]):
    import sqlite3

    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=wal")
    connection.execute("PRAGMA synchronous=normal")
    connection.execute(
        "CREATE TABLE IF NOT EXISTS resource (id INTEGER PRIMARY KEY, name TEXT UNIQUE, "
        "holder TEXT, lease_id TEXT, version INTEGER NOT NULL DEFAULT 0)"
    )
    connection.executemany(
        "INSERT OR IGNORE INTO resource (name) VALUES (?)", [(name,) for name in names]
    )
    return connection


def serve(database: str, names: Sequence[str]) -> None:
    import asyncio
    import signal

    import grpc

    from broker.v1 import lease_pb2, lease_service_pb2

    connection = open_database(database, names)

    def acquire(request, context):
        name = request.requirements[0].constraints[0].equals.string_value
        lease_id = f"{name}/{uuid.uuid4().hex}"
        done = connection.execute(
            "UPDATE resource SET holder=?, lease_id=?, version=version+1 "
            "WHERE name=? AND holder IS NULL",
            (request.holder, lease_id, name),
        )
        if done.rowcount != 1:
            context.abort(grpc.StatusCode.ABORTED, f"{name} is held")
        return lease_service_pb2.AcquireLeaseResponse(
            lease=lease_pb2.Lease(lease_id=lease_id), secret="s"
        )

    def release(request, context):
        name = request.lease_id.split("/", 1)[0]
        connection.execute(
            "UPDATE resource SET holder=NULL, lease_id=NULL WHERE name=? AND lease_id=?",
            (name, request.lease_id),
        )
        return lease_service_pb2.ReleaseLeaseResponse()

    async def acquire_async(request, context):
        return acquire(request, context)

    async def release_async(request, context):
        return release(request, context)

    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Acquire": grpc.unary_unary_rpc_method_handler(
                acquire_async,
                request_deserializer=lease_service_pb2.AcquireLeaseRequest.FromString,
                response_serializer=lease_service_pb2.AcquireLeaseResponse.SerializeToString,
            ),
            "Release": grpc.unary_unary_rpc_method_handler(
                release_async,
                request_deserializer=lease_service_pb2.ReleaseLeaseRequest.FromString,
                response_serializer=lease_service_pb2.ReleaseLeaseResponse.SerializeToString,
            ),
        },
    )

    async def main() -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(f"{READY_PREFIX}127.0.0.1:{port}", flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await server.stop(0)

    asyncio.run(main())


def start_ceiling(workdir: str, names: Sequence[str]) -> Broker:
    """The ceiling server as a subprocess, with `names` in its table; a
    `Broker` so that `bench.throughput.run_point` drives it (stop() ends it
    by its pid)."""
    os.makedirs(workdir, exist_ok=True)
    database = os.path.join(workdir, "ceiling.sqlite3")
    names_path = os.path.join(workdir, "names.txt")
    with open(names_path, "w", encoding="utf-8") as stream:
        stream.write("\n".join(names))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO_ROOT, env.get("PYTHONPATH")]))
    log_path = os.path.join(workdir, "ceiling.log")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.ceiling", "serve", database, names_path],
            stdout=subprocess.PIPE, stderr=log, cwd=workdir, env=env, text=True,
        )  # fmt: skip
    server = Broker([process], [], [log_path], "sqlite:///" + database)
    try:
        server.addresses.append(wait_listening(process, log_path))
    except BaseException:
        server.stop()
        raise
    return server


# ----------------------------------------------------------------- clients


def ceiling_worker(channel, name: str, window, tally) -> None:
    """`bench.throughput.acquire_release_worker`'s cycle on the ceiling's two
    methods."""
    from bench.throughput import run_cycles
    from broker.v1 import lease_service_pb2

    acquire = channel.unary_unary(
        ACQUIRE,
        request_serializer=lease_service_pb2.AcquireLeaseRequest.SerializeToString,
        response_deserializer=lease_service_pb2.AcquireLeaseResponse.FromString,
    )
    release = channel.unary_unary(
        RELEASE,
        request_serializer=lease_service_pb2.ReleaseLeaseRequest.SerializeToString,
        response_deserializer=lease_service_pb2.ReleaseLeaseResponse.FromString,
    )
    run_cycles(acquire, release, name, window, tally)


HEADER = (
    "# ceiling: bare grpc.aio + one conditional UPDATE per call on SQLite (WAL, "
    "synchronous=normal), the broker's messages, the same client layout"
)

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.ceiling")
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("database")
    parser.add_argument("names", help="a file of resource names, one a line")
    arguments = parser.parse_args()
    with open(arguments.names, encoding="utf-8") as stream:
        serve(arguments.database, stream.read().split())
