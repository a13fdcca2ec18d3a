"""The Rotest tutorial's calculator test, run by pytest with the broker's
plugin: `.venv/bin/pytest examples/pytest --resource calc=name=calc2`."""

import unittest

import pytest

from resources.calculator.resource import Calculator
from sdk import request


class CalculatorTest(unittest.TestCase):
    """A Rotest-style test class: the plugin leases `calc` before the first
    test, hands it over as `self.calc`, keeps it for the next test, and
    releases it at the end."""

    resources = [request("calc", Calculator, name="calc")]

    def test_add(self):
        self.assertEqual(self.calc.calculate("1 + 1"), 2)

    def test_multiply(self):
        self.assertEqual(self.calc.calculate("6 * 7"), 42)


@pytest.mark.resources(calc=Calculator.request(name=["calc1", "calc2"]))
def test_subtract(calc):
    """A function test gets its resources as fixtures of their names."""
    assert calc.calculate("9 - 4") == 5
