"""``echolab demo`` (``make demo``): the comparison anyone can run with only Python.

For each scenario of :data:`echolab.scenarios.SCENARIOS` (the first at
``--levels``, the others at ``--other-levels``) it starts every server
natively on loopback with the scenario's flags, walks it through rising
concurrency with the ``echolab bench`` client, and with ``--open-loop`` also
sweeps the first scenario at constant offered rates. It prints a table, a
verdict per server and a finding per section, and writes
reports/demo-<time>/index.html. A scenario added to SCENARIOS is a section
of the report with nothing else to change.

A scenario whose requests call a dependency (``--io postgres``, ``--io
http``) runs at its own levels, every one of them, with the libraries' other
clients beside the servers (:data:`.contenders.ALTERNATIVES`); the lab starts
the dependency (:mod:`.dependencies`) and gives each server its URL. Where
PostgreSQL cannot run, its scenarios are left out, with one line saying how to
install it, and the rest runs.

Ctrl-C or SIGTERM stops the servers and the client, writes the report of
what was measured so far, marked partial, and exits 130 or 143. A server
that cannot start, exits mid-level or does not stop when told is killed
with all it started, its level marked failed with the reason, and the demo
goes on with the rest; it writes the report, then exits 1 with one line
saying what failed.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .. import interpreters, machine
from ..load.bench_result import shown
from ..scenarios import SCENARIOS, Scenario
from ..settings import DemoSettings
from . import history, report
from .contenders import ALTERNATIVES, SERIAL, SERVERS_AS_THEY_ARE, Contender
from .dependencies import Dependencies, DependencyFailed
from .interrupt import Interrupted, held, interruptible
from .pools import pools
from .report import Section
from .results import Row, by_server, console, rich_table
from .sweep import measure

# --quick: the same sections and the levels where the servers differ (threads
# break between 1,000 and 5,000 connections), each measured for less time.
QUICK_LEVELS = (1, 10, 100, 1000, 2000, 5000)
QUICK_RATES = (2000, 5000, 10000, 20000)
QUICK_DURATION = 1.0
QUICK_WARMUP = 0.5
SERIAL_MAX_LEVEL = 10  # one client at a time: past this it only shows queueing


@dataclass(frozen=True)
class Step:
    """One server's sweep in one section."""

    section: Section
    contender: Contender
    levels: tuple[int, ...]
    duration: float
    warmup: float


class DemoError(Exception):
    """A setting the demo cannot run with: one line, exit status 2."""


def framed(contender: Contender, settings: DemoSettings) -> Contender:
    """The contender in the demo's framing, if it has a --framing."""
    if not contender.reads("--framing"):
        return contender
    return dataclasses.replace(contender, framing=settings.framing)


def contenders(settings: DemoSettings) -> list[Contender]:
    """Every server as it is (those with a --framing in the demo's), then the article's serial baseline."""
    chosen = [framed(v, settings) for v in SERVERS_AS_THEY_ARE]
    chosen.append(SERIAL)
    if settings.servers:
        known = [v.name for v in chosen] + [v.name for group in ALTERNATIVES.values() for v in group]
        unknown = set(settings.servers) - set(known)
        if unknown:
            raise DemoError(f"no server {', '.join(sorted(unknown))}: choose from {', '.join(known)}")
        chosen = [v for v in chosen if v.name in settings.servers]
    return chosen


def alternatives(settings: DemoSettings, scenario: Scenario, servers: set[str]) -> list[Contender]:
    """The other clients of the scenario's dependency, where their server is among ``servers`` (the
    contenders' names) or they are named."""
    return [
        framed(v, settings)
        for v in ALTERNATIVES.get(scenario.io, ())
        if (v.server is not None and v.server.name in servers) or v.name in settings.servers
    ]


