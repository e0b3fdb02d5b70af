"""What every dependency client shares: its failure, what it reports, and how long it waits.

A request whose IO is a real dependency (``--io postgres`` or ``http``)
either gets its answer or fails with a :class:`DependencyError` of one kind:

* ``connect``: no connection could be made (refused, reset, unknown host);
* ``timeout``: connecting took longer than :data:`CONNECT_TIMEOUT`, or the
  answer came later than :data:`ANSWER_MARGIN` after the delay it asked for;
* ``pool_timeout``: no pooled connection came free within ``--pool-timeout``;
* ``query``: connected, the call itself failed (the connection broke under it,
  an error status).

The server answers it with one line (``ERROR dependency``, or 503) and serves
on: nothing is retried, so nothing hangs, and the next request tries again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Coroutine
from typing import Any, Protocol

from ..runtime import log
from ..settings import LIBRARY_POOL_SIZES, OffloadSettings, ServeSettings, ThreadIoSettings, password_in

# httpx's default for each of its timeouts; libpq waits for ever unless told.
CONNECT_TIMEOUT = 5.0
ANSWER_MARGIN = 5.0  # how late after its delay a call's answer may come


def library(settings: ServeSettings) -> str:
    """The library that makes the calls ("" for --io timer): the threads' psycopg or --http-client, the
    event loop's --db-driver or httpx."""
    if settings.io == "postgres":
        return settings.db_driver if isinstance(settings, OffloadSettings) else "psycopg"
    if settings.io == "http":
        return settings.http_client if isinstance(settings, ThreadIoSettings) else "httpx"
    return ""


def pool_size(settings: ServeSettings) -> int:
    """The connections its pool holds, per process: --pool-size, or the library's own default."""
    return settings.pool_size or LIBRARY_POOL_SIZES[library(settings)]


def database_password(settings: ServeSettings) -> dict[str, str]:
    """The ``password`` both drivers take beside the URL, from --database-password-file; none without.

    Read when the pool is made: a secret rotated in place reaches the next server started.
    """
    path = settings.database_password_file
    return {"password": password_in(path)} if path else {}


class DependencyError(Exception):
    """The request's dependency failed; ``kind`` is the label of echo_dependency_errors_total."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class Events(Protocol):
    """What a dependency client reports, to the server's metrics."""

    def dependency_pool(self, size: int) -> None:
        """The pool holds up to ``size`` connections (once, when the client is made)."""

    def dependency_acquired(self, waited: float) -> None:
        """A call has its connection, after ``waited`` seconds."""

    def dependency_released(self) -> None:
        """A call is done with its connection."""

    def dependency_failed(self, kind: str) -> None:
        """A call failed (the kinds above)."""


class NoEvents:
    def dependency_pool(self, size: int) -> None:
        pass

    def dependency_acquired(self, waited: float) -> None:
        pass

    def dependency_released(self) -> None:
        pass

    def dependency_failed(self, kind: str) -> None:
        pass


class Failures:
    """Counts the failures, and logs the first of a run of them and the success that ends it, not each one."""

    def __init__(self, name: str, events: Events) -> None:
        self.name = name
        self.events = events
        self.failing = False

    def failed(self, kind: str, why: object) -> DependencyError:
        """The error to raise, counted; ``why`` (an exception) for the log."""
        self.events.dependency_failed(kind)
        if not self.failing:
            self.failing = True
            said = str(why) or type(why).__name__  # httpx's timeouts say nothing
            log.warning("%s failed (%s): %s; failing requests until it answers", self.name, kind, said)
        return DependencyError(kind)

    def succeeded(self) -> None:
        if self.failing:
            self.failing = False
            log.warning("%s answers again", self.name)


class ThreadClient(Protocol):
    """A dependency as threads call it."""

    def call(self, seconds: float) -> None:
        """The request's IO of ``seconds``; DependencyError if it fails."""

    def close(self) -> None: ...


class LoopClient(Protocol):
    """A dependency as an event loop awaits it; ``open`` on that loop first."""

    def open(self) -> Awaitable[None]: ...

    def call(self, seconds: float) -> Coroutine[Any, Any, None]:
        """The request's IO of ``seconds``; DependencyError if it fails."""

    def close(self) -> Awaitable[None]: ...


def downstream_path(seconds: float) -> str:
    return f"/delay/{seconds * 1000:.3f}"  # never an exponent, which the downstream refuses


def checked(status: int, failures: Failures) -> None:
    if status != 200:
        raise failures.failed("query", f"HTTP status {status}")
    failures.succeeded()
