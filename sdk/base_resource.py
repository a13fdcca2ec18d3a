"""The SDK side of a resource kind: the object a test drives while it holds a
lease on one resource.

A kind is a `BaseResource` subclass naming its `ResourceData` model in
`DATA_CLASS` and overriding the lifecycle hooks, as in Rotest::

    class Calculator(BaseResource):
        DATA_CLASS = CalculatorData

        def connect(self):
            self._connection = rpyc.connect(self.data.ip_address, ...)

        def finalize(self):
            self._connection.close()

`connect()` always runs; then, unless `skip_init`, `validate()` and, when it
returns False or `force_initialize` is set, `initialize()`; `finalize()` when
the lease ends, and `store_state(directory)` before it after a failed test.
Each hook, overridden or not, is guarded: called in a state where it makes no
sense (`initialize()` before `connect()`, anything after `finalize()`) it
raises `StateError`, the idea of labgrid's `check_active`. Methods of a
kind's own that need the open session take the `check_active` decorator.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import types
from collections.abc import Callable
from typing import Any, ClassVar, Concatenate, ParamSpec, TypeVar

from broker.field_values import from_field_value
from broker.kind_data import ResourceData
from broker.v1 import resource_pb2
from sdk.requirements import ResourceRequest, request

P = ParamSpec("P")
R = TypeVar("R")
ResourceT = TypeVar("ResourceT", bound="BaseResource")

COMMON_FIELDS = ("name", "kind", "comment", "group", "reserved_for")


class ResourceState(enum.Enum):
    """Where a resource object is in its lifecycle."""

    NEW = "new"
    CONNECTING = "connecting"  # connect() started: it may have opened something even if it raised
    CONNECTED = "connected"
    INITIALIZED = "initialized"
    FINALIZED = "finalized"


OPEN = frozenset({ResourceState.CONNECTED, ResourceState.INITIALIZED})


class StateError(RuntimeError):
    """A lifecycle method was called in a state where it cannot run."""

    def __init__(self, method: str, state: ResourceState) -> None:
        super().__init__(f"{method}() cannot run while the resource is {state.value}")
        self.method = method
        self.state = state


@dataclasses.dataclass(frozen=True)
class Rule:
    """When a hook may run and what state it leaves; None keeps the state."""

    allowed: frozenset[ResourceState]
    running: ResourceState | None = None
    done: ResourceState | None = None
    failed: ResourceState | None = None


RULES: dict[str, Rule] = {
    "connect": Rule(
        frozenset({ResourceState.NEW}),
        running=ResourceState.CONNECTING,
        done=ResourceState.CONNECTED,
        failed=ResourceState.CONNECTING,
    ),
    "validate": Rule(OPEN),
    "initialize": Rule(OPEN, done=ResourceState.INITIALIZED),
    "store_state": Rule(OPEN),
    "finalize": Rule(
        OPEN | {ResourceState.CONNECTING},
        done=ResourceState.FINALIZED,
        failed=ResourceState.FINALIZED,
    ),
}


def _guard(hook: Callable[..., Any], rule: Rule) -> Callable[..., Any]:
    @functools.wraps(hook)
    def guarded(self: BaseResource, *args: Any, **kwargs: Any) -> Any:
        if self._running == hook.__name__:
            # An override calling super(): the outer call already checked.
            return hook(self, *args, **kwargs)
        before = self._state
        if before not in rule.allowed:
            raise StateError(hook.__name__, before)
        self._state = rule.running or before
        self._running = hook.__name__
        try:
            result = hook(self, *args, **kwargs)
        except BaseException:
            self._state = rule.failed or before
            raise
        finally:
            self._running = None
        self._state = rule.done or before
        return result

    guarded.__guarded__ = True  # type: ignore[attr-defined]
    return guarded


def _guard_hooks(cls: type) -> None:
    for name, rule in RULES.items():
        hook = cls.__dict__.get(name)
        if hook is not None and not getattr(hook, "__guarded__", False):
            setattr(cls, name, _guard(hook, rule))


def check_active(
    method: Callable[Concatenate[ResourceT, P], R],
) -> Callable[Concatenate[ResourceT, P], R]:
    """Guards a kind's own method that needs the session `connect()` opened."""

    @functools.wraps(method)
    def checked(self: ResourceT, /, *args: P.args, **kwargs: P.kwargs) -> R:
        if self.state not in OPEN:
            raise StateError(method.__name__, self.state)
        return method(self, *args, **kwargs)

    return checked


