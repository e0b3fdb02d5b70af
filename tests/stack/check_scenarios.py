"""`make scenario` in the running stack, under load: blocking calls, real dependencies, and back.

Runs after check_stack.py and before check_chaos.py, on the same stack
(tests/stack/conftest.py), under a closed loop of 5 users per server (each
TCP user on one persistent connection), and asserts on what Prometheus then
sees, in counts and their order.

Every switch (`make scenario`) recreates the four servers at once, the way
`make up` does after a change. Recreated together, they used to take each
other's addresses, and Docker's DNS, stale for a moment, sent Locust's users
to another class's server: the async server held 60 connections and the
threaded one 40 where each should have held 50, and TCP users that landed on
an HTTP server got its "400 Bad Request" (issue 24). So after each of the
three switches: each server is back at its own address; each TCP server
holds exactly its class's users' connections; every server answers as many
requests as its own users send (within 10%); no user got a reply in another
protocol.

``blocking`` (a 20 ms blocking call per request, no IO):

* the table "Servers and limits in force" shows the work model in force;
* the async server's event-loop lag gains observations above 50 ms (the
  dashboard's p99 jumps past it), far more often than under the io scenario;
* an event-loop server serves one request at a time: at most one per 20 ms
  per process, whatever its users, while each threaded server, whose
  threads wait out the calls side by side, serves more than half again as
  many per process (5 users: up to 5 per 20 ms in all).

Then ``db`` and ``api`` send every request through a pool to the stack's
postgres and downstream. A closed loop keeps each user's next call right
behind its last, so a scrape finds connections in use: under an open loop,
a user's calls come at a fixed pace, and one in phase with the scrapes can
be idle at every scrape.

After them, `make scenario NAME=io` puts the servers back, and the
open-loop load of the other modules runs again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from support.dashboards import DASHBOARDS, load_dashboard, split_row, wait_for_every_panel
from support.servers import TCP_SERVERS
from support.stack import (
    CLOSED_LOOP,
    OPEN_LOOP,
    SCRAPE,
    SERVERS,
    TIMINGS,
    USERS,
    Compose,
    Load,
    answered_and_sent,
    by,
    failures,
    settled,
    stop_swarm,
    swarm,
    wait_for,
)  # fmt: skip

from echolab import catalogue
from echolab.dashboards.grafana import RESTARTED
from echolab.dashboards.overview import DEPENDENCIES
from echolab.dashboards.panels import RESTARTS, queries, resolve_variables, substitute
from echolab.dashboards.prometheus import Prometheus
from echolab.deploy.stack import FIXED_SERVER_ENV, POSTGRES_SERVICE, POSTGRES_USER
from echolab.lab import stack_marks, stack_report
from echolab.metrics import spec
from echolab.scenarios import SCENARIOS
from echolab.servers.work_model import info
from echolab.settings import ReportSettings, from_environment

BLOCKING_MS = SCENARIOS["blocking"].environment(catalogue.SERVERS[0])["ECHO_BLOCKING_MS"]
BLOCKING_S = float(BLOCKING_MS) / 1000
CAP = 1 / BLOCKING_S  # requests/s of one process that runs its blocking calls one at a time
WINDOW = "30s"  # six scrapes of the stack's 5 s
LAG = spec("echo_event_loop_lag_seconds").name
LATE = 0.05  # a lag bucket's bound: a probe more than 50 ms late
EVENT_LOOP = [s.name for s in catalogue.SERVERS if s.family == "async"]
THREADED = [s.name for s in catalogue.SERVERS if s.family == "threaded"]
PER_CLASS = USERS / len(SERVERS)  # Locust splits the users evenly between the four classes
# What a user meets on another protocol's server: a TCP user reads an HTTP server's "400 Bad
# Request" as a wrong reply, an HTTP user cannot parse a TCP server's echo ("other").
WRONG_PROTOCOL = ("wrong_reply", "other")
OVERVIEW = DASHBOARDS[0].parent / "echolab-overview.json"


def late_and_all(stack: Compose, window: str) -> dict[str, tuple[float, float]]:
    """Per event-loop-probed server: lag observations above LATE and in all, over ``window``."""
    total = by(stack.query(f"sum by (server) (increase({LAG}_count[{window}]))"), "server")
    on_time = by(stack.query(f'sum by (server) (increase({LAG}_bucket{{le="{LATE}"}}[{window}]))'), "server")
    return {server: (total[server] - on_time.get(server, 0.0), total[server]) for server in total}


def work_model(stack: Compose) -> dict[str, dict[str, str]]:
    """What the dashboard's table shows of each server's work model (echo_server_info's labels)."""
    dashboard = load_dashboard(OVERVIEW)
    prometheus = Prometheus(stack.url("PROMETHEUS", ""))
    (table,) = [expr for name, expr in queries(dashboard) if "'Servers and limits in force'" in name]
    result = prometheus.query(substitute(table, resolve_variables(prometheus, dashboard, WINDOW)))
    return {series["metric"]["server"]: series["metric"] for series in result}


# The stack's, without the password's file: that is in the containers only.
DATABASE_URL = {"ECHO_DATABASE_URL": FIXED_SERVER_ENV["ECHO_DATABASE_URL"]}
# The labels of echo_server_info that show only where they apply: absent is checked too.
WHERE_THEY_APPLY = ("offload_threads", "client", "pool_size", "pool_timeout")


def wait_for_work_model(stack: Compose, name: str) -> None:
    """Until the table shows every server under scenario ``name``: the labels its settings give."""
    wanted = {}
    for server in catalogue.SERVERS:
        environment = {**SCENARIOS[name].environment(server), **DATABASE_URL}
        labels = info(from_environment(server.settings, environment))
        wanted[server.name] = {**dict.fromkeys(WHERE_THEY_APPLY), **labels}

    def shown() -> tuple[bool, Any]:
        seen = {
            s: {label: labels.get(label) for label in wanted[s]} for s, labels in work_model(stack).items()
        }
        return seen == wanted, seen

    wait_for(f"the table showing the {name} scenario's work model on every server", shown, 60)


def make_scenario(stack: Compose, name: str) -> None:
    started = time.monotonic()
    output = stack.make("scenario", f"NAME={name}")
    TIMINGS[f"make scenario NAME={name}"] = time.monotonic() - started
    assert f"scenario {name}:" in output, output
    wait_for_work_model(stack, name)


def check_switch_marked(stack: Compose, before: float, after: float) -> None:
    """The switch made between ``before`` and ``after`` is marked where `make report` looks by default.

    Its window is the last load-test run's, the run under way; in it, the four
    servers' restarts make one change, which the report lists with the
    settings that changed and the requests that failed in it.
    """
    ended = f"{RESTARTED} > 0"
    wait_for("the switch's mark ended", lambda: (not (still := stack.query(ended)), still), 60)
    url = stack.url("PROMETHEUS", "")
    start, end, what = stack_report.report_window(
        ReportSettings(prometheus=url, dashboards=DASHBOARDS[0].parent), time.time()
    )
    assert what.startswith("the last load-test run (running)"), what
    home = load_dashboard(OVERVIEW)
    prometheus = Prometheus(url)
    values = resolve_variables(prometheus, home, "1m")
    found = stack_marks.marks(prometheus, home, values, (start, end, SCRAPE), RESTARTS)
    # A restart shows once a scrape has seen it (up to a scrape after the new process is up), a rule
    # evaluation has counted it (one more), and on the query's grid of SCRAPE steps (one more).
    switch = [c for c in stack_marks.changes(found) if before - SCRAPE <= c.start <= after + 3 * SCRAPE]
    assert [set(c.servers) for c in switch] == [set(SERVERS)], (before, after, found)
    assert start <= switch[0].start and switch[0].end < end, "inside the report's window"
    listed = stack_marks.marks_html(prometheus, found)
    assert f"blocking_ms 0 → {BLOCKING_MS}" in listed, listed
    started = stack_marks.first_start(prometheus, switch[0])
    cost = stack_marks.failed(prometheus, (), started - stack_marks.BEFORE_START, switch[0].end)
    marked = switch[0].end - switch[0].start
    failed = stack_marks.count(cost)
    print(f"\nswitch to blocking under {USERS} users: marked {marked:.0f} s, failed requests {failed}")


def connections(stack: Compose) -> dict[str, float]:
    expr = f'sum by (server) (echo_connections_active{{server=~"{"|".join(TCP_SERVERS)}"}})'
    return by(stack.query(expr), "server")


def own_connections(stack: Compose) -> tuple[bool, Any]:
    seen = connections(stack)
    return seen == dict.fromkeys(TCP_SERVERS, PER_CLASS), seen


def wrong_protocol(stack: Compose) -> dict[tuple[str, ...], float]:
    """Failures of the kinds a wrong protocol gives, by (server, kind), as last scraped."""
    return {key: count for key, count in failures(stack).items() if key[1] in WRONG_PROTOCOL}


def addresses(stack: Compose) -> dict[str, dict[str, str]]:
    """Each server's address on each of its networks."""
    return {
        server: {
            net: found["IPAddress"]
            for net, found in stack.container(server)["NetworkSettings"]["Networks"].items()
        }
        for server in SERVERS
    }


@dataclass(frozen=True)
class Before:
    """The stack before the switches: what they must leave as it was, and the lag under io."""

    addresses: dict[str, dict[str, str]]
    wrong_protocol: dict[tuple[str, ...], float]
    lag_under_io: dict[str, tuple[float, float]]


@pytest.fixture(scope="module")
def closed_loop(load: Load) -> Iterator[Before]:
    """The closed loop of this module's tests, every TCP user on its own server; after them, failed
    or not, the io scenario and the other modules' open loop."""
    stack = load.stack
    lag_under_io = late_and_all(stack, "1m")
    stop_swarm(stack)
    swarm(stack, CLOSED_LOOP)
    wait_for("each TCP server holding its class's users' connections", lambda: own_connections(stack), 60)
    yield Before(addresses(stack), wrong_protocol(stack), lag_under_io)
    make_scenario(stack, "io")
    stop_swarm(stack)
    swarm(stack, OPEN_LOOP)


def recreated_in_place(stack: Compose, name: str, before: Before) -> dict[str, float]:
    """After the switch to ``name``: each server at its own address and with its own users; the
    requests/s each answered over WINDOW."""
    assert addresses(stack) == before.addresses, "each server's address back"
    recreated_at = time.monotonic()
    # Within the reconnect window: a user's next request after its connection broke reconnects.
    wait_for("each TCP server holding exactly its class's users again", lambda: own_connections(stack), 60)
    TIMINGS[f"{name}: recreated -> every TCP user back on its own server"] = time.monotonic() - recreated_at
    # Rates over a WINDOW with no restart in it (every sample is of the new containers) and no
    # failure (the users' requests of the switch, refused in a burst, are out of it).
    wait_for(f"{WINDOW} of requests under the {name} scenario", lambda: settled(stack, WINDOW), 90)
    answered, sent = answered_and_sent(stack, WINDOW)
    ratios = {s: round(answered[s] / sent[s], 3) for s in SERVERS}
    print(f"\n{name}: answered/sent over {WINDOW} {ratios}")
    # One user of 5 on another class's server would be 20% more on one server and 20% less on
    # the other; a closed loop's counts on the two sides differ only by the scrapes' timing.
    assert all(abs(ratio - 1) < 0.1 for ratio in ratios.values()), f"answered {answered}, sent {sent}"
    still_own, seen = own_connections(stack)
    assert still_own, seen
    assert wrong_protocol(stack) == before.wrong_protocol, "a user got a reply in another server's protocol"
    return answered


def test_blocking_calls_stall_the_event_loop_not_the_threads(load: Load, closed_loop: Before) -> None:
    stack = load.stack
    before = time.time()
    make_scenario(stack, "blocking")
    after = time.time()
    workers = {s: float(labels.get("workers", "1")) for s, labels in work_model(stack).items()}
    rates = recreated_in_place(stack, "blocking", closed_loop)
    check_switch_marked(stack, before, after)  # the run goes on
    under_io = closed_loop.lag_under_io
    per_process = {server: rates[server] / workers[server] for server in SERVERS}
    lag = late_and_all(stack, WINDOW)
    p99 = by(
        stack.query(f"histogram_quantile(0.99, sum by (server, le) (rate({LAG}_bucket[{WINDOW}])))"), "server"
    )
    print(
        f"\nblocking scenario, closed loop: requests/s per process {per_process}, lag p99 {p99}, lag "
        f"observations above {LATE * 1000:.0f} ms (late, all): {lag}; under io (last minute): {under_io}"
    )
    for server in EVENT_LOOP:
        assert 0 < per_process[server] <= CAP * 1.1, f"{server}: one blocking call at a time, {per_process}"
    for server in THREADED:
        assert per_process[server] > 1.5 * CAP, f"{server}: its threads block side by side, {per_process}"
    assert set(lag) == set(spec(LAG).servers), lag
    for server, (late, total) in lag.items():
        assert late >= 10, f"{server}: the lag must jump with blocking calls on the loop: {lag}"
        io_late, io_total = under_io[server]
        assert late / total > io_late / max(io_total, 1), f"{server}: {lag} vs under io {under_io}"
        assert p99[server] > LATE, f"{server}: the dashboard's p99 lag {p99}"


def test_the_db_and_api_scenarios_call_the_stack_s_postgres_and_downstream(
    load: Load, closed_loop: Before
) -> None:
    """`make scenario NAME=db`: every server queries the postgres container through its pool, and
    answers; NAME=api: the downstream container serves their calls. Under the closed loop the
    blocking test left running."""
    stack = load.stack
    in_use = spec("echo_dependency_connections_in_use").name
    calls_count = f"{spec('echo_dependency_pool_wait_seconds').name}_count"  # one per call
    _, row = split_row(load_dashboard(OVERVIEW), DEPENDENCIES)
    prometheus = Prometheus(stack.url("PROMETHEUS", ""))
    for name in ("db", "api"):
        make_scenario(stack, name)
        rates = recreated_in_place(stack, name, closed_loop)
        # Every request went through the pool: as many calls as requests answered, and no error.
        calls = by(stack.query(f"sum by (server) (increase({calls_count}[{WINDOW}]))"), "server")
        answered = by(
            stack.query(f'sum by (server) (increase(echo_requests_total{{outcome="ok"}}[{WINDOW}]))'),
            "server",
        )
        assert set(calls) == set(SERVERS) and all(calls[s] >= 0.9 * answered[s] > 0 for s in SERVERS), (
            calls,
            answered,
        )
        errors = stack.query(f"sum by (server, kind) (increase(echo_dependency_errors_total[{WINDOW}])) > 0")
        assert not errors, errors
        wait_for_every_panel(prometheus, row, WINDOW, 60, SERVERS)
        most = by(stack.query(f"sum by (server) (max_over_time({in_use}[{WINDOW}]))"), "server")
        print(f"\n{name} scenario: requests/s {rates}, most connections in use at once {most}")
        assert all(most.get(s, 0) >= 1 for s in SERVERS), most
        if name == "db":  # seen from PostgreSQL itself: the servers' sessions
            sessions = stack.run(
                "exec", "-T", POSTGRES_SERVICE, "psql", "-U", POSTGRES_USER, "-d", POSTGRES_USER, "-Atc",
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'",
            )  # fmt: skip
            assert int(sessions) > len(SERVERS), sessions  # psql's own, and at least one per server
        else:  # seen from the downstream: it served calls, several at once
            served = stack.query('sum(increase(echo_downstream_requests_total{code="200"}[30s]))')
            peak = stack.query("max(echo_downstream_calls_in_progress_peak)")
            assert float(served[0]["value"][1]) > 0 and float(peak[0]["value"][1]) > 1, (served, peak)
