"""The calculator kind as the broker stores it."""

from __future__ import annotations

import peewee

from broker.kind_data import IPAddressField, ResourceData


class CalculatorData(ResourceData):
    """A calculator device reachable over RPyC, as in the Rotest tutorial."""

    ip_address = IPAddressField(help_text="The address its RPyC calculator service listens on.")
    port = peewee.IntegerField(
        null=True, help_text="The TCP port of that service; unset means Calculator.PORT (1357)."
    )
