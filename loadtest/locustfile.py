"""Locust users for the two echo servers: ``locust -f loadtest/locustfile.py``.

One user class per server, so Locust's stats, charts and the client-side
metrics keep them apart. The protocol, the arguments (host/port of each
server, framing, message size, think time, timeouts) and the /metrics
endpoint come from :mod:`echolab.loadgen`. Load shapes are separate
locustfiles (``step_ramp.py``, ``spike.py``), added with ``-f`` when wanted:
Locust uses any shape class it finds in a locustfile.
"""

from echolab.loadgen import EchoUser, setup

setup()


class ThreadedEchoUser(EchoUser):
    """Loads the threaded server (``--threaded-host``/``--threaded-port``)."""

    target = "threaded"


class AsyncEchoUser(EchoUser):
    """Loads the async server (``--async-host``/``--async-port``)."""

    target = "async"
