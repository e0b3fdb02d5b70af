"""``--io http --http-client requests``: each request's call through requests' ``Session``, in threads.

urllib3's pool keeps 10 connections per host and never waits: past them it
opens another and drops it afterwards ("Connection pool is full"). In a
module of its own, imported only when chosen (:mod:`echolab.interpreters`).
"""

from __future__ import annotations

import requests

from ..settings import ServeSettings
from .dependency import ANSWER_MARGIN, CONNECT_TIMEOUT, Events, Failures, checked, downstream_path, pool_size


class ThreadRequests:
    """requests' ``Session``, shared by the threads."""

    def __init__(self, settings: ServeSettings, events: Events) -> None:
        self.events, self.base = events, settings.downstream_url.rstrip("/")
        self.session = requests.Session()
        if settings.pool_size:
            adapter = requests.adapters.HTTPAdapter(pool_maxsize=settings.pool_size)
            self.session.mount("http://", adapter)
        self.failures = Failures("the downstream service", events)
        events.dependency_pool(pool_size(settings))

    def call(self, seconds: float) -> None:
        self.events.dependency_acquired(0.0)  # its pool never waits: it opens another connection
        try:
            answer = (CONNECT_TIMEOUT, seconds + ANSWER_MARGIN)
            response = self.session.get(self.base + downstream_path(seconds), timeout=answer)
        except requests.exceptions.RequestException as exc:
            if isinstance(exc, requests.exceptions.ConnectTimeout | requests.exceptions.ReadTimeout):
                kind = "timeout"
            else:
                kind = "connect" if isinstance(exc, requests.exceptions.ConnectionError) else "query"
            raise self.failures.failed(kind, exc) from None
        finally:
            self.events.dependency_released()
        checked(response.status_code, self.failures)

    def close(self) -> None:
        self.session.close()
