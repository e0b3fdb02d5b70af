"""Locust's arguments for the echo servers: what a locustfile's users read to find and load them.

Each server of the catalogue has a target (``--<server>-host``, ``--<server>-port``); the
others are load parameters. Importing this module does not import Locust.
"""

from __future__ import annotations

from typing import Any

from .. import ports
from ..catalogue import SERVERS, Server
from ..settings import FRAMINGS, BenchSettings

ALPHABET = b"abcdefghijklmnopqrstuvwxyz0123456789"


def framings(server: Server) -> tuple[str, ...]:
    """What the users of ``server`` can speak."""
    return ("http",) if server.transport == "http" else FRAMINGS


def add_arguments(parser: Any) -> None:
    """Register the custom arguments (a listener of ``events.init_command_line_parser``).

    The web UI turns each into a form field and converts what is typed there
    with ``type(default)``, so float settings need float defaults.
    """
    # Not an argument group: only the parser's own add_argument marks arguments for the web UI.

    def add(flag: str, default: Any, text: str, **kwargs: Any) -> None:
        env = "LOCUST_" + flag.lstrip("-").replace("-", "_").upper()
        parser.add_argument(
            flag,
            default=default,
            env_var=env,
            type=type(default),
            help=f"{text} (env {env}; default {default!r})",
            **kwargs,
        )

    # The targets are not web UI fields: whoever starts Locust fixes them (see locust_web).
    for server in SERVERS:
        add(f"--{server.name}-host", "127.0.0.1", f"{server.name} server's address", include_in_web_ui=False)
        add(f"--{server.name}-port", server.port, f"{server.name} server's port", include_in_web_ui=False)
    add(
        "--framing",
        "lines",
        "TCP users: lines, one persistent connection per user; oneshot, a connection per request "
        "(HTTP users keep one connection alive)",
        choices=FRAMINGS,
    )
    add("--message-size", BenchSettings.message_size, "request size in bytes, newline excluded")
    add("--think-time", 0.0, "seconds each user waits between requests")
    add("--connect-timeout", 5.0, "seconds to wait for a connection")
    add(
        "--read-timeout",
        BenchSettings.timeout,
        "seconds a request may take to be answered (TCP users: connecting included; "
        "HTTP users: each read, which for an echo is the wait for the reply)",
    )
    add("--metrics-host", "0.0.0.0", "address of this process's Prometheus /metrics", include_in_web_ui=False)
    add(
        "--metrics-port",
        ports.LOCUST_METRICS,
        "port of this process's Prometheus /metrics; if taken, the next free one (0: any free port)",
        include_in_web_ui=False,
    )


def server_address(options: Any, server: str) -> tuple[str, int]:
    """The host and port the arguments give for ``server`` (``--threaded-http-host`` ...)."""
    prefix = server.replace("-", "_")
    return getattr(options, f"{prefix}_host"), getattr(options, f"{prefix}_port")


def target_url(options: Any, server: Server) -> str:
    """Where ``server``'s users send their requests, as a URL: ``tcp://async:9090``, ``http://...``."""
    host, port = server_address(options, server.name)
    scheme = "http" if server.transport == "http" else "tcp"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def make_message(size: int) -> bytes:
    """A request of ``size`` bytes, lower case, so a server that does not transform it is caught."""
    return (ALPHABET * (size // len(ALPHABET) + 1))[:size]
