"""``echolab suite`` (``make bench``): every server, the levels where they differ, one run, one table.

Run on a quiet machine; compare the rows of one run with each other (ratios),
not with another machine's figures. Then what each protection of each TCP
server costs, against the bare servers (:mod:`.costs`). Writes
reports/bench-<time>.json.

With ``--scenario``, it runs the lab's scenarios instead (cpu, blocking,
offload, mixed, io, db, db-pool, api: :mod:`echolab.scenarios`) on every server
at a few levels, and adds each server's CPU time per request: writes
reports/scenarios-<time>.json. A scenario with a dependency runs the
libraries' other clients too, with the dependency the lab starts
(:mod:`.dependencies`); under ``api`` the downstream service is then measured
alone at the same levels and more, its capacity beside what the servers drive
through it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .. import interpreters, machine
from ..interpreters import Venv
from ..load.bench_result import shown
from ..scenarios import SCENARIOS, Scenario
from ..settings import SuiteSettings
from . import costs
from .contenders import (
    ALTERNATIVES,
    ASYNC_HTTP_BARE_ALIKE,
    ASYNC_NO_METRICS,
    ASYNC_PROTOCOL,
    ASYNC_STREAMS,
    BARE_H11,
    BARE_HTTPTOOLS,
    BARE_STREAMS,
    BARE_THREADED,
    BARE_UVLOOP,
    POOL,
    SERIAL,
    SERVERS_AS_THEY_ARE,
    Contender,
)
from .dependencies import Dependencies
from .downstream import DOWNSTREAM, delay_path
from .interrupt import Interrupted, interruptible
from .report import failures_line, require_extra
from .results import Row, console, rich_table
from .sweep import measure

THREADED, ASYNC, THREADED_HTTP, ASYNC_HTTP = SERVERS_AS_THEY_ARE

LEVELS = (100, 1000, 5000, 10000)


def plan() -> list[tuple[str, Contender, tuple[int, ...], float]]:
    """(section, server, connection levels, delay ms), in the order they run."""
    delay_100 = (
        ASYNC_STREAMS, ASYNC_PROTOCOL, BARE_STREAMS, BARE_UVLOOP, THREADED, BARE_THREADED, POOL,
        THREADED_HTTP, ASYNC_HTTP,
    )  # fmt: skip
    delay_0 = (
        ASYNC_STREAMS, ASYNC_NO_METRICS, ASYNC_PROTOCOL, BARE_STREAMS, BARE_UVLOOP, THREADED,
        BARE_THREADED, POOL, THREADED_HTTP, ASYNC_HTTP,
    )  # fmt: skip
    return [
        *(("delay 100 ms", contender, LEVELS, 100) for contender in delay_100),
        ("delay 100 ms", SERIAL, (10,), 100),
        *(("delay 0", contender, (10, 100), 0) for contender in delay_0),
        ("delay 0", SERIAL, (10,), 0),
    ]


def targets(rows: list[Row], pairs: list[dict[str, Any]]) -> list[tuple[str, bool, str]]:
    """The async server's targets (95% of the bound at 1,000 and 5,000 connections), checked."""

    def row(server: str, delay: float, connections: int) -> Row | None:
        return next(
            (r for r in rows if r.server == server and r.delay_ms == delay and r.connections == connections),
            None,
        )

    checks = []
    for contender in (ASYNC_STREAMS, ASYNC_PROTOCOL):
        for level in (1000, 5000):
            r = row(contender.name, 100, level)
            if r and r.bound_fraction is not None:
                checks.append(
                    (
                        f"{contender.name} >= 95% of the bound at {level}",
                        r.bound_fraction >= 0.95,
                        f"{r.bound_fraction:.1%}",
                    )
                )
    for pair in pairs:
        if pair["target"] is not None:
            low, high = min(pair["ratios"]), max(pair["ratios"])
            checks.append(
                (
                    f"{pair['name']} >= {pair['target']:.0%}",
                    pair["median_ratio"] >= pair["target"],
                    f"median {pair['median_ratio']:.2f}x over {len(pair['ratios'])} alternating rounds "
                    f"({low:.2f}-{high:.2f})",
                )
            )
    return checks


