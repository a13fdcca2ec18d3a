"""The broker's configuration: `rotest.yml` read into one frozen `Config`.

Every key is optional and has a working default; an unknown key, a wrong type
or an out-of-range value stops start-up with a `ConfigError` that names the
key. Two environment variables override the file, for containers and tests:
`BROKER_ADDRESS` (server.address) and `BROKER_DATABASE_URL` (database.url).
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
from collections.abc import Mapping
from typing import Any

import yaml

from broker.models.database import DEFAULT_STALL_TIMEOUT
from broker.models.resource import ResourceData

DEFAULT_CONFIG_PATH = "rotest.yml"
# The range of database.stall_timeout, in seconds.
MIN_STALL_TIMEOUT = 1.0
MAX_STALL_TIMEOUT = 3600.0


class ConfigError(ValueError):
    """The configuration is unusable; the message starts with the key."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"{key}: {problem}")
        self.key = key


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """Where and how the gRPC server listens."""

    address: str = "127.0.0.1:50051"
    max_concurrent_rpcs: int = 4096
    grace_seconds: float = 5.0
    # Serve tokens over plain TCP on a non-loopback address (no TLS yet).
    allow_insecure: bool = False


@dataclasses.dataclass(frozen=True)
class DatabaseConfig:
    """Which database holds the inventory and the leases, and (PostgreSQL)
    within how many seconds a broker that froze or lost its link gives up
    its transaction and the others go on."""

    url: str = "sqlite:///broker.sqlite3"
    stall_timeout: float = DEFAULT_STALL_TIMEOUT


@dataclasses.dataclass(frozen=True)
class LeaseConfig:
    """Lease lifetimes, in seconds."""

    default_ttl: float = 60.0
    max_ttl: float = 3600.0
    expiry_interval: float = 1.0


@dataclasses.dataclass(frozen=True)
class QueueConfig:
    """Waiting for held resources, in seconds."""

    max_wait: float = 3600.0


@dataclasses.dataclass(frozen=True)
class SessionConfig:
    """Session keep-alives, in seconds."""

    keepalive_timeout: float = 10.0
    max_keepalive_timeout: float = 300.0


@dataclasses.dataclass(frozen=True)
class EventsConfig:
    """Watching the audit trail: how many events a watcher may fall behind
    before it is cut off, and the seconds between the safety reads that
    catch what no wake-up announced."""

    watch_buffer: int = 1000
    poll_interval: float = 5.0


@dataclasses.dataclass(frozen=True)
class RetentionConfig:
    """How long, in seconds, events and ended leases, waits and sessions
    are kept, and how often the retention sweep runs."""

    events: float = 30 * 86400.0
    leases: float = 30 * 86400.0
    waiters: float = 7 * 86400.0
    sessions: float = 7 * 86400.0
    sweep_interval: float = 60.0


@dataclasses.dataclass(frozen=True)
class QuarantineConfig:
    """After how many failed setups in a row (reported by the holders'
    `validate()` / `initialize()`) a resource is taken out of service; 0:
    never."""

    after_failures: int = 3


@dataclasses.dataclass(frozen=True)
class AuthConfig:
    """Bearer-token authentication, and how many seconds a broker may go on
    trusting a token it verified (so a revoke takes effect within that)."""

    enabled: bool = False
    cache_seconds: float = 5.0


@dataclasses.dataclass(frozen=True)
class Config:
    """The whole configuration. `base_dir` is where relative paths (the SQLite
    file) are taken from: the configuration file's directory."""

    server: ServerConfig = ServerConfig()
    database: DatabaseConfig = DatabaseConfig()
    leases: LeaseConfig = LeaseConfig()
    queue: QueueConfig = QueueConfig()
    sessions: SessionConfig = SessionConfig()
    kinds: tuple[str, ...] = ("resources.calculator.data.CalculatorData",)
    base_dir: str = "."
    events: EventsConfig = EventsConfig()
    retention: RetentionConfig = RetentionConfig()
    auth: AuthConfig = AuthConfig()
    quarantine: QuarantineConfig = QuarantineConfig()

    def kind_models(self) -> tuple[type[ResourceData], ...]:
        """Imports the `ResourceData` models named by `kinds`."""
        return tuple(import_kind(f"kinds[{i}]", path) for i, path in enumerate(self.kinds))


def import_kind(key: str, path: str) -> type[ResourceData]:
    """Imports `package.module.ClassName` and checks that it declares a kind."""
    module_name, _, class_name = path.rpartition(".")
    if not module_name:
        raise ConfigError(key, f"{path!r} is not a dotted path like package.module.ClassName")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(key, f"cannot import module {module_name!r}: {error}") from error
    model = getattr(module, class_name, None)
    if not (isinstance(model, type) and issubclass(model, ResourceData)):
        raise ConfigError(key, f"{path!r} is not a ResourceData subclass")
    return model


