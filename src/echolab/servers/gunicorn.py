"""The HTTP echo servers: the apps of ``http_apps`` under gunicorn, configured from our settings.

* ``threaded-http``: the WSGI app on gunicorn's ``gthread`` workers:
  ``--workers`` processes with ``--http-threads`` threads each, one request
  per thread at a time, the delay a ``time.sleep`` in that thread.
* ``async-http``: the ASGI app on uvicorn-worker's ``UvicornWorker`` (uvloop,
  httptools): ``--workers`` processes, each one event loop, the delay an
  ``await asyncio.sleep``. uvicorn's own ``uvicorn.workers`` module is
  deprecated since uvicorn 0.30 in favour of this package, which is where
  the worker is maintained and tested against gunicorn.

Metrics use prometheus_client's multiprocess mode: the workers write to
files in PROMETHEUS_MULTIPROC_DIR, a directory made fresh for each server
start; the gunicorn master serves /metrics on the metrics port and sums the
files at scrape time, so one scrape covers every worker, as it does for the
one-process TCP servers. What the files cannot carry (the info metric, the
process tree's CPU, memory and threads) the master collects itself.
"""

from __future__ import annotations

import contextlib
import gc
import glob
import math
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psutil
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from prometheus_client import CollectorRegistry, Counter, multiprocess, start_http_server, values
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .. import interpreters
from ..catalogue import Server
from ..metrics import family, watch_cgroup
from ..runtime import STILL_STOPPING, binding, end_start_watch, log, no_signals_for_threads
from ..settings import HttpSettings, ThreadedHttpSettings
from . import work_model
from .async_http import EchoUvicornWorker, client_gone, cut_quietly, limits_for
from .hooks import Called, overrides
from .http_apps import EchoCore, Instruments, make_asgi_app, make_wsgi_app
from .threaded_http import EchoThreadWorker
from .work_model import Workload

# prometheus_client's multiprocess functions called here (tests/servers/test_hooks.py checks them).
CALLED = (
    Called(multiprocess.MultiProcessCollector, "merge", ("files", "accumulate")),
    Called(multiprocess, "mark_process_dead", ("pid", "path")),
    Called(values, "get_value_class", ()),
)
HEARTBEAT_TIMEOUT = 30  # gunicorn's `timeout`: a worker silent this long is killed and replaced
# The master waits this much longer than the workers' drain before it SIGKILLs them: time to
# cut what is left and exit (equal deadlines raced, and gunicorn logged "Perhaps out of memory?").
EXIT_MARGIN = 2
# gunicorn's defaults, stated: the HTTP counterpart of the TCP servers' size limit on a request.
LIMIT_REQUEST_LINE = 4094
LIMIT_REQUEST_FIELDS = 100
LIMIT_REQUEST_FIELD_SIZE = 8190
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
GC_INTERVAL = 1.0  # seconds between copies of a worker's GC counts into its metrics files