def scenarios(settings: DemoSettings) -> list[Scenario]:
    unknown = [name for name in settings.scenario if name not in SCENARIOS]
    if unknown:
        raise DemoError(f"no scenario {', '.join(unknown)}: choose from {', '.join(SCENARIOS)}")
    return [SCENARIOS[name] for name in settings.scenario or SCENARIOS]


def quick(settings: DemoSettings) -> DemoSettings:
    """``--quick``: shorter runs and fewer levels, where no other value was asked for."""
    if not settings.quick:
        return settings
    defaults = DemoSettings()
    replaced: dict[str, Any] = {
        "levels": QUICK_LEVELS,
        "rates": QUICK_RATES,
        "duration": QUICK_DURATION,
        "other_duration": QUICK_DURATION,
        "warmup": QUICK_WARMUP,
    }
    return dataclasses.replace(
        settings, **{k: v for k, v in replaced.items() if getattr(settings, k) == getattr(defaults, k)}
    )


def plan(
    settings: DemoSettings, main: interpreters.Venv | None = None, others: Sequence[interpreters.Venv] = ()
) -> list[Step]:
    """Every server's sweep, section by section, in the order they run."""
    steps = []
    chosen = scenarios(settings)
    base = contenders(settings)
    names = {v.name for v in base}
    for index, scenario in enumerate(chosen):
        first = index == 0
        # Each under ``main``'s interpreter (None: the lab's own), then under each of ``others``.
        servers = [
            under
            for v in (*base, *alternatives(settings, scenario, names))
            if not scenario.servers or (v.server is not None and v.server.name in scenario.servers)
            for under in (v.under(main), *(v.under(other) for other in others))
        ]
        levels = scenario.levels or (settings.levels if first else settings.other_levels)
        # The article's baseline belongs to the article's workload, a timer.
        serial_levels = (
            tuple(n for n in levels if n <= SERIAL_MAX_LEVEL) if first and not scenario.levels else ()
        )
        sweeps = [(v, serial_levels if v.name.split("@")[0] == SERIAL.name else levels) for v in servers]
        sweeps = [(v, at) for v, at in sweeps if at]
        closed = Section(
            scenario.name, scenario.summary, "closed", scenario.delay_hint_ms, scenario.options,
            scenario.io, pools([v for v, _ in sweeps], scenario),
        )  # fmt: skip
        duration = settings.duration if first else settings.other_duration
        warmup = max(settings.warmup, scenario.warmup)
        steps += [Step(closed, with_options(v, scenario), at, duration, warmup) for v, at in sweeps]
        if first and settings.open_loop and not scenario.levels:
            opened = dataclasses.replace(closed, mode="open")
            steps += [
                Step(opened, with_options(v, scenario), settings.rates, duration, warmup)
                for v in servers
                if v.framing == "lines"  # the line protocol's servers: HTTP's knee shows in the closed loop
            ]
    return steps


def with_options(contender: Contender, scenario: Scenario) -> Contender:
    """The contender running the scenario's workload: the scenario's flags its server reads, after its own."""
    if contender.server is None:  # a bare reference has no settings
        return contender
    return dataclasses.replace(
        contender, options=(*contender.options, *scenario.options_for(contender.server))
    )


def sections(steps: Sequence[Step]) -> list[Section]:
    return list(dict.fromkeys(step.section for step in steps))


def left_out(steps: Sequence[Step]) -> tuple[list[Step], dict[str, Any] | None]:
    """The steps whose dependency can run here; the scenarios left out, and why, in one line."""
    why = {s.section.scenario: Dependencies.missing(s.section.io) for s in steps}
    missing = [name for name, reason in why.items() if reason]
    if not missing:
        return list(steps), None
    line = f"{' and '.join(missing)} left out: {why[missing[0]]}"
    return [s for s in steps if s.section.scenario not in missing], {"scenarios": missing, "why": line}


