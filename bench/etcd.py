"""The etcd reference: etcd's distributed lock, with the broker's client layout.

Run only where an `etcd` binary is on PATH (Debian's `etcd-server`); the
broker never needs it. One single-node etcd on 127.0.0.1 (free client and
peer ports, its data dir in a temp dir of its own, removed at the end),
stopped by its pid whatever happens.

The clients speak etcd's v3 API through its JSON gRPC gateway over HTTP/1.1
(`/v3/lease/grant`, `/v3/lock/lock`, `/v3/lock/unlock`), one keep-alive
connection per client thread, with `urllib`'s `http.client`: no generated
code of etcd's protos. Each client grants itself one lease (TTL 60 s) when
it connects and locks with it, as etcd's own lock client does. The gateway
adds a JSON hop inside etcd, so the figures are a little below what a native
gRPC client would get.

- throughput: `bench.throughput`'s clients (same processes and threads),
  each cycle Lock(its own name) + Unlock;
- hand-off: `bench.handoff`'s layout (16 processes, one name, hold 1 ms),
  each Lock blocks until the previous holder's Unlock; the holders are put
  in order by their grant times (there is no fencing number), the hand-off
  is the same release sent -> next grant arrived.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

from bench.broker_process import START_TIMEOUT, Broker

LEASE_TTL = 60
LOCK_TIMEOUT = 30.0  # seconds an HTTP call may block (a contended Lock)
CLIENT_API = "etcd v3 lock (Lock/Unlock with a lease) over its JSON gRPC gateway, http.client"


class EtcdError(RuntimeError):
    pass


def etcd_binary() -> str | None:
    return shutil.which("etcd")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class EtcdClient:
    """One keep-alive HTTP connection to etcd's gateway and one lease."""

    def __init__(self, address: str) -> None:
        host, port = address.rsplit(":", 1)
        self.connection = http.client.HTTPConnection(host, int(port), timeout=LOCK_TIMEOUT)
        self.connection.connect()
        self.connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.lease = self.call("/v3/lease/grant", {"TTL": LEASE_TTL})["ID"]

    def call(self, path: str, body: dict) -> dict:
        self.connection.request(
            "POST", path, json.dumps(body), {"Content-Type": "application/json"}
        )
        response = self.connection.getresponse()
        payload = response.read()
        if response.status != 200:
            raise EtcdError(f"{path}: HTTP {response.status} {payload[:200]!r}")
        return json.loads(payload)

    def lock(self, name: str) -> str:
        encoded = base64.b64encode(name.encode()).decode()
        return self.call("/v3/lock/lock", {"name": encoded, "lease": self.lease})["key"]

    def unlock(self, key: str) -> None:
        self.call("/v3/lock/unlock", {"key": key})

    def close(self) -> None:
        with contextlib.suppress(OSError, EtcdError):
            self.call("/v3/lease/revoke", {"ID": self.lease})
        self.connection.close()


def connect(address: str, token: str = "") -> EtcdClient:
    """`bench.throughput`'s `connect` for etcd (no token)."""
    return EtcdClient(address)


def lock_worker(client: EtcdClient, name: str, window, tally) -> None:
    """Lock(`name`) + Unlock, again and again, timed like the broker's cycle."""
    from bench.throughput import timed_cycles

    timed_cycles(
        lambda: client.unlock(client.lock(name)),
        window,
        tally,
        failures=(OSError, EtcdError, http.client.HTTPException),
        describe=str,
    )


def handoff_client(address, name, index, hold, ready, go, schedule, results) -> None:
    """`bench.handoff.handoff_client` on etcd's lock: records (0, grant
    time, release time) per grant (the caller orders them by grant time)."""
    import array

    client = EtcdClient(address)
    try:
        ready.put(os.getpid())
        if not go.wait(START_TIMEOUT * 2):
            return
        records, errors, first_error = array.array("d"), 0, ""
        clock = time.monotonic
        while clock() < schedule[1]:
            try:
                key = client.lock(name)
                granted_at = clock()
                if hold > 0:
                    time.sleep(hold)
                released_at = clock()
                client.unlock(key)
            except (OSError, EtcdError, http.client.HTTPException) as error:
                errors += 1
                first_error = first_error or str(error)
                time.sleep(0.01)
                continue
            records.extend((0, granted_at, released_at))
        results.put(
            {
                "index": index,
                "records": records.tobytes(),
                "errors": errors,
                "first_error": first_error,
            }
        )
    finally:
        client.close()


def handoff_header(clients: int, hold: float) -> str:
    return (
        f"# hand-off on etcd's lock (JSON gateway): {clients} client processes Lock one "
        f"name (the call blocks), hold {hold * 1e3:g} ms, Unlock, Lock again; "
        "hand-off = Unlock sent -> "
        "next Lock returned (CLOCK_MONOTONIC, holders ordered by grant time)\n"
        "clients  grants/s hand-offs  p50 ms  p99 ms  max ms   jain srv CPU errors"
    )


@contextlib.contextmanager
def etcd_server(binary: str) -> Iterator[tuple[Broker, str]]:
    """A single-node etcd on 127.0.0.1, as a `Broker` (stop() by its pid),
    and its version; its temp dir (data, log) removed at the end."""
    workdir = tempfile.mkdtemp(prefix="bench-etcd-")
    client_port, peer_port = free_port(), free_port()
    while peer_port == client_port:
        peer_port = free_port()
    client_url, peer_url = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    log_path = os.path.join(workdir, "etcd.log")
    command = [
        binary, "--name", "bench", "--data-dir", os.path.join(workdir, "data"),
        "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
        "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
        "--initial-cluster", f"bench={peer_url}", "--initial-cluster-state", "new",
    ]  # fmt: skip
    server = Broker([], [f"127.0.0.1:{client_port}"], [log_path])
    try:
        with open(log_path, "wb") as log:
            server.processes.append(
                subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
            )
        yield server, wait_healthy(server, client_url, log_path)
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def wait_healthy(server: Broker, url: str, log_path: str) -> str:
    """etcd's version once /health says true; a RuntimeError otherwise."""
    import urllib.request

    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.processes[0].poll() is not None:
            break
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as response:
                if json.loads(response.read()).get("health") == "true":
                    with urllib.request.urlopen(url + "/version", timeout=5) as version:
                        return json.loads(version.read()).get("etcdserver", "?")
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    with open(log_path, encoding="utf-8", errors="replace") as log:
        raise RuntimeError(
            f"etcd (pid {server.pids[0]}) not healthy; its log ends:\n{log.read()[-2000:]}"
        )
