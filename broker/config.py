"""The broker's configuration: `rotest.yml` read into one frozen `Config`.

Every key is optional and has a working default; an unknown key, a wrong type
or an out-of-range value stops start-up with a `ConfigError` that names the
key. Environment variables override the file, for containers and tests:
`BROKER_ADDRESS` (server.address), `BROKER_DATABASE_URL` (database.url) and
`BROKER_WEB_ADDRESS` (web.address; empty: none).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.machinery
import importlib.util
import math
import os
import sys
from collections.abc import Mapping
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from broker.kind_data import ResourceData
from broker.models.database import DEFAULT_STALL_TIMEOUT

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
class TlsConfig:
    """The server's certificate and key (PEM files, made absolute at load);
    a client CA also asks every client for a certificate signed by it
    (mutual TLS)."""

    cert_file: str = ""
    key_file: str = ""
    client_ca_file: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file)

    @property
    def mutual(self) -> bool:
        return bool(self.client_ca_file)


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """Where and how the gRPC server listens."""

    address: str = "127.0.0.1:50051"
    max_concurrent_rpcs: int = 4096
    grace_seconds: float = 5.0
    # Serve tokens over plain TCP on a non-loopback address, without TLS.
    allow_insecure: bool = False
    tls: TlsConfig = TlsConfig()


@dataclasses.dataclass(frozen=True)
class DatabaseConfig:
    """Which database holds the inventory and the leases, and (PostgreSQL)
    within how many seconds a broker that froze or lost its link gives up
    its transaction and the others go on."""

    url: str = "sqlite:///broker.sqlite3"
    stall_timeout: float = DEFAULT_STALL_TIMEOUT


@dataclasses.dataclass(frozen=True)
class LeaseConfig:
    """Lease lifetimes, in seconds; `max_lifetime` bounds how long renewals
    may keep a lease (0: no bound)."""

    default_ttl: float = 60.0
    max_ttl: float = 3600.0
    expiry_interval: float = 1.0
    max_lifetime: float = 0.0


@dataclasses.dataclass(frozen=True)
class QueueConfig:
    """Waiting for held resources, in seconds."""

    max_wait: float = 3600.0


@dataclasses.dataclass(frozen=True)
class QuotaConfig:
    """How many resources one principal may hold at once (0: no limit):
    `max_resources` for everyone, `principals` overriding it by name."""

    max_resources: int = 0
    principals: dict[str, int] = dataclasses.field(default_factory=dict)


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


ROLE_NAMES = ("viewer", "user", "admin")


@dataclasses.dataclass(frozen=True)
class OidcConfig:
    """JWTs of one OpenID Connect issuer (a CI's identity tokens), checked
    against its keys (`jwks_file`, made absolute at load, or `jwks_url`).
    Claims name the principal, its groups and its role; a role claim that is
    not a role gives `roles[principal or group]` (the highest), else
    `default_role`. `leeway` is the clock skew, in seconds, allowed."""

    issuer: str = ""
    audience: str = ""
    jwks_file: str = ""
    jwks_url: str = ""
    principal_claim: str = "sub"
    groups_claim: str = "groups"
    role_claim: str = "role"
    default_role: str = "user"
    roles: Mapping[str, str] = dataclasses.field(default_factory=dict)
    leeway: float = 0.0


@dataclasses.dataclass(frozen=True)
class MtlsConfig:
    """Client certificates (`server.tls.client_ca_file`): the subject's
    common name is the principal; its role and groups come from here."""

    default_role: str = "user"
    roles: Mapping[str, str] = dataclasses.field(default_factory=dict)
    groups: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class QuarantineConfig:
    """After how many failed setups in a row (reported by the holders'
    `validate()` / `initialize()`) a resource is taken out of service; 0:
    never."""

    after_failures: int = 3


@dataclasses.dataclass(frozen=True)
class AuthConfig:
    """Authentication: API tokens, and OIDC tokens and client certificates
    when configured; and how many seconds a broker may go on trusting an
    API token it verified (so a revoke takes effect within that)."""

    enabled: bool = False
    cache_seconds: float = 5.0
    oidc: OidcConfig | None = None
    mtls: MtlsConfig = MtlsConfig()


@dataclasses.dataclass(frozen=True)
class WebConfig:
    """The broker's HTTP address, for people and monitoring: `/metrics`
    (Prometheus), `/healthz` and `/readyz`. Empty: none."""

    address: str = "127.0.0.1:8080"
    # Where `/metrics` is served instead, on a site of its own; empty: at
    # `address`.
    metrics_address: str = ""


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
    quotas: QuotaConfig = QuotaConfig()
    quarantine: QuarantineConfig = QuarantineConfig()
    web: WebConfig = WebConfig()

    def kind_models(self) -> tuple[type[ResourceData], ...]:
        """Imports the `ResourceData` models named by `kinds`."""
        return tuple(
            import_kind(f"kinds[{i}]", path, self.base_dir) for i, path in enumerate(self.kinds)
        )


def import_kind(key: str, path: str, base_dir: str | None = None) -> type[ResourceData]:
    """Imports `package.module.ClassName` and checks that it declares a kind.
    A package found nowhere on the import path is loaded from `base_dir`
    (the configuration file's directory) under its own name, so that the
    kind's imports of its own package work too."""
    module_name, _, class_name = path.rpartition(".")
    if not module_name:
        raise ConfigError(key, f"{path!r} is not a dotted path like package.module.ClassName")
    try:
        module = _import_module(module_name, base_dir)
    except ImportError as error:
        raise ConfigError(key, f"cannot import module {module_name!r}: {error}") from error
    model = getattr(module, class_name, None)
    if not (isinstance(model, type) and issubclass(model, ResourceData)):
        raise ConfigError(key, f"{path!r} is not a ResourceData subclass")
    return model


def _import_module(module_name: str, base_dir: str | None):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        top = module_name.partition(".")[0]
        if not base_dir or error.name != top:
            raise
    # The kind's top-level package or module, loaded from `base_dir` and
    # registered under its name; its submodules then import through it,
    # and the import path itself stays as it was.
    spec = importlib.machinery.PathFinder.find_spec(top, [base_dir])
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(
            f"No module named {top!r} on the import path or in {base_dir}", name=top
        )
    module = importlib.util.module_from_spec(spec)
    sys.modules[top] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[top]
        raise
    return importlib.import_module(module_name)


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
    "BROKER_WEB_ADDRESS": ("web", "address"),
}


def with_database_url(config: Config, url: str) -> Config:
    """`config` on another database URL (`broker serve --database`), every
    other database setting kept."""
    return dataclasses.replace(config, database=dataclasses.replace(config.database, url=url))


# Overrides whose empty value means something: no web address.
EMPTY_OVERRIDES = frozenset({"BROKER_WEB_ADDRESS"})


def _with_overrides(raw: Any, environ: Mapping[str, str]) -> Any:
    """The document with the environment's overrides in place, so that they
    are checked exactly as the file's values are."""
    if not isinstance(raw, Mapping):
        return raw
    result = dict(raw)
    for variable, (section, key) in ENVIRONMENT_OVERRIDES.items():
        # Empty is no override, but for the web address: none.
        if environ.get(variable) or (variable in EMPTY_OVERRIDES and variable in environ):
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
            "quotas",
            "quarantine",
            "web",
            # The clients' sections (`sdk.config`), which the broker ignores.
            "client",
            "rotest",
        },
    )
    server_raw = _mapping("server", top.get("server"), _field_names(ServerConfig))
    server = _section("server", _without(server_raw, "tls"), ServerConfig)
    server = dataclasses.replace(server, tls=_tls(server_raw.get("tls"), base_dir))
    database = _section("database", top.get("database"), DatabaseConfig)
    leases = _section("leases", top.get("leases"), LeaseConfig)
    queue = _section("queue", top.get("queue"), QueueConfig)
    sessions = _section("sessions", top.get("sessions"), SessionConfig)
    auth = _auth(top.get("auth"), base_dir)
    if server.tls.mutual and not auth.enabled:
        raise ConfigError(
            "server.tls.client_ca_file",
            "client certificates name principals only with `auth: {enabled: true}`",
        )
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
    _check_positive("leases.max_lifetime", leases.max_lifetime, allow_zero=True)
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
    quotas = _quotas(top.get("quotas"))
    quarantine = _section("quarantine", top.get("quarantine"), QuarantineConfig)
    _check_positive("quarantine.after_failures", quarantine.after_failures, allow_zero=True)
    web = _section("web", top.get("web"), WebConfig)
    for key in ("address", "metrics_address"):
        given = getattr(web, key)
        if given and ":" not in given:
            raise ConfigError(f"web.{key}", f"{given!r} is not HOST:PORT (empty: none)")
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
        quotas=quotas,
        quarantine=quarantine,
        web=web,
    )


