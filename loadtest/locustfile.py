"""Locust users for the echo servers: ``locust -f loadtest/locustfile.py``.

One user class per server, so Locust's stats, charts and the client-side
metrics keep them apart: two TCP users and two HTTP users (FastHttpUser).
Locust runs every class it finds unless told which (``--class-picker`` in
the web UI, or class names on the command line). The protocol, the
arguments (host/port of each server, framing, message size, think time,
timeouts) and the /metrics endpoint come from :mod:`echolab.loadgen`.
Load shapes are separate locustfiles (``step_ramp.py``, ``spike.py``),
added with ``-f`` when wanted: Locust uses any shape class it finds in a
locustfile, for whichever users run.
"""

from echolab.loadgen import EchoUser, setup
from echolab.loadgen_http import HttpEchoUser

setup()


class ThreadedEchoUser(EchoUser):
    """Loads the threaded server (``--threaded-host``/``--threaded-port``)."""

    target = "threaded"


class AsyncEchoUser(EchoUser):
    """Loads the async server (``--async-host``/``--async-port``)."""

    target = "async"


class ThreadedHttpUser(HttpEchoUser):
    """Loads the threaded-http server (``--threaded-http-host``/``--threaded-http-port``): POST /echo."""

    target = "threaded-http"


class AsyncHttpUser(HttpEchoUser):
    """Loads the async-http server (``--async-http-host``/``--async-http-port``): POST /echo."""

    target = "async-http"
