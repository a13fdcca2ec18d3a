"""A lease's maximum lifetime seen through the SDK: the keepalive renews up
to `max_expire_time`, then stops renewing without marking the lease lost,
and the lease ends there."""

from __future__ import annotations

import pytest

from broker.v1 import lease_pb2
from resources.calculator.resource import Calculator
from sdk import FailedPreconditionError
from tests.conftest import make_config
from tests.sdk.helpers import wait_until

MAX_LIFETIME = 2.0


@pytest.fixture
def config(tmp_path, database_url):
    return make_config(tmp_path, database_url, max_lifetime=MAX_LIFETIME, expiry_interval=0.2)


def test_the_keepalive_stops_at_the_maximum_lifetime(client, calc):
    held = client.lease(Calculator, name="calc", ttl=1.5)

    with pytest.raises(FailedPreconditionError, match="expired"), held:
        created = client.get_lease(held.lease_id).create_time.ToDatetime()
        assert held.max_expire_time is not None
        assert (held.max_expire_time.replace(tzinfo=None) - created).total_seconds() == (
            MAX_LIFETIME
        )
        keepalive = held._keepalive
        assert keepalive is not None
        # It stops on its own once a renewal reached the maximum; a renewal
        # after that would be refused and would mark the lease lost.
        wait_until(lambda: not keepalive._thread.is_alive(), held.lost.wait)
        assert not held.lost.is_set()
        assert held.expire_time == held.max_expire_time
        wait_until(
            lambda: client.get_lease(held.lease_id).state == lease_pb2.LEASE_STATE_EXPIRED,
            held.lost.wait,
        )
        assert not held.lost.is_set()
