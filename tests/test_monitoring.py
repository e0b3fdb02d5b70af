"""The monitoring config: Prometheus and Grafana files checked statically, then for real.

* ``promtool`` checks prometheus/prometheus.yml and rules.yml, and unit-tests the
  recording rules;
* the dashboards are valid JSON, every panel and variable queries the
  provisioned data source, panel ids are unique, every panel has a unit and
  every query a legend;
* Grafana in docker-compose.yml mounts the dashboards where the provider
  looks (the compose file's own promises: tests/deploy/test_compose.py);
* and every query of every dashboard panel returns data from a real
  Prometheus that scrapes the four servers (TCP and HTTP) and a Locust run
  of all four user classes, all started here as plain processes, for every
  server the panel applies to. A query that returns nothing is a broken panel.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.cgroup import write_cgroup
from support.dashboards import (
    DASHBOARDS,
    Prometheus,
    all_panels,
    load_dashboard,
    query_panels,
    wait_for_every_panel,
)
from support.parallel import MEASURING
from support.servers import clean_environment
from support.waiting import poll_until

from echolab import catalogue
from echolab.dashboards.panels import NoData, queries, resolve_variables, substitute
from echolab.lab.downstream import DownstreamProcess
from echolab.lab.postgres import PostgreSQL
from echolab.lab.stack_report import write_report
from echolab.launcher import LaunchError, Process, ServerProcess, answers, free_port

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = ROOT / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULES = PROMETHEUS_DIR / "rules.yml"
DATASOURCES = ROOT / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
COMPOSE = ROOT / "docker-compose.yml"
LOCUSTFILE = ROOT / "loadtest" / "locustfile.py"
BIN = Path(sys.executable).parent

HOST = "127.0.0.1"
SERVERS = catalogue.NAMES
JOBS = {"echo-servers", "locust-master", "locust-workers", "downstream", "prometheus"}
# What the dashboards' Grafana variables become in the live test: scrapes and rule
# evaluations every 500 ms, so a 2 s window holds four samples, and data shows in a second.
SCRAPE_INTERVAL = "500ms"
POLL = 0.5  # seconds between two looks: Prometheus has nothing new sooner
RATE_WINDOW = "2s"
DATA_DEADLINE = 60.0  # seconds for every panel to show data
IO_MS = 20
# One server does every kind of work, its blocking calls in a pool: every kind of the work panel
# has a series, and the offload pool is used. Each kind's seconds per request, as the panel shows them.
WORK = {"async": ["--cpu-ms", "1", "--blocking-ms", "5", "--offload", "thread", "--offload-threads", "2"]}
# Each request's IO a real dependency, so that the dependency panels have every server: PostgreSQL
# through the sync and the async psycopg pools, the downstream through httpx's sync and async clients.
IO = {"threaded": "postgres", "async-http": "postgres", "async": "http", "threaded-http": "http"}
WORK_PER_REQUEST = {("async", "cpu"): 0.001, ("async", "blocking"): 0.005, ("async", "io"): IO_MS / 1000}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: install Prometheus (Debian/Ubuntu: apt-get install prometheus)")
    return path


def run_promtool(*args: str) -> str:
    result = subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def provisioned_uid() -> str:
    sources = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert len(sources) == 1, "one data source, so every panel knows which"
    uid = sources[0]["uid"]
    assert isinstance(uid, str) and uid
    return uid


# --- Prometheus config ------------------------------------------------------------


def test_promtool_checks_config() -> None:
    output = run_promtool("check", "config", str(PROMETHEUS_CONFIG))
    assert "SUCCESS" in output


def test_promtool_checks_rules() -> None:
    output = run_promtool("check", "rules", str(RULES))
    assert "SUCCESS" in output


def test_prometheus_jobs_and_intervals() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == JOBS, "the dashboards and tests rely on these job names"
    default = config["global"]["scrape_interval"]
    for job in jobs.values():
        interval = job.get("scrape_interval", default)
        assert seconds(interval) <= 5, f"{job['job_name']} scraped every {interval}"
    dns = jobs["locust-workers"]["dns_sd_configs"]
    assert dns == [{"names": ["locust-worker"], "type": "A", "port": 9646, "refresh_interval": "5s"}]
    assert jobs["echo-servers"]["honor_labels"] is True


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m)", duration)
    assert match, duration
    return int(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[match.group(2)]


USERS_RULE_TEST = """
rule_files: [{rules}]
evaluation_interval: 5s
tests:
  # A master reports its workers' total: counting the workers too would double it.
  - interval: 5s
    input_series:
      - series: 'echo_client_users{{job="locust-master", instance="m:9646", server="threaded"}}'
        values: '30x3'
      - series: 'echo_client_info{{job="locust-master", instance="m:9646", role="master"}}'
        values: '1x3'
      - series: 'echo_client_users{{job="locust-workers", instance="w1:9646", server="threaded"}}'
        values: '20x3'
      - series: 'echo_client_info{{job="locust-workers", instance="w1:9646", role="worker"}}'
        values: '1x3'
      - series: 'echo_client_users{{job="locust-workers", instance="w2:9646", server="threaded"}}'
        values: '10x3'
      - series: 'echo_client_info{{job="locust-workers", instance="w2:9646", role="worker"}}'
        values: '1x3'
      - series: 'echo_client_users{{job="locust", instance="l:9646", server="async"}}'
        values: '7x3'
      - series: 'echo_client_offered_rate{{job="locust-master", instance="m:9646", server="threaded"}}'
        values: '300x3'
      - series: 'echo_client_offered_rate{{job="locust-workers", instance="w1:9646", server="threaded"}}'
        values: '200x3'
      - series: 'echo_client_offered_rate{{job="locust-workers", instance="w2:9646", server="threaded"}}'
        values: '100x3'
      - series: 'echo_client_info{{job="locust", instance="l:9646", role="local"}}'
        values: '1x3'
    promql_expr_test:
      - expr: server:echo_client_users:sum
        eval_time: 10s
        exp_samples:
          - labels: 'server:echo_client_users:sum{{server="threaded"}}'
            value: 30
          - labels: 'server:echo_client_users:sum{{server="async"}}'
            value: 7
      - expr: server:echo_client_offered_rate:sum
        eval_time: 10s
        exp_samples:
          - labels: 'server:echo_client_offered_rate:sum{{server="threaded"}}'
            value: 300
