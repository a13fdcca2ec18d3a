"""The domain's values: typed, frozen, validated where they are built."""

from __future__ import annotations

import dataclasses
import datetime
import enum
from typing import Generic, TypeVar

Scalar = str | int | float | bool | datetime.datetime


class FieldType(enum.IntEnum):
    """Storage types of a kind's fields (numbers match `broker.v1.FieldType`)."""

    STRING = 1
    INTEGER = 2
    FLOAT = 3
    BOOLEAN = 4
    IP_ADDRESS = 5
    DATE_TIME = 6
    # A sub-resource: the name of a resource of `FieldSpec.kind`.
    REFERENCE = 7


class WaiterState(enum.IntEnum):
    """The life of a waiting request."""

    WAITING = 1
    GRANTED = 2
    CANCELLED = 3
    TIMED_OUT = 4


class SessionState(enum.IntEnum):
    """The life of a session."""

    OPEN = 1
    CLOSED = 2
    EXPIRED = 3


class LeaseState(enum.IntEnum):
    """The life of a lease (numbers match `broker.v1.LeaseState`)."""

    ACTIVE = 1
    RELEASED = 2
    EXPIRED = 3
    REVOKED = 4


class EventType(enum.StrEnum):
    """Kinds of recorded change."""

    RESOURCE_CREATED = "resource_created"
    RESOURCE_UPDATED = "resource_updated"
    RESOURCE_MARKED_UNUSABLE = "resource_marked_unusable"
    RESOURCE_DELETED = "resource_deleted"
    LEASE_GRANTED = "lease_granted"
    LEASE_RELEASED = "lease_released"
    LEASE_EXPIRED = "lease_expired"
    LEASE_REVOKED = "lease_revoked"
    LEASE_RENEWED = "lease_renewed"
    TOKEN_CREATED = "token_created"
    TOKEN_REVOKED = "token_revoked"
    SESSION_LOST = "session_lost"
    RESOURCE_OUT_OF_SERVICE = "resource_out_of_service"
    RESOURCE_BACK_IN_SERVICE = "resource_back_in_service"
    RESOURCE_QUARANTINED = "resource_quarantined"
    RESOURCE_RESERVED = "resource_reserved"
    RESOURCE_UNRESERVED = "resource_unreserved"


class ObstacleCause(enum.IntEnum):
    """Why a resource is not granted to a request (numbers match
    `broker.v1.ObstacleCause`)."""

    NO_SUCH_RESOURCE = 1
    OUT_OF_SERVICE = 2
    RESERVED = 3
    HELD = 4
    LOCK_DELAY = 5
    QUEUED_AHEAD = 6


class Role(enum.StrEnum):
    """What a principal may do, each role including the ones before it:
    `viewer` reads, `user` also holds leases, `admin` does everything."""

    VIEWER = "viewer"
    USER = "user"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return list(Role).index(self)


@dataclasses.dataclass(frozen=True)
class Principal:
    """A verified caller: the name, role and groups of the credential it
    showed (an API token, an OIDC token or a client certificate)."""

    name: str
    role: Role
    groups: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class FieldSpec:
    """One typed field of a kind."""

    name: str
    type: FieldType
    required: bool
    default: Scalar | None
    doc: str
    max_length: int = 0
    # The width in bits of an integer or float field's storage on every
    # database alike, which bounds the values it takes.
    bits: int = 0
    # The only values it takes (its declaration's `choices`); () for any.
    choices: tuple[Scalar, ...] = ()
    # The kind a REFERENCE field names a resource of; "" for other types.
    kind: str = ""


@dataclasses.dataclass(frozen=True)
class KindSpec:
    """A kind as clients see it."""

    name: str
    ownable: bool
    fields: tuple[FieldSpec, ...]
    doc: str
    lock_delay: float = 0.0

    def field(self, name: str) -> FieldSpec | None:
        return next((f for f in self.fields if f.name == name), None)


COMMON_FILTER_FIELDS = ("name", "group", "comment")


