"""The client configuration that the SDK, the `broker` CLI and the pytest
plugin share: which broker to call, with which token and TLS files, and how
long a lease may wait in the queue.

Each setting comes from the first of these that gives it:

1. an explicit argument (`BrokerClient(address=...)`, `--target`, `--broker`);
2. the environment: `BROKER_TARGET`, `BROKER_TOKEN`, `BROKER_WAIT`,
   `BROKER_CA_FILE`, `BROKER_CERT_FILE`, `BROKER_KEY_FILE`; then Rotest's
   `ROTEST_HOST`, `ROTEST_SERVER_PORT` and `ROTEST_RESOURCE_REQUEST_TIMEOUT`;
3. the `client:` section of the configuration file, then its `rotest:`
   section (a Rotest project's file, whose keys `host`, `port` and
   `resource_request_timeout` are read and whose other keys are left to
   Rotest);
4. the defaults: `127.0.0.1:50051`, no token, plain TCP, a 60 s wait.

The file is `BROKER_CLIENT_CONFIG` if set, else the first `rotest.yml`,
`rotest.yaml`, `.rotest.yml` or `.rotest.yaml` found in the working
directory or one of its parents, as Rotest looks for it. The broker's own
sections of that file (`server:`, `database:`, ...) are not the client's.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from typing import Any

import yaml

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_PORT = 50051
DEFAULT_WAIT = 60.0  # seconds a lease waits in the queue unless told otherwise
FILE_NAMES = ("rotest.yml", "rotest.yaml", ".rotest.yml", ".rotest.yaml")
FILE_VARIABLE = "BROKER_CLIENT_CONFIG"

CLIENT_KEYS = frozenset(
    {
        "target",
        "host",
        "port",
        "resource_request_timeout",
        "holder",
        "token_file",
        "tls",
        "ca_file",
        "cert_file",
        "key_file",
        "shell_apps",
        "shell_startup_commands",
    }
)
ROTEST_KEYS = frozenset(
    {"host", "port", "resource_request_timeout", "shell_apps", "shell_startup_commands"}
)
PATH_KEYS = ("token_file", "ca_file", "cert_file", "key_file")

# Environment variable -> the file key it stands for, strongest first.
ENVIRONMENT = (
    ("BROKER_TARGET", "target"),
    ("BROKER_WAIT", "resource_request_timeout"),
    ("BROKER_CA_FILE", "ca_file"),
    ("BROKER_CERT_FILE", "cert_file"),
    ("BROKER_KEY_FILE", "key_file"),
    ("ROTEST_HOST", "host"),
    ("ROTEST_SERVER_PORT", "port"),
    ("ROTEST_RESOURCE_REQUEST_TIMEOUT", "resource_request_timeout"),
)
TOKEN_VARIABLE = "BROKER_TOKEN"


class ClientConfigError(ValueError):
    """A client setting is unusable; the message names where it came from."""


@dataclasses.dataclass(frozen=True)
class ClientConfig:
    """The settings a client starts from.

    `target`: `host:port`, or several brokers as `host:port,host:port`.
    `token`: the API token ("" for none). `wait`: seconds a lease may wait in
    the queue (0: not at all). `holder`: the holder's description (""
    for `user@host`). `tls`: call over TLS; `ca_file`, `cert_file` and
    `key_file` are absolute paths or "". `shell_apps`: modules (or
    packages) whose `BaseResource` subclasses `broker shell` imports, and
    `shell_startup_commands` the lines it runs first, as Rotest's keys.
    `path`: the file read, or "".
    """

    target: str = DEFAULT_TARGET
    token: str = ""
    wait: float = DEFAULT_WAIT
    holder: str = ""
    tls: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    shell_apps: tuple[str, ...] = ()
    shell_startup_commands: tuple[str, ...] = ()
    path: str = ""


def load_client_config(
    environ: Mapping[str, str] | None = None, cwd: str | None = None, path: str | None = None
) -> ClientConfig:
    """The client configuration of this process: `environ` (default
    `os.environ`) over the file (`path`, else as the module says, searched
    from `cwd`), over the defaults. A bad value is a `ClientConfigError`."""
    environ = os.environ if environ is None else environ
    cwd = os.getcwd() if cwd is None else cwd
    path = path or environ.get(FILE_VARIABLE) or find_config_file(cwd)
    settings: dict[str, tuple[Any, str]] = {}
    if path:
        path = os.path.abspath(os.path.join(cwd, path))
        settings = _file_settings(path)
    given = {variable: environ[variable] for variable, _ in ENVIRONMENT if environ.get(variable)}
    if given.keys() & {"BROKER_TARGET", "ROTEST_HOST", "ROTEST_SERVER_PORT"}:
        # The environment names the broker: the file's target is moot (its
        # host or port still fill in what the environment leaves out).
        settings.pop("target", None)
    for variable, key in reversed(ENVIRONMENT):
        if variable in given:
            settings[key] = (given[variable], variable)
    if "target" in settings:
        settings.pop("host", None)
        settings.pop("port", None)
    token = environ.get(TOKEN_VARIABLE, "")
    if not token and "token_file" in settings:
        token = _read_token(*settings["token_file"])
    return ClientConfig(
        target=_target(settings),
        token=token,
        wait=_wait(settings),
        holder=_string(settings, "holder"),
        tls=_flag(settings, "tls"),
        ca_file=_string(settings, "ca_file"),
        cert_file=_string(settings, "cert_file"),
        key_file=_string(settings, "key_file"),
        shell_apps=_strings(settings, "shell_apps"),
        shell_startup_commands=_strings(settings, "shell_startup_commands"),
        path=path or "",
    )


def find_config_file(cwd: str) -> str:
    """The first configuration file in `cwd` or above it, or ""."""
    directory = os.path.abspath(cwd)
    while True:
        for name in FILE_NAMES:
            candidate = os.path.join(directory, name)
            if os.path.isfile(candidate):
                return candidate
        parent = os.path.dirname(directory)
        if parent == directory:
            return ""
        directory = parent


def _file_settings(path: str) -> dict[str, tuple[Any, str]]:
    """key -> (value, where it was given) from the file's `rotest:` section,
    overridden by its `client:` section; relative paths are made absolute
    against the file's directory."""
    try:
        with open(path, encoding="utf-8") as stream:
            document = yaml.safe_load(stream) or {}
    except OSError as error:
        raise ClientConfigError(f"{path}: cannot read: {error.strerror}") from error
    except yaml.YAMLError as error:
        raise ClientConfigError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(document, Mapping):
        raise ClientConfigError(f"{path}: must be a mapping, not {type(document).__name__}")
    settings: dict[str, tuple[Any, str]] = {}
    for section, known, strict in (("rotest", ROTEST_KEYS, False), ("client", CLIENT_KEYS, True)):
        values = document.get(section) or {}
        if not isinstance(values, Mapping):
            raise ClientConfigError(
                f"{path}: {section}: must be a mapping, not {type(values).__name__}"
            )
        for key, value in values.items():
            if key not in known:
                if strict:
                    raise ClientConfigError(
                        f"{path}: {section}.{key}: unknown key (known: {', '.join(sorted(known))})"
                    )
                continue
            settings[key] = (value, f"{path}: {section}.{key}")
    if "target" in settings and ("host" in settings or "port" in settings):
        where = settings["target"][1]
        raise ClientConfigError(f"{where}: give target, or host and port, not both")
    base = os.path.dirname(path)
    for key in PATH_KEYS:
        if key in settings and isinstance(settings[key][0], str) and settings[key][0]:
            value, where = settings[key]
            settings[key] = (os.path.join(base, os.path.expanduser(value)), where)
    return settings


