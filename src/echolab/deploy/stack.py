"""The containerized stack, described once: docker-compose.yml and the Kubernetes manifests render it.

Nothing here is specific to compose or to Kubernetes. It says which
containers there are, from which image, with which command, ports,
environment, health endpoint, limits and writable paths; the renderers
(:mod:`.compose`, :mod:`.kubernetes`) only say it in their own format. So
the two cannot disagree on images, ports, environment or limits, and a
server added to the catalogue appears in both without an edit here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from .. import catalogue, ports, scenarios, settings
from ..catalogue import Server
from ..scenarios import Scenario

NAME = "echolab"

UID = 10001  # the non-root user of both images (see the Dockerfile)

PROMETHEUS_IMAGE = "prom/prometheus:v2.53.3"
GRAFANA_IMAGE = "grafana/grafana:12.3.1"

# The stack fixes the drain timeout, so that the time the orchestrator waits
# between SIGTERM and SIGKILL can be set above it: a drain is never cut short.
DRAIN_TIMEOUT = settings.ServeSettings.drain_timeout
STOP_GRACE_SECONDS = int(DRAIN_TIMEOUT) + 10


@dataclass(frozen=True)
class Image:
    """One of the images the Dockerfile builds: its target, and the name it is pushed under."""

    target: str

    @property
    def name(self) -> str:
        return f"{NAME}-{self.target}"


SERVER_IMAGE = Image("server")
LOCUST_IMAGE = Image("locust")


@dataclass(frozen=True)
class Limits:
    """What every server gets, the same for all or the comparison means nothing."""

    cpus: float
    memory_mib: int
    # Tasks (threads and processes) per container: a fork bomb's ceiling. The
    # threaded server runs a thread per connection, so its default sits above
    # the default connection limit.
    pids: int


SERVER_LIMITS = Limits(cpus=1.0, memory_mib=512, pids=settings.ServeSettings.max_connections + 1024)
# 10,000 connections need 10,000 descriptors (servers and Locust lift their
# soft limit to the hard one). Docker cannot give a container more than its
# daemon's own hard limit.
NOFILE = 20000
# Locust is gevent (a handful of threads), Prometheus and Grafana are Go.
LOCUST_PIDS = 512
MONITORING_PIDS = 512

# --- secrets ---------------------------------------------------------------------

# The stack's passwords. Compose takes each from a file of SECRETS_FOLDER, which `make up` writes
# at random (SECRETS_FOLDER_VARIABLE moves it); Kubernetes from a Secret you create. Both mount it
# at secret_file(name), where each container reads it: never in an environment, which `docker
# inspect` and `kubectl describe` show.
SECRETS_FOLDER = "secrets"
SECRETS_FOLDER_VARIABLE = "SECRETS_FOLDER"
GRAFANA_PASSWORD_SECRET = "grafana-admin-password"
POSTGRES_PASSWORD_SECRET = "postgres-password"
SECRETS = (GRAFANA_PASSWORD_SECRET, POSTGRES_PASSWORD_SECRET)
SECRETS_MOUNT = "/run/secrets"


def secret_file(name: str) -> str:
    return f"{SECRETS_MOUNT}/{name}"


# --- the servers' dependencies: PostgreSQL and the downstream service (issue 18) ---

POSTGRES_SERVICE = "postgres"
POSTGRES_IMAGE = "postgres:17"
POSTGRES_UID = 999  # the image's postgres user: it runs as such from the start, so it needs no capability
POSTGRES_USER = POSTGRES_DB = NAME
# Set explicitly, at PostgreSQL's own default: what a service meets. db-pool's pools, sized for the
# clients, run into it (src/echolab/scenarios.py); a process per connection, so the pids limit follows.
POSTGRES_MAX_CONNECTIONS = scenarios.MAX_CONNECTIONS
POSTGRES_COMMAND = ("postgres", "-c", f"max_connections={POSTGRES_MAX_CONNECTIONS}")
# Over TCP: the entrypoint's first start, which runs the init scripts, listens on no port.
POSTGRES_READY = (
    "pg_isready",
    "--quiet",
    "--host",
    "127.0.0.1",
    "--username",
    POSTGRES_USER,
    "--dbname",
    POSTGRES_DB,
)
POSTGRES_PASSWORD_VARIABLE = "POSTGRES_PASSWORD"  # the image's; set from the secret as it starts
POSTGRES_LIMITS = Limits(cpus=1.0, memory_mib=512, pids=POSTGRES_MAX_CONNECTIONS + 64)
# The data lives in memory and dies with the container: pg_sleep reads none, and a fresh cluster
# takes the password its secret holds now (one initialised on a volume keeps the first for ever).
POSTGRES_HOME = "/var/lib/postgresql"
POSTGRES_SOCKETS = "/var/run/postgresql"

DOWNSTREAM_SERVICE = "downstream"
DOWNSTREAM_LIMITS = Limits(cpus=1.0, memory_mib=256, pids=256)  # one event loop; never the bottleneck
DOWNSTREAM_ENV = settings.environment(
    settings.DownstreamSettings, host="0.0.0.0", port=ports.DOWNSTREAM, metrics_port=ports.DOWNSTREAM_METRICS
)


# Settings the stack decides for every server, not the user: where it
# listens inside the container, the drain timeout (see above), and its
# dependencies, the database's password in its secret's file, not in the URL.
# The image sets ECHO_HOST=0.0.0.0.
FIXED_SERVER_ENV = settings.environment(
    settings.ServeSettings,
    port=ports.SERVER,
    metrics_port=ports.SERVER_METRICS,
    drain_timeout=DRAIN_TIMEOUT,
    downstream_url=f"http://{DOWNSTREAM_SERVICE}:{ports.DOWNSTREAM}",
    database_url=f"postgresql://{POSTGRES_USER}@{POSTGRES_SERVICE}:{ports.POSTGRES}/{POSTGRES_DB}",
    database_password_file=secret_file(POSTGRES_PASSWORD_SECRET),
)


# Settings that mean nothing in a container: its address is the image's, and so is its
# interpreter (the Dockerfile's PYTHON_IMAGE, not --python).
NOT_IN_CONTAINERS = ("host", "python")


def tunable_settings(server: Server) -> Iterator[settings.Option]:
    """The settings of ``server`` a user may set for the stack: all it reads but what the stack fixes."""
    for option in settings.options(server.settings):
        fixed = option.env in FIXED_SERVER_ENV
        if not fixed and option.name not in NOT_IN_CONTAINERS:
            yield option


def scenario_environment(scenario: Scenario) -> dict[str, str]:
    """The variables that put the stack's servers under ``scenario``: ``make scenario``.

    One set for every server: compose passes each only the variables its
    settings read (:func:`tunable_settings`), so each gets its own share of
    the preset, as :meth:`Scenario.options_for` picks it.
    """
    environment: dict[str, str] = {}
    for server in catalogue.SERVERS:
        environment.update(scenario.environment(server))
    return environment


# --- the network ------------------------------------------------------------------

# Every service a load generator or another service reaches by name keeps one
# address on the stack's network, whatever is recreated and in whatever order.
# With addresses handed out anew at each start, four servers recreated at once
# (`make up` after an edit, `docker compose up --force-recreate`) took each
# other's, and for a moment Docker's DNS answered a server's name with its old
# address: its users reconnected to another server and loaded it, unnoticed (the
# same protocol answers the same). A fixed address makes a stale answer the right
# one. The rest (Locust, Prometheus, Grafana, scaled workers) draw theirs from
# the upper half of the network, where no fixed address lies.
NETWORK = "172.16.90"  # the /24 of the stack's network, its first three numbers
NETWORK_VARIABLE = "STACK_NETWORK"  # where a user moves it, if it overlaps a network of theirs
FIRST_FIXED = 10  # the servers': .10, .11, ... in the catalogue's order
DYNAMIC = (128, 25)  # the others': .128/25


def fixed_hosts() -> dict[str, int]:
    """The last number of each fixed address on the stack's /24, by service: every server's, then the
    dependencies' (the servers' pools reach them by name)."""
    names = [*(server.name for server in catalogue.SERVERS), POSTGRES_SERVICE, DOWNSTREAM_SERVICE]
    return {name: FIRST_FIXED + i for i, name in enumerate(names)}


def health(server: Server) -> tuple[int, str]:
    """The port and path that answer 200 once ``server`` serves.

    An HTTP server's /healthz answers once a gunicorn worker serves requests
    (the master's /metrics comes first); a TCP server's /metrics once it
    listens.
    """
    path = server.transport.health_path
    return (ports.SERVER, path) if path else (ports.SERVER_METRICS, "/metrics")


def writable_paths(server: Server) -> tuple[str, ...]:
    """In-memory directories a server needs on a read-only root filesystem.

    The gunicorn master makes its prometheus_client multiprocess directory
    under $TMPDIR (/tmp) at each start, and each worker writes a file there.
    The workers' heartbeat files go to /dev/shm, which the runtime provides.
    """
    return ("/tmp",) if server.transport.worker_processes else ()


# --- Locust ---------------------------------------------------------------------

LOCUSTFILES = "/app/locustfile.py,/app/step_ramp.py,/app/spike.py"  # loadtest/ is /app in the image
MASTER_SERVICE = "locust-master"
WORKER_SERVICE = "locust-worker"
# --class-picker: the web UI offers the user classes (any of the servers) and
# a load shape. --enable-rebalancing: a worker lost or added mid-run gets its
# users redistributed at once (without it, a lost worker's users are gone
# until the master purges it, a minute later).
MASTER_ARGS = ("--master", "--class-picker", "--enable-rebalancing")
WORKER_ARGS = ("--worker", "--master-host", MASTER_SERVICE)
# Load parameters with the stack's defaults; the web UI may change each per run.
LOCUST_TUNABLE_ENV = {
    **settings.defaults(settings.LocustSettings, "think_time", "message_size"),
    **settings.defaults(settings.StepRampSettings, "step_users", "step_seconds"),
}


def locust_target_env() -> dict[str, str]:
    """Where each server is, fixed by the stack: its service name and container port."""
    env: dict[str, str] = {}
    for server in catalogue.SERVERS:
        host, port = server.locust_target
        env |= {host.env: server.name, port.env: str(ports.SERVER)}
    return env


LOCUST_FIXED_ENV = {
    **locust_target_env(),
    # Locust's 3 s lose a worker that a busy machine starves for a moment: every container
    # here shares the same cores. A lost worker's users move a little later.
    **settings.environment(settings.LocustSettings, metrics_port=ports.LOCUST_METRICS, worker_timeout=6.0),
}


# --- monitoring -----------------------------------------------------------------

GRAFANA_DASHBOARDS = "/etc/grafana/dashboards"
GRAFANA_PASSWORD_FILE = secret_file(GRAFANA_PASSWORD_SECRET)
GRAFANA_ENV = {
    "GF_SECURITY_ADMIN_USER": "admin",
    "GF_SECURITY_ADMIN_PASSWORD__FILE": GRAFANA_PASSWORD_FILE,
    "GF_USERS_ALLOW_SIGN_UP": "false",
    # Anyone who reaches the port may look, not edit.
    "GF_AUTH_ANONYMOUS_ENABLED": "true",
    "GF_AUTH_ANONYMOUS_ORG_ROLE": "Viewer",
    "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH": f"{GRAFANA_DASHBOARDS}/echolab-overview.json",
    "GF_ANALYTICS_REPORTING_ENABLED": "false",
    "GF_ANALYTICS_CHECK_FOR_UPDATES": "false",
    "GF_NEWS_NEWS_FEED_ENABLED": "false",
}


def probe_command(port: int, path: str) -> list[str]:
    """An HTTP check for images without curl or wget: Python fetches the URL (fails on anything but 2xx)."""
    return [
        "python",
        "-c",
        f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}{path}', timeout=3)",
    ]
