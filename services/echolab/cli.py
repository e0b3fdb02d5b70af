"""``echolab`` command line: serve, bench, config."""

from __future__ import annotations

import argparse
import sys

from . import __version__, config
from .runtime import raise_fd_limit, setup_logging

SERVE_COMMON = ("host", "port", "metrics_port", "metrics", "delay_ms", "framing",
                "max_message_bytes", "idle_timeout", "max_connections", "backlog",
                "drain_timeout", "log_level")
BENCH = ("connections", "duration", "requests", "warmup", "rate", "message_size",
         "delay_hint_ms", "timeout")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="echolab", description=__doc__)
    parser.add_argument("--version", action="version", version=f"echolab {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run an echo server")
    servers = serve.add_subparsers(dest="server", required=True)
    threaded = servers.add_parser("threaded", help="socketserver: serial, thread-per-connection, pool")
    config.add_arguments(threaded, (*SERVE_COMMON, "model", "threads"))
    asynchronous = servers.add_parser("async", help="asyncio Protocol on uvloop or asyncio")
    config.add_arguments(asynchronous, (*SERVE_COMMON, "loop"))

    bench = commands.add_parser("bench", help="load an echo server and report what the client saw")
    bench.add_argument("target", metavar="HOST:PORT")
    bench.add_argument("--framing", choices=config.FRAMINGS, default="lines")
    bench.add_argument("--json", action="store_true", help="print the result as JSON")
    config.add_arguments(bench, BENCH)

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
            from . import threaded_server

            return threaded_server.run(args)
        from . import async_server

        return async_server.run(args)
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