def _target(settings: Mapping[str, tuple[Any, str]]) -> str:
    if "target" in settings:
        target = _string(settings, "target")
        if not target.strip():
            raise ClientConfigError(f"{settings['target'][1]}: the broker's host:port is empty")
        return target
    if "host" not in settings and "port" not in settings:
        return DEFAULT_TARGET
    host = _string(settings, "host") if "host" in settings else DEFAULT_TARGET.split(":")[0]
    port = DEFAULT_PORT
    if "port" in settings:
        raw, where = settings["port"]
        try:
            port = int(raw)
        except (TypeError, ValueError):
            port = 0
        if isinstance(raw, bool) or not 1 <= port <= 65535:
            raise ClientConfigError(f"{where}: a TCP port is 1 to 65535, not {raw!r}")
    return f"{host}:{port}"


def _wait(settings: Mapping[str, tuple[Any, str]]) -> float:
    if "resource_request_timeout" not in settings:
        return DEFAULT_WAIT
    raw, where = settings["resource_request_timeout"]
    try:
        wait = float(raw)
    except (TypeError, ValueError):
        wait = math.nan
    if isinstance(raw, bool) or not math.isfinite(wait) or wait < 0:
        raise ClientConfigError(f"{where}: seconds to wait are a number of at least 0, not {raw!r}")
    return wait


def _string(settings: Mapping[str, tuple[Any, str]], key: str) -> str:
    if key not in settings:
        return ""
    value, where = settings[key]
    if not isinstance(value, str):
        raise ClientConfigError(f"{where}: must be a string, not {value!r}")
    return value


def _strings(settings: Mapping[str, tuple[Any, str]], key: str) -> tuple[str, ...]:
    if key not in settings:
        return ()
    value, where = settings[key]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ClientConfigError(f"{where}: must be a list of strings, not {value!r}")
    return tuple(value)


def _flag(settings: Mapping[str, tuple[Any, str]], key: str) -> bool:
    if key not in settings:
        return False
    value, where = settings[key]
    if not isinstance(value, bool):
        raise ClientConfigError(f"{where}: must be true or false, not {value!r}")
    return value


def _read_token(path: Any, where: str) -> str:
    if not isinstance(path, str) or not path:
        raise ClientConfigError(f"{where}: must be the path of a file holding the token")
    try:
        with open(path, encoding="utf-8") as stream:
            return stream.read().strip()
    except OSError as error:
        raise ClientConfigError(f"{where}: cannot read {path}: {error.strerror}") from error