"""


CPU_RULE_TEST = """
rule_files: [{rules}]
evaluation_interval: 15s
tests:
  # 0.125 CPU seconds and 1024 requests every 15 s (of every outcome): 2^-13 s,
  # 122 us, a request (powers of two: exact in floating point). The threaded
  # server answers nothing: no value rather than infinity.
  - interval: 15s
    input_series:
      - series: 'process_cpu_seconds_total{{job="echo-servers", instance="a", server="async"}}'
        values: '0+0.125x8'
      - series: 'echo_requests_total{{job="echo-servers", instance="a", server="async", outcome="ok"}}'
        values: '0+768x8'
      - series: 'echo_requests_total{{job="echo-servers", instance="a", server="async", outcome="aborted"}}'
        values: '0+256x8'
      - series: 'process_cpu_seconds_total{{job="echo-servers", instance="t", server="threaded"}}'
        values: '0+0.01x8'
      - series: 'echo_requests_total{{job="echo-servers", instance="t", server="threaded", outcome="ok"}}'
        values: '0x8'
    promql_expr_test:
      - expr: server:echo_cpu_seconds_per_request:rate1m
        eval_time: 2m
        exp_samples:
          - labels: 'server:echo_cpu_seconds_per_request:rate1m{{server="async"}}'
            value: 1.220703125e-4
