"""Where the HTTP servers reach into a framework beyond its settings: marked, so that a test checks it.

Where uvicorn or gunicorn has a setting for a protection, the servers use
it. The rest (docs/server-behavior.md, "HTTP servers") only a subclass of a
framework's class can add, and each framework's private methods are used in
one module: uvicorn's in async_http.py, gunicorn's in threaded_http.py (its
gthread worker). gunicorn.py overrides only gunicorn's documented
application API and its master's USR2 handler, and calls prometheus_client's
multiprocess functions. Every method such a subclass overrides is marked
:func:`overrides`, and every method of a framework called without being
overridden is listed in the module's ``CALLED``. tests/servers/test_hooks.py checks each against the framework
installed, and fails, naming the framework's version, when one is gone or
takes other parameters: an upgrade cannot break a protection silently.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def overrides(method: F) -> F:
    """Mark ``method`` as overriding the framework's method of the same name, with the same parameters."""
    method.__overrides__ = True  # type: ignore[attr-defined]
    return method


@dataclass(frozen=True)
class Called:
    """A framework's method that a subclass calls without overriding it, with the parameters it passes."""

    owner: Any  # the framework's class, or module
    name: str
    parameters: tuple[str, ...]  # as its signature names them, ``self`` included
