"""The home dashboard: the four servers side by side under the same load and the same limits."""

from __future__ import annotations

from grafana_foundation_sdk.models import dashboard as dm

from .. import ports
from ..catalogue import SERVERS
from ..metrics import CGROUP_CONDITION, FAILURE_KINDS
from .grafana import (
    SERVER,
    WINDOW,
    Query,
    Row,
    bucket,
    dashboard,
    exporters,
    heatmap_panel,
    interval_variable,
    load_test_runs,
    metric,
    quantile,
    server_rate,
    server_restarts,
    server_variable,
    table_panel,
    text_panel,
    timeseries_panel,
)

UID = "echolab-overview"
USERS = "server:echo_client_users:sum"  # prometheus/rules.yml
THINK = "server:echo_client_think_time_seconds:max"
OFFERED = "server:echo_client_offered_rate:sum"
CPU_PER_REQUEST = "server:echo_cpu_seconds_per_request:rate1m"
SERVER_JOB = 'job="echo-servers"'
# The row whose panels have data only while the servers' IO is a dependency (--io postgres or http).
DEPENDENCIES = "Dependencies: PostgreSQL and the downstream, through each server's pool"
LOCUST_JOBS = 'job=~"locust-.*"'


def _families() -> str:
    names = {family: [s.name for s in SERVERS if s.family == family] for family in ("threaded", "async")}
    return (
        f"the threaded family ({', '.join(names['threaded'])}) in warm colours, "
        f"the async family ({', '.join(names['async'])}) in cool ones, as in `make demo`'s report"
    )


ABOUT = f"""\
Four echo servers, each under the **same CPU and memory limits** (table on the right), loaded by \
Locust (web UI on port {ports.LOCUST_WEB}): {_families()}. Pick any of them with the **server** \
selector: every panel follows it.

* **Little's law**: with *N* users each waiting for a reply that takes the server's work *D* (its \
CPU work, blocking call and IO per request), then thinking *Z*, throughput cannot exceed \
*N / (D + Z)*. A server that keeps up follows the dashed bound; one that falls behind drops below \
it while its latency climbs.
* **Users and think time** come from Locust's own metrics (`--think-time`), **the work** from the \
servers' own counts (`echo_work_seconds_total`): nothing to type in.
* **Work per request** shows where a request's time goes; with a blocking call on an event loop \
(`make scenario NAME=blocking`) the loop serves one request at a time: its lag jumps and its \
rate falls to one request per blocking call, while the threaded servers wait in parallel.
* Server-side latency runs from a request's last byte read to its reply written; client-side adds \
the network and the client's own queueing.
* **Dependencies** (`make scenario NAME=db`, `NAME=api`): each request's IO a real query on \
PostgreSQL or a call to the downstream service, through its client's pool. Each server's rate stands \
beside its pool's use and the downstream's concurrency: a pool full with the rate flat is the pool's \
limit, not the model's.
* Threads matter for the threaded servers, event-loop lag only for the async TCP server. \
Connections are counted by the TCP servers only: gunicorn owns the HTTP servers' connections.
"""


def process_metric(name: str, legend: str, rate: bool = False) -> list[Query]:
    """A process_* metric (prometheus_client's, not in the catalogue) of each server and Locust process."""
    servers, locust = f"{name}{{{SERVER_JOB}, {SERVER}}}", f"{name}{{{LOCUST_JOBS}}}"
    if rate:
        servers, locust = f"rate({servers}[{WINDOW}])", f"rate({locust}[{WINDOW}])"
    return [Query(servers, legend), Query(locust, "{{job}} {{instance}}")]


def header() -> Row:
    info = metric("echo_server")
    servers = table_panel(
        "Servers and limits in force",
        "From echo_server_info: how each server runs and the work model in force, each request's CPU "
        "work, then its blocking call, then its IO (ECHO_CPU_MS, ECHO_BLOCKING_MS, ECHO_DELAY_MS, or a "
        "preset of `make scenario`); offload: where an event-loop server runs the blocking call. cpus "
        "and memory are the container limits (SERVER_CPUS, SERVER_MEMORY) docker compose gave every "
        "server. workers: gunicorn worker processes of the HTTP servers. An empty cell (n/a in `make "
        "report`) is a setting that does not apply to that server: threads size the threaded "
        "server's pool model only, offload threads the pool of `offload thread`.",
        Query(f"{info}{{{SERVER}}}", "{{server}}"),
        columns=[
            "server",
            "model",
            "api",
            "loop",
            "http",
            "threads",
            "workers",
            "framing",
            "cpu_ms",
            "blocking_ms",
            "offload",
            "offload_threads",
            "delay_ms",
            "delay_distribution",
            "io",
            "client",
            "pool_size",
            "pool_timeout",
            "cpus",
            "memory",
        ],
        rename={
            "cpu_ms": "CPU (ms)",
            "blocking_ms": "blocking (ms)",
            "offload_threads": "offload threads",
            "delay_ms": "IO (ms)",
            "delay_distribution": "IO drawn",
            "pool_size": "pool size",
            "pool_timeout": "pool timeout (s)",
            "cpus": "CPU limit",
            "memory": "memory limit",
        },
    )
    return Row("", [text_panel("How to read this dashboard", ABOUT), servers], widths=[8, 16])


