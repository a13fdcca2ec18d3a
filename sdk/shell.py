"""Resources held from a shell or a script, as Rotest's shell held them:
`Calculator.lock(name="calc")` and `calc.release()`, and `broker shell`,
an interactive Python (IPython when it is installed) with a client made
from the client configuration and the configured kinds imported.

What `lock()` holds stays held, renewed in the background and bound to the
client's session, until `release()` or the end of the process, which
releases everything still held.
"""

from __future__ import annotations

import atexit
import importlib
import inspect
import logging
import pkgutil
import threading
from typing import Any, TypeVar

from sdk.base_resource import BaseResource
from sdk.client import BrokerClient
from sdk.config import ClientConfig
from sdk.lease import SingleLease
from sdk.requirements import request

logger = logging.getLogger(__name__)

ResourceT = TypeVar("ResourceT", bound=BaseResource)

_lock = threading.Lock()
_client: BrokerClient | None = None
_held: list[BaseResource] = []


def default_client() -> BrokerClient:
    """The client `lock()` uses unless given one: made from the client
    configuration on first use, closed when the process ends."""
    global _client
    with _lock:
        if _client is None:
            _client = BrokerClient()
        return _client


def lock(
    resource_class: type[ResourceT], *, client: BrokerClient | None = None, **options: Any
) -> ResourceT:
    """One resource of `resource_class`'s kind, set up and held until
    `release(resource)`, its sub-resources with it (`resource.children`);
    `options` are `BrokerClient.lease`'s keywords and the request's
    constraints."""
    lease = (client or default_client()).lease(resource_class, **options)
    resource = lease.__enter__()
    assert isinstance(resource, resource_class)
    resource._locked_by = lease
    with _lock:
        _held.append(resource)
    return resource


def release(resource: BaseResource) -> None:
    """Finalizes and releases what `lock()` took for `resource`; a no-op for
    a resource it did not take, or has released already."""
    lease: SingleLease | None = resource._locked_by
    if lease is None:
        return
    resource._locked_by = None
    with _lock:
        if resource in _held:
            _held.remove(resource)
    lease.__exit__(None, None, None)


@atexit.register
def release_all() -> None:
    """Releases everything `lock()` still holds, then closes the client."""
    global _client
    with _lock:
        held, _held[:] = list(_held), []
        client, _client = _client, None
    for resource in held:
        try:
            release(resource)
        except Exception:
            logger.exception("releasing %s failed", resource.name)
    if client is not None:
        client.close()


def resource_classes(modules: tuple[str, ...]) -> dict[str, type[BaseResource]]:
    """The `BaseResource` subclasses defined in `modules` and, for a
    package, in its submodules: what `broker shell` imports (Rotest's
    `shell_apps`)."""
    found: dict[str, type[BaseResource]] = {}
    for name in modules:
        module = importlib.import_module(name)
        found.update(_defined_in(module))
        for info in pkgutil.walk_packages(getattr(module, "__path__", []), f"{name}."):
            found.update(_defined_in(importlib.import_module(info.name)))
    return found


def _defined_in(module: Any) -> dict[str, type[BaseResource]]:
    return {
        name: value
        for name, value in vars(module).items()
        if inspect.isclass(value)
        and issubclass(value, BaseResource)
        and value is not BaseResource
        and value.__module__ == module.__name__
    }


def shell(client: BrokerClient, config: ClientConfig) -> None:
    """Runs the interactive shell until its input ends."""
    global _client
    with _lock:
        _client = client
    kinds = resource_classes(config.shell_apps)
    namespace: dict[str, Any] = {"client": client, "request": request, **kinds}
    example = next(iter(kinds), "Calculator")
    banner = "\n".join(
        [
            f"resource broker: {client.address}, holder {client.holder}",
            f"kinds: {', '.join(kinds) or 'none (set client.shell_apps)'}",
            f'e.g. res = {example}.lock(name="...", skip_init=True); res.release()',
        ]
    )
    for command in config.shell_startup_commands:
        exec(command, namespace)
    try:
        from IPython import start_ipython
    except ImportError:
        start_ipython = None
    if start_ipython is None:
        # Outside the `except`: errors typed in are not chained to it.
        import code

        code.interact(banner=banner, local=namespace, exitmsg="releasing what is held")
    else:
        print(banner)
        start_ipython(argv=[], user_ns=namespace)
