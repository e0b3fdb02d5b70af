"""Bench only: a TCP server with some of its protections turned off, to measure what each costs.

``make bench`` runs each TCP server with one protection off at a time
against the bare server of its kind (:mod:`.bare`), and prints what each
costs. The switch is an environment variable, not a setting: nobody should
run a server this way, so it is in no ``--help``, no table of settings and
no container's environment, and a server started with it says so in its log.

* ``deadlines``: no sweep (event loop) or sweeper thread (threaded): idle,
  trickling and not-reading clients are never ended.
* ``work``: the request's IO slept or awaited alone, as a bare server does it,
  uncounted: no CPU or blocking step, no ``echo_work_seconds_total``.

Metrics have their own setting (``--no-metrics``). The limits cost a check
per connection (``--max-connections``) and the stream's or framer's own
bound on a line, nothing per request, so they have no switch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from ..runtime import log
from ..settings import SettingError

ENV = "ECHOLAB_BENCH_WITHOUT"
PROTECTIONS = ("deadlines", "work")


def turned_off(environ: Mapping[str, str] = os.environ) -> frozenset[str]:
    """The protections ``ENV`` turns off (logged as a warning); SettingError for an unknown one."""
    names = frozenset(name for name in environ.get(ENV, "").replace(" ", "").split(",") if name)
    unknown = sorted(names.difference(PROTECTIONS))
    if unknown:
        raise SettingError(f"{ENV}: no protection {', '.join(unknown)}: choose from {', '.join(PROTECTIONS)}")
    if names:
        log.warning("bench only (%s): running without %s", ENV, ", ".join(sorted(names)))
    return names
