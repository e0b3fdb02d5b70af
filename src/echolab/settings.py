"""Every setting in one place: a typed, frozen dataclass per command, one field per setting.

A field's default, help text, unit, choices and range check are declared
once, with :func:`setting`; from that one declaration come its environment
variable (the class's prefix plus the name in capitals), its flag
(``--delay-ms``), the parsing and range check of both, and its row in the
manual's configuration table (``echolab config --markdown``).

Precedence, as in uvicorn and Locust: built-in default < environment < flag.
A bad value, from either, is a one-line error and exit status 2.

Which server reads which setting is the fields of its settings class, which
the server catalogue names: nothing here lists servers.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlsplit

from . import ports
from .scenarios import SCENARIOS

FRAMINGS = ("lines", "oneshot")
THREADED_MODELS = ("thread-per-connection", "pool", "serial")
LOOPS = ("uvloop", "asyncio")
ASYNC_APIS = ("streams", "protocol")
DELAY_DISTRIBUTIONS = ("fixed", "exponential")
OFFLOADS = ("none", "thread")
LOG_LEVELS = ("debug", "info", "warning", "error")
IO_KINDS = ("timer", "postgres", "http")
DB_DRIVERS = ("psycopg", "asyncpg")
HTTP_CLIENTS = ("httpx", "requests")
# What each client's pool holds when --pool-size is 0, its library's own default (tests/servers/
# test_dependency.py checks these against the libraries): psycopg_pool's min_size (max_size follows it),
# asyncpg's max_size, httpx's Limits.max_connections, requests' (urllib3's) pool_maxsize.
LIBRARY_POOL_SIZES = {"psycopg": 4, "asyncpg": 10, "httpx": 100, "requests": 10}
SUITE_PARTS = ("all", "sweep", "costs")
# How long a server the lab started may take to exit after SIGTERM before it is killed.
STOP_TIMEOUT = 20.0

Check = Callable[[Any], str | None]  # the problem with a value, or None


class SettingError(Exception):
    """A setting's value is wrong; the message is the one line the user sees."""


def at_least(low: float) -> Check:
    return lambda value: None if value >= low else f"must be at least {low:g}"


def above(low: float) -> Check:
    return lambda value: None if value > low else f"must be more than {low:g}"


def port_number(value: int) -> str | None:
    return None if 0 <= value <= 65535 else "not a port: 1-65535, or 0 for any free port"


def positive_list(values: tuple[int, ...]) -> str | None:
    return None if values and all(v > 0 for v in values) else "needs one or more whole numbers above 0"


def http_path(value: str) -> str | None:
    if not value or (value.startswith("/") and value.isascii() and value.isprintable() and " " not in value):
        return None
    return "not a path: it starts with /, in printable ASCII without spaces"


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_seconds(text: str) -> float:
    """Prometheus's duration syntax, one unit: ``90s``, ``15m``, ``2h``, ``1d``."""
    number, unit = text[:-1], text[-1:]
    if unit not in DURATION_UNITS or not number.replace(".", "", 1).isdigit():
        raise ValueError(f"not a duration: {text!r}")
    return float(number) * DURATION_UNITS[unit]


def prometheus_duration(value: str) -> str | None:
    try:
        return None if duration_seconds(value) > 0 else "must be longer than 0"
    except ValueError:
        return "not a duration: a number and s, m, h or d (15m)"


def postgres_url(value: str) -> str | None:
    """A libpq URL, as both drivers take it: postgresql://[user[:password]@]host[:port]/database."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018  # raises ValueError for a port that is not a number from 0 to 65535
    except ValueError:
        parts = None
    if not value or (parts and parts.scheme in ("postgresql", "postgres") and parts.hostname):
        return None
    return "not a PostgreSQL URL: postgresql://user:password@host:port/database"


def password_in(path: str) -> str:
    """The password a file holds: its first line, as a compose or Kubernetes secret's file has it."""
    with open(path, encoding="utf-8") as file:
        return file.readline().rstrip("\r\n")