def load_config(path: str | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Reads and checks the configuration file (defaults only when `path` is
    None), then applies the environment overrides and imports the kinds."""
    environ = os.environ if environ is None else environ
    raw: Any = {}
    base_dir = os.getcwd()
    if path is not None:
        try:
            with open(path, encoding="utf-8") as stream:
                raw = yaml.safe_load(stream) or {}
        except OSError as error:
            raise ConfigError(path, f"cannot read: {error.strerror}") from error
        except yaml.YAMLError as error:
            raise ConfigError(path, f"not valid YAML: {error}") from error
        base_dir = os.path.dirname(os.path.abspath(path))
    config = parse_config(_with_overrides(raw, environ), base_dir)
    config.kind_models()
    return config


ENVIRONMENT_OVERRIDES = {
    "BROKER_ADDRESS": ("server", "address"),
    "BROKER_DATABASE_URL": ("database", "url"),
}


def with_database_url(config: Config, url: str) -> Config:
    """`config` on another database URL (`broker serve --database`), every
    other database setting kept."""
    return dataclasses.replace(config, database=dataclasses.replace(config.database, url=url))


def _with_overrides(raw: Any, environ: Mapping[str, str]) -> Any:
    """The document with the environment's overrides in place, so that they
    are checked exactly as the file's values are."""
    if not isinstance(raw, Mapping):
        return raw
    result = dict(raw)
    for variable, (section, key) in ENVIRONMENT_OVERRIDES.items():
        if environ.get(variable):
            current = result.get(section)
            merged = dict(current) if isinstance(current, Mapping) else {}
            merged[key] = environ[variable]
            result[section] = merged
    return result


def parse_config(raw: Any, base_dir: str = ".") -> Config:
    """Builds a `Config` from the parsed YAML document."""
    top = _mapping(
        "(top level)",
        raw,
        {
            "server",
            "database",
            "leases",
            "queue",
            "sessions",
            "kinds",
            "events",
            "retention",
            "auth",
            "quarantine",
        },
    )
    server = _section("server", top.get("server"), ServerConfig)
    database = _section("database", top.get("database"), DatabaseConfig)
    leases = _section("leases", top.get("leases"), LeaseConfig)
    queue = _section("queue", top.get("queue"), QueueConfig)
    sessions = _section("sessions", top.get("sessions"), SessionConfig)
    auth = _section("auth", top.get("auth"), AuthConfig)
    _check_positive("auth.cache_seconds", auth.cache_seconds, allow_zero=True)
    _check_positive("server.max_concurrent_rpcs", server.max_concurrent_rpcs)
    _check_positive("server.grace_seconds", server.grace_seconds, allow_zero=True)
    _check_positive("database.stall_timeout", database.stall_timeout)
    if not MIN_STALL_TIMEOUT <= database.stall_timeout <= MAX_STALL_TIMEOUT:
        raise ConfigError(
            "database.stall_timeout",
            f"must be {MIN_STALL_TIMEOUT} to {MAX_STALL_TIMEOUT} seconds (TCP keep-alives "
            f"count whole seconds), not {database.stall_timeout!r}",
        )
    if ":" not in server.address:
        raise ConfigError("server.address", f"{server.address!r} is not HOST:PORT")
    for key in ("default_ttl", "max_ttl", "expiry_interval"):
        _check_positive(f"leases.{key}", getattr(leases, key))
    if leases.default_ttl > leases.max_ttl:
        raise ConfigError("leases.default_ttl", "must not exceed leases.max_ttl")
    _check_positive("queue.max_wait", queue.max_wait)
    for key in ("keepalive_timeout", "max_keepalive_timeout"):
        _check_positive(f"sessions.{key}", getattr(sessions, key))
    if sessions.keepalive_timeout > sessions.max_keepalive_timeout:
        raise ConfigError(
            "sessions.keepalive_timeout", "must not exceed sessions.max_keepalive_timeout"
        )
    events = _section("events", top.get("events"), EventsConfig)
    _check_positive("events.watch_buffer", events.watch_buffer)
    _check_positive("events.poll_interval", events.poll_interval)
    retention = _section("retention", top.get("retention"), RetentionConfig)
    for key in ("events", "leases", "waiters", "sessions", "sweep_interval"):
        _check_positive(f"retention.{key}", getattr(retention, key))
    quarantine = _section("quarantine", top.get("quarantine"), QuarantineConfig)
    _check_positive("quarantine.after_failures", quarantine.after_failures, allow_zero=True)
    kinds = top.get("kinds", Config.kinds)
    if not isinstance(kinds, list | tuple) or not all(isinstance(k, str) for k in kinds):
        raise ConfigError("kinds", "must be a list of dotted paths to ResourceData models")
    return Config(
        server,
        database,
        leases,
        queue,
        sessions,
        tuple(kinds),
        base_dir,
        events=events,
        retention=retention,
        auth=auth,
        quarantine=quarantine,
    )


def _mapping(key: str, value: Any, allowed: set[str]) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(key, f"must be a mapping, not {type(value).__name__}")
    for name in value:
        if name not in allowed:
            prefix = "" if key == "(top level)" else f"{key}."
            raise ConfigError(
                f"{prefix}{name}", f"unknown key (known: {', '.join(sorted(allowed))})"
            )
    return value


def _section(key: str, raw: Any, cls: type) -> Any:
    fields = {field.name: field for field in dataclasses.fields(cls)}
    values = _mapping(key, raw, set(fields))
    converted = {}
    for name, value in values.items():
        expected = type(getattr(cls(), name))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not expected:
            raise ConfigError(f"{key}.{name}", f"must be {expected.__name__}, not {value!r}")
        converted[name] = value
    return cls(**converted)


def _check_positive(key: str, value: float, allow_zero: bool = False) -> None:
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(
            key, f"must be {'at least 0' if allow_zero else 'positive'}, not {value!r}"
        )
