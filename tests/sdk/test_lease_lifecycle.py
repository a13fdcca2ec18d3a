"""Leases through the SDK against a real broker and the calculator device:
several requests at once, all or nothing, the background keepalive, a lease
lost while held, Ctrl-C, saved state, the lifecycle hooks' order, and shared
(non-ownable) kinds."""

from __future__ import annotations

import datetime

import pytest

from broker.v1 import lease_pb2, resource_pb2
from resources.calculator.resource import Calculator
from sdk import (
    BaseResource,
    BrokerClient,
    FailedPreconditionError,
    ResourceBusyError,
    request,
)
from sdk.base_resource import ResourceState
from tests.kinds import LicenceData, PhoneData
from tests.sdk.helpers import WAIT, wait_until


class Phone(BaseResource):
    """A phone whose hooks do nothing: only its grant matters here."""

    DATA_CLASS = PhoneData


class Licence(BaseResource):
    """A floating licence whose hooks do nothing."""

    DATA_CLASS = LicenceData


class RecordingCalculator(Calculator):
    """Records each hook it runs, talking to the real device in each one.
    `validate()` says ready when the resource's comment is "ready"."""

    def __init__(self, resource: resource_pb2.Resource, fencing_token: int = 0) -> None:
        super().__init__(resource, fencing_token)
        self.calls: list[str] = []

    def connect(self) -> None:
        self.calls.append("connect")
        super().connect()

    def validate(self) -> bool:
        self.calls.append("validate")
        return self.calculate("1 + 1") == 2 and self.data.comment == "ready"

    def initialize(self) -> None:
        self.calls.append("initialize")
        assert self.calculate("2 * 3") == 6

    def finalize(self) -> None:
        self.calls.append("finalize")
        super().finalize()


class StuckCalculator(RecordingCalculator):
    """A calculator whose initialization fails."""

    def initialize(self) -> None:
        super().initialize()
        raise RuntimeError("the device is stuck")


class DumpingCalculator(Calculator):
    """Saves a computation from the open session as its state."""

    def store_state(self, directory: str) -> None:
        with open(f"{directory}/answer.txt", "w", encoding="utf-8") as stream:
            stream.write(str(self.calculate("6 * 7")))


def add_phone(client: BrokerClient, name: str, os: str = "android") -> None:
    client.create_resource("Phone", name, {"os": os, "version": 14})


def active_leases(client: BrokerClient) -> list[lease_pb2.Lease]:
    return list(client.list_leases(lease_pb2.LEASE_STATE_ACTIVE))


def owners(client: BrokerClient) -> dict[str, str]:
    return {resource.name: resource.owner for resource in client.list_resources()}


# ------------------------------------------------------------ lease_many


def test_lease_many_grants_every_request_at_once(client, calc):
    for name in ("pixel-1", "pixel-2"):
        add_phone(client, name)
    add_phone(client, "iphone-1", os="ios")
    held = client.lease_many(
        {"calc": request(Calculator, name="calc"), "phones": request(Phone, count=2, os="android")}
    )

    with held as granted:
        assert set(granted) == {"calc", "phones"}
        assert isinstance(granted["calc"], Calculator)
        assert granted["calc"].calculate("40 + 2") == 42
        assert isinstance(granted["phones"], list)
        assert {phone.name for phone in granted["phones"]} == {"pixel-1", "pixel-2"}
        assert all(phone.data.os == "android" for phone in granted["phones"])
        (lease,) = active_leases(client)
        assert lease.lease_id == held.lease_id
        assert {grant.resource.name: grant.label for grant in lease.grants} == {
            "calc": "calc",
            "pixel-1": "phones",
            "pixel-2": "phones",
        }
        assert set(held.fencing_tokens) == {"calc", "pixel-1", "pixel-2"}
        assert owners(client) == {
            "calc": "tester@bench",
            "pixel-1": "tester@bench",
            "pixel-2": "tester@bench",
            "iphone-1": "",
        }

    assert set(owners(client).values()) == {""}
    assert client.get_lease(held.lease_id).state == lease_pb2.LEASE_STATE_RELEASED


def test_lease_many_finds_an_assignment_a_first_match_misses(client):
    """Any phone first, then pixel-1: taking pixel-1 for the first request
    would leave the second unsatisfied, yet an assignment exists."""
    for name in ("pixel-1", "pixel-2"):
        add_phone(client, name)

    with client.lease_many(
        {"any": request(Phone), "named": request(Phone, name="pixel-1")}
    ) as granted:
        assert (granted["any"].name, granted["named"].name) == ("pixel-2", "pixel-1")