# Head-to-head comparisons: the two servers run alternately, --rounds times
# each, and the median of the per-round ratios is compared. On a shared, noisy
# machine one run each swings by 20% either way; alternating rounds make both
# sides meet the same noise. (name, a, b, connections, delay ms, target a/b)
PAIRS = (
    *(
        (f"streams / protocol at {n}", ASYNC_STREAMS, ASYNC_PROTOCOL, n, 100, None)
        for n in (100, 1000, 5000, 10000)
    ),
    ("streams / protocol at delay 0", ASYNC_STREAMS, ASYNC_PROTOCOL, 100, 0, None),
    # Code as people write it, both ways, where threads break. (Each server against its bare
    # reference, and without each of its protections: the cost table, .costs.)
    ("streams / threaded at 5000", ASYNC_STREAMS, THREADED, 5000, 100, None),
    # async-http's parser choice (docs/server-behavior.md): its hardening against bare uvicorn, and h11.
    ("delay 0: async-http hardened / bare uvicorn", ASYNC_HTTP_BARE_ALIKE, BARE_HTTPTOOLS, 100, 0, None),
    ("delay 0: uvicorn h11 / httptools", BARE_H11, BARE_HTTPTOOLS, 100, 0, None),
)


def median_ratio(a: Sequence[float], b: Sequence[float]) -> tuple[float, list[float]]:
    ratios = [x / max(y, 1e-9) for x, y in zip(a, b, strict=True)]
    return round(statistics.median(ratios), 3), [round(r, 3) for r in ratios]


def paired(
    name: str,
    a: Contender,
    b: Contender,
    connections: int,
    delay: float,
    args: SuiteSettings,
    venv: Venv | None = None,
) -> dict[str, Any]:
    """Throughput and server CPU per request of ``a`` and ``b``, measured in alternating rounds."""
    a, b = a.under(venv, named=False), b.under(venv, named=False)
    throughputs: dict[str, list[float]] = {a.name: [], b.name: []}
    cpu: dict[str, list[float]] = {a.name: [], b.name: []}  # server CPU ms per request
    for _ in range(args.rounds):
        for contender in (a, b):
            (row,) = measure(contender, [connections], delay, args.duration, args.warmup)
            throughputs[contender.name].append(row.throughput)
            cpu[contender.name].append(cpu_ms_per_request(row))
    ratio, ratios = median_ratio(throughputs[a.name], throughputs[b.name])
    cpu_ratio, _ = median_ratio(cpu[a.name], cpu[b.name])
    return {
        "name": name,
        "connections": connections,
        "delay_ms": delay,
        "throughputs": throughputs,
        "ratios": ratios,
        "median_ratio": ratio,
        "cpu_ms_per_request": cpu,
        "median_cpu_ratio": cpu_ratio,
    }


def cpu_ms_per_request(row: Row) -> float:
    """The server's CPU time per request answered, in ms (its process tree's, from the sweep)."""
    return 10 * row.server_cpu_percent / row.throughput if row.throughput else 0.0


def locust_capacity(seconds: float) -> float:
    """Requests/s one Locust process generates with our TCP user (see echolab.load.capacity)."""
    from ..load.capacity import measure_capacity
    from .contenders import running

    with running(ASYNC, delay_ms=0) as (port, _):
        return measure_capacity("127.0.0.1", port, seconds=seconds)


def show_row(out: Any, r: Row, per_request: bool = False) -> None:
    head = f"  {r.server:<26} delay {r.delay_ms:>3g} ms  {r.connections:>6} conns  "
    if r.failure:
        out.print(f"{head}[red]failed: {r.failure}[/red]")
        return
    cpu = f"  CPU {cpu_ms_per_request(r):6.2f} ms/req" if per_request else ""
    at_once = "" if r.dependency_peak is None else f"  {r.dependency_peak:>5,} at once"
    errors = f"  {r.error_count:,} errors" if r.error_count else ""
    out.print(f"{head}{r.throughput:>9,.0f} req/s  p99 {shown(r.latency('p99')):>8} ms{cpu}{at_once}{errors}")


def failure_recorder(
    out: Any, record: dict[str, Any], section: str, server: str
) -> Callable[[int | None, str], None]:
    """An ``on_error`` for :func:`.sweep.measure` that keeps what failed in ``record`` (and says a
    failed stop, which has no row of its own)."""

    def failed(level: int | None, why: str) -> None:
        record.setdefault("failures", []).append(
            {"section": section, "server": server, "level": level, "why": why}
        )
        if level is None:
            out.print(f"  {server:<26} [red]{why}[/red]")

    return failed


@contextlib.contextmanager
def going_on(out: Any, record: dict[str, Any], section: str, server: str) -> Iterator[None]:
    """A part of the benchmark that a server's failure ends (its rounds need every measurement):
    the failure is kept in ``record``, in one line, and the benchmark goes on with the next part."""
    try:
        yield
    except RuntimeError as exc:  # a LaunchError too: the server was killed with all it started
        why = str(exc).splitlines()[0]
        failure_recorder(out, record, section, server)(None, why)


