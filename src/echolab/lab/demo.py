"""``echolab demo`` (``make demo``): the comparison anyone can run with only Python.

For each scenario of :data:`echolab.scenarios.SCENARIOS` (the first at
``--levels``, the others at ``--other-levels``) it starts every server
natively on loopback with the scenario's flags, walks it through rising
concurrency with the ``echolab bench`` client, and with ``--open-loop`` also
sweeps the first scenario at constant offered rates. It prints a table, a
verdict per server and a finding per section, and writes
reports/demo-<time>/index.html. A scenario added to SCENARIOS is a section
of the report with nothing else to change.

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
from .contenders import SERIAL, SERVERS_AS_THEY_ARE, Contender
from .interrupt import Interrupted, held, interruptible
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


class DemoError(Exception):
    """A setting the demo cannot run with: one line, exit status 2."""


def contenders(
    settings: DemoSettings,
    main: interpreters.Venv | None = None,
    others: Sequence[interpreters.Venv] = (),
) -> list[Contender]:
    """Every server as it is (those with a --framing in the demo's), then the article's serial baseline;
    each under ``main``'s interpreter (None: the lab's own), then under each of ``others``."""
    chosen = [
        dataclasses.replace(v, framing=settings.framing) if v.reads("--framing") else v
        for v in SERVERS_AS_THEY_ARE
    ]
    chosen.append(SERIAL)
    if settings.servers:
        unknown = set(settings.servers) - {v.name for v in chosen}
        if unknown:
            names = ", ".join(v.name for v in chosen)
            raise DemoError(f"no server {', '.join(sorted(unknown))}: choose from {names}")
        chosen = [v for v in chosen if v.name in settings.servers]
    return [under for v in chosen for under in (v.under(main), *(v.under(other) for other in others))]


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
    servers = contenders(settings, main, others)
    for index, scenario in enumerate(scenarios(settings)):
        first = index == 0
        closed = Section(scenario.name, scenario.summary, "closed", scenario.delay_hint_ms, scenario.options)
        duration = settings.duration if first else settings.other_duration
        for contender in servers:
            levels = settings.levels if first else settings.other_levels
            if contender.name.split("@")[0] == SERIAL.name:  # the article's baseline: the article's workload
                levels = tuple(n for n in levels if n <= SERIAL_MAX_LEVEL) if first else ()
            if levels:
                steps.append(Step(closed, with_options(contender, scenario), levels, duration))
        if first and settings.open_loop:
            opened = dataclasses.replace(closed, mode="open")
            steps += [
                Step(opened, with_options(v, scenario), settings.rates, duration)
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


def run(settings: DemoSettings) -> int:
    report.require_extra()
    out = console()
    try:
        settings = quick(settings)
        python = settings.python or os.environ.get("ECHO_PYTHON", "")
        main = interpreters.prepared(python, out.print) if python else None
        others = [interpreters.prepared(spec, out.print) for spec in settings.pythons]
        steps = plan(settings, main, others)
    except (DemoError, interpreters.InterpreterError) as exc:
        print(f"echolab demo: error: {exc}", file=sys.stderr)
        return 2
    record: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "settings": {k: str(v) if k == "out" else v for k, v in dataclasses.asdict(settings).items()},
        "machine": machine.facts(),
        "partial": None,
        "skipped": [],
        "failures": [],
    }
    busy = machine.busy(record["machine"])
    if busy:
        out.print(f"[yellow]{busy}[/yellow]")
    steps = runnable(steps, record["skipped"], out)
    rows: list[Row] = []
    began = time.monotonic()
    try:
        with interruptible():
            sweep(steps, settings, rows, record, out)
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
    steps: Sequence[Step], settings: DemoSettings, rows: list[Row], record: dict[str, Any], console: Any
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

            try:
                measure(
                    step.contender,
                    step.levels,
                    step.section.delay_ms,
                    step.duration,
                    settings.warmup,
                    on_level=done,
                    on_error=failed,
                    open_loop=step.section.mode == "open",
                    scenario=step.section.scenario,
                    stop_below=settings.stop_below,
                    stop_timeout=settings.stop_timeout,
                )
            except Interrupted as exc:  # the sweep under way: its verdict speaks of the levels before
                rest = list(step.levels[len(measured) :])
                record["skipped"].append(skip(step, f"cut off by {exc.name}", rest, cut=True))
                raise
            note = skipped_levels(step, measured, settings.stop_below)
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
        cut = report.cut_off(section, skipped)
        for name, series in by_server(section_rows).items():
            console.print("• " + report.verdict(name, series, cut.get(name)))
        console.print(f"[bold]{report.finding(section, section_rows, cut)}[/bold]\n")