def test_a_request_busy_in_part_leaves_nothing_held(broker, client, calc):
    for name in ("pixel-1", "pixel-2"):
        add_phone(client, name)

    with (
        BrokerClient(broker.address, holder="other@bench") as other,
        other.lease(Phone, name="pixel-2"),
    ):
        wanted = client.lease_many(
            {"calc": request(Calculator, name="calc"), "phones": request(Phone, count=2)},
            wait=0,
        )
        with pytest.raises(ResourceBusyError) as busy, wanted:
            pytest.fail("the block must not run without every resource")

        assert busy.value.blocked.label == "phones"
        assert owners(client) == {"calc": "", "pixel-1": "", "pixel-2": "other@bench"}
        assert [lease.holder for lease in active_leases(client)] == ["other@bench"]


def test_a_request_never_satisfiable_in_full_fails_and_leaves_nothing_held(client, calc):
    add_phone(client, "pixel-1")
    add_phone(client, "iphone-1", os="ios")
    wanted = client.lease_many(
        {"calc": request(Calculator, name="calc"), "phones": request(Phone, count=2, os="android")}
    )

    with pytest.raises(FailedPreconditionError), wanted:
        pytest.fail("the block must not run without every resource")

    assert set(owners(client).values()) == {""}
    assert active_leases(client) == []


# ------------------------------------------------------------- keepalive


def test_keepalive_renews_past_the_ttl(client, calc):
    held = client.lease(Calculator, name="calc", ttl=1.5)

    with held as calculator:
        first = client.get_lease(held.lease_id).expire_time.ToDatetime(tzinfo=datetime.UTC)

        def renewed_past_first_expiry() -> bool:
            now = datetime.datetime.now(datetime.UTC)
            lease = client.get_lease(held.lease_id)
            return now > first and lease.expire_time.ToDatetime(tzinfo=datetime.UTC) > now

        wait_until(renewed_past_first_expiry, held.lost.wait)

        assert client.get_lease(held.lease_id).state == lease_pb2.LEASE_STATE_ACTIVE
        assert not held.lost.is_set()
        assert held.expire_time > first
        assert calculator.calculate("3 * 3") == 9
        assert client.get_resource("calc").owner == "tester@bench"

    assert client.get_lease(held.lease_id).state == lease_pb2.LEASE_STATE_RELEASED


def test_revoking_a_held_lease_marks_it_lost(client, calc):
    held = client.lease(Calculator, name="calc", ttl=1.5)

    with pytest.raises(FailedPreconditionError, match="revoked"), held as calculator:
        assert not held.lost.is_set()
        client.revoke_lease(held.lease_id, "the bench is rewired")
        assert held.lost.wait(WAIT), "the keepalive did not notice the revocation"

    assert calculator.state is ResourceState.FINALIZED
    lease = client.get_lease(held.lease_id)
    assert (lease.state, lease.end_reason) == (
        lease_pb2.LEASE_STATE_REVOKED,
        "the bench is rewired",
    )
    assert client.get_resource("calc").owner == ""


def test_ctrl_c_in_the_block_propagates_and_releases(client, calc):
    held = client.lease(Calculator, name="calc")

    with pytest.raises(KeyboardInterrupt), held as calculator:
        raise KeyboardInterrupt

    assert calculator.state is ResourceState.FINALIZED
    assert client.get_lease(held.lease_id).state == lease_pb2.LEASE_STATE_RELEASED
    assert client.get_resource("calc").owner == ""


# ------------------------------------------------------------ save_state


def test_save_state_stores_the_state_of_a_failed_block(client, calc, tmp_path):
    held = client.lease(DumpingCalculator, name="calc", save_state=True, state_dir=str(tmp_path))

    with pytest.raises(RuntimeError, match="test failed"), held:
        raise RuntimeError("test failed")

    assert (tmp_path / "calc" / "answer.txt").read_text(encoding="utf-8") == "42"
    assert client.get_lease(held.lease_id).state == lease_pb2.LEASE_STATE_RELEASED


def test_save_state_stores_nothing_when_the_block_succeeds(client, calc, tmp_path):
    held = client.lease(DumpingCalculator, name="calc", save_state=True, state_dir=str(tmp_path))

    with held as calculator:
        assert calculator.calculate("1 + 2") == 3

    assert not (tmp_path / "calc").exists()


