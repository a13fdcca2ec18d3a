"""Nothing lost (semantic 7 of the design): a `broker serve` process killed
with SIGKILL restarts on the same SQLite file with the same inventory and the
same live leases, still exclusive, still fenced, still expiring."""

from __future__ import annotations

import contextlib
import signal
import time

import grpc
import pytest

from broker.v1 import (
    inventory_service_pb2_grpc,
    lease_pb2,
    lease_service_pb2,
    lease_service_pb2_grpc,
)
from tests.conftest import RPC_TIMEOUT, wait_serving
from tests.integration.helpers import (
    acquire,
    acquire_request,
    all_leases,
    all_resources,
    calculator,
    create_calculators,
    create_resource,
    detail,
    expect_error,
    get_lease,
    precondition,
    requirement,
    wait_until,
    write_config,
)


@pytest.fixture
def serve_args(tmp_path) -> tuple[str, ...]:
    """`broker serve` arguments for a calculator-only broker on a SQLite file
    in `tmp_path`, sweeping expired leases five times a second."""
    config = write_config(
        tmp_path / "broker.yml",
        {
            "database": {"url": f"sqlite:///{tmp_path / 'broker.sqlite3'}"},
            "kinds": ["resources.calculator.data.CalculatorData"],
            "leases": {"expiry_interval": 0.2},
        },
    )
    return ("--config", str(config), "--address", "127.0.0.1:0")


class Restartable:
    """A broker subprocess that `restart()` SIGKILLs and starts again with
    the same arguments, so on the same database."""

    def __init__(self, start_broker, args: tuple[str, ...]):
        self.start_broker = start_broker
        self.args = args
        self.process = start_broker(*args)
        self.process.wait_listening()

    @property
    def address(self) -> str:
        return self.process.address

    def restart(self) -> None:
        assert self.process.kill() == -signal.SIGKILL
        self.process = self.start_broker(*self.args)
        self.process.wait_listening()
        wait_serving(self.address)


@pytest.fixture
def restartable(start_broker, serve_args) -> Restartable:
    return Restartable(start_broker, serve_args)


@contextlib.contextmanager
def stubs(address: str):
    with grpc.insecure_channel(address) as channel:
        yield (
            inventory_service_pb2_grpc.InventoryServiceStub(channel),
            lease_service_pb2_grpc.LeaseServiceStub(channel),
        )


def test_killed_broker_restarts_with_the_same_inventory_and_live_leases(restartable):
    with stubs(restartable.address) as (inventory, leases):
        create_calculators(inventory)
        create_resource(
            inventory, calculator("calc-spare", "::1", is_usable=False, comment="broken")
        )
        ended = acquire(leases, requirement("Calculator", name="calc-1"), holder="carol")
        leases.ReleaseLease(
            lease_service_pb2.ReleaseLeaseRequest(
                lease_id=ended.lease.lease_id, secret=ended.secret
            ),
            timeout=RPC_TIMEOUT,
        )
        alice = acquire(leases, requirement("Calculator", name="calc-1"), ttl=300, holder="alice")
        bob = acquire(leases, requirement("Calculator", count=2), ttl=300, holder="bob")
        inventory_before = all_resources(inventory)
        leases_before = all_leases(leases)
    token_before = alice.lease.grants[0].fencing_token
    assert token_before == 2
    assert [lease.state for lease in leases_before] == [
        lease_pb2.LEASE_STATE_ACTIVE,
        lease_pb2.LEASE_STATE_ACTIVE,
        lease_pb2.LEASE_STATE_RELEASED,
    ]

    restartable.restart()

    with stubs(restartable.address) as (inventory, leases):
        assert all_resources(inventory) == inventory_before
        assert all_leases(leases) == leases_before
        for granted in (alice, bob):
            lease = get_lease(leases, granted.lease.lease_id)
            assert lease.state == lease_pb2.LEASE_STATE_ACTIVE
            assert lease.expire_time == granted.lease.expire_time

        blocked = expect_error(
            leases.AcquireLease,
            acquire_request(requirement("Calculator", name="calc-1"), holder="mallory"),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        )
        [holder] = detail(blocked, lease_pb2.AcquireBlocked).holders
        assert (holder.lease_id, holder.holder) == (alice.lease.lease_id, "alice")

        renewed = leases.RenewLease(
            lease_service_pb2.RenewLeaseRequest(lease_id=alice.lease.lease_id, secret=alice.secret),
            timeout=RPC_TIMEOUT,
        ).lease
        assert renewed.expire_time.ToNanoseconds() > alice.lease.expire_time.ToNanoseconds()
        for granted in (alice, bob):
            released = leases.ReleaseLease(
                lease_service_pb2.ReleaseLeaseRequest(
                    lease_id=granted.lease.lease_id, secret=granted.secret
                ),
                timeout=RPC_TIMEOUT,
            ).lease
            assert released.state == lease_pb2.LEASE_STATE_RELEASED

        again = acquire(leases, requirement("Calculator", name="calc-1"), holder="mallory")
        assert again.lease.grants[0].fencing_token > token_before


def test_a_lease_whose_ttl_ran_out_while_the_broker_was_down_is_expired_after_restart(
    restartable,
):
    with stubs(restartable.address) as (inventory, leases):
        create_calculators(inventory, count=1)
        granted = acquire(leases, requirement("Calculator", name="calc-1"), ttl=1)
    lease_id = granted.lease.lease_id
    expire_at = granted.lease.expire_time.ToNanoseconds() / 1e9
    assert expire_at - time.time() < 2

    restartable.process.kill()
    wait_until(lambda: time.time() > expire_at, timeout=5, what="the lease's TTL to run out")
    restartable.restart()

    with stubs(restartable.address) as (inventory, leases):
        expired = wait_until(
            lambda: (
                (lease := get_lease(leases, lease_id)).state == lease_pb2.LEASE_STATE_EXPIRED
                and lease
            ),
            timeout=10,
            what="the restarted broker to expire the lease",
        )
        assert expired.end_time.ToNanoseconds() >= granted.lease.expire_time.ToNanoseconds()
        error = expect_error(
            leases.RenewLease,
            lease_service_pb2.RenewLeaseRequest(lease_id=lease_id, secret=granted.secret),
            grpc.StatusCode.FAILED_PRECONDITION,
        )
        assert precondition(error).type == "LEASE_EXPIRED"
        again = acquire(leases, requirement("Calculator", name="calc-1"), holder="next")
        assert again.lease.grants[0].fencing_token > granted.lease.grants[0].fencing_token
