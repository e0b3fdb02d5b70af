"""The ``echolab`` command: serve, downstream, bench, demo, compare, suite, report, soak, config,
scenario."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import textwrap
from collections.abc import Callable
from typing import NoReturn

from . import __version__, catalogue, interpreters, ports, settings
from .runtime import log, raise_fd_limit, setup_logging, watch_start
from .scenarios import SCENARIOS

DESCRIPTION = """\
Threads or asyncio, and where does each one break? Echo servers, a load
client and a lab that measures them.

examples:
  echolab serve async                      the async server on 127.0.0.1:9091
  echolab bench 127.0.0.1:9091 --connections 1000
  echolab demo --quick                     every server, a sweep, an HTML report
  echolab report                           the stack's dashboards over the last load-test run
  echolab compare reports/demo-A reports/demo-B   two runs in one report
  echolab config                           every setting, its env var and default
  echolab scenario blocking                the stack's servers' variables for a scenario
"""

EXAMPLES = {
    "serve": "echolab serve threaded --model pool --threads 32\n"
    "ECHO_DELAY_MS=20 echolab serve async --loop asyncio\n"
    "echolab serve async --api protocol --cpu-ms 2 --blocking-ms 20 --offload thread",
    "bench": "echolab bench 127.0.0.1:9091 --connections 1000 --duration 5\n"
    "echolab bench 127.0.0.1:9091 --rate 5000 --connections 1000    open loop: 5,000 req/s offered\n"
    "echolab bench 127.0.0.1:9093 --framing http --json",
    "demo": "echolab demo --quick\n"
    "echolab demo --scenario io --servers threaded,async --levels 100,1000,5000\n"
    "echolab demo --no-open-loop --other-levels 10,100",
    "compare": "echolab compare reports/demo-20260101-120000 reports/demo-20260102-120000\n"
    "echolab compare before.json after.json    two `echolab bench --json` results",
    "suite": "echolab suite --only async --duration 3\n"
    "echolab suite --scenario cpu,blocking,offload --duration 3",
    "soak": "echolab soak --duration 60 --interval 10",
    "config": "echolab config --markdown > table.md",
    "downstream": f"echolab downstream                   GET /delay/<ms> on 127.0.0.1:{ports.DOWNSTREAM}, "
    f"metrics on :{ports.DOWNSTREAM_METRICS}\n"
    f"echolab bench 127.0.0.1:{ports.DOWNSTREAM} --framing http --path /delay/100 --connections 2000",
    "scenario": "echolab scenario blocking\n"
    "env $(echolab scenario blocking) docker compose up --detach --no-deps --force-recreate --wait \\\n"
    "  $(echolab scenario blocking --services)       what `make scenario NAME=blocking` runs",
    "report": "echolab report                               the last load-test run, the stack's Prometheus\n"
    "echolab report --since 15m                    the last 15 minutes instead\n"
    f"echolab report --prometheus http://127.0.0.1:{ports.PROMETHEUS_HOST} --since 2h   named; the last 2 h",
}


# `echolab suite` was `echolab benchmark`, too close to `echolab bench`, the load client: the old
# name still runs it, for one release.
OLD_SUITE = "benchmark"
OLD_SUITE_NOTICE = (
    "echolab: `echolab benchmark` is now `echolab suite` (and ECHO_BENCHMARK_* is ECHO_SUITE_*); "
    "the old name goes in the next release"
)


class Parser(argparse.ArgumentParser):
    """Plain-text help with examples; a mistake is one line on stderr and exit status 2."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def prose(text: str) -> str:
    """A paragraph wrapped for a terminal (the help keeps line breaks as written, for the examples)."""
    return textwrap.fill(text, 79)


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
        description=prose(
            "An asyncio load client with at most one request outstanding per connection: closed loop "
            "by default (each connection sends when its reply arrives), open loop with --rate (requests "
            "due at a constant rate, latency from the intended send time, as wrk2)."
        )
        + "\n\nexit status: 0 measured; 1 nothing connected, or nothing succeeded (why: one line\n"
        "on stderr); 2 a bad argument; 130/143 interrupted (what was measured so far, marked partial).",
    )  # fmt: skip
    bench.add_argument("target", metavar="HOST:PORT", help="the server, e.g. 127.0.0.1:9091")
    bench.add_argument("--json", action="store_true", help="print the result as JSON")
    settings.add_arguments(bench, settings.BenchSettings)

    demo = commands.add_parser(
        "demo", help="sweep every server through rising concurrency, write a report",
        epilog=scenario_list() + "\n\n" + examples("demo"),
        description=prose(
            "Start every server natively, load each at rising concurrency under each workload (scenario), "
            "and in an open loop at rising offered rates; print verdicts, write "
            "reports/demo-<time>/index.html. Ctrl-C or SIGTERM stops the servers, writes the report of "
            "what was measured, marked partial, and exits 130 or 143."
        ),
    )  # fmt: skip
    settings.add_arguments(demo, settings.DemoSettings)

    compare = commands.add_parser(
        "compare", help="two runs side by side: a terminal table with ratios, an HTML report",
        epilog=examples("compare"),
        description=prose(
            "Overlay two runs (each a reports/demo-* folder, its results.json, a benchmark JSON or an "
            "`echolab bench --json` result) in one HTML report, reports/compare-<time>/index.html, and "
            "print the B/A ratios of throughput and p99 of every measurement both made."
        ),
    )  # fmt: skip
    compare.add_argument("run_a", metavar="RUN_A", help="the first run (A)")
    compare.add_argument("run_b", metavar="RUN_B", help="the second run (B), compared with A")
    settings.add_arguments(compare, settings.CompareSettings)

    suite = commands.add_parser(
        "suite", aliases=[OLD_SUITE], epilog=examples("suite"),
        help="the benchmark suite (make bench): every server, references, paired rounds",
        description="The benchmark suite; writes reports/bench-<time>.json.",
    )  # fmt: skip
    settings.add_arguments(suite, settings.SuiteSettings)

    report = commands.add_parser(
        "report", help="draw every dashboard panel from Prometheus into one HTML file",
        epilog=examples("report"),
        description="Run every panel query of the Grafana dashboards over a window against Prometheus and "
        "draw each panel (title, unit, legend, colours) into reports/stack-<time>.html: no Grafana needed.",
    )  # fmt: skip
    settings.add_arguments(report, settings.ReportSettings)

    soak = commands.add_parser(
        "soak", help="every server under a steady load for minutes: does memory, fds or threads grow?",
        epilog=examples("soak"), description="Load every server at a fixed rate; sample what each holds; "
        "report growth beyond noise (exit 1). Writes reports/soak-<time>.json.",
    )  # fmt: skip
    settings.add_arguments(soak, settings.SoakSettings)

    downstream = commands.add_parser(
        "downstream", help="run the HTTP service the servers call as a dependency: GET /delay/<ms>",
        epilog=examples("downstream"),
        description=prose(
            "Serve GET /delay/<ms>: answer ok after that many milliseconds of awaited sleep, standing for "
            "a remote API. Exports the calls in progress and their peak on /metrics. SIGTERM drains."
        ),
    )  # fmt: skip
    settings.add_arguments(downstream, settings.DownstreamSettings)

    config = commands.add_parser(
        "config", help="print every setting: flag, env var, default", epilog=examples("config"),
        description="Print the table of every setting (docs/configuration.md's is generated from it).",
    )  # fmt: skip
    config.add_argument("--markdown", action="store_true", help="as the manual's Markdown table")
    config.add_argument("--metrics", action="store_true", help="the metrics table instead")

    scenario = commands.add_parser(
        "scenario", help="the environment that puts the stack's servers under a scenario (make scenario)",
        epilog=scenario_list().replace(" (--scenario)", "") + "\n\n" + examples("scenario"),
        description=prose(
            "Print the ECHO_* variables, one VAR=value a line, that give every server of the stack "
            "the work model of a scenario: its preset, and the rest of the work model at its defaults, "
            "whatever .env sets. With --services, the compose services they are for."
        ),
    )  # fmt: skip
    scenario.add_argument("name", metavar="NAME", choices=list(SCENARIOS), help="the scenario")
    scenario.add_argument("--services", action="store_true", help="print the servers' compose services")
    return parser