def run(settings: DemoSettings) -> int:
    report.require_extra()
    out = console()
    try:
        settings = quick(settings)
        python = settings.python or os.environ.get("ECHO_PYTHON", "")
        main = interpreters.prepared(python, out.print) if python else None
        others = [interpreters.prepared(spec, out.print) for spec in settings.pythons]
        steps, out_of_reach = left_out(plan(settings, main, others))
        if not steps and out_of_reach:
            raise DemoError(out_of_reach["why"])
    except (DemoError, interpreters.InterpreterError) as exc:
        print(f"echolab demo: error: {exc}", file=sys.stderr)
        return 2
    if out_of_reach:
        print(f"echolab demo: {out_of_reach['why']}", file=sys.stderr)
    record: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "settings": {k: str(v) if k == "out" else v for k, v in dataclasses.asdict(settings).items()},
        "machine": machine.facts(),
        "partial": None,
        "skipped": [],
        "failures": [],
        "left_out": out_of_reach,
    }
    busy = machine.busy(record["machine"])
    if busy:
        out.print(f"[yellow]{busy}[/yellow]")
    steps = runnable(steps, record["skipped"], out)
    rows: list[Row] = []
    began = time.monotonic()
    try:
        with interruptible(), Dependencies() as dependencies:
            sweep(steps, settings, rows, record, out, dependencies)
    except Interrupted as exc:
        out.print(f"[yellow]{exc}: servers stopped; writing the report of what was measured[/yellow]")
        # The levels the run would have measured: less those it skipped, not those the signal cut off.
        skipped = [s for s in record["skipped"] if s["why"] != f"cut off by {exc.name}"]
        planned = sum(len(step.levels) for step in steps) - sum(len(s["levels"]) for s in skipped)
        record["partial"] = {"signal": exc.name, "levels_done": len(rows), "levels_planned": planned}
        code = exc.exit_code
    else:
        code = 0
    record["seconds"] = round(time.monotonic() - began, 1)
    with held() as arrived:
        summarise(out, steps, rows, record["skipped"])
        earlier = history.earlier(settings.out)
        index = report.write(history.new_folder(settings.out, "demo"), rows, record, sections(steps), earlier)
        out.print(f"report: {index.resolve()}" + (" (partial)" if code else ""))
    if record["failures"]:
        print(f"echolab demo: {report.failures_line(record['failures'])}", file=sys.stderr)
    return code or (128 + arrived[0] if arrived else 0) or (1 if record["failures"] else 0)


