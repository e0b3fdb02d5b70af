"""The ``echolab`` command: serve, bench, demo, benchmark, config."""

from __future__ import annotations

import argparse
import importlib
import sys
import textwrap
from typing import NoReturn

from . import __version__, catalogue, settings
from .runtime import log, raise_fd_limit, setup_logging

DESCRIPTION = """\
Threads or asyncio, and where does each one break? Echo servers, a load
client and a lab that measures them.

examples:
  echolab serve async                      the async server on 127.0.0.1:9091
  echolab bench 127.0.0.1:9091 --connections 1000
  echolab demo --quick                     every server, a sweep, an HTML report
  echolab config                           every setting, its env var and default
"""

EXAMPLES = {
    "serve": "echolab serve threaded --model pool --threads 32\n"
    "ECHO_DELAY_MS=20 echolab serve async --loop asyncio\n"
    "echolab serve async --api protocol --cpu-ms 2 --blocking-ms 20 --offload thread",
    "bench": "echolab bench 127.0.0.1:9091 --connections 1000 --duration 5\n"
    "echolab bench 127.0.0.1:9093 --framing http --rate 2000 --json",
    "demo": "echolab demo --quick\necholab demo --servers threaded,async --levels 100,1000,5000",
    "benchmark": "echolab benchmark --only async --duration 3\n"
    "echolab benchmark --scenario cpu,blocking,offload --duration 3",
    "config": "echolab config --markdown > table.md",
}


class Parser(argparse.ArgumentParser):
    """Plain-text help with examples; a mistake is one line on stderr and exit status 2."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def examples(command: str) -> str:
    return "examples:\n" + textwrap.indent(EXAMPLES[command], "  ")


def build_parser() -> Parser:
    parser = Parser(prog="echolab", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"echolab {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve", help="run an echo server", description="Run one echo server until SIGTERM or Ctrl-C.",
        epilog=examples("serve"),
    )  # fmt: skip
    servers = serve.add_subparsers(dest="server", required=True, metavar="SERVER")
    for server in catalogue.SERVERS:
        sub = servers.add_parser(
            server.name, help=server.summary, description=server.summary, epilog=examples("serve")
        )
        defaults = {"port": server.port, "metrics_port": server.metrics_port}
        settings.add_arguments(sub, server.settings, defaults=defaults)

    bench = commands.add_parser(
        "bench", help="load an echo server and report what the client saw", epilog=examples("bench"),
        description="An asyncio load client: closed loop by default, open loop with --rate.",
    )  # fmt: skip
    bench.add_argument("target", metavar="HOST:PORT", help="the server, e.g. 127.0.0.1:9091")
    bench.add_argument("--json", action="store_true", help="print the result as JSON")
    settings.add_arguments(bench, settings.BenchSettings)

    demo = commands.add_parser(
        "demo", help="sweep every server through rising concurrency, write a report", epilog=examples("demo"),
        description="Start every server natively, load each at rising concurrency, print verdicts, "
        "write reports/demo-<time>/index.html.",
    )  # fmt: skip
    settings.add_arguments(demo, settings.DemoSettings)

    benchmark = commands.add_parser(
        "benchmark", help="the full benchmark (make bench): every server, references, paired rounds",
        epilog=examples("benchmark"), description="The full benchmark; writes reports/bench-<time>.json.",
    )  # fmt: skip
    settings.add_arguments(benchmark, settings.BenchmarkSettings)

    config = commands.add_parser(
        "config", help="print every setting: flag, env var, default", epilog=examples("config"),
        description="Print the table of every setting (the README's is generated from it).",
    )  # fmt: skip
    config.add_argument("--markdown", action="store_true", help="as the README's Markdown table")
    config.add_argument("--metrics", action="store_true", help="the metrics table instead")
    return parser


def serve(args: argparse.Namespace) -> int:
    server = catalogue.server(args.server)
    server_settings = settings.from_namespace(server.settings, args)
    setup_logging(server_settings.log_level, server.name)
    raise_fd_limit()
    module = importlib.import_module(server.module)
    try:
        code: int = module.run(server, server_settings)
    except OSError as exc:  # a port in use, an address not on this host...
        log.error("cannot start: %s", exc.strerror or exc)
        return 2
    return code


def main(argv: list[str] | None = None) -> int:
    try:
        return run(build_parser().parse_args(argv))
    except settings.SettingError as exc:  # a bad value in the environment
        print(f"echolab: error: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    if args.command == "serve":
        return serve(args)
    if args.command == "bench":
        from .load import bench

        raise_fd_limit()
        return bench.main(args.target, settings.from_namespace(settings.BenchSettings, args), args.json)
    if args.command == "demo":
        from .lab import demo

        raise_fd_limit()
        return demo.run(settings.from_namespace(settings.DemoSettings, args))
    if args.command == "benchmark":
        from .lab import benchmark

        raise_fd_limit()
        return benchmark.run(settings.from_namespace(settings.BenchmarkSettings, args))
    from . import docs

    print(docs.metrics_table() if args.metrics else docs.config_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