def password_file(value: str) -> str | None:
    """A file a password can be read from, when one is named."""
    if not value:
        return None
    try:
        password = password_in(value)
    except OSError as exc:
        return f"cannot read it: {exc.strerror}"
    except UnicodeDecodeError:
        return "cannot read it: not UTF-8 text"
    return None if password else "holds no password (its first line is empty)"


def http_url(value: str) -> str | None:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018  # see postgres_url
    except ValueError:
        parts = None
    if parts and parts.scheme == "http" and parts.hostname and not parts.query and not parts.fragment:
        return None
    return "not an HTTP URL: http://host:port"


def known_scenarios(names: tuple[str, ...]) -> str | None:
    unknown = [name for name in names if name not in SCENARIOS]
    return f"no scenario {', '.join(unknown)}: choose from {', '.join(SCENARIOS)}" if unknown else None


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def parse_ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.replace(" ", "").split(",") if part)


def parse_names(text: str) -> tuple[str, ...]:
    return tuple(part for part in text.replace(" ", "").split(",") if part)


def as_text(value: object) -> str:
    """A value as an environment variable or a flag gives it: what :meth:`Option.parse` reads back."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


PARSERS: dict[Any, Callable[[str], Any]] = {
    int: int,
    float: float,
    str: str,
    bool: parse_bool,
    Path: Path,
    tuple[int, ...]: parse_ints,
    tuple[str, ...]: parse_names,
}


@dataclass(frozen=True)
class Spec:
    """What a setting says beyond its name, type and default."""

    help: str
    unit: str = ""
    choices: tuple[str, ...] = ()
    check: Check | None = None
    per_server: bool = False  # the default is each server's own, from the catalogue
    work_model: bool = False  # part of a request's simulated work, which a scenario decides whole
    web_ui: bool = False  # Locust: a field of its web UI, which may change it for a run
    secret: bool = False  # may hold a password: never shown, in an error or in --help


def setting(
    default: Any,
    help: str,
    *,
    unit: str = "",
    choices: tuple[str, ...] = (),
    check: Check | None = None,
    per_server: bool = False,
    work_model: bool = False,
    web_ui: bool = False,
    secret: bool = False,
) -> Any:
    """A dataclass field that is a setting."""
    spec = Spec(help, unit, choices, check, per_server, work_model, web_ui, secret)
    return field(default=default, metadata={"spec": spec})


@dataclass(frozen=True)
class Option:
    """One setting of one settings class: everything needed to parse, check and document it."""

    name: str
    type: Any
    default: Any
    spec: Spec
    prefix: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return self.prefix + self.name.upper()

    def parse(self, raw: str) -> Any:
        """Text to a checked value; SettingError says what is wrong."""
        inner = self.type
        if isinstance(inner, types.UnionType):  # `float | None`: parse the float
            inner = next(arg for arg in typing.get_args(inner) if arg is not type(None))
        try:
            value = PARSERS[inner](raw)
        except ValueError:
            kind = {int: "a whole number", float: "a number", bool: "on or off"}.get(inner, "valid")
            raise SettingError(f"{raw!r} is not {kind}") from None
        self.check(value)
        return value

    def check(self, value: Any) -> None:
        if value is None:
            return
        if self.spec.choices and value not in self.spec.choices:
            raise SettingError(f"{value!r}: choose from {', '.join(self.spec.choices)}")
        problem = self.spec.check(value) if self.spec.check else None
        if problem:
            raise SettingError(problem if self.spec.secret else f"{value!r}: {problem}")

    @property
    def metavar(self) -> str:
        if self.spec.choices:
            return "{" + ",".join(self.spec.choices) + "}"
        by_unit = {"ms": "MS", "s": "SECONDS", "bytes": "BYTES"}
        by_type = {int: "N", float: "N", tuple[int, ...]: "N,N,...", tuple[str, ...]: "NAME,...", Path: "DIR"}
        return by_unit.get(self.spec.unit) or by_type.get(self.type, "TEXT")

    def describe_default(self, value: Any) -> str:
        if value is None or value == ():
            return "none"
        if isinstance(value, bool):
            return "on" if value else "off"
        if isinstance(value, tuple):
            text = ",".join(map(str, value))
        else:
            text = f"{value:g}" if isinstance(value, float) else str(value)
        return f"{text} {self.spec.unit}" if self.spec.unit else text


def options(cls: type[Settings]) -> Iterator[Option]:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if "spec" in f.metadata:
            yield Option(f.name, hints[f.name], f.default, f.metadata["spec"], cls.PREFIX)


def environment(cls: type[Settings], **values: Any) -> dict[str, str]:
    """``values`` of settings of ``cls``, by name, as the environment gives them: {variable: text}."""
    known = {option.name: option for option in options(cls)}
    return {known[name].env: as_text(value) for name, value in values.items()}


def defaults(cls: type[Settings], *names: str) -> dict[str, str]:
    """The defaults of settings of ``cls``, by name, as the environment gives them: {variable: text}."""
    known = {option.name: option for option in options(cls)}
    return environment(cls, **{name: known[name].default for name in names})


@dataclass(frozen=True)
class Settings:
    """Base of the settings classes: the prefix of their environment variables."""

    PREFIX: ClassVar[str]


S = TypeVar("S", bound=Settings)


class EnvValue(str):
    """A flag's default taken from the environment, still text: parsed only if the flag is not given.

    argparse converts a string default with the flag's ``type`` when the flag
    is absent, so a bad value in a variable that the command line overrides,
    or that another command reads, is never an error; the type of this class
    tells the converter to name the variable in the error.
    """

    env: str

    def __new__(cls, raw: str, env: str) -> EnvValue:
        value = super().__new__(cls, raw)
        value.env = env
        return value


def add_arguments(
    parser: argparse.ArgumentParser,
    cls: type[Settings],
    environ: Mapping[str, str] = os.environ,
    defaults: Mapping[str, Any] | None = None,
) -> None:
    """A flag per setting of ``cls``; default: the environment's value, ``defaults``' or the field's."""
    for option in options(cls):
        default = (defaults or {}).get(option.name, option.default)
        shown = option.describe_default(default)
        raw = environ.get(option.env)
        if raw:
            default, shown = EnvValue(raw, option.env), "set" if option.spec.secret else raw
        text = f"{option.spec.help} [env {option.env}; default {shown}]"
        if option.type is bool:
            action = argparse.BooleanOptionalAction
            parser.add_argument(option.flag, dest=option.name, default=default, action=action, help=text)
        else:
            parser.add_argument(
                option.flag, dest=option.name, default=default, type=argparse_type(option), help=text,
                metavar=option.metavar,
            )  # fmt: skip


