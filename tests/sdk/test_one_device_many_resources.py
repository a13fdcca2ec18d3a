"""One calculator device can stand behind several resources: each is fenced
on the device by its own name, so one resource's grants never make another's
fencing number look stale."""

from __future__ import annotations

from resources.calculator.resource import Calculator


def test_resources_on_one_device_keep_their_own_fencing_numbers(client, device_port):
    for name in ("calc-a", "calc-b"):
        client.create_resource("Calculator", name, {"ip_address": "127.0.0.1", "port": device_port})
    for _ in range(3):
        with client.lease(Calculator, name="calc-a") as calc:
            calc.calculate("1 + 1")

    with (
        client.lease(Calculator, name="calc-a") as first,
        client.lease(Calculator, name="calc-b") as second,
    ):
        # calc-b's first grant has a lower number than calc-a's fourth.
        assert second.fencing_token < first.fencing_token
        assert second.calculate("6 * 7") == 42
        assert first.calculate("2 + 2") == 4