"""


RESTART_RULE_TEST = """
rule_files: [{rules}]
evaluation_interval: 5s
tests:
  # The threaded server stops (two scrapes fail) and comes back as a process started at 18 s; the
  # async server runs on. The mark: while down, and for the new process's first 30 s.
  - interval: 5s
    input_series:
      - series: 'up{{job="echo-servers", instance="t", server="threaded"}}'
        values: '1 1 0 0 1x10'
      - series: 'process_start_time_seconds{{job="echo-servers", instance="t", server="threaded"}}'
        values: '-1000 -1000 _ _ 18x10'
      - series: 'up{{job="echo-servers", instance="a", server="async"}}'
        values: '1x14'
      - series: 'process_start_time_seconds{{job="echo-servers", instance="a", server="async"}}'
        values: '-1000x14'
    promql_expr_test:
{checks}"""
RESTART_MARKS = {"5s": 0, "10s": 1, "15s": 1, "20s": 1, "45s": 1, "50s": 0}


RESTART_CHECK = """\
      - expr: server:echo_restarted:30s
        eval_time: {at}
        exp_samples:
          - labels: 'server:echo_restarted:30s{{{{server="threaded"}}}}'
            value: {threaded}
          - labels: 'server:echo_restarted:30s{{{{server="async"}}}}'
            value: 0
"""


def restart_checks() -> str:
    """The mark at each time: 1 for the threaded server where RESTART_MARKS says, never for async."""
    return "".join(RESTART_CHECK.format(at=at, threaded=threaded) for at, threaded in RESTART_MARKS.items())


@pytest.mark.parametrize(
    "test",
    [USERS_RULE_TEST, CPU_RULE_TEST, RESTART_RULE_TEST.replace("{checks}", restart_checks())],
    ids=["users", "cpu-per-request", "restarts"],
)
def test_recording_rules(tmp_path: Path, test: str) -> None:
    test_file = tmp_path / "rules_test.yml"
    test_file.write_text(test.format(rules=json.dumps(str(RULES))))
    run_promtool("test", "rules", str(test_file))


# --- Grafana provisioning and dashboards --------------------------------------------


def test_dashboards_exist() -> None:
    names = [p.name for p in DASHBOARDS]
    assert "echolab-overview.json" in names
    provider = yaml.safe_load((ROOT / "grafana/provisioning/dashboards/dashboards.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    compose = yaml.safe_load(COMPOSE.read_text())
    grafana = compose["services"]["grafana"]
    assert f"./grafana/dashboards:{path}:ro" in grafana["volumes"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{path}/echolab-overview.json"


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.name for p in DASHBOARDS])
def test_dashboard_is_consistent(path: Path) -> None:
    uid = provisioned_uid()
    dashboard = load_dashboard(path)
    ids = [p["id"] for p in all_panels(dashboard)]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(i for i in ids if ids.count(i) > 1)}"
    problems = []
    for panel in query_panels(dashboard):
        name = f"panel {panel['id']} {panel.get('title')!r}"
        if panel.get("datasource", {}).get("uid") != uid:
            problems.append(f"{name}: datasource {panel.get('datasource')}")
        if not panel.get("fieldConfig", {}).get("defaults", {}).get("unit"):
            problems.append(f"{name}: no unit")
        if not panel.get("targets"):
            problems.append(f"{name}: no query")
        for target in panel.get("targets", []):
            if target.get("datasource", {}).get("uid") != uid:
                problems.append(f"{name} {target.get('refId')}: datasource {target.get('datasource')}")
            if not target.get("expr"):
                problems.append(f"{name} {target.get('refId')}: empty query")
            if not target.get("legendFormat"):
                problems.append(f"{name} {target.get('refId')}: no legend")
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable["type"] == "query" and variable["datasource"].get("uid") != uid:
            problems.append(f"variable {variable['name']}: datasource {variable['datasource']}")
    assert not problems, "\n".join(problems)


# --- every panel against a real Prometheus ---------------------------------------------


class Stack:
    """Servers, a Locust run and Prometheus as processes on loopback, stopped in reverse order."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started = time.time()
        self.processes: list[Process] = []
        self.prometheus: Prometheus | None = None

    def start(self, *processes: Process) -> None:
        """Start them side by side: each waits for its own readiness."""
        self.processes.extend(processes)
        with ThreadPoolExecutor(len(processes)) as pool:
            for process, error in zip(processes, pool.map(self._start, processes), strict=True):
                if error:
                    pytest.fail(f"{process.name}: {error}", pytrace=False)

    @staticmethod
    def _start(process: Process) -> str:
        try:
            process.start()
        except LaunchError as exc:
            return str(exc)
        return ""

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.running():
                try:
                    process.stop()
                except LaunchError as exc:
                    print(exc)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}:\n{p.tail()}" for p in self.processes)