class BaseResource:
    """One granted resource, as a test uses it.

    Args:
        resource: the resource as the broker granted it.
        fencing_token: the grant's fencing number, to hand to the device.

    `data` is an unsaved `DATA_CLASS` instance holding the kind's typed fields
    and the common ones (`name`, `kind`, `comment`, `group`, `is_usable`,
    `reserved_for`), so `self.data.ip_address` and `self.data.name` both work.

    A kind with `DATA_CLASS = None` is a *service*, as in Rotest: something a
    test sets up and tears down like a resource (a browser, a log
    collector) but that the broker does not hold. It is built here, with no
    lease, from its request's keywords (`Browser.request(url="...")`), which
    become `self.data`'s attributes and `self.kwargs`; its name is the
    request's.
    """

    DATA_CLASS: ClassVar[type[ResourceData] | None] = ResourceData

    def __init__(
        self, resource: resource_pb2.Resource | None = None, fencing_token: int = 0, **values: Any
    ) -> None:
        self.kwargs = values
        if resource is None:
            if self.DATA_CLASS is not None:
                raise TypeError(
                    f"{type(self).__name__} is a kind the broker holds: it is built from a "
                    "granted resource (only a service, DATA_CLASS = None, is built from values)"
                )
            self.data: Any = types.SimpleNamespace(**values)
            self.name = str(values.get("name", ""))
        else:
            if self.DATA_CLASS is None:
                raise TypeError(f"{type(self).__name__} is a service: the broker grants it nothing")
            self.data = self.DATA_CLASS(
                **{name: from_field_value(value) for name, value in resource.fields.items()}
            )
            common = {name: getattr(resource, name) for name in COMMON_FIELDS}
            common["is_usable"] = resource.is_usable if resource.HasField("is_usable") else True
            for name, value in common.items():
                setattr(self.data, name, value)
            self.name = resource.name
        self.fencing_token = fencing_token
        # The lease `lock()` took for this resource alone, until `release()`.
        self._locked_by: Any = None
        # Set by `mark_dirty()`: a test runner holding resources between
        # tests releases this one after the test instead of keeping it.
        self.dirty = False
        self._state = ResourceState.NEW
        self._running: str | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _guard_hooks(cls)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self._state.value})"

    @property
    def state(self) -> ResourceState:
        return self._state

    @classmethod
    def kind_name(cls) -> str:
        """The kind's name, as the broker knows it ("service" for a service)."""
        return "service" if cls.DATA_CLASS is None else cls.DATA_CLASS.kind_name()

    @classmethod
    def is_service(cls) -> bool:
        """Whether this kind is a service (`DATA_CLASS = None`), built here
        with no lease."""
        return cls.DATA_CLASS is None

    @classmethod
    def request(cls, *, count: int = 1, **constraints: Any) -> ResourceRequest:
        """A request for `count` resources of this kind, for `lease_many`."""
        return request(cls, count=count, **constraints)

    @classmethod
    def lock(cls: type[ResourceT], **options: Any) -> ResourceT:
        """Holds one resource of this kind from a shell or a script, as
        Rotest's `lock()` did: `calc = Calculator.lock(name="calc",
        skip_init=True)` returns it set up, its lease kept alive until
        `calc.release()` or the end of the process. The keywords are
        constraints and `BrokerClient.lease`'s options; `client=` picks the
        client (default: one made from the client configuration)."""
        from sdk.shell import lock

        return lock(cls, **options)

    def release(self) -> None:
        """Finalizes and releases a resource `lock()` took; a no-op for any
        other, whose lease ends with its `with` block or test."""
        from sdk.shell import release

        release(self)

    def mark_dirty(self) -> None:
        """Says the test left the device in a state the next test must not
        inherit: a runner that keeps resources between tests (the pytest
        plugin, `sdk.mixin`) releases it after this test, so the next one
        gets a freshly set up resource."""
        self.dirty = True

    def connect(self) -> None:
        """Opens the session to the device; always the first hook to run."""

    def validate(self) -> bool:
        """Whether the device is ready as it is; False makes `initialize()` run."""
        return False

    def initialize(self) -> None:
        """Brings the device to a known state."""

    def finalize(self) -> None:
        """Closes what `connect()` opened; runs even when `connect()` failed
        half-way, so it must cope with a partly opened session."""

    def store_state(self, directory: str) -> None:
        """Saves what helps debug a failed test (logs, screenshots) into
        `directory`, which exists."""

    def setup(self, skip_init: bool = False, force_initialize: bool = False) -> None:
        """Runs the lifecycle up to a ready resource."""
        self.connect()
        if not skip_init and (force_initialize or not self.validate()):
            self.initialize()

    def teardown(self) -> None:
        """Finalizes the resource if `connect()` ever ran and it is not
        finalized yet; a no-op otherwise, so it is always safe to call."""
        if self._state in RULES["finalize"].allowed:
            self.finalize()


_guard_hooks(BaseResource)