def argparse_type(option: Option) -> Callable[[str], Any]:
    """``option``'s parser and check, as argparse takes a flag's ``type``."""

    def convert(raw: str) -> Any:
        try:
            return option.parse(raw)
        except SettingError as exc:
            if isinstance(raw, EnvValue):
                # argparse would blame the flag: name the variable, as a SettingError.
                raise SettingError(f"{raw.env}: {exc}") from None
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def from_namespace(cls: type[S], namespace: argparse.Namespace) -> S:
    """The parsed flags as settings; SettingError for an environment value argparse left as text."""
    values = {}
    for option in options(cls):
        value = getattr(namespace, option.name)
        if isinstance(value, EnvValue):
            try:
                value = option.parse(value)
            except SettingError as exc:
                raise SettingError(f"{option.env}: {exc}") from None
        values[option.name] = value
    return cls(**values)


def from_environment(cls: type[S], environ: Mapping[str, str] = os.environ, **overrides: Any) -> S:
    """Settings as the environment gives them, then ``overrides``; checked like flags are."""
    values: dict[str, Any] = {}
    for option in options(cls):
        raw = environ.get(option.env)
        if option.name in overrides:
            values[option.name] = overrides[option.name]
            option.check(values[option.name])
        elif raw:
            try:
                values[option.name] = option.parse(raw)
            except SettingError as exc:
                raise SettingError(f"{option.env}: {exc}") from None
    return cls(**values)


# --- the servers ---------------------------------------------------------------


