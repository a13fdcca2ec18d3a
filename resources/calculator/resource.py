"""The calculator as a test drives it: an RPyC session to its device, fenced
with the grant's number and the resource's name, so that a stale holder is
refused by the device and one device can serve several resources."""

from __future__ import annotations

import rpyc

from resources.calculator.data import CalculatorData
from sdk.base_resource import BaseResource, check_active


class Calculator(BaseResource):
    """A leased calculator; `calculate()` evaluates arithmetic on the device."""

    DATA_CLASS = CalculatorData
    PORT = 1357
    # Seconds a call to the device may take before it is given up.
    REQUEST_TIMEOUT = 10

    _connection: rpyc.Connection | None = None

    def connect(self) -> None:
        self._connection = rpyc.connect(
            self.data.ip_address,
            self.data.port or self.PORT,
            config={"sync_request_timeout": self.REQUEST_TIMEOUT},
        )
        self._connection.root.fence(self.fencing_token, self.name)

    def finalize(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    @check_active
    def calculate(self, expression: str) -> int | float:
        assert self._connection is not None
        return self._connection.root.calculate(expression)
