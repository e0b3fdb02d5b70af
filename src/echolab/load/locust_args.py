"""Locust's arguments for the echo servers: what a locustfile's users read to find and load them.

They are settings like every other (settings.LocustSettings, and each
server's target, ``--<server>-host`` and ``--<server>-port``), registered on
Locust's own parser. Importing this module does not import Locust.
"""

from __future__ import annotations

from typing import Any

from ..catalogue import SERVERS, Server
from ..settings import LocustSettings, Settings, argparse_type, options


def add_arguments(parser: Any, cls: type[Settings] = LocustSettings) -> None:
    """Register the settings of ``cls`` on Locust's parser (a listener of ``init_command_line_parser``).

    For :class:`LocustSettings`, each server's target too. Locust reads each
    as a flag or its variable; those marked ``web_ui`` are fields of its web
    UI, labelled with their help, which converts what is typed there with
    ``type(default)``: a float setting's default is a float. The rest are
    fixed by whoever starts Locust (see :mod:`.locust_web`).
    """
    targets = [o for server in SERVERS for o in server.locust_target] if cls is LocustSettings else []
    # Not an argument group: only the parser's own add_argument marks arguments for the web UI.
    for option in (*targets, *options(cls)):
        default = option.describe_default(option.default)
        parser.add_argument(
            option.flag,
            dest=option.name,
            default=option.default,
            env_var=option.env,
            type=argparse_type(option),
            choices=option.spec.choices or None,
            include_in_web_ui=option.spec.web_ui,
            # The form shows the help after the field's name, cut at the field's width; the
            # field shows the value, and the variable is docs/locust.md's.
            help=option.spec.help
            if option.spec.web_ui
            else f"{option.spec.help} (env {option.env}; default {default})",
        )


def server_address(options: Any, server: Server) -> tuple[str, int]:
    """The host and port the arguments give for ``server`` (``--threaded-http-host`` ...)."""
    host, port = server.locust_target
    return getattr(options, host.name), getattr(options, port.name)


def target_url(options: Any, server: Server) -> str:
    """Where ``server``'s users send their requests, as a URL: ``tcp://async:9090``, ``http://...``."""
    host, port = server_address(options, server)
    scheme = server.transport.value
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"