@dataclass(frozen=True)
class ServeSettings(Settings):
    """What every server reads."""

    PREFIX: ClassVar[str] = "ECHO_"

    host: str = setting(
        "127.0.0.1", "address the echo and metrics ports bind to (0.0.0.0: every interface, as in containers)"
    )
    port: int = setting(0, "echo port", check=port_number, per_server=True)
    metrics_port: int = setting(0, "Prometheus /metrics port", check=port_number, per_server=True)
    metrics: bool = setting(True, "instrument the server (off: no metrics at all, to measure what they cost)")
    delay_ms: float = setting(
        100.0, "simulated IO per request: awaited on an event loop, slept through in a thread",
        unit="ms", check=at_least(0), work_model=True,
    )  # fmt: skip
    delay_distribution: str = setting(
        "fixed",
        "how each request's IO time is drawn: fixed (always --delay-ms), "
        "exponential (random, mean --delay-ms: the long tail of real IO)",
        choices=DELAY_DISTRIBUTIONS,
        work_model=True,
    )
    cpu_ms: float = setting(
        0.0, "pure-Python CPU work per request, holding the GIL (by the thread's own CPU clock)",
        unit="ms", check=at_least(0), work_model=True,
    )  # fmt: skip
    blocking_ms: float = setting(
        0.0,
        "a blocking call per request (time.sleep, standing for a sync driver): "
        "a thread waits it out; an event loop stalls unless --offload thread",
        unit="ms",
        check=at_least(0),
        work_model=True,
    )
    max_message_bytes: int = setting(
        65536, "longest request; longer gets an error line and a close", unit="bytes", check=at_least(1)
    )
    idle_timeout: float = setting(
        30.0,
        "close a connection that sends nothing for this long while no request is under way: "
        "before its first request, and between requests (keep-alive); or that takes none of its "
        "replies for this long",
        unit="s",
        check=above(0),
    )
    request_timeout: float = setting(
        10.0,
        "a request (a line; HTTP headers and body) must arrive whole within this from its first byte, "
        "however slowly it trickles; else an error (TCP: ERROR request timeout; HTTP: 408) and a close",
        unit="s",
        check=above(0),
    )
    max_connections: int = setting(
        20000, "connections beyond this get an error line and a close", check=at_least(1)
    )
    backlog: int = setting(
        4096, "listen backlog (the kernel caps it at net.core.somaxconn)", check=at_least(1)
    )
    drain_timeout: float = setting(
        5.0, "on SIGTERM/SIGINT, how long in-flight requests may take to finish", unit="s", check=at_least(0)
    )
    io: str = setting(
        "timer",
        "what a request's IO of --delay-ms is: timer (a sleep), postgres (SELECT pg_sleep on --database-url "
        "through a driver's pool), http (GET /delay/<ms> on --downstream-url, echolab downstream, through "
        "an HTTP client's pool); a dependency's failure is answered ERROR dependency (TCP) or 503 (HTTP)",
        choices=IO_KINDS,
        work_model=True,
    )
    database_url: str = setting(
        "",
        "PostgreSQL for --io postgres: postgresql://user:password@host:port/database",
        check=postgres_url,
        secret=True,
    )
    database_password_file: str = setting(
        "",
        "a file holding the password for --database-url (its first line), which then needs none: a compose "
        "or Kubernetes secret, where a URL in the environment would show in docker inspect",
        check=password_file,
    )
    downstream_url: str = setting(
        f"http://127.0.0.1:{ports.DOWNSTREAM}", "echolab downstream, for --io http", check=http_url
    )
    pool_size: int = setting(
        0,
        "connections in the dependency client's pool, per process (each gunicorn worker has its own); "
        "0: the library's own default: "
        + ", ".join(f"{name} {size}" for name, size in LIBRARY_POOL_SIZES.items())
        + " (requests does not wait for one: past it, it opens and drops extra connections)",
        check=at_least(0),
        work_model=True,
    )
    pool_timeout: float = setting(
        30.0,
        "how long a request waits for a pooled connection before it fails (pool_timeout); 30 s is "
        "psycopg_pool's own default, given to asyncpg and httpx too (requests never waits)",
        unit="s",
        check=above(0),
        work_model=True,
    )
    log_level: str = setting("info", "log level; per-request lines only at debug", choices=LOG_LEVELS)
    python: str = setting(
        "",
        "run under this CPython instead (a path, python3.13, 3.14t), from a venv of its own made on "
        "first use (.venv-<version>); none: this one",
    )
    cgroup_root: Path = setting(
        Path("/sys/fs/cgroup"),
        "where the cgroup filesystem is mounted; if the cgroup there (in a container: its own) has a CPU "
        "limit, its throttling is exported as echo_cgroup_*",
    )

    def __post_init__(self) -> None:
        if self.io == "postgres" and not self.database_url:
            raise SettingError("--io postgres needs --database-url (ECHO_DATABASE_URL)")