def test_without_save_state_a_failed_block_stores_nothing(client, calc, tmp_path):
    held = client.lease(DumpingCalculator, name="calc", state_dir=str(tmp_path))

    with pytest.raises(RuntimeError, match="test failed"), held:
        raise RuntimeError("test failed")

    assert not (tmp_path / "calc").exists()


# ------------------------------------------------------------- lifecycle


@pytest.mark.parametrize(
    ("comment", "options", "calls"),
    [
        ("ready", {}, ["connect", "validate", "finalize"]),
        ("", {}, ["connect", "validate", "initialize", "finalize"]),
        ("", {"skip_init": True}, ["connect", "finalize"]),
        ("ready", {"force_initialize": True}, ["connect", "initialize", "finalize"]),
    ],
    ids=["valid", "invalid", "skip_init", "force_initialize"],
)
def test_hooks_run_in_the_rotest_order(client, calc, comment, options, calls):
    client.update_resource("calc", comment=comment)

    with client.lease(RecordingCalculator, name="calc", **options) as calculator:
        assert calculator.calculate("5 - 2") == 3
        assert calculator.calls == calls[:-1]

    assert calculator.calls == calls


def test_a_failed_setup_finalizes_and_releases(client, calc):
    held = client.lease(StuckCalculator, name="calc", force_initialize=True)

    with pytest.raises(RuntimeError, match="stuck"), held:
        pytest.fail("the block must not run after a failed setup")

    (calculator,) = held.resources.values()
    assert calculator.calls == ["connect", "initialize", "finalize"]
    assert calculator.state is ResourceState.FINALIZED
    assert client.get_lease(held.lease_id).state == lease_pb2.LEASE_STATE_RELEASED
    assert client.get_resource("calc").owner == ""


def test_a_resource_knows_its_data_and_fencing_token(client, calc, device_port):
    first = client.lease(Calculator, name="calc")
    with first as calculator:
        assert (calculator.name, calculator.data.name, calculator.data.kind) == (
            "calc",
            "calc",
            "Calculator",
        )
        assert (calculator.data.ip_address, calculator.data.port) == ("127.0.0.1", device_port)
        assert calculator.fencing_token == first.fencing_tokens["calc"]
        assert calculator.fencing_token == client.get_resource("calc").fencing_token

    with client.lease(Calculator, name="calc") as again:
        assert again.fencing_token > calculator.fencing_token
        assert again.calculate("2 ** 5") == 32


# ------------------------------------------------------------ non-ownable


def test_a_licence_is_held_by_two_clients_at_once(broker, client):
    client.create_resource("Licence", "matlab-1", {"product": "matlab"})

    with (
        BrokerClient(broker.address, holder="other@bench") as other,
        client.lease(Licence, name="matlab-1") as mine,
        other.lease(Licence, name="matlab-1") as theirs,
    ):
        assert mine.name == theirs.name == "matlab-1"
        assert mine.data.product == "matlab"
        leases = active_leases(client)
        assert sorted(lease.holder for lease in leases) == ["other@bench", "tester@bench"]
        assert sorted(client.get_resource("matlab-1").lease_ids) == sorted(
            lease.lease_id for lease in leases
        )

    assert list(client.get_resource("matlab-1").lease_ids) == []
    assert active_leases(client) == []


def test_failed_setups_are_reported_and_quarantine_the_resource(client, calc):
    """The broker's default: three failed setups in a row quarantine."""
    for _ in range(2):
        with pytest.raises(RuntimeError), client.lease(StuckCalculator, name="calc"):
            pass
    assert client.get_resource("calc").setup_failures == 2
    with client.lease(RecordingCalculator, name="calc", force_initialize=True):
        pass
    assert client.get_resource("calc").setup_failures == 0
    for _ in range(3):
        with pytest.raises(RuntimeError), client.lease(StuckCalculator, name="calc"):
            pass

    resource = client.get_resource("calc")
    assert not resource.is_usable
    assert "RuntimeError: the device is stuck" in resource.service_reason
    with pytest.raises(FailedPreconditionError) as refused:
        client.lease(Calculator, name="calc").__enter__()
    [reason] = refused.value.reasons
    assert reason.startswith("calc is out of service: quarantined after 3 failed setups")
    assert reason in str(refused.value)
