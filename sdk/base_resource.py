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

A kind whose data names another kind's data in a `peewee.ForeignKeyField`
is a *complex resource*, as in Rotest: leasing it leases the resource that
field names, its *sub-resource*, with it. The SDK hangs each sub-resource
from its parent: for a field `sim`, `handset.sim` is the SIM's
`BaseResource` (`handset.sim.parent is handset`), `handset.data.sim` its
data, and `handset.children` lists them in field order. The class a
sub-resource gets is the parent's `SUB_RESOURCES[field]` if it names one,
else the one class that declares the field's model as its `DATA_CLASS` (a
subclass that only inherits it is a variant, taken only where
`SUB_RESOURCES` names it), else a plain `BaseResource` of that model whose
hooks do nothing; several classes declaring it are an error naming them::

    class Handset(BaseResource):
        DATA_CLASS = HandsetData            # sim = ForeignKeyField(SimData)
        SUB_RESOURCES = {"sim": SimCard}    # optional when one class serves SimData
        PARALLEL_INITIALIZATION = True      # set the sub-resources up at once

`setup()` sets the sub-resources up first (one after the other, or each in
a thread of its own with `PARALLEL_INITIALIZATION`), then the parent;
`teardown()` finalizes the parent first, then the sub-resources in reverse
order.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import enum
import functools
import logging
import types
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, Concatenate, ParamSpec, TypeVar

from broker.field_values import from_field_value
from broker.kind_data import ResourceData
from broker.v1 import lease_pb2, resource_pb2
from sdk.requirements import ResourceRequest, reference_fields, request

P = ParamSpec("P")
R = TypeVar("R")
ResourceT = TypeVar("ResourceT", bound="BaseResource")

logger = logging.getLogger(__name__)

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


# Data class -> the BaseResource subclasses that declare it as their own
# `DATA_CLASS` (a subclass that inherits it is a variant, not registered).
_SERVING: dict[type[ResourceData], weakref.WeakSet[type[BaseResource]]] = {}
# Data class -> the plain class made for it when no class serves it.
_PLAIN: dict[type[ResourceData], type[BaseResource]] = {}