class HttpReady(Process):
    """A process that is ready once ``url`` answers 200."""

    def __init__(self, argv: list[str], *, name: str, url: str, workdir: Path) -> None:
        super().__init__(argv, name=name, log=workdir / f"{name}.log", env=clean_environment(), cwd=workdir)
        self.url = url

    def is_ready(self) -> bool:
        return answers(self.url)


def local_config(
    metrics: dict[str, int], locust_metrics: int, downstream_metrics: int, prometheus_port: int
) -> dict[str, Any]:
    """The repo's prometheus.yml with its jobs pointed at the local processes, scraping every second.

    Job names, honor_labels and the labels the compose file gives the server
    targets stay as in production; only the discovery changes.
    """
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"].update(
        scrape_interval=SCRAPE_INTERVAL, evaluation_interval=SCRAPE_INTERVAL, scrape_timeout=SCRAPE_INTERVAL
    )
    config["rule_files"] = [str(RULES)]
    local = {
        "echo-servers": [
            {"targets": [f"{HOST}:{metrics[s]}"], "labels": {"server": s, "cpus": "1", "memory": "512m"}}
            for s in SERVERS
        ],
        # A single local Locust process stands in for the master and workers.
        "locust-workers": [{"targets": [f"{HOST}:{locust_metrics}"]}],
        "locust-master": [],
        "downstream": [{"targets": [f"{HOST}:{downstream_metrics}"]}],
        "prometheus": [{"targets": [f"{HOST}:{prometheus_port}"]}],
    }
    for job in config["scrape_configs"]:
        for key in [k for k in job if k.endswith("_sd_configs") or k == "static_configs"]:
            del job[key]
        job["static_configs"] = local[job["job_name"]]
    return config  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, postgres: PostgreSQL) -> Iterator[Stack]:
    if shutil.which("prometheus") is None:
        pytest.fail("prometheus not found: install Prometheus (Debian/Ubuntu: apt-get install prometheus)")
    assert LOCUSTFILE.exists(), f"{LOCUSTFILE} is missing"
    workdir = tmp_path_factory.mktemp("monitoring")
    stack = Stack(workdir)
    try:
        downstream = DownstreamProcess(log=workdir / "downstream.log", env=clean_environment())
        stack.start(downstream)
        dependency = {
            "postgres": ["--database-url", postgres.dsn],
            "http": ["--downstream-url", downstream.url],
        }
        servers = {}
        # No machine here is a container with a CPU limit: the servers read a cgroup's files from here.
        cgroup = ["--cgroup-root", str(write_cgroup(workdir / "cgroup", periods=500, throttled=3))]
        for kind in catalogue.SERVERS:
            # One gunicorn worker each is enough for a light load, and spares the CPU.
            options = [
                "--delay-ms",
                str(IO_MS),
                *cgroup,
                *(["--workers", "1"] if kind.transport == "http" else []),
            ]
            options += WORK.get(kind.name, [])
            options += ["--io", IO[kind.name], *dependency[IO[kind.name]]]
            log = workdir / f"{kind.name}.log"
            servers[kind.name] = ServerProcess(kind, options, log=log, env=clean_environment())
        stack.start(*servers.values())
        metrics = {name: server.metrics_port for name, server in servers.items()}
        locust_metrics = free_port()
        targets = [arg for name, server in servers.items() for arg in (
            f"--{name}-host", HOST, f"--{name}-port", str(server.port))]  # fmt: skip
        # Every user class, two users each, in an open loop (the offered-rate
        # panel has data only then): 2.5 requests/s per user keeps the load light, and still puts
        # five requests a second through every server.
        locust = HttpReady([
            str(BIN / "locust"), "-f", str(LOCUSTFILE), "--headless", "--users", "8", "--spawn-rate", "8",
            "--run-time", "5m", "--only-summary", "--loglevel", "WARNING", *targets,
            "--metrics-host", HOST, "--metrics-port", str(locust_metrics), "--target-rps", "20",
        ], name="locust", url=f"http://{HOST}:{locust_metrics}/metrics", workdir=workdir)  # fmt: skip
        prometheus_port = free_port()
        config = local_config(metrics, locust_metrics, downstream.metrics_port, prometheus_port)
        (workdir / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        stack.prometheus = Prometheus(f"http://{HOST}:{prometheus_port}")
        prometheus = HttpReady([
            "prometheus", f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address={HOST}:{prometheus_port}",
            "--log.level=warn",
        ], name="prometheus", url=f"{stack.prometheus.url}/-/ready", workdir=workdir)  # fmt: skip
        stack.start(locust, prometheus)
        yield stack
    finally:
        stack.stop()


@MEASURING
@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.name for p in DASHBOARDS])
def test_every_panel_returns_data(stack: Stack, path: Path) -> None:
    assert stack.prometheus is not None
    wait_for_every_panel(
        stack.prometheus, load_dashboard(path), RATE_WINDOW, DATA_DEADLINE, SERVERS, POLL, stack.logs
    )


