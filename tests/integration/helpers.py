"""What the integration tests share: builders of requests, readers of error
details, paging through listings, and a `broker serve` subprocess."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import yaml
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from broker.api.convert import duration
from broker.field_values import to_field_value
from broker.v1 import (
    inventory_service_pb2,
    lease_pb2,
    lease_service_pb2,
    resource_pb2,
)
from tests.conftest import RPC_TIMEOUT

STARTUP_TIMEOUT = 30.0
EXIT_TIMEOUT = 20.0
LISTENING = re.compile(r"^broker listening on (\S+:\d+)$")

# ------------------------------------------------------------------ builders


def resource(kind: str, name: str, fields: dict | None = None, **common) -> resource_pb2.Resource:
    """A `Resource` message; `fields` holds plain Python values."""
    return resource_pb2.Resource(
        name=name,
        kind=kind,
        fields={key: to_field_value(value) for key, value in (fields or {}).items()},
        **common,
    )


def calculator(name: str, ip_address: str = "10.0.0.1", **common) -> resource_pb2.Resource:
    return resource("Calculator", name, {"ip_address": ip_address}, **common)


def constraint(field: str, *values) -> lease_pb2.Constraint:
    """`field` equals the one value given, or any of several."""
    if len(values) == 1:
        return lease_pb2.Constraint(field=field, equals=to_field_value(values[0]))
    return lease_pb2.Constraint(
        field=field, any_of=lease_pb2.FieldValueList(values=[to_field_value(v) for v in values])
    )


def requirement(kind: str, count: int = 0, label: str = "", **equals) -> lease_pb2.Requirement:
    """A requirement whose constraints are `field == value` for each keyword."""
    return lease_pb2.Requirement(
        kind=kind,
        count=count,
        label=label,
        constraints=[constraint(field, value) for field, value in equals.items()],
    )


def acquire_request(
    *requirements: lease_pb2.Requirement, ttl: float | None = None, holder: str = ""
) -> lease_service_pb2.AcquireLeaseRequest:
    return lease_service_pb2.AcquireLeaseRequest(
        requirements=requirements,
        ttl=None if ttl is None else duration(ttl),
        holder=holder,
    )


def create_resource(inventory_stub, message: resource_pb2.Resource) -> resource_pb2.Resource:
    request = inventory_service_pb2.CreateResourceRequest(resource=message)
    return inventory_stub.CreateResource(request, timeout=RPC_TIMEOUT).resource


def get_resource(inventory_stub, name: str) -> resource_pb2.Resource:
    request = inventory_service_pb2.GetResourceRequest(name=name)
    return inventory_stub.GetResource(request, timeout=RPC_TIMEOUT).resource


def create_calculators(inventory_stub, count: int = 3) -> list[str]:
    """Creates `calc-1` ... `calc-<count>` (ip 10.0.0.<n>, group bench-1)."""
    names = [f"calc-{n}" for n in range(1, count + 1)]
    for n, name in enumerate(names, start=1):
        create_resource(inventory_stub, calculator(name, f"10.0.0.{n}", group="bench-1"))
    return names


def acquire(lease_stub, *requirements, ttl=None, holder="tester", **kwargs):
    """Acquires and returns the `AcquireLeaseResponse`."""
    return lease_stub.AcquireLease(
        acquire_request(*requirements, ttl=ttl, holder=holder), timeout=RPC_TIMEOUT, **kwargs
    )


def get_lease(lease_stub, lease_id: str) -> lease_pb2.Lease:
    request = lease_service_pb2.GetLeaseRequest(lease_id=lease_id)
    return lease_stub.GetLease(request, timeout=RPC_TIMEOUT).lease


# ------------------------------------------------------------------ errors


def call_error(method: Callable, request: Message, **kwargs) -> grpc.RpcError:
    """The error `method(request)` fails with; fails the test if it succeeds."""
    kwargs.setdefault("timeout", RPC_TIMEOUT)
    try:
        response = method(request, **kwargs)
    except grpc.RpcError as error:
        return error
    raise AssertionError(f"expected an error, got {type(response).__name__}: {response}")


def expect_error(
    method: Callable, request: Message, code: grpc.StatusCode, **kwargs
) -> grpc.RpcError:
    """The error `method(request)` fails with, checked to carry `code`."""
    error = call_error(method, request, **kwargs)
    assert error.code() == code, f"{error.code()} ({error.details()}), expected {code}"
    return error


def details(error: grpc.RpcError) -> list[Message]:
    """The `google.rpc.Status` details of an error, unpacked."""
    status = rpc_status.from_call(error)
    assert status is not None, f"{error.code()} carries no google.rpc.Status"
    assert status.code == error.code().value[0]
    unpacked = []
    for packed in status.details:
        for cls in (
            error_details_pb2.BadRequest,
            error_details_pb2.ResourceInfo,
            error_details_pb2.PreconditionFailure,
            error_details_pb2.ErrorInfo,
            error_details_pb2.QuotaFailure,
            lease_pb2.AcquireBlocked,
        ):
            if packed.Is(cls.DESCRIPTOR):
                message = cls()
                packed.Unpack(message)
                unpacked.append(message)
                break
        else:
            raise AssertionError(f"unexpected detail type {packed.type_url}")
    return unpacked


def detail(error: grpc.RpcError, cls: type[Message]) -> Message:
    """The one detail of type `cls` of an error."""
    found = [d for d in details(error) if isinstance(d, cls)]
    assert len(found) == 1, f"expected one {cls.__name__} in {details(error)}"
    return found[0]


def violation_fields(error: grpc.RpcError) -> list[str]:
    """The field paths an INVALID_ARGUMENT error's `BadRequest` names."""
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
    bad_request = detail(error, error_details_pb2.BadRequest)
    assert all(v.description for v in bad_request.field_violations)
    return [v.field for v in bad_request.field_violations]