@dataclass(frozen=True)
class TcpSettings(ServeSettings):
    """The servers of the line protocol."""

    framing: str = setting(
        "lines",
        "lines: persistent, one request per \\n-terminated line; "
        "oneshot: the article's protocol, the first read is the message, reply then close",
        choices=FRAMINGS,
    )


@dataclass(frozen=True)
class OffloadSettings(ServeSettings):
    """The servers with an event loop: where their blocking work runs, and which driver awaits PostgreSQL."""

    offload: str = setting(
        "none",
        "where --blocking-ms runs: none (on the event loop, stalling it: the classic mistake), "
        "thread (in a pool of --offload-threads, as asyncio.to_thread does)",
        choices=OFFLOADS,
        work_model=True,
    )
    offload_threads: int = setting(
        32, "threads of the offload pool (asyncio's default: min(32, cores + 4))", check=at_least(1),
        work_model=True,
    )  # fmt: skip
    db_driver: str = setting(
        "psycopg",
        "the event loop's PostgreSQL driver for --io postgres: psycopg (3, async, with psycopg_pool's "
        "AsyncConnectionPool: the threaded servers' driver, so that only the model differs), "
        "asyncpg (its pool)",
        choices=DB_DRIVERS,
        work_model=True,
    )


@dataclass(frozen=True)
class ThreadIoSettings(ServeSettings):
    """The servers whose threads call the dependency (psycopg's ConnectionPool for --io postgres)."""

    http_client: str = setting(
        "httpx",
        "the threads' HTTP client for --io http: httpx (a Client, whose pool waits up to --pool-timeout), "
        "requests (a Session, whose pool never waits)",
        choices=HTTP_CLIENTS,
        work_model=True,
    )


# The settings of a request's simulated work (servers/work_model.py), which a scenario decides whole.
WORK_MODEL = tuple(
    dict.fromkeys(
        o.name
        for c in (ServeSettings, OffloadSettings, ThreadIoSettings)
        for o in options(c)
        if o.spec.work_model
    )
)


@dataclass(frozen=True)
class ThreadedSettings(TcpSettings, ThreadIoSettings):
    model: str = setting("thread-per-connection", "concurrency model", choices=THREADED_MODELS)
    threads: int = setting(64, "worker threads of the pool model", check=at_least(1))


@dataclass(frozen=True)
class AsyncSettings(TcpSettings, OffloadSettings):
    loop: str = setting("uvloop", "event loop", choices=LOOPS)
    api: str = setting(
        "streams",
        "streams: a coroutine per connection awaiting each request's IO (asyncio.start_server, "
        "as applications are written); protocol: callbacks and coalesced timers (the tuned variant)",
        choices=ASYNC_APIS,
    )


@dataclass(frozen=True)
class HttpSettings(ServeSettings):
    """The servers on gunicorn."""

    workers: int = setting(2, "gunicorn worker processes", check=at_least(1))


@dataclass(frozen=True)
class ThreadedHttpSettings(HttpSettings, ThreadIoSettings):
    http_threads: int = setting(
        64, "threads per gthread worker process, each serving one request at a time", check=at_least(1)
    )