def throughput() -> Row:
    answered = server_rate("echo_requests", ', outcome="ok"')
    requests = timeseries_panel(
        "Requests per second",
        "reqps",
        "Answered requests as each server counts them, and completed requests (ok or failed) as "
        "Locust counts them.",
        [
            Query(answered, "{{server}} server: answered"),
            Query(server_rate("echo_client_requests"), "{{server}} client: completed"),
        ],
    )
    littles_law = timeseries_panel(
        "Little's law: bound vs achieved",
        "reqps",
        "Bound = Locust users / (work per request + think time), the work being what the server "
        "counted doing per request, its IO, CPU and blocking call (the panel 'Work per request by "
        "kind'): the most a server can answer when each user waits for its reply. Achieved = answered "
        "requests per second. A server that runs its work one request at a time (a blocking call on "
        "an event loop) stays far below.",
        [
            Query(
                f"{USERS}{{{SERVER}}} / on (server) ({work_per_request('server')} + on (server) {THINK})",
                "{{server}} bound: users / (work + think)",
            ),
            Query(answered, "{{server}} achieved"),
        ],
        dashed=".*bound.*",
    )
    offered = timeseries_panel(
        "Open loop: offered vs achieved",
        "reqps",
        "In an open-loop run (Locust --target-rps) the load generators offer a fixed rate whatever the "
        "servers do (dashed); achieved is what each server answered. Below the offer, the server fell "
        "behind: its latency shows the queue, and arrivals a user could not send (--max-inflight "
        "unanswered) are not_sent failures. Empty in a closed loop, where Little's law is the bound.",
        [
            Query(f"{OFFERED}{{{SERVER}}} > 0", "{{server}} offered"),
            Query(answered, "{{server}} achieved"),
            Query(server_rate("echo_client_failures", ', kind="not_sent"'), "{{server}} not sent"),
        ],
        dashed=".*offered$",
    )
    return Row("Throughput", [requests, littles_law, offered])


def latency() -> Row:
    server, client = "echo_request_duration_seconds", "echo_client_request_duration_seconds"
    quantiles = [
        Query(quantile(q, name), f"{{{{server}}}} {side} p{round(q * 100)}")
        for name, side in ((server, "server"), (client, "client"))
        for q in (0.5, 0.95, 0.99)
    ]
    lines = timeseries_panel(
        "Latency: $server",
        "s",
        f"Server side: last byte read to reply written ({server}). Client side: as Locust saw it "
        f"({client}). Quantiles from histogram buckets.",
        quantiles,
    )
    distribution = heatmap_panel(
        "Latency distribution: $server",
        "Requests per second in each of the server's duration buckets. A server that keeps up is one "
        "band at its delay; a second band above it is requests that waited (for a thread, for the "
        "loop, for the CPU): bimodal latency, which the quantile lines average away.",
        Query(f"sum by (le) (rate({bucket(server)}{{{SERVER}}}[{WINDOW}]))", "{{le}}"),
        repeat="server",
    )
    # The heatmap repeats per server on a line of its own, below the quantiles of every server.
    return Row("Latency", [lines, distribution], widths=[24, 24])


