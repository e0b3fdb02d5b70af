"""Every setting in one place: its default, its env var, its CLI flag, its help.

Precedence, as in uvicorn and Locust: built-in default < environment < flag.
The README's configuration table is generated from SETTINGS
(``echolab config --markdown``) and a test keeps the two in step.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

FRAMINGS = ("oneshot", "lines")
THREADED_MODELS = ("serial", "thread-per-connection", "pool")
LOOPS = ("uvloop", "asyncio")
LOG_LEVELS = ("debug", "info", "warning", "error")


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    help: str
    group: str
    type: Callable[[str], Any] = str
    choices: tuple[str, ...] | None = None
    unit: str = ""
    scope: str = ""  # which server reads it, when only one does

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        prefix = {"serve": "ECHO_", "bench": "ECHO_BENCH_"}[self.group]
        return prefix + self.name.upper()

    def initial(self, environ: os._Environ[str] | dict[str, str]) -> Any:
        raw = environ.get(self.env)
        if raw is None or raw == "":
            return self.default
        try:
            value = self.type(raw)
        except ValueError as exc:
            raise SystemExit(f"{self.env}={raw!r}: {exc}") from None
        if self.choices and value not in self.choices:
            raise SystemExit(f"{self.env}={raw!r}: choose from {', '.join(self.choices)}")
        return value


SETTINGS: tuple[Setting, ...] = (
    # --- servers -------------------------------------------------------------
    Setting("host", "0.0.0.0", "address the echo and metrics ports bind to", "serve"),
    Setting("port", 9090, "echo (TCP) port", "serve", int),
    Setting("metrics_port", 8000, "Prometheus /metrics port", "serve", int),
    Setting(
        "metrics",
        True,
        "instrument the server (off: no metrics at all, for measuring their cost)",
        "serve",
        parse_bool,
    ),
    Setting("delay_ms", 100.0, "simulated IO wait before each reply", "serve", float, unit="ms"),
    Setting(
        "framing",
        "oneshot",
        "oneshot: first read is the message, reply then close; "
        "lines: persistent, one request per \\n-terminated line",
        "serve",
        choices=FRAMINGS,
    ),
    Setting(
        "model",
        "thread-per-connection",
        "concurrency model",
        "serve",
        choices=THREADED_MODELS,
        scope="threaded",
    ),
    Setting("threads", 64, "worker threads of the pool model", "serve", int, scope="threaded"),
    Setting("loop", "uvloop", "event loop", "serve", choices=LOOPS, scope="async"),
    Setting("workers", 2, "gunicorn worker processes", "serve", int, scope="threaded-http, async-http"),
    Setting(
        "http_threads",
        64,
        "threads per gthread worker process, each serving one request at a time",
        "serve",
        int,
        scope="threaded-http",
    ),
    Setting(
        "max_message_bytes",
        65536,
        "longest request; longer gets an error line and a close",
        "serve",
        int,
        unit="bytes",
    ),
    Setting(
        "idle_timeout",
        30.0,
        "close a connection that sends nothing (or half a line) for this long",
        "serve",
        float,
        unit="s",
    ),
    Setting("max_connections", 20000, "connections beyond this get an error line and a close", "serve", int),
    Setting("backlog", 4096, "listen backlog (the kernel caps it at net.core.somaxconn)", "serve", int),
    Setting(
        "drain_timeout",
        5.0,
        "on SIGTERM/SIGINT, how long in-flight requests may take to finish",
        "serve",
        float,
        unit="s",
    ),
    Setting("log_level", "info", "log level; per-request lines only at debug", "serve", choices=LOG_LEVELS),
    # --- benchmark client ----------------------------------------------------
    Setting(
        "framing",
        "lines",
        "protocol to speak: the servers' --framing, or http (keep-alive POST /echo, for the HTTP servers)",
        "bench",
        choices=(*FRAMINGS, "http"),
    ),
    Setting("connections", 100, "concurrent connections", "bench", int),
    Setting("duration", 10.0, "measured seconds (after connecting and warm-up)", "bench", float, unit="s"),
    Setting("requests", 0, "stop after this many requests instead (0: use --duration)", "bench", int),
    Setting("warmup", 1.0, "seconds of load before measuring starts", "bench", float, unit="s"),
    Setting("rate", 0.0, "open loop: requests/s at a constant arrival rate (0: closed loop)", "bench", float),
    Setting("message_size", 32, "request size, newline excluded", "bench", int, unit="bytes"),
    Setting("delay_hint_ms", 100.0, "server's delay, for the Little's-law bound", "bench", float, unit="ms"),
    Setting("timeout", 10.0, "per-request timeout", "bench", float, unit="s"),
)

BY_KEY = {(s.group, s.name): s for s in SETTINGS}


def add_arguments(
    parser: argparse.ArgumentParser,
    group: str,
    names: Iterable[str],
    environ: os._Environ[str] | dict[str, str] = os.environ,
) -> None:
    """Add the named settings as flags whose defaults come from the environment."""
    for name in names:
        setting = BY_KEY[group, name]
        help_text = f"{setting.help} (env {setting.env}; default {setting.default!r})"
        if setting.type is parse_bool:
            parser.add_argument(
                setting.flag,
                dest=name,
                default=setting.initial(environ),
                action=argparse.BooleanOptionalAction,
                help=help_text,
            )
        else:
            parser.add_argument(
                setting.flag,
                dest=name,
                default=setting.initial(environ),
                type=setting.type,
                choices=setting.choices,
                help=help_text,
            )


def markdown_table() -> str:
    """The README's configuration table."""
    rows = ["| command | flag | env var | default | meaning |", "| --- | --- | --- | --- | --- |"]
    for s in SETTINGS:
        command = "bench" if s.group == "bench" else f"serve {s.scope or 'threaded, async'}"
        default = f"{s.default}" + (f" {s.unit}" if s.unit else "")
        meaning = s.help.replace("|", "\\|")
        if s.choices:
            meaning += " (" + " \\| ".join(s.choices) + ")"
        rows.append(f"| {command} | `{s.flag}` | `{s.env}` | {default} | {meaning} |")
    return "\n".join(rows)