def gunicorn_options(server: Server, settings: HttpSettings) -> dict[str, Any]:
    """Our settings as gunicorn's (docs/server-behavior.md, "HTTP servers", explains each).

    The worker class follows the server's family: threads (gthread) or an event loop (uvicorn).
    """
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    # max_connections is for the whole server, as for the TCP servers; each worker takes its share.
    connections = max(1, math.ceil(settings.max_connections / settings.workers))
    if server.family == "threaded":
        worker: type = EchoThreadWorker.configured(settings)
    else:
        limits = limits_for(settings, LIMIT_REQUEST_LINE, LIMIT_REQUEST_FIELDS, LIMIT_REQUEST_FIELD_SIZE)
        worker = EchoUvicornWorker.configured(settings, limits, connections)
    options: dict[str, Any] = {
        "bind": [f"{host}:{settings.port}"],
        "workers": settings.workers,
        "worker_class": worker,
        "worker_connections": connections,
        "backlog": settings.backlog,
        # gunicorn takes whole seconds; round up so no wait is shorter than asked.
        "keepalive": math.ceil(settings.idle_timeout),
        "graceful_timeout": math.ceil(settings.drain_timeout) + EXIT_MARGIN,
        "timeout": HEARTBEAT_TIMEOUT,
        "limit_request_line": LIMIT_REQUEST_LINE,
        "limit_request_fields": LIMIT_REQUEST_FIELDS,
        "limit_request_field_size": LIMIT_REQUEST_FIELD_SIZE,
        "loglevel": settings.log_level,
        "errorlog": "-",
        # A line per request only at debug, as for the TCP servers.
        "accesslog": "-" if settings.log_level == "debug" else None,
        "proc_name": f"echolab-{server.name}",
        # gunicorn 25+ opens a control socket under $XDG_RUNTIME_DIR or ~/.gunicorn: not wanted here.
        "control_socket_disable": True,
    }
    if isinstance(settings, ThreadedHttpSettings):
        options["threads"] = settings.http_threads
    if os.path.isdir("/dev/shm"):
        # The heartbeat file is touched every second per worker: keep it off a
        # container's overlay disk (gunicorn's own advice for Docker).
        options["worker_tmp_dir"] = "/dev/shm"
    return options


class ServerInfo(Collector):
    """``echo_server_info``, from the master: Info metrics have no multiprocess mode."""

    def __init__(self, server: str, info: dict[str, str]) -> None:
        self.server, self.info = server, info

    def collect(self) -> Iterator[Metric]:
        yield family("echo_server", self.server, self.info)


class ProcessTree(Collector):
    """CPU, memory, descriptors and threads of the master and its workers together.

    In multiprocess mode prometheus_client's process collector would describe
    the master only, which does no request work; the server is the process
    tree. CPU includes workers that have exited (the master's reaped-children
    times), so the counter never goes back. RSS is summed: pages shared since
    the fork count once per process, an upper bound.
    """

    def __init__(self, server: str) -> None:
        self.server = server
        self.master = psutil.Process()

    def collect(self) -> Iterator[Metric]:
        master_cpu = self.master.cpu_times()
        cpu = master_cpu.user + master_cpu.system + master_cpu.children_user + master_cpu.children_system
        rss = fds = threads = 0
        workers = self.master.children()
        for process in [self.master, *workers]:
            try:
                with process.oneshot():
                    if process is not self.master:
                        times = process.cpu_times()
                        cpu += times.user + times.system
                    rss += process.memory_info().rss
                    fds += process.num_fds()
                    threads += process.num_threads()
            # Exited since children() listed it; or exiting, its /proc entries root-owned to a
            # master without capabilities (the stack drops them all).
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        yield CounterMetricFamily(
            "process_cpu_seconds",
            "User and system CPU time of the server's processes (gunicorn master and workers), in seconds",
            value=cpu,
        )
        yield GaugeMetricFamily(
            "process_resident_memory_bytes", "Resident memory of the server's processes, summed", value=rss
        )
        yield GaugeMetricFamily(
            "process_open_fds", "Open file descriptors of the server's processes, summed", value=fds
        )
        yield GaugeMetricFamily(
            "process_start_time_seconds",
            "Start time of the gunicorn master since the epoch, in seconds",
            value=self.master.create_time(),
        )
        yield family("echo_threads", self.server, threads)
        yield family("echo_http_workers", self.server, len(workers))


def server_info(settings: HttpSettings) -> dict[str, str]:
    common = {"workers": str(settings.workers), **work_model.info(settings), **interpreters.here().facts()}
    if isinstance(settings, ThreadedHttpSettings):
        return {"model": "gthread", "threads": str(settings.http_threads), **common}
    return {"loop": "uvloop", "http": "httptools", **common}