def concurrency() -> Row:
    active = metric("echo_connections_active")
    connections = timeseries_panel(
        "Open connections vs Locust users (TCP servers)",
        "short",
        "With `lines` framing each user keeps one connection: the two lines should coincide until a "
        f"server refuses or drops connections. Only {exporters('echo_connections_active')} count "
        "connections (gunicorn owns the HTTP servers'), so the other servers' users are left out here.",
        [
            Query(f"sum by (server) ({active}{{{SERVER}}})", "{{server}} connections"),
            Query(
                f"{USERS}{{{SERVER}}} and on (server) group by (server) ({active}{{{SERVER}}})",
                "{{server}} Locust users",
            ),
        ],
    )
    in_flight = timeseries_panel(
        "Requests in flight vs Locust users",
        "short",
        "Requests read but not yet answered (HTTP servers: summed over gunicorn's workers). With no "
        "think time, every user waits on one request: in-flight near users means the server keeps up; "
        "far below means requests queue before it reads them.",
        [
            Query(
                f"sum by (server) ({metric('echo_requests_in_flight')}{{{SERVER}}})", "{{server}} in flight"
            ),
            Query(f"{USERS}{{{SERVER}}}", "{{server}} Locust users"),
        ],
    )
    return Row("Concurrency", [connections, in_flight])


def dependencies() -> Row:
    """Each server's rate beside its pool's use and the downstream's concurrency (issue 18)."""
    in_use = f"sum by (server) ({metric('echo_dependency_connections_in_use')}{{{SERVER}}})"
    size = f"sum by (server) ({metric('echo_dependency_pool_size')}{{{SERVER}}})"
    calls, peak = (
        metric("echo_downstream_calls_in_progress"),
        metric("echo_downstream_calls_in_progress_peak"),
    )
    serving = f"group by (server) ({metric('echo_dependency_pool_size')}{{{SERVER}}})"
    failed = rate_or_none("echo_dependency_errors", "kind", serving)
    wait = "echo_dependency_pool_wait_seconds"
    return Row(
        DEPENDENCIES,
        [
            timeseries_panel(
                "Requests per second",
                "reqps",
                "Answered requests: set it against the pool's use beside it. A flat rate with the pool "
                "full is the pool's limit (size / delay), whatever the model.",
                [Query(server_rate("echo_requests", ', outcome="ok"'), "{{server}}")],
            ),
            timeseries_panel(
                "Pool use: connections in use / pool size",
                "percentunit",
                "Connections to the dependency held by calls, over the most the client's pool holds "
                "(--pool-size, or the library's default: psycopg 4, asyncpg 10, httpx 100, requests 10). "
                "gunicorn's workers are processes, each with a pool of its own: both sums cover all of "
                "them. Above 100%: requests' pool, which opens extra connections rather than wait.",
                [Query(f"{in_use} / on (server) {size}", "{{server}} in use / size")],
            ),
            timeseries_panel(
                "Downstream: calls in progress",
                "short",
                "Calls the downstream service is serving at once (--io http), all servers together, and "
                "the most since it started (dashed): the pools let at most their size through each.",
                [Query(f"sum({calls})", "calls in progress"), Query(f"max({peak})", "peak")],
                dashed="^peak$",
            ),
            timeseries_panel(
                "Dependency errors by kind",
                "reqps",
                "Requests whose dependency failed, answered ERROR dependency (TCP) or 503 (HTTP): connect "
                "(no connection), timeout, pool_timeout (no pooled connection within --pool-timeout), "
                "query (the call failed). Shown as 'none' until the first one.",
                [Query(failed, "{{server}} {{kind}}")],
            ),
            timeseries_panel(
                "Waiting for a pooled connection",
                "s",
                f"How long calls waited for a connection from the pool ({metric(wait)}), quantiles of "
                "its histogram: near zero while the pool has a free connection, up to --pool-timeout "
                "when it is the limit (requests never waits).",
                [Query(quantile(q, wait), f"{{{{server}}}} wait p{round(q * 100)}") for q in (0.5, 0.99)],
            ),
        ],
        # The rate, the pool's use and the downstream's concurrency on one line; why it stalls below.
        widths=[8, 8, 8, 12, 12],
    )


def rate_or_none(name: str, label: str, present: str) -> str:
    """``name``'s rate by server and ``label``, or 0 with ``label`` "none" for each server ``present``
    (a ``group by (server)``) has: a series that shows 'none' until the first one, since a panel
    with no line at all looks broken."""
    return server_rate(name, by=f"server, {label}") + (
        f' or on (server) label_replace(0 * {present}, "{label}", "none", "", "")'
    )


