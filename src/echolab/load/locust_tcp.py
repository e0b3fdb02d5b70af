"""The Locust user for the TCP echo servers: the line protocol, on sockets gevent makes cooperative.

It speaks the protocol through :class:`echolab.load.client.EchoClient`.
Importing this module imports Locust (see :mod:`echolab.load.locust_plugin`).
"""

from __future__ import annotations

import time
from functools import partial
from typing import ClassVar

import gevent
from locust import User, task
from locust.env import Environment

from ..catalogue import server
from ..protocol import sample_message
from .client import EchoClient, failure_kind
from .locust_args import server_address
from .locust_metrics import client_metrics
from .open_loop import Arrivals


class ReadTimeout(TimeoutError):
    """No whole reply within ``--read-timeout`` of starting the request (connecting included)."""

    def __init__(self) -> None:
        super().__init__("timed out")


class EchoUser(User):
    """A user of one TCP echo server (``server``): one request per task, as fast as ``--think-time`` allows.

    ``lines`` keeps one connection per user; after any error EchoClient drops
    it and the next request reconnects. ``oneshot`` connects per request.
    Every request fires Locust's request event (type = the framing, name = the
    server) and updates the client-side metrics. In an open loop
    (``--target-rps``, :mod:`echolab.load.open_loop`) each request in flight
    has a connection of its own, kept for the next one as in ``lines``.
    """

    abstract = True
    server: ClassVar[str]

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.client: EchoClient | None = None
        self.think_time = 0.0
        self.arrivals: Arrivals | None = None
        self._idle: list[EchoClient] = []  # open loop: connections between requests

    def wait_time(self) -> float:
        return self.think_time if self.arrivals is None else self.arrivals.wait()

    def on_start(self) -> None:
        options = self.environment.parsed_options
        host, port = server_address(options, server(self.server))
        framing = options.framing
        # No socket timeout for reads: gevent pays for one with a Timeout object per blocking read.
        # One timer per user, armed for each request, costs a fraction of that.
        self._new_client = partial(EchoClient, host, port, framing, options.connect_timeout, timeout=None)
        self.client = self._new_client()
        # A repeating timer, (re)armed with again(): libev's stop() keeps only
        # the time *remaining*, so a plain timer restarted after stop() fires
        # earlier each request, and a fired one fires at once on its next start.
        self._deadline = gevent.get_hub().loop.timer(options.read_timeout, options.read_timeout)
        self._throw = gevent.getcurrent().throw  # on_start runs in the user's greenlet
        self.think_time = options.think_time
        self.message = sample_message(options.message_size)
        self._tally = client_metrics().tallies[self.server]
        self._fire = self.environment.events.request.fire
        self._framing = framing
        self._read_timeout = options.read_timeout
        self.arrivals = Arrivals.of(self, self._send_scheduled, framing, framing)
        if self.arrivals is not None:
            self.arrivals.start()

    def on_stop(self) -> None:
        if self.arrivals is not None:
            self.arrivals.stop()
        for client in self._idle:
            client.close()
        if self.client is not None:
            self.client.close()
            self._deadline.close()

    @task
    def echo(self) -> None:
        if self.arrivals is not None:
            self.arrivals.arrive()
            return
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

    def _send_scheduled(self, scheduled: float) -> None:
        """One open-loop request, in its own greenlet, timed from when it was due."""
        client = self._idle.pop() if self._idle else self._new_client()
        try:
            with gevent.Timeout(self._read_timeout, ReadTimeout()):
                reply = client.request(self.message)
        except Exception as exc:
            self._record(time.perf_counter() - scheduled, 0, exc)
        else:
            self._record(time.perf_counter() - scheduled, len(reply), None)
        finally:
            self._idle.append(client)

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
