"""``--io postgres --db-driver asyncpg``: each request's ``pg_sleep`` through asyncpg's pool, on the loop.

In a module of its own, imported only when chosen: an interpreter asyncpg
has no wheel for runs every other client (:mod:`echolab.interpreters`).
"""

from __future__ import annotations

import asyncio
import time

import asyncpg

from ..settings import ServeSettings
from .dependency import CONNECT_TIMEOUT, Events, Failures, database_password, pool_size


class LoopAsyncpg:
    """asyncpg's pool, for an event loop: connections opened as requests need them, up to its size.

    Not at start (asyncpg's ``min_size``, 10, would open them then): so that
    the server starts with PostgreSQL down. ``--pool-timeout`` bounds the
    whole acquire, which asyncpg leaves unbounded; connecting is bounded by
    CONNECT_TIMEOUT within it.
    """

    def __init__(self, settings: ServeSettings, events: Events) -> None:
        self.url, self.events, self.timeout = settings.database_url, events, settings.pool_timeout
        self.password = database_password(settings)
        self.size = pool_size(settings)
        self.pool: asyncpg.Pool | None = None
        self.failures = Failures("PostgreSQL", events)
        events.dependency_pool(self.size)

    async def open(self) -> None:
        self.pool = await asyncpg.create_pool(
            self.url, min_size=0, max_size=self.size, timeout=CONNECT_TIMEOUT, **self.password
        )

    async def call(self, seconds: float) -> None:
        pool, events = self.pool, self.events
        assert pool is not None, "open() first"
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout) as waiting:
                conn = await pool.acquire()
        except TimeoutError as exc:
            kind = "pool_timeout" if waiting.expired() else "timeout"  # the pool's wait, or connecting
            raise self.failures.failed(kind, exc) from None
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise self.failures.failed("connect", exc) from None
        events.dependency_acquired(time.perf_counter() - started)
        try:
            await conn.execute("SELECT pg_sleep($1)", seconds)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise self.failures.failed("query", exc) from None
        finally:
            await pool.release(conn)
            events.dependency_released()
        self.failures.succeeded()

    async def close(self) -> None:
        if self.pool is not None:
            try:
                await asyncio.wait_for(self.pool.close(), 1.0)
            except TimeoutError:  # a connection still out: close them all now
                self.pool.terminate()