def scenario_list() -> str:
    rows = "\n".join(f"  {s.name:<10} {s.summary}" for s in SCENARIOS.values())
    return f"scenarios (--scenario):\n{rows}"


def serve(args: argparse.Namespace, argv: list[str]) -> int:
    server = catalogue.server(args.server)
    server_settings = settings.from_namespace(server.settings, args)
    if server_settings.python:
        return serve_under(server.name, server_settings, argv)
    module = importlib.import_module(server.module)
    return started(server.name, server_settings.log_level, lambda: module.run(server, server_settings))


def serve_under(name: str, server_settings: settings.ServeSettings, argv: list[str]) -> int:
    """``echolab serve --python``: the same command in that interpreter's venv, in this process's
    place (its pid, its signals); one line and exit 2 if it cannot be had."""

    def say(line: str) -> None:
        print(f"echolab serve: {line}", file=sys.stderr, flush=True)

    try:
        venv = interpreters.prepared(server_settings.python, say)
    except interpreters.InterpreterError as exc:
        say(f"error: {exc}")
        return 2
    values = {
        k: str(getattr(server_settings, k)) for k in interpreters.CHOICES if hasattr(server_settings, k)
    }
    refused = venv.refuses(name, values)
    if refused:
        say(f"error: {refused}")
        return 2
    # The last --python wins: there it is "this one".
    os.execv(venv.python, [venv.python, "-m", "echolab", *argv, "--python", ""])


