"""What the HTTP servers take from uvicorn, gunicorn and prometheus_client beyond their settings is there.

Every method our subclasses override (marked ``@overrides``) and every one
they call (their module's ``CALLED``) must exist in the framework installed,
with the parameters we wrote against; a failure names the framework and its
version, so an upgrade that moved a hook is found here, not in production.
"""

from __future__ import annotations

import importlib.metadata
import inspect
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest

from echolab.servers import async_http, gunicorn, threaded_http
from echolab.servers.hooks import Called

MODULES = (async_http, threaded_http, gunicorn)


def parameters(function: Callable[..., Any]) -> tuple[str, ...]:
    return tuple(inspect.signature(function).parameters)


def framework(owner: Any) -> str:
    """The framework a class or module of it belongs to, and its version: ``uvicorn 0.54.0``."""
    package = (owner.__name__ if isinstance(owner, ModuleType) else owner.__module__).split(".")[0]
    return f"{package} {importlib.metadata.version(package)}"


def overrides() -> Iterator[tuple[type, str, Callable[..., Any]]]:
    for module in MODULES:
        for cls in vars(module).values():
            if inspect.isclass(cls) and cls.__module__ == module.__name__:
                for name, method in vars(cls).items():
                    if getattr(method, "__overrides__", False):
                        yield cls, name, method


OVERRIDES = list(overrides())
CALLED: list[Called] = [called for module in MODULES for called in module.CALLED]


def test_the_protections_mark_what_they_override() -> None:
    marked = {(cls.__name__, name) for cls, name, _ in OVERRIDES}
    # The hooks the protections most depend on, each private in its framework.
    assert {("GuardedHttpTools", "_start_asgi_task"), ("EchoThreadWorker", "_keepalive_after")} <= marked
    assert {called.name for called in CALLED} >= {
        "_unset_keepalive_if_required",
        "_unsupported_upgrade_warning",
    }


@pytest.mark.parametrize(
    ("cls", "name", "ours"), OVERRIDES, ids=[f"{c.__name__}.{n}" for c, n, _ in OVERRIDES]
)
def test_every_override_still_overrides_a_method_with_its_parameters(
    cls: type, name: str, ours: Callable[..., Any]
) -> None:
    base = next((b for b in cls.__mro__[1:] if name in vars(b)), None)
    assert base is not None, (
        f"{framework(cls.__mro__[1])}: {cls.__mro__[1].__qualname__} has no {name} any more"
    )
    theirs = getattr(base, name)
    assert parameters(ours) == parameters(theirs), (
        f"{framework(base)}: {base.__qualname__}.{name}{inspect.signature(theirs)} is not what "
        f"{cls.__qualname__}.{name}{inspect.signature(ours)} overrides"
    )


@pytest.mark.parametrize("called", CALLED, ids=[f"{c.owner.__name__}.{c.name}" for c in CALLED])
def test_every_called_method_is_there_with_its_parameters(called: Called) -> None:
    where = f"{framework(called.owner)}: {called.owner.__name__}"
    function = getattr(called.owner, called.name, None)
    assert function is not None, f"{where} has no {called.name} any more"
    assert parameters(function) == called.parameters, (
        f"{where}.{called.name}{inspect.signature(function)}, not the {called.parameters} called"
    )
