"""Giving back part of a lease (`ReleaseResources`), on both backends: the
rest stays held with its fencing numbers, what was given back goes to the
queue at once, ending the lease later never touches it again, and bad calls
are refused naming what was wrong."""

from __future__ import annotations

import pytest

from broker.v1 import event_pb2, event_service_pb2, lease_pb2
from resources.calculator.resource import Calculator
from sdk import (
    BrokerClient,
    FailedPreconditionError,
    InvalidArgumentError,
    PermissionDeniedError,
    request,
)
from tests.sdk.helpers import run_client


@pytest.fixture
def pair(client, device_port):
    for name in ("calc", "calc2"):
        client.create_resource("Calculator", name, {"ip_address": "127.0.0.1", "port": device_port})
    return client


def both(client):
    return client.lease_many(
        {"calc": request(Calculator, name="calc"), "other": request(Calculator, name="calc2")},
        wait=0,
    )


def test_the_rest_stays_held_with_its_fencing_numbers(pair):
    lease = both(pair)
    with lease as held:
        before = lease.fencing_tokens
        lease.release_resources(["calc"])
        assert "calc" not in held and held["other"].calculate("1+2") == 3
        assert lease.fencing_tokens == {"calc2": before["calc2"]}
        assert pair.get_resource("calc").owner == ""
        assert pair.get_resource("calc2").lease_ids == [lease.lease_id]
        stored = pair.get_lease(lease.lease_id)
        assert stored.state == lease_pb2.LEASE_STATE_ACTIVE
        released = {g.resource.name: g.HasField("release_time") for g in stored.grants}
        assert released == {"calc": True, "calc2": False}
        assert pair.renew(lease.lease_id, lease._secret).state == lease_pb2.LEASE_STATE_ACTIVE
        renewed = [
            e.resource
            for e in pair.list_events(event_service_pb2.EventFilter(lease_id=lease.lease_id))
            if e.type == event_pb2.EVENT_TYPE_LEASE_RENEWED
        ]
        assert renewed == ["calc2"]  # not the resource given back
    assert pair.get_lease(lease.lease_id).state == lease_pb2.LEASE_STATE_RELEASED
    events = [
        (e.resource, e.reason)
        for e in pair.list_events(event_service_pb2.EventFilter(lease_id=lease.lease_id))
        if e.type == event_pb2.EVENT_TYPE_LEASE_RELEASED
    ]
    assert events[0] == ("calc", "given back by its holder, who keeps the rest of the lease")
    assert [resource for resource, _ in events] == ["calc", "calc2"]


def test_what_is_given_back_goes_to_the_queue_and_the_lease_never_frees_it_again(broker, pair):
    lease = both(pair)
    other = BrokerClient(broker.address, holder="next@bench")
    # Leaving the block, releasing the revoked lease is refused.
    with other, pytest.raises(FailedPreconditionError, match="revoked"), lease:
        first = lease.fencing_tokens["calc"]
        requirement = request(Calculator, name="calc").to_requirement("")
        events = other.watch_acquire([requirement], max_wait=30)
        next(events)  # it waits behind the lease
        lease.release_resources(["calc"])
        granted = next(event for event in events if hasattr(event, "lease"))
        assert granted.lease.grants[0].fencing_token > first
        pair.revoke_lease(lease.lease_id, "ended early")
        calc = pair.get_resource("calc")
        assert list(calc.lease_ids) == [granted.lease.lease_id]
        assert calc.owner == other.holder
        assert pair.get_resource("calc2").owner == ""
        other.release(granted.lease.lease_id, granted.secret)


def test_giving_back_everything_ends_the_lease(pair):
    lease = both(pair)
    with lease:
        lease.release_resources(["calc", "other"])
        assert pair.get_lease(lease.lease_id).state == lease_pb2.LEASE_STATE_RELEASED
        assert lease.resources == {}


@pytest.mark.parametrize(
    ("names", "error", "message"),
    [
        ([], InvalidArgumentError, "resources: is required"),
        (["calc", "calc"], InvalidArgumentError, "'calc' is named twice"),
        ([""], InvalidArgumentError, "is empty"),
        (["calc3"], FailedPreconditionError, "does not hold 'calc3' \\(it holds: calc, calc2\\)"),
    ],
)
def test_a_bad_give_back_is_refused_and_changes_nothing(pair, names, error, message):
    lease = both(pair)
    with lease:
        with pytest.raises(error, match=message):
            pair.release_resources(lease.lease_id, lease._secret, names)
        assert set(lease.fencing_tokens) == {"calc", "calc2"}
        assert pair.get_resource("calc").lease_ids == [lease.lease_id]


