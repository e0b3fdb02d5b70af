"""The Locust user for the TCP echo servers: the line protocol, on sockets gevent makes cooperative.

It speaks the protocol through :class:`echolab.load.client.EchoClient`.
Importing this module imports Locust (see :mod:`echolab.load.locust_plugin`).
"""

from __future__ import annotations

import time
from typing import ClassVar

import gevent
from locust import User, task
from locust.env import Environment

from .client import EchoClient, failure_kind
from .locust_plugin import client_metrics, make_message, server_address


class ReadTimeout(TimeoutError):
    """No whole reply within ``--read-timeout`` of starting the request (connecting included)."""

    def __init__(self) -> None:
        super().__init__("timed out")


class EchoUser(User):
    """A user of one TCP echo server (``server``): one request per task, as fast as ``--think-time`` allows.

    ``lines`` keeps one connection per user; after any error EchoClient drops
    it and the next request reconnects. ``oneshot`` connects per request.
    Every request fires Locust's request event (type = the framing, name = the
    server) and updates the client-side metrics.
    """

    abstract = True
    server: ClassVar[str]

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.client: EchoClient | None = None
        self.think_time = 0.0

    def wait_time(self) -> float:
        return self.think_time

    def on_start(self) -> None:
        options = self.environment.parsed_options
        host, port = server_address(options, self.server)
        framing = options.framing
        # No socket timeout for reads: gevent pays for one with a Timeout object per blocking read.
        # One timer per user, armed for each request, costs a fraction of that.
        self.client = EchoClient(host, port, framing, options.connect_timeout, timeout=None)
        # A repeating timer, (re)armed with again(): libev's stop() keeps only
        # the time *remaining*, so a plain timer restarted after stop() fires
        # earlier each request, and a fired one fires at once on its next start.
        self._deadline = gevent.get_hub().loop.timer(options.read_timeout, options.read_timeout)
        self._throw = gevent.getcurrent().throw  # on_start runs in the user's greenlet
        self.think_time = options.think_time
        self.message = make_message(options.message_size)
        self._tally = client_metrics().tallies[self.server]
        self._fire = self.environment.events.request.fire
        self._framing = framing

    def on_stop(self) -> None:
        if self.client is not None:
            self.client.close()
            self._deadline.close()

    @task
    def echo(self) -> None:
        client, deadline = self.client, self._deadline
        assert client is not None
        started = time.perf_counter()
        try:
            deadline.again(self._throw, ReadTimeout)
            try:
                reply = client.request(self.message)
            finally:
                deadline.stop()
        except Exception as exc:
            self._record(time.perf_counter() - started, 0, exc)
            return
        self._record(time.perf_counter() - started, len(reply), None)

    def _record(self, elapsed: float, length: int, exc: Exception | None) -> None:
        framing = self._framing
        self._tally.add(framing, elapsed, None if exc is None else failure_kind(exc))
        self._fire(
            request_type=framing,
            name=self.server,
            response_time=elapsed * 1000.0,
            response_length=length,
            exception=exc,
        )
