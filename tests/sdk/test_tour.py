"""The README's tour as a test: a broker, the calculator device, a resource
added with the admin CLI, and a lease taken and used from Python."""

from __future__ import annotations

import pytest

from broker.v1 import lease_pb2
from resources.calculator.resource import Calculator
from sdk import BrokerClient, FailedPreconditionError, ResourceBusyError, cli


def test_tour_lease_and_calculate(broker, client, device_port, capsys):
    status = cli.main(
        [
            "--target",
            broker.address,
            "resources",
            "add",
            "Calculator",
            "calc",
            "--set",
            "ip_address=127.0.0.1",
            "--set",
            f"port={device_port}",
        ]
    )
    assert status == 0, capsys.readouterr().err

    with client.lease(Calculator, name="calc") as calc:
        assert calc.calculate("1+1") == 2
        assert calc.data.ip_address == "127.0.0.1"
        assert calc.fencing_token == 1
        held = client.get_resource("calc")
        assert held.owner == "tester@bench"
        assert len(held.lease_ids) == 1

    freed = client.get_resource("calc")
    assert freed.owner == ""
    assert list(freed.lease_ids) == []


def test_lease_is_exclusive_while_held(broker, client, calc):
    with client.lease(Calculator, name="calc"), BrokerClient(broker.address) as other:
        with pytest.raises(ResourceBusyError) as busy, other.lease(Calculator, name="calc", wait=0):
            pass
        assert [h.resource for h in busy.value.blocked.holders] == ["calc"]


def test_device_refuses_a_stale_holder(broker, client, calc):
    """A holder whose lease was revoked keeps its RPyC session, but once the
    next holder fenced the device with a higher number, the device refuses
    the stale one."""
    stale_lease = client.lease(Calculator, name="calc")
    with pytest.raises(FailedPreconditionError, match="revoked"), stale_lease as stale:
        assert stale.calculate("2*3") == 6
        client.revoke_lease(stale_lease.lease_id, "device needed elsewhere")
        with client.lease(Calculator, name="calc") as fresh:
            assert fresh.fencing_token > stale.fencing_token
            assert fresh.calculate("7-2") == 5
            with pytest.raises(PermissionError, match="stale"):
                stale.calculate("1+1")


def test_leaving_the_block_by_exception_releases(client, calc):
    held = client.lease(Calculator, name="calc")
    with pytest.raises(RuntimeError, match="test failed"), held:
        raise RuntimeError("test failed")
    lease = client.get_lease(held.lease_id)
    assert lease.state == lease_pb2.LEASE_STATE_RELEASED
    assert client.get_resource("calc").owner == ""