class Check(enum.Enum):
    """How a constraint tests its field (`Constraint` in the contract)."""

    EQUALS = "equals"
    ANY_OF = "any_of"
    GREATER_THAN = "greater_than"
    AT_LEAST = "at_least"
    LESS_THAN = "less_than"
    AT_MOST = "at_most"
    PREFIX = "prefix"
    CONTAINS = "contains"


# Tests of a number field, and of a text field.
COMPARISONS = frozenset({Check.GREATER_THAN, Check.AT_LEAST, Check.LESS_THAN, Check.AT_MOST})
TEXT_TESTS = frozenset({Check.PREFIX, Check.CONTAINS})


@dataclasses.dataclass(frozen=True)
class Constraint:
    """`field` passes `test` with `values` (several only for `ANY_OF`, which
    the request gave as a set, even of one value); `negate` turns it around."""

    field: str
    values: tuple[Scalar | None, ...]
    test: Check = Check.EQUALS
    negate: bool = False

    @property
    def any_of(self) -> bool:
        return self.test is Check.ANY_OF


@dataclasses.dataclass(frozen=True)
class Requirement:
    """`count` distinct resources of `kind` satisfying every constraint."""

    kind: str
    constraints: tuple[Constraint, ...] = ()
    count: int = 1
    label: str = ""


@dataclasses.dataclass(frozen=True)
class AcquireRequest:
    """What a client asks for; `ttl` None means the configured default,
    `max_wait` 0 answers at once when the resources are held."""

    requirements: tuple[Requirement, ...]
    ttl: float | None = None
    holder: str = ""
    max_wait: float = 0.0
    priority: int = 0
    request_id: str = ""
    session_id: str = ""
    # The verified caller; empty: the holder, as named (authentication off).
    principal: str = ""
    # Whether `principal` was verified (authentication on): a session the
    # lease is bound to must then be that principal's own.
    verified: bool = False
    # The groups whose resources the caller may see and be granted; None:
    # every group (an administrator, or authentication off).
    groups: tuple[str, ...] | None = None

    @property
    def who(self) -> str:
        """Whom the lease is for: ownership and `reserved_for` go by it."""
        return self.principal or self.holder


@dataclasses.dataclass(frozen=True)
class ResourceView:
    """A resource as reported to callers."""

    name: str
    kind: str
    fields: dict[str, Scalar | None]
    is_usable: bool
    comment: str
    group: str
    reserved_for: str
    owner: str
    lease_ids: tuple[str, ...]
    fencing_token: int
    etag: str
    create_time: float
    update_time: float
    reserved_until: float | None = None
    reservation_reason: str = ""
    service_reason: str = ""
    setup_failures: int = 0
    last_grant_time: float | None = None
    # The resource whose REFERENCE field names this one; "" if none.
    parent: str = ""


@dataclasses.dataclass(frozen=True)
class NewResource:
    """A resource to create; `fields` not given take their defaults."""

    name: str
    kind: str
    fields: dict[str, Scalar]
    is_usable: bool = True
    comment: str = ""
    group: str = ""
    reserved_for: str = ""
    reserved_until: float | None = None
    reservation_reason: str = ""


@dataclasses.dataclass(frozen=True)
class ResourcePatch:
    """The changes of an update: only the attributes named in `paths` apply
    (`comment`, `is_usable`, `fields.ip_address`, …)."""

    name: str
    paths: tuple[str, ...]
    fields: dict[str, Scalar | None]
    is_usable: bool = True
    comment: str = ""
    group: str = ""
    reserved_for: str = ""
    reserved_until: float | None = None
    reservation_reason: str = ""
    etag: str = ""


@dataclasses.dataclass(frozen=True)
class GrantView:
    """One granted resource of a lease."""

    requirement_index: int
    label: str
    resource: ResourceView
    fencing_token: int
    # When it was given back while the lease went on; None while held.
    release_time: float | None = None
    # For a sub-resource granted with its parent, the parent's name.
    parent: str = ""