def test_only_the_holder_gives_back_and_only_once(pair):
    lease = both(pair)
    with lease:
        with pytest.raises(PermissionDeniedError):
            pair.release_resources(lease.lease_id, "not-the-secret", ["calc"])
        pair.release_resources(lease.lease_id, lease._secret, ["calc"])
        with pytest.raises(FailedPreconditionError, match="does not hold 'calc'"):
            pair.release_resources(lease.lease_id, lease._secret, ["calc"])
    with pytest.raises(FailedPreconditionError, match="was released"):
        pair.release_resources(lease.lease_id, lease._secret, ["calc2"])


def test_a_test_gives_back_one_resource_mid_test(pytester, pair, broker):
    pytester.makepyfile(
        """
        import unittest

        from resources.calculator.resource import Calculator
        from sdk import request
        from sdk.mixin import ResourcesMixin


        class PartTest(ResourcesMixin, unittest.TestCase):
            resources = [
                request("calc", Calculator, name="calc"),
                request("other", Calculator, name="calc2"),
            ]

            def test_a_gives_back(self):
                token = self.other.fencing_token
                self.release_resources(["calc"])
                self.assertEqual(self.other.calculate("2*5"), 10)
                self.assertEqual(self.other.fencing_token, token)

            def test_b_gets_both_again(self):
                self.assertEqual(self.calc.calculate("1+1"), 2)
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "--broker", broker.address)
    result.assert_outcomes(passed=2)
    leases = list(reversed(list(pair.list_leases())))
    assert len(leases) == 2
    assert [g.HasField("release_time") for g in leases[0].grants] == [True, False]


def test_function_tests_and_plain_classes_give_back_too(pytester, pair, broker):
    pytester.makepyfile(
        """
        import pytest

        from resources.calculator.resource import Calculator

        BOTH = {"calc": Calculator.request(name="calc"), "other": Calculator.request(name="calc2")}


        @pytest.mark.resources(**BOTH)
        def test_fixture(calc, other, release_resources):
            release_resources(["other"])
            assert other.state.value == "finalized"
            assert calc.calculate("3-1") == 2


        class TestPlain:
            calc = BOTH["calc"]
            other = BOTH["other"]

            def test_method(self):
                self.release_resources(["calc"])
                assert self.other.calculate("4/2") == 2
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "--broker", broker.address)
    result.assert_outcomes(passed=2)
    given_back = [
        [g.resource.name for g in lease.grants if g.HasField("release_time")]
        for lease in reversed(list(pair.list_leases()))
    ]
    assert given_back == [["calc2"], ["calc"]]


MORE_MID_TEST = """
import unittest

import pytest

from resources.calculator.resource import Calculator
from sdk import request
from sdk.mixin import ResourcesMixin


class MoreTest(ResourcesMixin, unittest.TestCase):
    resources = [request("calc", Calculator, name="calc")]

    def test_a_asks_for_more(self):
        self.request_resources([request("spare", Calculator, name="calc2")])
        self.assertEqual(self.spare.calculate("3*3"), 9)

    def test_b_keeps_calc_only(self):
        self.assertEqual(self.calc.calculate("1+1"), 2)
        self.assertFalse(hasattr(self, "spare"))
"""


def test_a_test_asks_for_more_mid_test_and_it_is_released_at_its_end(pytester, pair, broker):
    pytester.makepyfile(test_more=MORE_MID_TEST)
    result = pytester.runpytest("-p", "no:cacheprovider", "--broker", broker.address)
    result.assert_outcomes(passed=2)
    leases = list(reversed(list(pair.list_leases())))
    held = [[g.resource.name for g in lease.grants] for lease in leases]
    assert held == [["calc"], ["calc2"]]  # calc kept for both tests, calc2 for the first
    assert all(lease.state == lease_pb2.LEASE_STATE_RELEASED for lease in leases)
    assert leases[1].end_time.ToDatetime() < leases[0].end_time.ToDatetime()


def test_the_mixin_asks_for_more_under_python_unittest(pytester, pair, broker):
    import sys

    pytester.makepyfile(test_more=MORE_MID_TEST)
    finished = run_client(
        [sys.executable, "-m", "unittest", "test_more"], broker.address, pytester.path
    )
    assert finished.returncode == 0, finished.stderr
    held = [[g.resource.name for g in lease.grants] for lease in reversed(list(pair.list_leases()))]
    assert held == [["calc"], ["calc2"]]


def test_a_function_test_asks_through_the_fixture(pytester, pair, broker):
    pytester.makepyfile(
        """
        from resources.calculator.resource import Calculator
        from sdk import request


        def test_more(request_resources):
            held = request_resources([request("calc", Calculator, name="calc")])
            assert held["calc"].calculate("2+5") == 7


        def test_after():
            pass
        """
    )
    junit = pytester.path / "junit.xml"
    result = pytester.runpytest(
        "-p", "no:cacheprovider", "--broker", broker.address, f"--junitxml={junit}"
    )
    result.assert_outcomes(passed=2)
    (lease,) = list(pair.list_leases())
    assert lease.state == lease_pb2.LEASE_STATE_RELEASED
    assert 'name="resource:calc"' in junit.read_text()