def errors() -> Row:
    opened = f"group by (server) ({metric('echo_connections_opened')}{{{SERVER}}})"
    accept = rate_or_none("echo_accept_errors", "errno", opened)
    server_errors = timeseries_panel(
        "Server errors by kind",
        "cps",
        "Requests not answered (too_large, aborted), and for the TCP servers connections lost (reset, "
        "broken_pipe, other), refused (max_connections, shutdown), closed for idling, and failed "
        "accept() calls by errno (shown as 'none' until the first one). An HTTP server answering 413 "
        "counts too_large.",
        [
            Query(
                server_rate("echo_requests", ', outcome!="ok"', by="server, outcome"),
                "{{server}} request {{outcome}}",
            ),
            Query(server_rate("echo_connection_errors", by="server, kind"), "{{server}} connection {{kind}}"),
            Query(
                server_rate("echo_connections_refused", by="server, reason"), "{{server}} refused {{reason}}"
            ),
            Query(server_rate("echo_connections_timed_out"), "{{server}} idle timeout"),
            Query(accept, "{{server}} accept {{errno}}"),
        ],
    )
    users = f"group by (server) ({metric('echo_client_users')}{{{SERVER}}})"
    client_failures = timeseries_panel(
        "Client failures by kind",
        "reqps",
        f"Failed requests as Locust saw them: {', '.join(FAILURE_KINDS)}.",
        [Query(rate_or_none("echo_client_failures", "kind", users), "{{server}} {{kind}}")],
    )
    return Row("Errors", [server_errors, client_failures])


def work_per_request(by: str) -> str:
    """Seconds of simulated work per request each server read, summed by ``by`` (server, or server, kind)."""
    work = f"sum by ({by}) (rate({metric('echo_work_seconds')}{{{SERVER}}}[{WINDOW}]))"
    requests = f"sum by (server) (rate({metric('echo_requests')}{{{SERVER}}}[{WINDOW}]))"
    return f"{work} / on (server) group_left {requests}"


def work() -> Row:
    busy, queued = metric("echo_offload_threads_busy"), metric("echo_offload_tasks_queued")
    lag = [
        Query(f"{quantile(q, 'echo_event_loop_lag_seconds')} >= 0", f"{{{{server}}}} lag p{round(q * 100)}")
        for q in (0.5, 0.99)
    ]
    return Row(
        "Work per request, the offload pool, the event loop",
        [
            timeseries_panel(
                "Work per request by kind",
                "s",
                "Seconds of simulated work per request, by kind, in the order a request does them: cpu "
                "(dotted: pure-Python, holding the GIL), blocking (dashed: a sync call, on the event loop "
                "unless offloaded), io (solid: awaited, or slept through in a thread). From "
                f"{metric('echo_work_seconds')}; only the kinds in force are drawn. Against the latency "
                "above: the rest is waiting (for a thread, the loop, the GIL or the CPU).",
                [Query(f"{work_per_request('server, kind')} > 0", "{{server}} {{kind}}")],
                dashed=".* blocking$",
                dotted=".* cpu$",
            ),
            timeseries_panel(
                "Offload pool: threads busy, calls queued",
                "short",
                f"The pool that {exporters('echo_offload_threads_busy')} hand their blocking calls to "
                "with --offload thread (ECHO_OFFLOAD; --offload-threads in the table at the top): threads "
                "running a call, and calls waiting for one (dashed). All threads busy with a queue: the "
                "server has become a bounded pool, at most threads / blocking time requests a second. "
                "Zero with --offload none: the calls run on the event loop, whose lag shows it.",
                [
                    Query(f"sum by (server) ({busy}{{{SERVER}}})", "{{server}} threads busy"),
                    Query(f"sum by (server) ({queued}{{{SERVER}}})", "{{server}} calls queued"),
                ],
                dashed=".* queued$",
            ),
            timeseries_panel(
                "Event-loop lag",
                "s",
                f"How late the event loop of {exporters('echo_event_loop_lag_seconds')} ran a 250 ms "
                "timer: its queueing delay. A blocking call on the loop (--offload none) holds every "
                "other request and this probe: the lag jumps to the calls queued before it, tens of ms "
                "each. (The threaded server has no event loop; the HTTP servers' loops are not probed.)",
                lag,
            ),
        ],
    )


def threads() -> Row:
    return Row(
        "Threads and file descriptors",
        [
            timeseries_panel(
                "Threads",
                "short",
                "Threads alive in each server (the HTTP servers: gunicorn's master and workers "
                "together): the threaded servers' cost of concurrency, and an offload pool's threads.",
                [Query(f"{metric('echo_threads')}{{{SERVER}}}", "{{server}} threads")],
            ),
            timeseries_panel(
                "Open file descriptors",
                "short",
                "One per connection plus a few (the HTTP servers: summed over gunicorn's master and "
                "workers): the container's nofile limit is NOFILE_LIMIT.",
                process_metric("process_open_fds", "{{server}}"),
            ),
        ],
    )