@dataclasses.dataclass(frozen=True)
class LeaseView:
    """A lease as reported to callers (never with its secret)."""

    lease_id: str
    holder: str
    state: LeaseState
    grants: tuple[GrantView, ...]
    ttl: float
    create_time: float
    expire_time: float
    end_time: float | None
    end_reason: str
    session_id: str = ""
    principal: str = ""
    # The latest it may live however it is renewed; None: no limit.
    max_expire_time: float | None = None


@dataclasses.dataclass(frozen=True)
class Granted:
    """A new lease and its secret, which only the acquirer ever sees."""

    lease: LeaseView
    secret: str


@dataclasses.dataclass(frozen=True)
class SetupReport:
    """What a reported setup did: the resource's failures in a row since,
    and whether it was quarantined by this report."""

    setup_failures: int
    quarantined: bool


@dataclasses.dataclass(frozen=True)
class HolderView:
    """Who holds a resource that a request is waiting for."""

    resource: str
    lease_id: str
    holder: str
    expire_time: float


@dataclasses.dataclass(frozen=True)
class Obstacle:
    """Why one resource (none, for `NO_SUCH_RESOURCE`) is not granted to a
    request: the cause, in words, and until when it lasts if known."""

    resource: str
    cause: ObstacleCause
    text: str
    until: float | None = None
    principal: str = ""


@dataclasses.dataclass(frozen=True)
class Blocked:
    """The first requirement a request cannot get now, who holds what it
    could use, and why each resource it could use is not granted."""

    requirement_index: int
    label: str
    kind: str
    holders: tuple[HolderView, ...]
    obstacles: tuple[Obstacle, ...] = ()


@dataclasses.dataclass(frozen=True)
class Waiting:
    """A request waiting in the queue."""

    waiter_id: int
    position: int
    blocked: Blocked | None
    deadline: float
    # Set while it waits for its principal's quota, not for resources.
    quota: str = ""


@dataclasses.dataclass(frozen=True)
class WaiterView:
    """A waiting request, as administrators see the queue."""

    waiter_id: int
    holder: str
    priority: int
    requirements: tuple[Requirement, ...]
    position: int
    blocked_requirement_index: int
    enqueue_time: float
    deadline: float
    principal: str = ""


@dataclasses.dataclass(frozen=True)
class SessionView:
    """An open session."""

    session_id: str
    holder: str
    keepalive_timeout: float
    expire_time: float


@dataclasses.dataclass(frozen=True)
class EventView:
    """One recorded change; `detail` holds the type's extra facts."""

    sequence: int
    time: float
    type: EventType
    actor: str
    reason: str
    resource: str
    kind: str
    lease_id: str
    fencing_token: int
    detail: dict


@dataclasses.dataclass(frozen=True)
class EventFilter:
    """Which events to read: each attribute set must match; `types` empty
    means every type; times are a half-open range [start_time, end_time)."""

    resource: str = ""
    kind: str = ""
    lease_id: str = ""
    actor: str = ""
    types: tuple[EventType, ...] = ()
    start_time: float | None = None
    end_time: float | None = None

    def matches(self, event: EventView) -> bool:
        return (
            (not self.resource or event.resource == self.resource)
            and (not self.kind or event.kind == self.kind)
            and (not self.lease_id or event.lease_id == self.lease_id)
            and (not self.actor or event.actor == self.actor)
            and (not self.types or event.type in self.types)
            and (self.start_time is None or event.time >= self.start_time)
            and (self.end_time is None or event.time < self.end_time)
        )


@dataclasses.dataclass(frozen=True)
class UsageView:
    """The use of one resource (or of a kind's resources, `resource` empty);
    times in seconds."""

    resource: str
    kind: str
    grants: int
    total_held: float
    mean_held: float
    wait_p50: float
    wait_p95: float
    expiries: int
    revokes: int
    quarantines: int = 0


T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a listing."""

    items: tuple[T, ...]
    next_page_token: str