def downstream(args: argparse.Namespace) -> int:
    from .servers import downstream

    service_settings = settings.from_namespace(settings.DownstreamSettings, args)
    return started("downstream", service_settings.log_level, lambda: downstream.run(service_settings))


def started(name: str, log_level: str, run: Callable[[], int]) -> int:
    """A service's exit status: ``run``'s, or 2 with one line when it cannot start."""
    setup_logging(log_level, name)
    watch_start()
    raise_fd_limit()
    try:
        return run()
    except OSError as exc:  # a port in use, an address not on this host...
        log.error("cannot start: %s", exc.strerror or exc)
        return 2


def print_scenario(name: str, services: bool) -> int:
    from .deploy.stack import scenario_environment

    if services:
        print("\n".join(catalogue.NAMES))
    else:
        print("\n".join(f"{var}={value}" for var, value in scenario_environment(SCENARIOS[name]).items()))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        return run(build_parser().parse_args(argv), argv)
    except settings.SettingError as exc:  # a bad value in the environment
        print(f"echolab: error: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace, argv: list[str]) -> int:
    if args.command == "serve":
        return serve(args, argv)
    if args.command == "downstream":
        return downstream(args)
    if args.command == "bench":
        from .load import bench

        raise_fd_limit()
        return bench.main(args.target, settings.from_namespace(settings.BenchSettings, args), args.json)
    if args.command == "demo":
        from .lab import demo

        raise_fd_limit()
        return demo.run(settings.from_namespace(settings.DemoSettings, args))
    if args.command == "compare":
        from .lab import compare

        return compare.run(args.run_a, args.run_b, settings.from_namespace(settings.CompareSettings, args))
    if args.command in ("suite", OLD_SUITE):
        from .lab import suite

        if args.command == OLD_SUITE:
            print(OLD_SUITE_NOTICE, file=sys.stderr)
        raise_fd_limit()
        return suite.run(settings.from_namespace(settings.SuiteSettings, args))
    if args.command == "report":
        from .lab import stack_report

        return stack_report.main(settings.from_namespace(settings.ReportSettings, args))
    if args.command == "soak":
        from .lab import soak

        raise_fd_limit()
        return soak.run(settings.from_namespace(settings.SoakSettings, args))
    if args.command == "scenario":
        return print_scenario(args.name, args.services)
    from . import docs

    print(docs.metrics_table() if args.metrics else docs.config_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