def _field_names(cls: type) -> set[str]:
    return {field.name for field in dataclasses.fields(cls)}


def _without(values: Mapping[str, Any], *names: str) -> dict[str, Any]:
    return {key: value for key, value in values.items() if key not in names}


def _path(key: str, value: str, base_dir: str) -> str:
    """`value` made absolute from `base_dir`; a `ConfigError` unless it is
    a readable file."""
    path = os.path.join(base_dir, os.path.expanduser(value))
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        raise ConfigError(key, f"{path} is not a readable file")
    return path


def _tls(raw: Any, base_dir: str) -> TlsConfig:
    """`server.tls`: a certificate and its key, both or neither; a client CA
    only with them; every file readable."""
    tls = _section("server.tls", raw, TlsConfig)
    if bool(tls.cert_file) != bool(tls.key_file):
        missing = "key_file" if tls.cert_file else "cert_file"
        raise ConfigError(
            f"server.tls.{missing}", "the certificate and its key go together: give both"
        )
    if tls.client_ca_file and not tls.cert_file:
        raise ConfigError(
            "server.tls.client_ca_file", "needs server.tls.cert_file and server.tls.key_file"
        )
    tls = TlsConfig(
        **{
            name: _path(f"server.tls.{name}", value, base_dir) if value else ""
            for name, value in dataclasses.asdict(tls).items()
        }
    )
    if tls.enabled:
        _check_pem(tls)
    return tls


