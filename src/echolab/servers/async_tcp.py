"""The async TCP server: one event loop (uvloop or asyncio), through one of two APIs.

* ``--api streams`` (:mod:`.async_streams`): a coroutine per connection on
  ``asyncio.start_server``, awaiting each request's IO: the code applications have.
* ``--api protocol`` (:mod:`.async_protocol`): an ``asyncio.Protocol`` with
  callbacks and coalesced timers: the tuned variant, what the first leaves on the table.

Both keep the same promises (docs/server-behavior.md), through the machinery
they share in :mod:`.event_loop`.
"""

from __future__ import annotations

import asyncio
import logging

from .. import metrics as metrics_module
from ..catalogue import Server
from ..settings import AsyncSettings
from . import async_protocol, async_streams, protections, work_model
from .event_loop import StartServer, serve

APIS: dict[str, StartServer] = {"streams": async_streams.start, "protocol": async_protocol.start}


def run(server: Server, settings: AsyncSettings) -> int:
    off = protections.turned_off()
    info = {
        "api": settings.api,
        "loop": settings.loop,
        "framing": settings.framing,
        **work_model.info(settings),
    }
    metrics, metrics_port = metrics_module.start(
        server, info, settings.metrics, settings.host, settings.metrics_port, cgroup_root=settings.cgroup_root
    )
    main = serve(settings, metrics, metrics_port, APIS[settings.api], off)
    if settings.loop == "uvloop":
        import uvloop

        uvloop.run(main)
    else:
        asyncio.run(main)
    logging.shutdown()
    return 0
