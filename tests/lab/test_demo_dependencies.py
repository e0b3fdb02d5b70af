"""`echolab demo` with real dependencies: a PostgreSQL and a downstream service of its own, counted there;
and, where PostgreSQL cannot run, the rest of the demo with one line saying how to install it."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import replace
from pathlib import Path

import pytest
from support.parallel import with_demo_runs

from echolab import scenarios
from echolab.lab import demo, postgres
from echolab.lab.report import Section, finding
from echolab.lab.results import Row
from echolab.scenarios import Scenario
from echolab.settings import DemoSettings

POOL = 2  # small, so that eight connections must queue for it (one level: eight)
DB = Scenario(
    "db-test", f"50 ms of pg_sleep per request through pools of {POOL}",
    ("--io", "postgres", "--delay-ms", "50", "--pool-size", str(POOL)), 50.0, (8,),
)  # fmt: skip
API = Scenario(
    "api-test", f"a 50 ms downstream call per request through pools of {POOL}",
    ("--io", "http", "--delay-ms", "50", "--pool-size", str(POOL)), 50.0, (8,),
)  # fmt: skip
TIMER = Scenario("timer-test", "40 ms of awaited IO per request", ("--delay-ms", "40"), 40.0)


def small(out: Path, *names: str) -> DemoSettings:
    return DemoSettings(
        scenario=names, servers=("threaded", "async"), levels=(4,), open_loop=False, duration=0.4,
        other_duration=0.4, warmup=0.1, out=out,
    )  # fmt: skip


def with_test_scenarios(monkeypatch: pytest.MonkeyPatch) -> None:
    for scenario in (DB, API, TIMER):
        monkeypatch.setitem(scenarios.SCENARIOS, scenario.name, scenario)


@with_demo_runs
def test_the_servers_call_a_real_database_and_api_through_pools_counted_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_test_scenarios(monkeypatch)
    assert demo.run(small(tmp_path, DB.name, API.name)) == 0
    (folder,) = tmp_path.glob("demo-*")
    data = json.loads((folder / "results.json").read_text())
    peaks = {(r["scenario"], r["server"], r["connections"]): r["dependency_peak"] for r in data["rows"]}
    # Every level of each, with the other client of each dependency beside the servers.
    assert set(peaks) == {
        (scenario, server, n)
        for scenario, servers in ((DB.name, ("threaded", "async", "async (asyncpg)")),
                                  (API.name, ("threaded", "async", "threaded (requests)")))
        for server in servers
        for n in (8,)
    }  # fmt: skip
    assert all(r["requests"] > 0 and not r["errors"] for r in data["rows"]), data["rows"]
    # PostgreSQL, sampled, never ran more queries at once than a pool holds.
    assert all(1 <= peaks[DB.name, server, 8] <= POOL for server in ("threaded", "async", "async (asyncpg)"))
    # The downstream counts its calls exactly: eight clients fill an httpx pool of two, and no more;
    # requests' pool does not block, so its threads call all at once.
    assert peaks[API.name, "threaded", 8] == peaks[API.name, "async", 8] == POOL
    assert peaks[API.name, "threaded (requests)", 8] > POOL
    api_finding = data["findings"][f"{API.name}-closed"]
    # How the finding groups the two (one rate or two) is the machine's; that it names the pool is not.
    assert f"with {POOL} calls at once (httpx {POOL}), threaded" in api_finding and "async" in api_finding
    assert f"{peaks[API.name, 'threaded (requests)', 8]} calls at once" in api_finding
    assert "queries at once" in data["findings"][f"{DB.name}-closed"]
    page = (folder / "index.html").read_text()
    assert "pools: threaded, psycopg_pool 2; async, psycopg_pool 2; async (asyncpg), asyncpg 2" in page


def test_without_postgresql_the_rest_runs_and_one_line_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with_test_scenarios(monkeypatch)
    # A machine without PostgreSQL: its binaries neither on PATH nor where Debian puts them.
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setattr(postgres, "DEBIAN_BINARIES", str(tmp_path / "none" / "*" / "bin"))
    assert postgres.find_binaries() is None
    settings = small(tmp_path, TIMER.name, DB.name)
    assert demo.run(dataclasses.replace(settings, servers=("async",))) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"echolab demo: {DB.name} left out: {postgres.unavailable()}"]
    assert postgres.INSTALL in err[0]
    (folder,) = tmp_path.glob("demo-*")
    data = json.loads((folder / "results.json").read_text())
    assert {r["scenario"] for r in data["rows"]} == {TIMER.name}
    assert data["left_out"]["scenarios"] == [DB.name]
    assert postgres.INSTALL in (folder / "index.html").read_text()
    # Asked for only what cannot run: the same line, as an error.
    assert demo.run(small(tmp_path, DB.name)) == 2
    line = err[0].removeprefix("echolab demo: ")
    assert capsys.readouterr().err.strip().splitlines() == [f"echolab demo: error: {line}"]


def rows(server: str, throughputs: tuple[float, float], peak: int, framing: str = "lines") -> list[Row]:
    return [
        Row(server=server, framing=framing, connections=n, connected=n, delay_ms=100.0, seconds=1.0,
            requests=round(t), throughput=t, latency_ms={}, bound=n / 0.1, bound_fraction=t / (n / 0.1),
            dependency_peak=min(n, peak))
        for n, t in zip((10, 1000), throughputs, strict=True)
    ]  # fmt: skip


def test_the_finding_groups_the_servers_by_what_their_pools_let_through() -> None:
    pools = (
        ("threaded", 4, "psycopg_pool's default of 4"), ("async", 4, "psycopg_pool's default of 4"),
        ("async (asyncpg)", 10, "asyncpg's default of 10"),
        ("threaded-http", 8, "2 worker processes, each with psycopg_pool's default of 4"),
    )  # fmt: skip
    section = Section("db", "100 ms of pg_sleep", "closed", 100.0, (), "postgres", pools)
    measured = [
        *rows("threaded", (40, 39), 4), *rows("async", (40, 41), 4), *rows("async (asyncpg)", (99, 100), 10),
        *rows("threaded-http", (79, 80), 8, "http"),
    ]  # fmt: skip
    assert finding(section, measured) == (
        "100 ms of pg_sleep: with 4 queries at once (psycopg_pool's default of 4), threaded and async both "
        "serve 40 req/s at any concurrency; with 10 queries at once (asyncpg's default of 10), async "
        "(asyncpg) serves 100 req/s at any concurrency; with 8 queries at once (2 worker processes, each "
        "with psycopg_pool's default of 4), threaded-http serves 80 req/s at any concurrency: the pool, "
        "not the model, is the limit."
    )
    # Pools past max_connections: PostgreSQL's limit, not theirs.
    big = tuple((name, 1000, f"psycopg_pool 1,000 ({name})") for name in ("threaded", "async"))
    section = Section("db-pool", "pools of 1,000", "closed", 100.0, (), "postgres", big)
    measured = [*rows("threaded", (100, 990), 100), *rows("async", (100, 1000), 100)]
    assert finding(section, measured) == (
        "pools of 1,000: with 100 queries at once (PostgreSQL's max_connections of 100), threaded and "
        "async both serve 995 req/s at 1,000 connections: PostgreSQL's max_connections, not the model, "
        "is the limit."
    )
    # Calls that take far longer than the downstream makes them wait: the pool is not what holds it.
    section = Section(
        "api", "a 100 ms call", "closed", 100.0, (), "http", (("async", 100, "httpx's default"),)
    )
    measured = [replace(r, server_cpu_percent=99.0) for r in rows("async", (90, 60), 100)]
    assert finding(section, measured) == (
        "a 100 ms call: async serves 60 req/s at 1,000 connections, under the 1,000 that up to 100 calls at "
        "once would allow: not the pool's size but the time each call takes, 100 ms and more through the "
        "client, is the limit (server CPU 99%)."
    )