def run(args: SuiteSettings) -> int:
    """The benchmark, or with ``--scenario`` the scenarios; Ctrl-C or SIGTERM keeps what was measured."""
    require_extra()
    out = console()
    record: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine.facts()}
    busy = machine.busy(record["machine"])
    if busy:
        out.print(f"[yellow]{busy}[/yellow]")
    scenarios = [SCENARIOS[name] for name in args.scenario]
    try:
        venv = interpreters.prepared(args.python, out.print) if args.python else None
    except interpreters.InterpreterError as exc:
        print(f"echolab suite: error: {exc}", file=sys.stderr)
        return 2
    try:
        with interruptible():
            if scenarios:
                run_scenarios(args, scenarios, out, record, venv)
            else:
                if args.part in ("all", "sweep"):
                    measure_all(args, out, record, venv)
                if args.part in ("all", "costs"):
                    measure_costs(args, out, record, venv)
    except Interrupted as exc:
        out.print(f"[yellow]{exc}: servers stopped; writing what was measured[/yellow]")
        record["partial"] = {"signal": exc.name}
    write(out, args, "scenarios" if scenarios else "bench", record)
    if record.get("failures"):
        print(f"echolab suite: {failures_line(record['failures'])}", file=sys.stderr)
    if record.get("partial"):
        return 128 + signal.Signals[record["partial"]["signal"]]
    return 1 if record.get("failures") else 0


def measure_all(args: SuiteSettings, out: Any, record: dict[str, Any], venv: Venv | None = None) -> None:
    """The sweeps, the paired rounds and Locust's capacity, into ``record`` as they come; every
    server under ``venv``'s interpreter if given."""
    rows: list[Row] = record.setdefault("rows", [])
    pairs: list[dict[str, Any]] = record.setdefault("pairs", [])
    for section, contender, levels, delay in plan():
        if args.only and args.only not in contender.name:
            continue

        def done(r: Row) -> None:
            rows.append(r)
            show_row(out, r)

        failed = failure_recorder(out, record, section, contender.name)
        measure(
            contender.under(venv, named=False), levels, delay, args.duration, args.warmup,
            on_level=done, on_error=failed,
        )  # fmt: skip

    out.print(rich_table("echolab bench (closed loop; bound = connections / delay)", rows, delay_column=True))
    for name, a, b, connections, delay, target in PAIRS:
        if args.only and args.only not in a.name:
            continue
        pair: dict[str, Any] | None = None
        with going_on(out, record, name, f"{a.name} / {b.name}"):
            pair = {**paired(name, a, b, connections, delay, args, venv), "target": target}
        if pair is None:
            continue
        out.print(
            f"{name}: median ratio {pair['median_ratio']:.2f} "
            f"({min(pair['ratios']):.2f}-{max(pair['ratios']):.2f}), "
            + ", ".join(f"{k} {v}" for k, v in pair["throughputs"].items())
            + f"; CPU per request: median ratio {pair['median_cpu_ratio']:.2f}"
        )
        pairs.append(pair)
    with going_on(out, record, "locust capacity", ASYNC.name):
        locust_rate = locust_capacity(args.duration * 2)
        out.print(
            f"one Locust process (50 AsyncUser, lines, async server at delay 0): {locust_rate:,.0f} req/s"
        )
        record["locust_requests_per_second"] = locust_rate
    checks = targets(rows, pairs)
    for name, ok, detail in checks:
        out.print(f"{'PASS' if ok else 'MISS'}  {name}: {detail}")
    record.setdefault("targets", []).extend({"target": n, "met": ok, "measured": d} for n, ok, d in checks)