@MEASURING
def test_work_and_offload_panels_show_the_work_in_force(stack: Stack) -> None:
    """Work per request by kind is what each server was started with; the pool's gauges, who has one."""
    assert stack.prometheus is not None
    prometheus = stack.prometheus
    dashboard = load_dashboard(DASHBOARDS[0].parent / "echolab-overview.json")
    exprs = dict(queries(dashboard))
    work = next(expr for name, expr in exprs.items() if "'Work per request by kind' A" in name)
    pool = next(expr for name, expr in exprs.items() if "'Offload pool" in name and name.endswith(" A"))
    expected = {**{(s, "io"): IO_MS / 1000 for s in SERVERS}, **WORK_PER_REQUEST}

    def per_request() -> dict[tuple[str, str], float]:
        try:
            values = resolve_variables(prometheus, dashboard, RATE_WINDOW)
        except NoData:  # no server scraped yet (run on its own, this test is the first to look)
            return {}
        result = prometheus.query(substitute(work, values))
        return {(r["metric"]["server"], r["metric"]["kind"]): float(r["value"][1]) for r in result}

    def near(seen: dict[tuple[str, str], float]) -> bool:
        return set(seen) == set(expected) and all(abs(seen[k] / expected[k] - 1) < 0.1 for k in expected)

    poll_until(per_request, near, what=f"work per request {expected}", timeout=DATA_DEADLINE, interval=POLL)
    # The pool's gauges come from the servers with an event loop, offloading (async) or not (at 0).
    result = prometheus.query(substitute(pool, resolve_variables(prometheus, dashboard, RATE_WINDOW)))
    assert {r["metric"]["server"] for r in result} == {"async", "async-http"}


@MEASURING
def test_run_report_draws_every_panel(stack: Stack, tmp_path: Path) -> None:
    """``echolab report`` over the run: every panel of every dashboard drew data, the runs are shaded."""
    assert stack.prometheus is not None
    prometheus = stack.prometheus.url
    # Until the run has lasted long enough for every panel's rate window. Each look draws every
    # panel, seconds of CPU: this test comes last, after the cheaper waits above.
    report = poll_until(
        lambda: write_report(
            prometheus, stack.started, time.time(), tmp_path / "report.html", DASHBOARDS[0].parent
        ),
        lambda report: report.empty == [],
        what="a report with every panel drawn",
        timeout=DATA_DEADLINE,
        interval=POLL,
    )
    drawn = {(p.dashboard, p.title) for p in report.panels}
    for path in DASHBOARDS:
        dashboard = load_dashboard(path)
        for panel in all_panels(dashboard):
            if panel["type"] == "row":
                continue
            copies = SERVERS if panel.get("repeat") == "server" else ("",)
            titles = {panel["title"].replace("$server", server or "All") for server in copies}
            assert titles <= {t for d, t in drawn if d == dashboard["title"]}, panel["title"]
    page = report.path.read_text()
    assert page.count("<svg") == sum(p.kind in ("timeseries", "heatmap") for p in report.panels)
    assert '<table class="data">' in page and "How to read this dashboard" in page
    print(f"run report: {report.path}")