class SettledFilesCollector(multiprocess.MultiProcessCollector):
    """MultiProcessCollector that skips a worker's metrics file until it has content.

    prometheus_client creates a worker's file, then sizes it: a scrape in
    that instant read 0 bytes and failed with struct.error (HTTP 500, seen in
    CI). Such a file holds no samples yet, so leaving it out loses nothing.
    """

    @overrides
    def collect(self) -> Any:
        files = []
        for path in glob.glob(os.path.join(self._path, "*.db")):
            with contextlib.suppress(OSError):  # removed since the glob: a dead worker's gauges
                if os.path.getsize(path) >= 8:
                    files.append(path)
        return self.merge(files, accumulate=True)  # type: ignore[no-untyped-call]


def export_garbage_collections(interval: float = GC_INTERVAL) -> None:
    """This worker's ``python_gc_*``, copied every ``interval`` into the files the master sums.

    The master's registry cannot see its workers' collectors, and it is the
    workers' GC that serves requests. A thread copies ``gc.get_stats()`` (what
    prometheus_client's own GC collector reads) into multiprocess counters of
    the same names, help and labels, counting from the worker's start. Not a
    ``gc.callbacks`` hook: a collection can start while the thread it
    interrupts holds prometheus_client's multiprocess lock, and a counter
    update from the hook would then wait on that lock forever.
    """
    help_texts = {
        "collections": ("python_gc_collections", "Number of times this generation was collected"),
        "collected": ("python_gc_objects_collected", "Objects collected during gc"),
        "uncollectable": ("python_gc_objects_uncollectable", "Uncollectable objects found during GC"),
    }
    # Not registered: in multiprocess mode the values go to files whatever the registry.
    counters = {
        key: Counter(name, text, ["generation"], registry=None) for key, (name, text) in help_texts.items()
    }
    seen = gc.get_stats()  # a fork copies the master's totals: count from here
    labelled = [{key: c.labels(str(g)) for key, c in counters.items()} for g in range(len(seen))]

    def copy() -> None:
        while True:
            now = gc.get_stats()
            for before, after, generation in zip(seen, now, labelled, strict=True):
                for key, counter in generation.items():
                    counter.inc(after[key] - before[key])
            seen[:] = now
            time.sleep(interval)

    threading.Thread(target=copy, name="gc-metrics", daemon=True).start()


class MultiprocessMetrics:
    """The gunicorn hooks that run prometheus_client's multiprocess mode."""

    def __init__(self, server: Server, settings: HttpSettings) -> None:
        self.server = server
        self.settings = settings
        self.directory = ""

    def when_ready(self, arbiter: Any) -> None:
        """In the master: after the echo port is bound (a port in use leaves nothing), before the fork."""
        settings, name = self.settings, self.server.name
        # Fresh for every start: files left by an earlier run would be summed in.
        self.directory = tempfile.mkdtemp(prefix=f"echolab-{name}-metrics-")
        os.environ[MULTIPROC_ENV] = self.directory  # inherited by the workers at fork
        # prometheus_client picks its value class when first imported, before
        # the variable was set: pick again, so the workers' instruments write files.
        values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
        registry = CollectorRegistry(auto_describe=True)
        SettledFilesCollector(registry, path=self.directory)  # type: ignore[no-untyped-call]
        registry.register(ServerInfo(name, server_info(settings)))
        registry.register(ProcessTree(name))
        watch_cgroup(self.server, settings.cgroup_root, registry)
        # The metrics server's threads leave the master's signals to the master's main thread.
        signals = [*arbiter.SIGNALS, signal.SIGCHLD]
        host, port = settings.host, settings.metrics_port
        try:
            with binding("metrics", host, port), no_signals_for_threads(signals):
                http_server, _ = start_http_server(port, addr=host, registry=registry)
        except OSError:  # the port is taken: gunicorn exits without calling on_exit
            self.on_exit(arbiter)
            raise
        log.info("metrics on %s:%d", settings.host, http_server.server_port)

    def child_exit(self, arbiter: Any, worker: Any) -> None:
        # Drops the dead worker's livesum gauge files (in flight); its counters stay summed in.
        multiprocess.mark_process_dead(worker.pid, self.directory)  # type: ignore[no-untyped-call]

    def on_exit(self, arbiter: Any) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