@dataclass(frozen=True)
class AsyncHttpSettings(HttpSettings, OffloadSettings):
    pass


@dataclass(frozen=True)
class DownstreamSettings(Settings):
    """``echolab downstream``: the HTTP service the servers call as their dependency."""

    PREFIX: ClassVar[str] = "ECHO_DOWNSTREAM_"

    host: str = setting("127.0.0.1", "address the service and its metrics bind to (0.0.0.0: every interface)")
    port: int = setting(ports.DOWNSTREAM, "port of GET /delay/<ms>", check=port_number)
    metrics_port: int = setting(ports.DOWNSTREAM_METRICS, "Prometheus /metrics port", check=port_number)
    max_delay_ms: float = setting(
        60000.0, "the longest delay a request may ask for; longer gets 400", unit="ms", check=above(0)
    )
    keep_alive: float = setting(
        75.0, "how long an idle keep-alive connection stays open (longer than the callers' pools keep one)",
        unit="s", check=above(0),
    )  # fmt: skip
    backlog: int = setting(
        4096, "listen backlog (the kernel caps it at net.core.somaxconn)", check=at_least(1)
    )
    drain_timeout: float = setting(
        5.0,
        "on SIGTERM/SIGINT, how long the calls in progress may take to finish",
        unit="s",
        check=at_least(0),
    )
    log_level: str = setting("info", "log level", choices=LOG_LEVELS)


# --- the load client and the lab -------------------------------------------------


@dataclass(frozen=True)
class BenchSettings(Settings):
    """``echolab bench``."""

    PREFIX: ClassVar[str] = "ECHO_BENCH_"

    framing: str = setting(
        "lines",
        "protocol to speak: the TCP servers' --framing, or http (keep-alive POST /echo: the HTTP servers)",
        choices=(*FRAMINGS, "http"),
    )
    connections: int = setting(100, "concurrent connections", check=at_least(1))
    duration: float = setting(10.0, "measured time, after connecting and warm-up", unit="s", check=above(0))
    requests: int = setting(
        0, "stop after this many requests instead (0: run for --duration)", check=at_least(0)
    )
    warmup: float = setting(1.0, "load before measuring starts", unit="s", check=at_least(0))
    rate: float = setting(
        0.0, "open loop: requests/s at a constant arrival rate (0: closed loop)", unit="req/s",
        check=at_least(0),
    )  # fmt: skip
    message_size: int = setting(32, "request size, newline excluded", unit="bytes", check=at_least(1))
    delay_hint_ms: float = setting(
        100.0, "the server's delay, for the Little's-law bound", unit="ms", check=at_least(0)
    )
    timeout: float = setting(10.0, "per-request timeout", unit="s", check=above(0))
    path: str = setting(
        "",
        "http only: GET this path instead of POST /echo, and count any 200 as a success "
        "(e.g. /delay/100: echolab downstream)",
        check=http_path,
    )


@dataclass(frozen=True)
class DemoSettings(Settings):
    """``echolab demo`` (``make demo``)."""

    PREFIX: ClassVar[str] = "ECHO_DEMO_"

    quick: bool = setting(False, "a short run: the same sections, shorter runs, fewer levels")
    scenario: tuple[str, ...] = setting(
        (), "workloads to run (comma-separated; none: every one, io first), listed by echolab demo --help"
    )
    levels: tuple[int, ...] = setting(
        (1, 10, 100, 500, 1000, 2000, 5000), "concurrent connections for the first scenario",
        check=positive_list,
    )  # fmt: skip
    other_levels: tuple[int, ...] = setting(
        (1, 100, 1000),
        "concurrent connections for the other scenarios (db, db-pool and api run at levels of their own)",
        check=positive_list,
    )
    open_loop: bool = setting(
        True, "also sweep the first scenario in an open loop at --rates (the line-protocol servers)"
    )
    rates: tuple[int, ...] = setting(
        (2000, 5000, 7500, 10000, 20000, 30000), "offered requests/s of the open-loop sweep",
        unit="req/s", check=positive_list,
    )  # fmt: skip
    framing: str = setting("lines", "the TCP servers' framing", choices=FRAMINGS)
    duration: float = setting(2.0, "measured time per level of the first scenario", unit="s", check=above(0))
    other_duration: float = setting(
        1.0, "measured time per level of the other scenarios", unit="s", check=above(0)
    )
    warmup: float = setting(0.5, "load before measuring, per level", unit="s", check=at_least(0))
    stop_below: float = setting(
        0.5, "skip a server's higher levels once it gives less than this share of the bound (0: never)",
        check=at_least(0),
    )  # fmt: skip
    stop_timeout: float = setting(
        STOP_TIMEOUT, "a server not gone this long after SIGTERM is killed, and its sweep marked failed",
        unit="s", check=above(0),
    )  # fmt: skip
    servers: tuple[str, ...] = setting((), "run only these (comma-separated names; none: all)")
    python: str = setting(
        "", "run the servers under this CPython (a path, python3.13, 3.14t; see echolab serve --python)"
    )
    pythons: tuple[str, ...] = setting(
        (), "also run each server under these (comma-separated, e.g. python3.12,3.14t): a row each"
    )
    out: Path = setting(Path("reports"), "folder for the reports")


