"""``echolab`` command line: serve, bench, config."""

from __future__ import annotations

import argparse
import sys

from . import __version__, config
from .runtime import log, raise_fd_limit, setup_logging

SERVE_COMMON = (
    "host",
    "port",
    "metrics_port",
    "metrics",
    "delay_ms",
    "framing",
    "max_message_bytes",
    "idle_timeout",
    "max_connections",
    "backlog",
    "drain_timeout",
    "log_level",
)
# The HTTP servers: no framing (HTTP frames), no model or loop (fixed by the gunicorn worker class).
SERVE_HTTP = (*(name for name in SERVE_COMMON if name != "framing"), "workers")
BENCH = (
    "framing",
    "connections",
    "duration",
    "requests",
    "warmup",
    "rate",
    "message_size",
    "delay_hint_ms",
    "timeout",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="echolab", description=__doc__)
    parser.add_argument("--version", action="version", version=f"echolab {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run an echo server")
    servers = serve.add_subparsers(dest="server", required=True)
    threaded = servers.add_parser("threaded", help="socketserver: serial, thread-per-connection, pool")
    config.add_arguments(threaded, "serve", (*SERVE_COMMON, "model", "threads"))
    asynchronous = servers.add_parser("async", help="asyncio Protocol on uvloop or asyncio")
    config.add_arguments(asynchronous, "serve", (*SERVE_COMMON, "loop"))
    threaded_http = servers.add_parser("threaded-http", help="WSGI on gunicorn gthread workers")
    config.add_arguments(threaded_http, "serve", (*SERVE_HTTP, "http_threads"))
    async_http = servers.add_parser("async-http", help="ASGI on gunicorn + uvicorn-worker (uvloop)")
    config.add_arguments(async_http, "serve", SERVE_HTTP)

    bench = commands.add_parser("bench", help="load an echo server and report what the client saw")
    bench.add_argument("target", metavar="HOST:PORT")
    bench.add_argument("--json", action="store_true", help="print the result as JSON")
    config.add_arguments(bench, "bench", BENCH)

    demo = commands.add_parser("demo", help="sweep every server through rising concurrency, write a report")
    from .demo import add_arguments as add_demo_arguments

    add_demo_arguments(demo)

    settings = commands.add_parser("config", help="print the settings table")
    settings.add_argument("--markdown", action="store_true", help="as the README's Markdown table")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        setup_logging(args.log_level, args.server)
        raise_fd_limit()
        if args.server == "threaded":
            from .threaded_server import run
        elif args.server == "async":
            from .async_server import run
        else:
            from .http_server import run
        try:
            return run(args)
        except OSError as exc:  # a port in use, an address not on this host...
            log.error("cannot start: %s", exc)
            return 1
    if args.command == "bench":
        raise_fd_limit()
        from . import bench

        return bench.main(args)
    if args.command == "demo":
        raise_fd_limit()
        from . import demo

        return demo.run(args)
    if args.command == "config":
        print(config.markdown_table())
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