def _check_pem(tls: TlsConfig) -> None:
    """The certificate files hold PEM certificates, the key file a PEM
    private key (unencrypted) of the first certificate."""

    def certificates(key: str, path: str) -> list:
        try:
            with open(path, "rb") as stream:
                return x509.load_pem_x509_certificates(stream.read())
        except ValueError as error:
            raise ConfigError(key, f"{path} holds no PEM certificate: {error}") from error

    public = certificates("server.tls.cert_file", tls.cert_file)[0].public_key()
    try:
        with open(tls.key_file, "rb") as stream:
            private = serialization.load_pem_private_key(stream.read(), password=None)
    except (ValueError, TypeError) as error:
        raise ConfigError(
            "server.tls.key_file", f"{tls.key_file} holds no unencrypted PEM private key"
        ) from error
    if private.public_key() != public:
        raise ConfigError(
            "server.tls.key_file", f"{tls.key_file} is not the key of {tls.cert_file}"
        )
    if tls.client_ca_file:
        certificates("server.tls.client_ca_file", tls.client_ca_file)


def _role(key: str, value: Any) -> str:
    if value not in ROLE_NAMES:
        raise ConfigError(key, f"{value!r} is not a role (roles: {', '.join(ROLE_NAMES)})")
    return value


def _roles(key: str, raw: Any) -> dict[str, str]:
    """A mapping of names to roles."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(key, f"must be a mapping of names to roles, not {raw!r}")
    return {str(name): _role(f"{key}.{name}", role) for name, role in raw.items()}


def _auth(raw: Any, base_dir: str) -> AuthConfig:
    values = _mapping("auth", raw, _field_names(AuthConfig))
    auth = _section("auth", _without(values, "oidc", "mtls"), AuthConfig)
    oidc = None if values.get("oidc") is None else _oidc(values["oidc"], base_dir)
    mtls = _mtls(values.get("mtls"))
    if oidc is not None and not auth.enabled:
        raise ConfigError("auth.oidc", "needs `auth: {enabled: true}`")
    return dataclasses.replace(auth, oidc=oidc, mtls=mtls)


def _oidc(raw: Any, base_dir: str) -> OidcConfig:
    values = _mapping("auth.oidc", raw, _field_names(OidcConfig))
    oidc = _section("auth.oidc", _without(values, "roles"), OidcConfig)
    for key in ("issuer", "audience"):
        if not getattr(oidc, key):
            raise ConfigError(f"auth.oidc.{key}", "is required")
    if bool(oidc.jwks_file) == bool(oidc.jwks_url):
        raise ConfigError("auth.oidc.jwks_file", "give exactly one of jwks_file and jwks_url")
    if oidc.jwks_url and not oidc.jwks_url.startswith(("https://", "http://")):
        raise ConfigError("auth.oidc.jwks_url", f"{oidc.jwks_url!r} is not an http(s) URL")
    _role("auth.oidc.default_role", oidc.default_role)
    _check_positive("auth.oidc.leeway", oidc.leeway, allow_zero=True)
    return dataclasses.replace(
        oidc,
        jwks_file=_path("auth.oidc.jwks_file", oidc.jwks_file, base_dir) if oidc.jwks_file else "",
        roles=_roles("auth.oidc.roles", values.get("roles")),
    )


def _mtls(raw: Any) -> MtlsConfig:
    values = _mapping("auth.mtls", raw, _field_names(MtlsConfig))
    default_role = _role("auth.mtls.default_role", values.get("default_role", "user"))
    groups_raw = values.get("groups") or {}
    if not isinstance(groups_raw, Mapping):
        raise ConfigError("auth.mtls.groups", "must map common names to lists of groups")
    groups = {}
    for name, listed in groups_raw.items():
        if not isinstance(listed, list) or not all(isinstance(g, str) for g in listed):
            raise ConfigError(
                f"auth.mtls.groups.{name}", f"must be a list of groups, not {listed!r}"
            )
        groups[str(name)] = tuple(listed)
    return MtlsConfig(default_role, _roles("auth.mtls.roles", values.get("roles")), groups)


def _quotas(raw: Any) -> QuotaConfig:
    quotas = _section("quotas", raw, QuotaConfig)
    _check_positive("quotas.max_resources", quotas.max_resources, allow_zero=True)
    for name, limit in quotas.principals.items():
        key = f"quotas.principals.{name}"
        if not isinstance(name, str) or not name:
            raise ConfigError(key, "a principal's name must be a non-empty string")
        if type(limit) is not int:
            raise ConfigError(key, f"must be int, not {limit!r}")
        _check_positive(key, limit, allow_zero=True)
    return quotas


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