def precondition(error: grpc.RpcError) -> error_details_pb2.PreconditionFailure.Violation:
    """The one violation of a FAILED_PRECONDITION error."""
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, (error.code(), error.details())
    failure = detail(error, error_details_pb2.PreconditionFailure)
    assert len(failure.violations) == 1, failure
    return failure.violations[0]


# ------------------------------------------------------------------ listings

MAX_PAGES = 100


def pages(method: Callable, request: Message, items: str) -> Iterator[list[Message]]:
    """Every page of a listing, following `next_page_token` (bounded)."""
    request = type(request).FromString(request.SerializeToString())
    for _ in range(MAX_PAGES):
        response = method(request, timeout=RPC_TIMEOUT)
        yield list(getattr(response, items))
        if not response.next_page_token:
            return
        request.page_token = response.next_page_token
    raise AssertionError(f"more than {MAX_PAGES} pages")


def all_resources(inventory_stub, **filters) -> list[resource_pb2.Resource]:
    request = inventory_service_pb2.ListResourcesRequest(**filters)
    return [r for page in pages(inventory_stub.ListResources, request, "resources") for r in page]


def all_leases(lease_stub, **filters) -> list[lease_pb2.Lease]:
    request = lease_service_pb2.ListLeasesRequest(**filters)
    return [lease for page in pages(lease_stub.ListLeases, request, "leases") for lease in page]


# ------------------------------------------------------------------ waiting


def wait_until(condition: Callable[[], object], timeout: float, what: str, poll: float = 0.05):
    """Polls `condition` until it returns something true, at most `timeout`
    seconds; returns that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll)


# ------------------------------------------------------- broker subprocess


def broker_command() -> str:
    """The `broker` console script of the interpreter running the tests."""
    return os.path.join(os.path.dirname(sys.executable), "broker")


def write_config(path: Path, document: dict) -> Path:
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def subprocess_env() -> dict[str, str]:
    """The environment without the variables that would override the
    command line's configuration."""
    return {
        key: value
        for key, value in os.environ.items()
        if key
        not in (
            "BROKER_ADDRESS",
            "BROKER_DATABASE_URL",
            "BROKER_TOKEN",
            "BROKER_CA_FILE",
            "BROKER_CERT_FILE",
            "BROKER_KEY_FILE",
        )
    }


def run_serve(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Runs `broker serve` to completion, for invocations that must fail fast."""
    return subprocess.run(
        [broker_command(), "serve", *args],
        cwd=cwd,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=EXIT_TIMEOUT,
        check=False,
    )


class BrokerProcess:
    """A `broker serve` subprocess. Threads drain stdout and stderr so that
    it never blocks on a full pipe; `kill` and `signal` act on its pid only."""

    def __init__(self, args: tuple[str, ...], cwd: Path):
        self.args = args
        self.process = subprocess.Popen(
            [broker_command(), "serve", *args],
            cwd=cwd,
            env=subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.address = ""
        self._stdout: queue.Queue[str | None] = queue.Queue()
        self._stderr: list[str] = []
        self._readers = [
            threading.Thread(target=self._drain, args=(self.process.stdout, self._stdout.put)),
            threading.Thread(target=self._drain, args=(self.process.stderr, self._stderr.append)),
        ]
        for reader in self._readers:
            reader.daemon = True
            reader.start()

    @staticmethod
    def _drain(stream, sink) -> None:
        for line in stream:
            sink(line.rstrip("\n"))
        sink(None)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def stderr(self) -> str:
        return "\n".join(line for line in self._stderr if line is not None)

    def wait_listening(self, timeout: float = STARTUP_TIMEOUT) -> str:
        """Waits for the `broker listening on HOST:PORT` line; returns the address."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"broker did not announce its address within {timeout} s; "
                    f"stderr:\n{self.stderr}"
                )
            try:
                line = self._stdout.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                status = self.process.wait(EXIT_TIMEOUT)
                raise AssertionError(
                    f"broker exited with {status} before listening; stderr:\n{self.stderr}"
                )
            found = LISTENING.match(line)
            if found:
                self.address = found.group(1)
                return self.address

    def next_line(self, timeout: float = STARTUP_TIMEOUT) -> str | None:
        """The next line it printed (None once its output ended)."""
        return self._stdout.get(timeout=timeout)

    def signal(self, signum: int) -> None:
        if self.process.poll() is None:
            os.kill(self.pid, signum)

    def wait(self, timeout: float = EXIT_TIMEOUT) -> int:
        status = self.process.wait(timeout)
        for reader in self._readers:
            reader.join(timeout)
        return status

    def kill(self) -> int:
        """SIGKILL, then reap; returns the exit status."""
        self.signal(signal.SIGKILL)
        return self.wait()
