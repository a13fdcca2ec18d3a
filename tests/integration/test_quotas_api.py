"""Per-principal quotas through the real server (authentication off: the
principal is the holder): RESOURCE_EXHAUSTED with a `QuotaFailure` for a
request that does not wait, FAILED_PRECONDITION for one bigger than the
quota, and a waiting request whose status names its quota and that is
granted when its principal releases."""

from __future__ import annotations

import dataclasses

import grpc
import pytest
from google.rpc import error_details_pb2

from broker.api.convert import duration
from broker.config import QuotaConfig
from broker.v1 import lease_service_pb2
from tests.conftest import RPC_TIMEOUT, make_config
from tests.integration.helpers import acquire, detail, expect_error, precondition, requirement
from tests.integration.test_queue_api import CALL_TIMEOUT


@pytest.fixture
def config(tmp_path, database_url):
    base = make_config(tmp_path, database_url)
    return dataclasses.replace(base, quotas=QuotaConfig(max_resources=1, principals={"ci": 2}))


def request(holder: str, count: int = 1, max_wait: float = 0.0):
    return lease_service_pb2.AcquireLeaseRequest(
        requirements=[requirement("Calculator", count=count)],
        holder=holder,
        max_wait=duration(max_wait) if max_wait else None,
    )


def test_over_the_quota_without_waiting_is_refused_with_a_quota_failure(lease_stub, calculators):
    acquire(lease_stub, requirement("Calculator"), holder="alice")

    error = expect_error(
        lease_stub.AcquireLease, request("alice"), grpc.StatusCode.RESOURCE_EXHAUSTED
    )

    [violation] = detail(error, error_details_pb2.QuotaFailure).violations
    assert violation.subject == "principals/alice"
    assert "holds 1 of the 1 resources" in violation.description
    info = detail(error, error_details_pb2.ErrorInfo)
    assert info.reason == "QUOTA_EXCEEDED"
    assert dict(info.metadata) == {"principal": "alice", "limit": "1", "held": "1", "needed": "1"}
    assert acquire(lease_stub, requirement("Calculator"), holder="bob")  # others are not limited


def test_a_request_bigger_than_the_quota_fails_fast(lease_stub, calculators):
    error = expect_error(
        lease_stub.AcquireLease,
        request("ci", count=3, max_wait=60),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert (precondition(error).type, precondition(error).subject) == (
        "OVER_QUOTA",
        "principals/ci",
    )


def test_a_waiting_request_names_its_quota_and_is_granted_after_a_release(lease_stub, calculators):
    held = acquire(lease_stub, requirement("Calculator"), holder="alice")
    watch = lease_stub.WatchAcquireLease(
        lease_service_pb2.WatchAcquireLeaseRequest(request=request("alice", max_wait=60)),
        timeout=CALL_TIMEOUT,
    )
    first = next(watch)
    assert first.WhichOneof("event") == "waiting"
    assert "waiting for its quota" in first.waiting.quota
    assert not first.waiting.HasField("blocked")

    lease_stub.ReleaseLease(
        lease_service_pb2.ReleaseLeaseRequest(lease_id=held.lease.lease_id, secret=held.secret),
        timeout=RPC_TIMEOUT,
    )

    granted = next(event for event in watch if event.WhichOneof("event") == "granted")
    assert granted.granted.lease.principal == "alice"
