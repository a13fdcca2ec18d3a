"""What a test declares it needs, in Rotest's spellings.

On a test class, either a `resources` list of named requests::

    class AddTest(unittest.TestCase):
        resources = [request("calc", Calculator, name="calc")]

or requests as class attributes, named after the attribute::

    class AddTest(unittest.TestCase):
        calc = Calculator.request(name="calc")

Either way the test holds the resource as `self.calc`. A pytest function
or module declares them with the `resources` marker, each as a fixture of
that name::

    @pytest.mark.resources(request("calc", Calculator), spare=Calculator.request())
    def test_add(calc, spare): ...
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sdk.requirements import ResourceRequest

MARKER = "resources"


class DeclarationError(TypeError):
    """A declaration is not a named request, or names one twice."""


def class_requests(cls: type | None) -> dict[str, ResourceRequest]:
    """The requests a test class declares, base classes' first; a subclass
    redeclaring a name replaces its base's request."""
    if cls is None:
        return {}
    requests: dict[str, ResourceRequest] = {}
    for klass in reversed(cls.__mro__):
        for attribute, value in vars(klass).items():
            if isinstance(value, ResourceRequest):
                requests[attribute] = value.named(attribute)
        listed = vars(klass).get(MARKER)
        if listed is not None and not isinstance(listed, ResourceRequest):
            requests.update(_named(listed, f"{klass.__name__}.resources"))
    return requests


def marker_requests(args: Iterable[Any], kwargs: Mapping[str, Any]) -> dict[str, ResourceRequest]:
    """The requests of one `resources` marker: named requests as arguments,
    and `name=request` keywords."""
    requests = _named(args, "@pytest.mark.resources")
    for label, value in kwargs.items():
        if not isinstance(value, ResourceRequest):
            raise DeclarationError(
                f"@pytest.mark.resources({label}=...): expected a request "
                f"(Calculator.request(...)), not {value!r}"
            )
        if label in requests:
            raise DeclarationError(f"@pytest.mark.resources: {label!r} is declared twice")
        requests[label] = value.named(label)
    return requests


def _named(values: Any, where: str) -> dict[str, ResourceRequest]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise DeclarationError(f"{where} is a list of requests, not {values!r}")
    requests: dict[str, ResourceRequest] = {}
    for value in values:
        if not isinstance(value, ResourceRequest):
            raise DeclarationError(
                f'{where}: expected request("name", ResourceClass, ...), not {value!r}'
            )
        if not value.label:
            raise DeclarationError(
                f"{where}: a request needs a name to be held under, as in "
                f'request("calc", {value.resource_class.__name__}, ...)'
            )
        if value.label in requests:
            raise DeclarationError(f"{where}: {value.label!r} is declared twice")
        requests[value.label] = value
    return requests