def sweep(
    steps: Sequence[Step],
    settings: DemoSettings,
    rows: list[Row],
    record: dict[str, Any],
    console: Any,
    dependencies: Dependencies,
) -> None:
    """Run every step, appending each level's row to ``rows`` as it is measured (or failed), and to
    ``record`` what failed and what it skipped; an interrupted step is noted as cut off."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("sweep", total=sum(len(step.levels) for step in steps))
        current = None
        for step in steps:
            if step.section != current:
                current = step.section
                progress.console.print(f"[bold]{step.section.title}[/bold]: {step.section.summary}")
            progress.update(task, description=f"{step.section.scenario:>8} {step.contender.name:>13}")
            measured: list[Row] = []

            def done(row: Row, measured: list[Row] = measured) -> None:
                rows.append(row)
                measured.append(row)
                progress.advance(task)
                progress.console.print(progress_line(row))

            def failed(level: int | None, why: str, step: Step = step) -> None:
                record["failures"].append(
                    {"section": step.section.key, "server": step.contender.name, "level": level, "why": why}
                )
                if level is None:  # a stop that failed: the levels were measured
                    progress.console.print(f"  {step.contender.name:>13} [red]{why}[/red]")

            # A dependency's pool holds a server at a flat rate under the bound: every level is the finding.
            stop_below = settings.stop_below if step.section.io == "timer" else 0.0
            try:
                with dependencies.sweep(step.section.io) as (flags, probe):
                    measure(
                        step.contender,
                        step.levels,
                        step.section.delay_ms,
                        step.duration,
                        step.warmup,
                        on_level=done,
                        on_error=failed,
                        server_options=flags,
                        open_loop=step.section.mode == "open",
                        scenario=step.section.scenario,
                        stop_below=stop_below,
                        stop_timeout=settings.stop_timeout,
                        probe=probe,
                    )
            except DependencyFailed as exc:
                why = str(exc).split("\n")[0]  # the line; the log's tail is in the server's log
                failed(step.levels[0], why)
                progress.console.print(f"  {step.contender.name:>13} [red]{why}[/red]")
                progress.advance(task, len(step.levels))
                record["skipped"].append(skip(step, why, list(step.levels), cut=True))
                continue
            except Interrupted as exc:  # the sweep under way: its verdict speaks of the levels before
                rest = list(step.levels[len(measured) :])
                record["skipped"].append(skip(step, f"cut off by {exc.name}", rest, cut=True))
                raise
            note = skipped_levels(step, measured, stop_below)
            if note:
                record["skipped"].append(note)
                progress.advance(task, len(note["levels"]))
                progress.console.print(f"  {step.contender.name:>13} {note['why']}: higher levels skipped")


def progress_line(row: Row) -> str:
    """One measured (or failed) level, as the sweep goes."""
    head = f"  {row.server:>13} {report.level_text(row):>22}"
    if row.failure:
        return f"{head} [red]failed: {row.failure}[/red]"
    trouble = row.mostly_failed or row.problem
    return f"{head} {row.throughput:>9,.0f} req/s p99 {shown(row.latency('p99'), ',.0f'):>8} ms" + (
        f"  [yellow]{trouble}[/yellow]" if trouble else ""
    )


def runnable(steps: Sequence[Step], skipped: list[dict[str, Any]], out: Any) -> list[Step]:
    """The steps whose interpreter can run them; each other one is said in one line and recorded."""
    kept = []
    for step in steps:
        refused = step.contender.refused()
        if refused is None:
            kept.append(step)
            continue
        out.print(f"[yellow]{step.contender.name}, {step.section.title}: {refused}[/yellow]")
        skipped.append(skip(step, refused, list(step.levels)))
    return kept


def skip(step: Step, why: str, levels: list[int], cut: bool = False) -> dict[str, Any]:
    """A note of the levels a step did not measure; ``cut``: its server's sweep was cut short (a
    failure, a signal), so what it reached says nothing of where it breaks."""
    return {
        "section": step.section.key,
        "server": step.contender.name,
        "why": why,
        "levels": levels,
        "cut": cut,
    }


def skipped_levels(step: Step, measured: list[Row], stop_below: float) -> dict[str, Any] | None:
    """What a step did not measure, and why: a level failed, or the server fell under ``stop_below``."""
    rest = list(step.levels[len(measured) :])
    if not rest or not measured:
        return None
    last = measured[-1]
    if last.failure:
        return skip(step, f"failed at {report.level_text(last)}", rest, cut=True)
    return skip(step, f"under {stop_below:.0%} of the bound at {report.level_text(last)}", rest)


def summarise(
    console: Any, steps: Sequence[Step], rows: list[Row], skipped: Sequence[dict[str, Any]]
) -> None:
    """A table, the verdicts and the finding of each section that has rows."""
    for section in sections(steps):
        section_rows = section.rows(rows)
        if not section_rows:
            continue
        bound = "bound = offered rate" if section.mode == "open" else "bound = connections / time per request"
        ordered = sorted(section_rows, key=lambda r: (r.level, r.server))
        console.print(rich_table(f"{section.title}; {bound}", ordered))
        if section.pools:
            console.print(f"{report.pools_text(section)} (gunicorn's workers: processes, each with its own)")
        cut = report.cut_off(section, skipped)
        for name, series in by_server(section_rows).items():
            console.print("• " + report.verdict(name, series, cut.get(name)))
        console.print(f"[bold]{report.finding(section, section_rows, cut)}[/bold]\n")