@dataclass(frozen=True)
class ReportSettings(Settings):
    """``echolab report`` (``make report``)."""

    PREFIX: ClassVar[str] = "ECHO_REPORT_"

    prometheus: str = setting(
        f"http://127.0.0.1:{ports.PROMETHEUS_HOST}",
        "the Prometheus to ask (the stack's, on its host port by default)",
    )
    since: str | None = setting(
        None,
        "the window: this long until now (90s, 15m, 2h); none: the last load-test run and a little around",
        check=prometheus_duration,
    )
    dashboards: Path = setting(Path("grafana/dashboards"), "the dashboards whose panels to draw")
    out: Path = setting(Path("reports"), "folder for the report")


@dataclass(frozen=True)
class SuiteSettings(Settings):
    """``echolab suite`` (``make bench``): the benchmark suite."""

    PREFIX: ClassVar[str] = "ECHO_SUITE_"

    duration: float = setting(5.0, "measured time per level", unit="s", check=above(0))
    warmup: float = setting(1.0, "load before measuring, per level", unit="s", check=at_least(0))
    only: str = setting("", "run only the servers whose name contains this")
    part: str = setting(
        "all",
        "what to run: sweep (every server at every level, and the head-to-head pairs), "
        "costs (what each protection of each TCP server costs, against the bare servers), or all",
        choices=SUITE_PARTS,
    )
    rounds: int = setting(5, "alternating rounds of each head-to-head pair", check=at_least(1))
    cost_rounds: int = setting(
        3, "alternating rounds of the table of what each protection costs", check=at_least(1)
    )
    scenario: tuple[str, ...] = setting(
        (),
        "instead of the benchmark, run these scenarios (comma-separated, e.g. cpu,blocking; "
        "docs/scenarios.md lists them) on every server at a few levels",
        check=known_scenarios,
    )
    python: str = setting(
        "", "run the servers under this CPython (a path, python3.13, 3.14t; see echolab serve --python)"
    )
    out: Path = setting(Path("reports"), "folder for the JSON")


@dataclass(frozen=True)
class SoakSettings(Settings):
    """``echolab soak`` (``make soak``)."""

    PREFIX: ClassVar[str] = "ECHO_SOAK_"

    duration: float = setting(600.0, "time under load after the warm-up", unit="s", check=above(0))
    warmup: float = setting(30.0, "load before the first sample", unit="s", check=at_least(0))
    interval: float = setting(60.0, "time between samples", unit="s", check=above(0))
    rate: float = setting(200.0, "requests/s to each server, at a constant arrival rate", check=above(0))
    connections: int = setting(50, "connections of each server's client", check=at_least(1))
    delay_ms: float = setting(100.0, "the servers' simulated IO", unit="ms", check=at_least(0))
    out: Path = setting(Path("reports"), "folder for the JSON")


