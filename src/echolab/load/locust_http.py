"""The Locust user for the HTTP echo servers: Locust's FastHttpUser, checked and counted like the TCP user.

Each task is one ``POST /echo`` on the user's kept-alive connection
(geventhttpclient, which costs the load generator a fraction of what
python-requests does). The reply must be the transformed message: a wrong
body is a failure of kind ``wrong_reply``; any status but 200 (413 for a
message over the server's limit, 503 over its concurrency limit, 5xx) one
of kind ``server_error``; the network's errors keep the kinds the TCP user
gives them (``timeout``, ``refused``, ``reset``, ``closed``). Every request
lands in the same client-side metrics as the TCP user's
(:mod:`echolab.load.locust_metrics`), with ``framing="http"``; Locust's own stats show
it as ``POST <server>``.

Importing this module imports Locust (see :mod:`echolab.load.locust_plugin`).
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

from geventhttpclient.response import HTTPConnectionClosed
from locust import task
from locust.contrib.fasthttp import FastHttpUser, ResponseContextManager
from locust.env import Environment

from ..catalogue import BY_NAME
from ..protocol import HTTP_PATH, expected_reply, sample_message
from .client import ServerError, WrongReply, failure_kind
from .locust_args import target_url
from .locust_metrics import client_metrics
from .open_loop import Arrivals, rate_per_user

FRAMING = "http"


def http_failure_kind(exc: Exception) -> str:
    """``client.failure_kind``, plus geventhttpclient's own word for a connection closed early.

    geventhttpclient reports a close, and a reset, before the first byte of
    a response as HTTPConnectionClosed: both are ``closed`` here.
    """
    if isinstance(exc, HTTPConnectionClosed):
        return "closed"
    return failure_kind(exc)


def network_error(exc: Exception) -> Exception:
    """The error itself, not geventhttpclient's wrapper around it.

    For a POST, which it never retries, geventhttpclient reports a timeout
    (and a few other socket errors) as ``RetriesExceeded`` with the real
    error in ``original``: unwrapped, the kind and Locust's failure table
    name what happened.
    """
    original = getattr(exc, "original", None)
    return original if isinstance(original, Exception) else exc


class HttpEchoUser(FastHttpUser):
    """A user of one HTTP echo server (``server``): a ``POST /echo`` per task, paced by ``--think-time``.

    The server's address comes from ``--<server>-host``/``--<server>-port``
    (Locust's ``--host`` is not used, as for the TCP users);
    ``--connect-timeout`` and ``--read-timeout`` become FastHttpUser's
    ``connection_timeout`` and ``network_timeout``.
    """

    abstract = True
    server: ClassVar[str]

    def __init__(self, environment: Environment) -> None:
        options = environment.parsed_options
        assert options is not None, "the HTTP users take their settings from Locust's arguments"
        # FastHttpUser builds its session from these in its __init__, so they are set first. The
        # class's host says the same, but Locust overwrites it with a --host given for every class.
        self.host = target_url(options, BY_NAME[self.server])
        self.connection_timeout = options.connect_timeout
        self.network_timeout = options.read_timeout
        if rate_per_user(options):  # open loop: a connection per request in flight, from the session's pool
            self.concurrency = options.max_inflight
        super().__init__(environment)
        self.think_time: float = options.think_time
        self.message = sample_message(options.message_size)
        self.expected = expected_reply(self.message, FRAMING)
        self._tally = client_metrics().tallies[self.server]
        self.arrivals = Arrivals.of(self, self.post, "POST", FRAMING)

    def wait_time(self) -> float:
        return self.think_time if self.arrivals is None else self.arrivals.wait()

    def on_start(self) -> None:
        if self.arrivals is not None:
            self.arrivals.start()

    def on_stop(self) -> None:
        if self.arrivals is not None:
            self.arrivals.stop()

    @task
    def echo(self) -> None:
        if self.arrivals is None:
            self.post()
        else:
            self.arrivals.arrive()

    def post(self, scheduled: float | None = None) -> None:
        """One request; timed from ``scheduled`` (open loop: when it was due) if given."""
        # Bytes go out as they are; Locust's annotation of `data` lists only str and dict.
        data: Any = self.message
        with self.client.post(HTTP_PATH, data=data, name=self.server, catch_response=True) as response:
            failure = self.check(response)
            if failure is not None:
                response.failure(failure)  # Locust's request event fires as the block ends
            if scheduled is not None:
                response.request_meta["response_time"] = (time.perf_counter() - scheduled) * 1000.0
            elapsed = response.request_meta["response_time"] / 1000.0
            self._tally.add(FRAMING, elapsed, None if failure is None else http_failure_kind(failure))

    def check(self, response: ResponseContextManager) -> Exception | None:
        """What went wrong with this request; None if the reply is right."""
        status = response.status_code  # 0: no response at all
        if status not in (0, 200):
            return ServerError(f"HTTP {status}")
        error: Exception | None = response.request_meta["exception"]
        if error is not None:
            return network_error(error)
        body = response.content or b""
        if body != self.expected:
            return WrongReply(f"sent {self.message[:40]!r}, got {body[:40]!r}")
        return None
