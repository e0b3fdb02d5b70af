"""``--io postgres``: each request runs ``SELECT pg_sleep(delay)`` through a driver's pool.

* Threads: psycopg 3 with psycopg_pool's ``ConnectionPool``.
* An event loop: psycopg 3 async with ``AsyncConnectionPool`` (the same driver
  both ways, so that only the model differs), or asyncpg's pool (``--db-driver``,
  :mod:`.asyncpg_io`: its own module, so that an interpreter without asyncpg runs the rest).

``--pool-size 0`` leaves each pool at its library's size (settings.LIBRARY_POOL_SIZES).
Connections are in autocommit: a pool rolls back, with a warning, a
connection returned inside a transaction.

psycopg_pool connects in the background and a request waits in the pool
for a connection, up to ``--pool-timeout``, however the attempts go: with
PostgreSQL down, every request would wait 30 s. So a :class:`Gate` watches
the connection attempts (the pool's, and one of our own at start); while
the last one failed and the pool holds no connection (none in use, none
idle), requests fail at once, and one of them, twice a second at most,
tries a connection of its own: once that succeeds the pool is asked again.
A pool that holds connections is asked as usual, whatever its attempts to
grow do: PostgreSQL at its ``max_connections`` refuses those, and requests
then queue for the connections there are, as they would without the gate.
Requests already waiting in the pool when PostgreSQL goes wait for its
reconnection, or ``--pool-timeout``. The pool gives up its
own retries after :data:`RECONNECT_TIMEOUT` (its default, 5 minutes of
doubling delays, would leave it a minute behind a database back after one),
and grows again when a request next asks. asyncpg connects when a request
acquires a connection, so a refusal fails that request at once already.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import psycopg_pool

from ..settings import ServeSettings
from .dependency import CONNECT_TIMEOUT, Events, Failures, database_password, pool_size

QUERY = "SELECT pg_sleep(%s)"
RECONNECT_TIMEOUT = 5.0  # seconds of the pool's own reconnection attempts before it waits for a request
PROBE_INTERVAL = 0.5  # while PostgreSQL refuses, the least time between two requests' own attempts
CONNECTION = {"autocommit": True, "connect_timeout": round(CONNECT_TIMEOUT)}


def connect_kind(exc: BaseException) -> str:
    return "timeout" if isinstance(exc, psycopg.errors.ConnectionTimeout | TimeoutError) else "connect"


class Gate:
    """Whether PostgreSQL took the last connection attempt; while not, and the pool holds none, requests
    fail fast, one probing."""

    def __init__(self) -> None:
        self.refused: BaseException | None = None  # the last attempt's error; None: it connected
        self.probed = 0.0  # when a request last tried a connection of its own
        self._lock = threading.Lock()

    def attempted(self, error: BaseException | None) -> None:
        self.refused = error

    def may_probe(self) -> bool:
        """Whether this request, with PostgreSQL refusing, tries a connection of its own (claims the turn)."""
        with self._lock:
            now = time.monotonic()
            if now - self.probed < PROBE_INTERVAL:
                return False
            self.probed = now
            return True


def watched(base: type[Any], gate: Gate) -> type[Any]:
    """``base`` (a psycopg connection class), telling ``gate`` how each attempt to connect went."""
    if issubclass(base, psycopg.AsyncConnection):

        class WatchedAsync(base):  # type: ignore[misc]
            @classmethod
            async def connect(cls, *args: Any, **kwargs: Any) -> Any:
                try:
                    conn = await super().connect(*args, **kwargs)
                except (psycopg.Error, OSError) as exc:
                    gate.attempted(exc)
                    raise
                gate.attempted(None)
                return conn

        return WatchedAsync

    class Watched(base):  # type: ignore[misc]
        @classmethod
        def connect(cls, *args: Any, **kwargs: Any) -> Any:
            try:
                conn = super().connect(*args, **kwargs)
            except (psycopg.Error, OSError) as exc:
                gate.attempted(exc)
                raise
            gate.attempted(None)
            return conn

    return Watched


def connection_options(settings: ServeSettings) -> dict[str, Any]:
    """What each connection is made with, the pool's and the gate's probe's alike."""
    return {**CONNECTION, **database_password(settings)}


def pool_options(
    settings: ServeSettings, connection_class: type[Any], connection: dict[str, Any]
) -> dict[str, Any]:
    sizes = {"min_size": settings.pool_size} if settings.pool_size else {}  # max_size follows min_size
    return {
        "connection_class": connection_class,
        "kwargs": connection,
        "timeout": settings.pool_timeout,
        "reconnect_timeout": RECONNECT_TIMEOUT,
        "open": False,
        **sizes,
    }