class EchoArbiter(Arbiter):  # type: ignore[misc]  # gunicorn is untyped
    """gunicorn's master, without the binary upgrade (USR2).

    USR2 re-executes the master beside the running one, which hands over
    the echo port; the new master cannot bind the metrics port, which the
    old one holds until it exits, and dies (prometheus_client's server
    takes no inherited socket). In a container an upgrade is a new
    container. So USR2 is logged and ignored: nothing is lost.
    """

    @overrides
    def start(self) -> None:
        super().start()  # the echo port bound, when_ready called: gunicorn says "Listening at"
        end_start_watch()

    @overrides
    def handle_usr2(self) -> None:
        self.log.warning("USR2 ignored: no binary upgrade (the metrics port cannot be handed over)")

    def kill_workers(self, sig: int) -> None:
        # gunicorn's stop() ends with a SIGKILL to the workers still there past graceful_timeout,
        # and then calls it "Perhaps out of memory?": say what the stop was waiting for instead.
        if sig == signal.SIGKILL and self.WORKERS:
            self.log.error(
                "%s %ss after the signal, past the drain timeout: waiting for worker(s) %s; killing them",
                STILL_STOPPING,
                self.cfg.graceful_timeout,
                ", ".join(str(pid) for pid in self.WORKERS),
            )
        super().kill_workers(sig)


class EchoApplication(BaseApplication):  # type: ignore[misc]  # gunicorn is untyped
    def __init__(self, server: Server, settings: HttpSettings) -> None:
        self.server = server
        self.settings = settings
        self.hooks = MultiprocessMetrics(server, settings) if settings.metrics else None
        super().__init__(prog=f"echolab serve {server.name}")

    @overrides
    def load_config(self) -> None:
        options = gunicorn_options(self.server, self.settings)
        if self.hooks is not None:
            hooks: dict[str, Callable[..., None]] = {
                "when_ready": self.hooks.when_ready,
                "child_exit": self.hooks.child_exit,
                "on_exit": self.hooks.on_exit,
            }
            options.update(hooks)
        for key, value in options.items():
            self.cfg.set(key, value)

    @overrides
    def run(self) -> None:
        """BaseApplication.run, with our master."""
        try:
            EchoArbiter(self).run()
        except RuntimeError as exc:  # gunicorn's own "Error: ..." for a configuration it refuses
            log.error("cannot start: %s", exc)
            sys.exit(2)

    @overrides
    def load(self) -> Any:
        """Runs in each worker, after the fork: its instruments write that worker's files."""
        settings, server = self.settings, self.server
        if settings.metrics:
            export_garbage_collections()
        instruments = Instruments(server, settings.metrics, settings.io != "timer")
        workload = Workload(settings, instruments.worked, instruments.pool_changed, instruments)
        core = EchoCore(instruments, workload, settings.max_message_bytes)
        if server.family == "threaded":
            return make_wsgi_app(core)
        return cut_quietly(make_asgi_app(core, client_gone))


def check_free(host: str, port: int) -> None:
    """Raise OSError (EADDRINUSE) if ``host:port`` cannot be bound.

    gunicorn retries a taken port five times, a second apart, then exits 1
    with its own log lines; asking first gives the one-line error the TCP
    servers give, at once. (Port 0 is always free.)
    """
    if port:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))


def run(server: Server, settings: HttpSettings) -> int:
    with binding("echo", settings.host, settings.port):
        check_free(settings.host, settings.port)
    if settings.metrics:
        with binding("metrics", settings.host, settings.metrics_port):
            check_free(settings.host, settings.metrics_port)
    log.info(
        "starting gunicorn: %s on %s:%d, %d worker(s)%s, %s metrics=%s",
        server.name,
        settings.host,
        settings.port,
        settings.workers,
        f" x {settings.http_threads} threads" if isinstance(settings, ThreadedHttpSettings) else "",
        work_model.describe(settings),
        settings.metrics_port if settings.metrics else "off",
    )
    EchoApplication(server, settings).run()  # the arbiter exits the process itself (0 after a graceful stop)
    return 0