def cpu() -> Row:
    throttled = metric("echo_cgroup_cpu_throttled_seconds")
    return Row(
        "CPU",
        [
            timeseries_panel(
                "CPU (100% = one core)",
                "percentunit",
                "CPU time per second of each server (against its limit; the HTTP servers: master and "
                "workers together) and of each Locust process. A load generator near 100% is the "
                "bottleneck: add workers.",
                process_metric("process_cpu_seconds_total", "{{server}} (limit {{cpus}} CPU)", rate=True),
            ),
            timeseries_panel(
                "Server CPU per request",
                "µs",
                "CPU time each server spends per request it reads (all its processes; a 1-minute window: "
                f"the {CPU_PER_REQUEST} recording rule). What the concurrency model costs: thread "
                "switches and the GIL for threads, callbacks and timers for an event loop. It rising "
                "with load means each request costs more as the server gets busier.",
                [Query(f"{CPU_PER_REQUEST}{{{SERVER}}} * 1e6", "{{server}}")],
            ),
            timeseries_panel(
                "CPU throttled by the container limit",
                "percentunit",
                "Seconds per second the server's cgroup was held back for having used its CPU quota "
                f"({throttled}, from cpu.stat; only {CGROUP_CONDITION}). Above zero, the limit, not "
                "the server, set the pace: compare servers only where none is throttled, or all are.",
                [Query(f"sum by (server) (rate({throttled}{{{SERVER}}}[{WINDOW}]))", "{{server}} throttled")],
            ),
        ],
    )


def memory_and_runtime() -> Row:
    return Row(
        "Memory, garbage collector, workers",
        [
            timeseries_panel(
                "Memory (resident)",
                "bytes",
                "Resident set size of each server (against its limit; the HTTP servers: summed over "
                "their processes, shared pages counted once per process) and of each Locust process.",
                process_metric("process_resident_memory_bytes", "{{server}} (limit {{memory}})"),
            ),
            timeseries_panel(
                "Python garbage collections",
                "cps",
                "Collections per second of each generation (prometheus_client's python_gc_*; the HTTP "
                "servers: their gunicorn workers, summed). A generation-2 collection (dashed) walks "
                "every object while the server waits: all its threads, or its whole event loop.",
                [
                    Query(
                        f"sum by (server, generation) (rate(python_gc_collections_total{{{SERVER_JOB}, "
                        f"{SERVER}}}[{WINDOW}]))",
                        "{{server}} gen {{generation}}",
                    )
                ],
                dashed=".* gen 2$",
            ),
            timeseries_panel(
                "gunicorn workers alive",
                "short",
                f"Worker processes under the gunicorn master of {exporters('echo_http_workers')}. A dip "
                "is a worker that died (crashed, or killed for missing its heartbeat) and was replaced; "
                "how many it keeps is echo_server_info's workers, in the table at the top.",
                [Query(f"{metric('echo_http_workers')}{{{SERVER}}}", "{{server}} workers")],
            ),
        ],
    )


def traffic() -> Row:
    return Row(
        "Traffic",
        [
            timeseries_panel(
                "Bytes per second",
                "Bps",
                "Request bytes received and reply bytes sent by each server (HTTP: bodies only).",
                [
                    Query(server_rate("echo_received_bytes"), "{{server}} received"),
                    Query(server_rate("echo_sent_bytes"), "{{server}} sent"),
                ],
            ),
            timeseries_panel(
                "Connections opened and non-UTF-8 requests",
                "cps",
                f"New connections accepted per second by {exporters('echo_connections_opened')} (with "
                "`lines` framing, mostly at ramp-up and after errors), and requests that were not "
                "valid UTF-8 (every server).",
                [
                    Query(server_rate("echo_connections_opened"), "{{server}} connections opened"),
                    Query(server_rate("echo_non_utf8_requests"), "{{server}} non-UTF-8 requests"),
                ],
            ),
        ],
    )


def build() -> dm.Dashboard:
    return dashboard(
        UID,
        "echolab: threaded vs async, over TCP and HTTP",
        "Threaded and async echo servers, over raw TCP and over HTTP (gunicorn), side by side under "
        "Locust load. Generated by `make dashboards` (src/echolab/dashboards/): edit the code, not the JSON.",
        [
            header(),
            throughput(),
            dependencies(),
            latency(),
            work(),
            cpu(),
            memory_and_runtime(),
            concurrency(),
            errors(),
            threads(),
            traffic(),
        ],
        variables=[
            server_variable(),
            interval_variable(),
        ],
        annotations=[load_test_runs(), server_restarts(SERVER)],
    )
