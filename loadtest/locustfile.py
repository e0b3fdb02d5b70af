"""Locust users for the echo servers: ``locust -f loadtest/locustfile.py``.

One user class per server of echolab's catalogue (ThreadedUser, AsyncUser,
ThreadedHttpUser, AsyncHttpUser), so Locust's stats, charts and the
client-side metrics keep them apart. Locust runs every class it finds unless
told which (``--class-picker`` in the web UI, or class names on the command
line). The protocol, the arguments (host/port of each server, framing,
message size, think time, timeouts) and the /metrics endpoint come from
:mod:`echolab.load.locust_plugin`. Load shapes are separate locustfiles
(``step_ramp.py``, ``spike.py``), added with ``-f`` when wanted: Locust uses
any shape class it finds in a locustfile, for whichever users run.
"""

from echolab.load.locust_plugin import setup, user_classes

setup()
globals().update(user_classes())