def measure_costs(args: SuiteSettings, out: Any, record: dict[str, Any], venv: Venv | None = None) -> None:
    """What each protection of each TCP server costs (.costs), into ``record`` family by family."""
    results: dict[str, Any] = record.setdefault("costs", {})
    measured: dict[str, costs.Cells] = {}
    for family in costs.FAMILIES:
        if args.only and args.only not in family.server.name:
            continue
        out.print(
            f"[bold]what each protection costs: {family.name}[/bold] "
            f"({len(family.contenders)} servers, {args.cost_rounds} rounds)"
        )
        with going_on(out, record, "costs", family.name):
            measured[family.name] = costs.run_family(
                family, args.cost_rounds, args.duration, args.warmup, venv,
                on_round=lambda f, n: out.print(f"  {f.name}: round {n} of {args.cost_rounds} done"),
            )  # fmt: skip
        if family.name not in measured:
            continue
        cells = measured[family.name]
        results[family.name] = [
            {"server": name, **dataclasses.asdict(level), **cell.summary()}
            for (name, level), cell in cells.items()
        ]
        out.print(costs.rich_table(family, cells, args.cost_rounds))
    checks = costs.targets(measured)
    for name, ok, detail in checks:
        out.print(f"{'PASS' if ok else 'MISS'}  {name}: {detail}")
    record.setdefault("targets", []).extend({"target": n, "met": ok, "measured": d} for n, ok, d in checks)


# --- scenarios -------------------------------------------------------------------

SCENARIO_LEVELS = (1, 10, 100, 1000)
# Every server as it is, the async server in its other API, and the bounded pool of threads.
SCENARIO_CONTENDERS = (THREADED, POOL, ASYNC_STREAMS, ASYNC_PROTOCOL, THREADED_HTTP, ASYNC_HTTP)


# The downstream alone, at these multiples of the servers' top level: it must never be their limit.
DOWNSTREAM_MULTIPLES = (1, 2)


def run_scenarios(
    args: SuiteSettings, scenarios: list[Scenario], out: Any, record: dict[str, Any], venv: Venv | None = None
) -> None:
    with Dependencies() as dependencies:
        for scenario in scenarios:
            run_scenario(args, scenario, out, record, dependencies, venv)
            if scenario.io == "http":
                measure_downstream(args, scenario, out, record)


def run_scenario(
    args: SuiteSettings,
    scenario: Scenario,
    out: Any,
    record: dict[str, Any],
    dependencies: Dependencies,
    venv: Venv | None = None,
) -> None:
    results: dict[str, list[dict[str, Any]]] = record.setdefault("scenarios", {})
    out.print(f"[bold]scenario {scenario.name}[/bold]: {scenario.summary}")
    rows: list[Row] = []
    results[scenario.name] = []
    for contender in (*SCENARIO_CONTENDERS, *ALTERNATIVES.get(scenario.io, ())):
        if args.only and args.only not in contender.name:
            continue
        assert contender.server is not None

        def done(r: Row, name: str = scenario.name, rows: list[Row] = rows) -> None:
            rows.append(r)
            results[name].append(
                {**dataclasses.asdict(r), "server_cpu_ms_per_request": round(cpu_ms_per_request(r), 3)}
            )
            show_row(out, r, per_request=True)

        failed = failure_recorder(out, record, scenario.name, contender.name)
        options = scenario.options_for(contender.server)
        with dependencies.sweep(scenario.io) as (flags, probe):
            measure(
                contender.under(venv, named=False), SCENARIO_LEVELS, scenario.delay_hint_ms,
                args.duration, args.warmup,
                on_level=done, on_error=failed, server_options=(*options, *flags), probe=probe,
            )  # fmt: skip
    title = f"scenario {scenario.name} (closed loop; bound = connections / {scenario.delay_hint_ms:g} ms)"
    out.print(rich_table(title, rows))


def measure_downstream(args: SuiteSettings, scenario: Scenario, out: Any, record: dict[str, Any]) -> None:
    """The downstream service alone, loaded as the servers load it at their top level and beyond."""
    levels = [SCENARIO_LEVELS[-1] * n for n in DOWNSTREAM_MULTIPLES]
    out.print(f"[bold]the downstream alone[/bold], {scenario.delay_hint_ms:g} ms calls (its capacity)")
    rows = measure(
        DOWNSTREAM, levels, scenario.delay_hint_ms, args.duration, args.warmup,
        delay_path(scenario.delay_hint_ms), on_level=lambda r: show_row(out, r, per_request=True),
        on_error=failure_recorder(out, record, scenario.name, DOWNSTREAM.name),
    )  # fmt: skip
    record["downstream"] = [
        {**dataclasses.asdict(r), "server_cpu_ms_per_request": round(cpu_ms_per_request(r), 3)} for r in rows
    ]


def write(out: Any, args: SuiteSettings, kind: str, record: dict[str, Any]) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    rows = record.get("rows")
    if rows is not None:
        record["rows"] = [dataclasses.asdict(r) for r in rows]
    path.write_text(json.dumps(record, indent=1, allow_nan=False))
    out.print(f"wrote {path}" + (" (partial)" if record.get("partial") else ""))