def resource_class_for(data_class: type[ResourceData]) -> type[BaseResource]:
    """The `BaseResource` subclass a sub-resource of data `data_class` gets
    when its parent does not name one in `SUB_RESOURCES`: the one class
    declaring `DATA_CLASS = data_class`, else a plain one whose hooks do
    nothing. Several such classes are a `TypeError` naming them."""
    serving = sorted(
        _SERVING.get(data_class, ()), key=lambda cls: f"{cls.__module__}.{cls.__qualname__}"
    )
    if len(serving) == 1:
        return serving[0]
    if serving:
        names = ", ".join(f"{cls.__module__}.{cls.__qualname__}" for cls in serving)
        raise TypeError(
            f"several classes serve {data_class.__name__} ({names}): name the one a parent's "
            "field gets in its SUB_RESOURCES, e.g. SUB_RESOURCES = {'field': TheClass}"
        )
    plain = _PLAIN.get(data_class)
    if plain is None:
        plain = types.new_class(
            f"{data_class.kind_name()}Resource",
            (BaseResource,),
            {"register": False},
            lambda namespace: namespace.update(DATA_CLASS=data_class, __module__=__name__),
        )
        _PLAIN[data_class] = plain
    return plain


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

    A kind whose data has sub-resource fields (`ForeignKeyField`s to other
    kinds' data) gets each sub-resource the lease grants with it as an
    attribute of that field's name (`self.sim`, unless the class has a
    method or property of that name: `self.sub_resources["sim"]` always
    works), its data as `self.data.sim`, and `self.children` in field order;
    each sub-resource's `parent` is this resource (None for a resource a
    request asked for) and its `fencing_token` its own grant's number.

    Class attributes:
        DATA_CLASS: the kind's `ResourceData` model (None: a service).
        SUB_RESOURCES: sub-resource field -> the `BaseResource` subclass its
            resource gets, when the one class declaring that field's model
            as its `DATA_CLASS` is not the one wanted (or there are several).
        PARALLEL_INITIALIZATION: set the sub-resources up at once, each in a
            thread of its own, rather than one after the other.
    """

    DATA_CLASS: ClassVar[type[ResourceData] | None] = ResourceData
    SUB_RESOURCES: ClassVar[Mapping[str, type[BaseResource]]] = {}
    PARALLEL_INITIALIZATION: ClassVar[bool] = False

    def __init__(
        self, resource: resource_pb2.Resource | None = None, fencing_token: int = 0, **values: Any
    ) -> None:
        self.kwargs = values
        # Sub-resource field -> the name of the resource it holds, as granted.
        self._references: dict[str, str] = {}
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
            references = reference_fields(self.DATA_CLASS)
            fields = {name: from_field_value(value) for name, value in resource.fields.items()}
            # A sub-resource field's value is its resource's name. Given to
            # the model, it would be read as a row's key, fetched from a
            # database the client does not have; the field takes the
            # sub-resource's data instead, when it is attached.
            self._references = {
                name: str(value) for name, value in fields.items() if name in references and value
            }
            self.data = self.DATA_CLASS(
                **{name: value for name, value in fields.items() if name not in references}
            )
            common = {name: getattr(resource, name) for name in COMMON_FIELDS}
            common["is_usable"] = resource.is_usable if resource.HasField("is_usable") else True
            for name, value in common.items():
                setattr(self.data, name, value)
            self.name = resource.name
        self.fencing_token = fencing_token
        self._parent: BaseResource | None = None
        self._sub_resources: dict[str, BaseResource] = {}
        # The lease `lock()` took for this resource alone, until `release()`.
        self._locked_by: Any = None
        # Set by `mark_dirty()`: a test runner holding resources between
        # tests releases this one after the test instead of keeping it.
        self.dirty = False
        self._state = ResourceState.NEW
        self._running: str | None = None
        # How this resource's own setup went, for the lease to report: None
        # until it ran, "" when it succeeded, else the error.
        self._setup_outcome: str | None = None

    def __init_subclass__(cls, *, register: bool = True, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _guard_hooks(cls)
        if "SUB_RESOURCES" in cls.__dict__:
            _check_sub_resources(cls)
        data_class = cls.__dict__.get("DATA_CLASS")
        if register and data_class is not None:
            _SERVING.setdefault(data_class, weakref.WeakSet()).add(cls)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self._state.value})"

    @property
    def state(self) -> ResourceState:
        return self._state

    @property
    def parent(self) -> BaseResource | None:
        """The resource this one is a sub-resource of, as granted in the
        same lease; None for a resource a request asked for."""
        return self._parent

    @property
    def sub_resources(self) -> dict[str, BaseResource]:
        """Sub-resource field -> the resource granted for it, in field order."""
        return dict(self._sub_resources)

    @property
    def children(self) -> list[BaseResource]:
        """The sub-resources, in the order of their fields."""
        return list(self._sub_resources.values())

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
    def sub_resource_class(cls, field: str) -> type[BaseResource]:
        """The class the resource granted for the sub-resource field `field`
        gets: `SUB_RESOURCES[field]`, else the one class whose `DATA_CLASS`
        is that field's model, else a plain one (see `resource_class_for`)."""
        declared = cls.SUB_RESOURCES.get(field)
        if declared is not None:
            return declared
        references = reference_fields(cls.DATA_CLASS)
        if field not in references:
            raise KeyError(
                f"{cls.__name__}.DATA_CLASS has no sub-resource field {field!r} "
                f"(sub-resource fields: {', '.join(references) or 'none'})"
            )
        return resource_class_for(references[field])

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
        client (default: one made from the client configuration). Its
        sub-resources are held, set up and released with it."""
        from sdk.shell import lock

        return lock(cls, **options)

    def release(self) -> None:
        """Finalizes and releases a resource `lock()` took, with its
        sub-resources; a no-op for any other (a sub-resource included),
        whose lease ends with its `with` block or test."""
        from sdk.shell import release

        release(self)

    def mark_dirty(self) -> None:
        """Says the test left the device in a state the next test must not
        inherit: a runner that keeps resources between tests (the pytest
        plugin, `sdk.mixin`) releases it after this test, so the next one
        gets a freshly set up resource. A sub-resource marks its parent
        dirty too: it is released, and set up afresh, with its parent."""
        self.dirty = True
        if self._parent is not None:
            self._parent.mark_dirty()

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
        `directory`, which exists. A lease stores a sub-resource's state in a
        subdirectory of its parent's named after its field."""

    def setup(self, skip_init: bool = False, force_initialize: bool = False) -> None:
        """Runs the lifecycle up to a ready resource: the sub-resources'
        setups first (at once, each in a thread, with
        `PARALLEL_INITIALIZATION`), then `connect()` and, unless
        `skip_init`, `validate()` and `initialize()`. A sub-resource that
        fails stops the setup before this resource's own hooks and its
        error propagates; with `PARALLEL_INITIALIZATION` the others finish
        first, and the error raised is the first sub-resource's in field
        order. `teardown()` finalizes whatever was set up."""
        self._set_up_children(skip_init, force_initialize)
        try:
            self.connect()
            if not skip_init and (force_initialize or not self.validate()):
                self.initialize()
        except Exception as error:
            self._setup_outcome = f"{type(error).__name__}: {error}"
            raise
        self._setup_outcome = ""

    def _set_up_children(self, skip_init: bool, force_initialize: bool) -> None:
        children = self.children
        if not self.PARALLEL_INITIALIZATION or len(children) < 2:
            for child in children:
                child.setup(skip_init=skip_init, force_initialize=force_initialize)
            return
        with concurrent.futures.ThreadPoolExecutor(
            max_workers=len(children), thread_name_prefix=f"setup-{self.name}"
        ) as pool:
            futures = [
                pool.submit(child.setup, skip_init=skip_init, force_initialize=force_initialize)
                for child in children
            ]
            errors = [future.exception() for future in futures]
        failed = [(child, error) for child, error in zip(children, errors, strict=True) if error]
        for child, error in failed[1:]:
            logger.error("setting %s up failed too", child.name, exc_info=error)
        if failed:
            raise failed[0][1]

    def teardown(self) -> None:
        """Finalizes the resource if `connect()` ever ran and it is not
        finalized yet, then its sub-resources in reverse field order; a
        no-op for each that never connected or is finalized already, so it
        is always safe to call. Every one is tried: the first error is
        raised once all are, the others logged."""
        errors: list[tuple[BaseResource, Exception]] = []
        try:
            if self._state in RULES["finalize"].allowed:
                self.finalize()
        except Exception as error:
            errors.append((self, error))
        for child in reversed(self.children):
            try:
                child.teardown()
            except Exception as error:
                errors.append((child, error))
        for resource, failure in errors[1:]:
            logger.error("finalizing %s failed too", resource.name, exc_info=failure)
        if errors:
            raise errors[0][1]

    def _attach(self, resource: resource_pb2.Resource, fencing_token: int) -> BaseResource:
        """Builds the sub-resource granted as `resource` and hangs it from
        this resource, under the field that names it."""
        field = next(
            (name for name, held in self._references.items() if held == resource.name), None
        )
        if field is None:
            raise ValueError(
                f"{resource.name} was granted as a sub-resource of {self.name}, whose "
                f"{type(self).__name__}.DATA_CLASS names it in no sub-resource field "
                f"(it names {', '.join(self._references.values()) or 'none'})"
            )
        child = type(self).sub_resource_class(field)(resource, fencing_token)
        child._parent = self
        self._sub_resources[field] = child
        order = list(reference_fields(self.DATA_CLASS))
        self._sub_resources = dict(
            sorted(self._sub_resources.items(), key=lambda item: order.index(item[0]))
        )
        # A model instance given to its foreign key is kept as it is: reading
        # `self.data.sim` gives it back, with no query.
        setattr(self.data, field, child.data)
        if field not in self.__dict__ and not hasattr(type(self), field):
            setattr(self, field, child)
        return child