class ThreadPostgres:
    """psycopg with ``ConnectionPool``, for threads."""

    def __init__(self, settings: ServeSettings, events: Events) -> None:
        self.url, self.events = settings.database_url, events
        self.connection = connection_options(settings)
        self.gate = Gate()
        self.connection_class = watched(psycopg.Connection, self.gate)
        self.failures = Failures("PostgreSQL", events)
        self.in_use = 0  # connections out of the pool (the pool's stats do not say)
        self.counting = threading.Lock()
        self.probe()  # the gate knows from the first request on
        self.pool = psycopg_pool.ConnectionPool(
            settings.database_url, **pool_options(settings, self.connection_class, self.connection)
        )
        self.pool.open(wait=False)  # PostgreSQL may not be up yet: the pool keeps trying
        events.dependency_pool(pool_size(settings))

    def probe(self) -> BaseException | None:
        """Try a connection of our own, closed at once (the gate hears how it went); its error, if any."""
        try:
            self.connection_class.connect(self.url, **self.connection).close()
        except (psycopg.Error, OSError) as exc:
            return exc
        return None

    def call(self, seconds: float) -> None:
        refused = self.gate.refused
        if refused is not None and not self.in_use and not self.pool.get_stats()["pool_available"]:
            if not self.gate.may_probe():
                raise self.failures.failed(connect_kind(refused), refused)
            if (refused := self.probe()) is not None:
                raise self.failures.failed(connect_kind(refused), refused)
        events = self.events
        started = time.perf_counter()
        try:
            conn = self.pool.getconn()
        except psycopg_pool.PoolTimeout as exc:
            raise self.failures.failed("pool_timeout", exc) from None
        events.dependency_acquired(time.perf_counter() - started)
        with self.counting:
            self.in_use += 1
        try:
            conn.execute(QUERY, (seconds,))
        except psycopg.Error as exc:
            raise self.failures.failed("query", exc) from None
        finally:
            with self.counting:
                self.in_use -= 1
            self.pool.putconn(conn)  # a broken connection is dropped, and another made
            events.dependency_released()
        self.failures.succeeded()

    def close(self) -> None:
        self.pool.close(timeout=1.0)


class LoopPsycopg:
    """psycopg async with ``AsyncConnectionPool``, for an event loop."""

    def __init__(self, settings: ServeSettings, events: Events) -> None:
        self.settings, self.url, self.events = settings, settings.database_url, events
        self.connection = connection_options(settings)
        self.gate = Gate()
        self.connection_class = watched(psycopg.AsyncConnection, self.gate)
        self.pool: psycopg_pool.AsyncConnectionPool[Any] | None = None
        self.failures = Failures("PostgreSQL", events)
        self.in_use = 0  # connections out of the pool
        events.dependency_pool(pool_size(settings))

    async def open(self) -> None:
        """On the loop that will call: the pool's tasks are that loop's."""
        await self.probe()  # the gate knows from the first request on
        self.pool = psycopg_pool.AsyncConnectionPool(
            self.url, **pool_options(self.settings, self.connection_class, self.connection)
        )
        await self.pool.open(wait=False)

    async def probe(self) -> BaseException | None:
        """Try a connection of our own, closed at once (the gate hears how it went); its error, if any."""
        try:
            await (await self.connection_class.connect(self.url, **self.connection)).close()
        except (psycopg.Error, OSError) as exc:
            return exc
        return None

    async def call(self, seconds: float) -> None:
        pool = self.pool
        assert pool is not None, "open() first"
        refused = self.gate.refused
        if refused is not None and not self.in_use and not pool.get_stats()["pool_available"]:
            if not self.gate.may_probe():
                raise self.failures.failed(connect_kind(refused), refused)
            if (refused := await self.probe()) is not None:
                raise self.failures.failed(connect_kind(refused), refused)
        events = self.events
        started = time.perf_counter()
        try:
            conn = await pool.getconn()
        except psycopg_pool.PoolTimeout as exc:
            raise self.failures.failed("pool_timeout", exc) from None
        events.dependency_acquired(time.perf_counter() - started)
        self.in_use += 1
        try:
            await conn.execute(QUERY, (seconds,))
        except psycopg.Error as exc:
            raise self.failures.failed("query", exc) from None
        finally:
            self.in_use -= 1
            await pool.putconn(conn)
            events.dependency_released()
        self.failures.succeeded()

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close(timeout=1.0)