@dataclass(frozen=True)
class CompareSettings(Settings):
    """``echolab compare``."""

    PREFIX: ClassVar[str] = "ECHO_COMPARE_"

    out: Path = setting(Path("reports"), "folder for the comparison's report")


# --- Locust ---------------------------------------------------------------------


@dataclass(frozen=True)
class LocustSettings(Settings):
    """What echolab adds to Locust's arguments (``-f loadtest/locustfile.py``), with each server's target.

    Locust parses them itself, with its own (``--users``, ``--run-time``...): as
    flags, as LOCUST_* variables, or, for a setting marked ``web_ui``, from its
    web UI's start form, for one run. The rest are fixed when Locust starts.
    The form shows a ``web_ui`` setting's help beside its name, in one line: a
    few words, the detail in docs/locust.md.
    """

    PREFIX: ClassVar[str] = "LOCUST_"

    framing: str = setting(
        "lines",
        "lines: a connection per user; oneshot: per request",
        choices=FRAMINGS,
        web_ui=True,
    )
    message_size: int = setting(
        BenchSettings.message_size, "request bytes, newline excluded", check=at_least(1), web_ui=True
    )
    think_time: float = setting(
        0.0, "seconds each user waits between requests", check=at_least(0), web_ui=True
    )
    connect_timeout: float = setting(5.0, "seconds to wait for a connection", check=above(0), web_ui=True)
    read_timeout: float = setting(
        BenchSettings.timeout,
        "seconds to wait for a reply",
        check=above(0),
        web_ui=True,
    )
    target_rps: float = setting(
        0.0,
        "open loop: requests/s in all (0: closed loop)",
        check=at_least(0),
        web_ui=True,
    )
    max_inflight: int = setting(
        100,
        "open loop: unanswered requests per user",
        check=at_least(1),
        web_ui=True,
    )
    max_fail_ratio: float = setting(
        -1.0,
        "exit 3 if more than this share of requests failed, else 0 (-1: off, Locust's own rule: "
        "any failure exits 1)",
    )
    max_p95_ms: float = setting(
        0.0, "exit 4 if the 95th percentile response time was above this (0: off)", check=at_least(0)
    )
    worker_timeout: float | None = setting(
        None,
        "master: seconds without a heartbeat before a worker counts as lost (none: Locust's own, 3)",
        check=above(0),
    )
    metrics_host: str = setting("0.0.0.0", "address of this process's Prometheus /metrics")
    metrics_port: int = setting(
        ports.LOCUST_METRICS,
        "port of this process's Prometheus /metrics; if taken, the next free one (0: any free port)",
        check=port_number,
    )


@dataclass(frozen=True)
class StepRampSettings(Settings):
    """The step ramp's (``-f loadtest/step_ramp.py``): +N users every M seconds up to ``--users``."""

    PREFIX: ClassVar[str] = LocustSettings.PREFIX

    step_users: int = setting(10, "StepRamp: users added each step", check=at_least(1), web_ui=True)
    step_seconds: float = setting(10.0, "StepRamp: seconds between steps", check=above(0), web_ui=True)


@dataclass(frozen=True)
class SpikeSettings(Settings):
    """The spike's (``-f loadtest/spike.py``): many more users at once for a while, over ``--users``."""

    PREFIX: ClassVar[str] = LocustSettings.PREFIX

    spike_users: int = setting(200, "Spike: users added for the spike", check=at_least(0), web_ui=True)
    spike_at: float = setting(30.0, "Spike: its start, seconds into the run", check=at_least(0), web_ui=True)
    spike_seconds: float = setting(10.0, "Spike: its length in seconds", check=at_least(0), web_ui=True)


def target_options(server: str, port: int) -> tuple[Option, Option]:
    """Locust's ``--SERVER-host`` and ``--SERVER-port`` (LOCUST_SERVER_HOST, _PORT): where that server is."""
    name, prefix = server.replace("-", "_"), LocustSettings.PREFIX
    host = Option(f"{name}_host", str, "127.0.0.1", Spec(f"{server} server's address"), prefix)
    return host, Option(f"{name}_port", int, port, Spec(f"{server} server's port", check=port_number), prefix)