def _check_sub_resources(cls: type[BaseResource]) -> None:
    """A class's `SUB_RESOURCES` names only its data's sub-resource fields,
    each with a class whose `DATA_CLASS` is that field's model."""
    references = reference_fields(cls.DATA_CLASS)
    for field, sub_class in cls.SUB_RESOURCES.items():
        if field not in references:
            raise TypeError(
                f"{cls.__name__}.SUB_RESOURCES names {field!r}, not a sub-resource field of "
                f"its DATA_CLASS (sub-resource fields: {', '.join(references) or 'none'})"
            )
        data_class = getattr(sub_class, "DATA_CLASS", None)
        if not (
            isinstance(sub_class, type)
            and issubclass(sub_class, BaseResource)
            and isinstance(data_class, type)
            and issubclass(data_class, references[field])
        ):
            raise TypeError(
                f"{cls.__name__}.SUB_RESOURCES[{field!r}] is a BaseResource subclass whose "
                f"DATA_CLASS is {references[field].__name__}, not {sub_class!r}"
            )


def attach_sub_resources(
    built: Mapping[str, BaseResource], grants: Iterable[lease_pb2.Grant]
) -> list[BaseResource]:
    """Hangs each sub-resource's grant (one with `parent` set) from its
    parent, among `built` (name -> the resources built for the lease's
    other grants) or the sub-resources attached before it; returns the
    sub-resources, in grant order."""
    known = dict(built)
    pending = [grant for grant in grants if grant.parent]
    attached: list[BaseResource] = []
    while pending:
        ready = [grant for grant in pending if grant.parent in known]
        if not ready:
            raise ValueError(
                f"{pending[0].resource.name} was granted as a sub-resource of "
                f"{pending[0].parent}, which the lease does not hold"
            )
        for grant in ready:
            child = known[grant.parent]._attach(grant.resource, grant.fencing_token)
            known[grant.resource.name] = child
            attached.append(child)
        pending = [grant for grant in pending if grant.resource.name not in known]
    return attached


def each_in_tree(resource: BaseResource) -> list[BaseResource]:
    """`resource`, then its sub-resources and theirs, depth first in field order."""
    found = [resource]
    for child in resource.children:
        found += each_in_tree(child)
    return found


_guard_hooks(BaseResource)
