"""A principal's quota through the SDK: a lease past it waits, its `Waiting`
saying it waits for the quota (also in the logged line), and is granted
when the principal's own lease is released; not waiting, it is refused at
once."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor

import pytest

from broker.config import QuotaConfig
from resources.calculator.resource import Calculator
from sdk import BaseResource, ResourceBusyError
from tests.conftest import make_config
from tests.kinds import PhoneData
from tests.sdk.helpers import WAIT, WaitRecorder


class Phone(BaseResource):
    DATA_CLASS = PhoneData


@pytest.fixture
def config(tmp_path, database_url):
    base = make_config(tmp_path, database_url)
    return dataclasses.replace(base, quotas=QuotaConfig(principals={"tester@bench": 1}))


@pytest.fixture
def phone(client):
    return client.create_resource("Phone", "p1", {"os": "android"})


def test_a_lease_past_the_quota_waits_for_the_principals_release(client, calc, phone):
    recorder = WaitRecorder()

    def second_lease() -> str:
        with client.lease(Phone, name="p1", wait=WAIT, on_wait=recorder) as held:
            return held.name

    with ThreadPoolExecutor(max_workers=1) as pool:
        with client.lease(Calculator, name="calc"):
            waiting = pool.submit(second_lease)
            recorder.wait()
            assert not waiting.done()
        assert waiting.result(WAIT) == "p1"

    status = recorder.statuses[0]
    assert status.blocked is None
    assert "waiting for its quota" in status.quota
    assert "holds 1 of the 1 resources" in str(status)


def test_a_lease_past_the_quota_that_does_not_wait_is_refused(client, calc, phone):
    with (
        client.lease(Calculator, name="calc"),
        pytest.raises(ResourceBusyError, match="quota"),
        client.lease(Phone, name="p1", wait=0),
    ):
        pytest.fail("the block must not run past the quota")
