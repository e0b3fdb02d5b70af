"""``--io http``: each request calls ``GET <downstream>/delay/<ms>`` (echolab downstream) through a pool.

* Threads: httpx's ``Client``, or requests' ``Session`` (``--http-client requests``,
  :mod:`.requests_io`: its own module, so that an interpreter without one runs the other).
* An event loop: httpx's ``AsyncClient``.

httpx's pool holds 100 connections unless told (keeping 20 alive between
calls), and a call waits up to its pool timeout for one: ``PoolTimeout``.
requests' (urllib3's) keeps 10 per host and never waits: past them it
opens another connection and drops it afterwards ("Connection pool is
full"), so its connections in use can exceed its pool size, which the
metrics show. ``--pool-size N`` sets both of httpx's numbers, and
requests' ``pool_maxsize``.

The time a call waits for its connection is up to its first byte sent
(httpcore's trace of ``send_request_headers``): the wait for a pooled
connection, and the connecting if a new one was made. requests does not
wait, and reports none.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from ..settings import ServeSettings
from .dependency import ANSWER_MARGIN, CONNECT_TIMEOUT, Events, Failures, checked, downstream_path, pool_size

SENDING = "send_request_headers.started"  # httpcore's trace event: the call has its connection


def httpx_kind(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.PoolTimeout):
        return "pool_timeout"
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    return "connect" if isinstance(exc, httpx.ConnectError) else "query"


def timeouts(seconds: float, pool: float) -> httpx.Timeout:
    return httpx.Timeout(CONNECT_TIMEOUT, read=seconds + ANSWER_MARGIN, pool=pool)


def httpx_options(settings: ServeSettings) -> dict[str, Any]:
    """The client's pool, if not httpx's own (100 connections, 20 of them kept alive)."""
    size = settings.pool_size
    return {"limits": httpx.Limits(max_connections=size, max_keepalive_connections=size)} if size else {}


class Call:
    """One call's connection, as the trace sees it: when it was had, and whether."""

    __slots__ = ("events", "started", "using")

    def __init__(self, events: Events) -> None:
        self.events = events
        self.started = time.perf_counter()
        self.using = False

    def traced(self, name: str) -> None:
        if not self.using and name.endswith(SENDING):
            self.using = True
            self.events.dependency_acquired(time.perf_counter() - self.started)

    def done(self) -> None:
        if self.using:
            self.events.dependency_released()


class ThreadHttpx:
    """httpx's ``Client``, shared by the threads."""

    def __init__(self, settings: ServeSettings, events: Events) -> None:
        self.events, self.pool_timeout = events, settings.pool_timeout
        self.client = httpx.Client(base_url=settings.downstream_url, **httpx_options(settings))
        self.failures = Failures("the downstream service", events)
        events.dependency_pool(pool_size(settings))

    def call(self, seconds: float) -> None:
        call = Call(self.events)

        def trace(name: str, info: dict[str, Any]) -> None:
            call.traced(name)

        try:
            response = self.client.get(
                downstream_path(seconds),
                timeout=timeouts(seconds, self.pool_timeout),
                extensions={"trace": trace},
            )
        except httpx.HTTPError as exc:
            raise self.failures.failed(httpx_kind(exc), exc) from None
        finally:
            call.done()
        checked(response.status_code, self.failures)

    def close(self) -> None:
        self.client.close()


class LoopHttpx:
    """httpx's ``AsyncClient``, on the loop."""

    def __init__(self, settings: ServeSettings, events: Events) -> None:
        self.settings, self.events, self.pool_timeout = settings, events, settings.pool_timeout
        self.client: httpx.AsyncClient | None = None
        self.failures = Failures("the downstream service", events)
        events.dependency_pool(pool_size(settings))

    async def open(self) -> None:
        settings = self.settings
        self.client = httpx.AsyncClient(base_url=settings.downstream_url, **httpx_options(settings))

    async def call(self, seconds: float) -> None:
        client = self.client
        assert client is not None, "open() first"
        call = Call(self.events)

        async def trace(name: str, info: dict[str, Any]) -> None:
            call.traced(name)

        try:
            response = await client.get(
                downstream_path(seconds),
                timeout=timeouts(seconds, self.pool_timeout),
                extensions={"trace": trace},
            )
        except httpx.HTTPError as exc:
            raise self.failures.failed(httpx_kind(exc), exc) from None
        finally:
            call.done()
        checked(response.status_code, self.failures)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()
