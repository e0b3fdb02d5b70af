"""Runs on disk: read any result the lab writes, and list the earlier ones.

Three shapes of JSON hold results: a demo's ``results.json`` (in its
``reports/demo-<time>/`` folder), the benchmark's ``reports/bench-<time>.json``
(both ``{"rows": [...]}`` with settings and the machine), and one
``echolab bench --json`` result. :func:`load` reads each into a
:class:`SavedRun`, so that ``echolab compare`` and the demo's list of earlier
runs need not care which.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..machine import summary
from .results import Row, interpreters

RESULTS = "results.json"


class NotARun(Exception):
    """The path is not a result the lab wrote; the message says why, in one line."""


@dataclass
class SavedRun:
    path: Path  # the folder of a demo, or the JSON file
    kind: str  # demo | benchmark | bench
    started: str
    rows: list[Row]
    machine: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    partial: dict[str, Any] | None = None

    @property
    def label(self) -> str:
        return f"{self.kind} {self.started}" if self.started else f"{self.kind} {self.path.name}"

    @property
    def machine_line(self) -> str:
        return f"{summary(self.machine)}; {interpreters(self.rows)}"


def load(path: Path) -> SavedRun:
    """A demo folder, its results.json, a benchmark JSON or an ``echolab bench --json`` result."""
    folder = path if path.is_dir() else path.parent
    file = path / RESULTS if path.is_dir() else path
    try:
        data = json.loads(file.read_text())
    except FileNotFoundError:
        raise NotARun(f"{path}: no such file or folder (or no {RESULTS} in it)") from None
    except (OSError, ValueError) as exc:
        raise NotARun(f"{file}: not readable as JSON ({exc})") from None
    if not isinstance(data, dict):
        raise NotARun(f"{file}: not a result of echolab")
    if "rows" in data:
        kind = "demo" if file.name == RESULTS else "benchmark"
        settings = data.get("settings", {})
        rows = [Row.from_dict(r) for r in data["rows"]]
        started = settings.get("started") or data.get("started", "")
        return SavedRun(
            folder if kind == "demo" else file, kind, started, rows, data.get("machine", {}), settings,
            data.get("partial"),
        )  # fmt: skip
    if "target" in data and "latency_ms" in data:
        row = Row.from_dict({**data, "server": "bench", "delay_ms": data.get("delay_hint_ms", 0.0)})
        return SavedRun(file, "bench", "", [row], data.get("machine", {}), {}, None)
    raise NotARun(f"{file}: not a result of echolab (no rows, no bench result)")


def new_folder(out: Path, kind: str) -> Path:
    """``out/KIND-<date>-<time>``, made now; ``-2``, ``-3``... if another run took that second."""
    stem = f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    for attempt in itertools.count(1):
        folder = out / (stem if attempt == 1 else f"{stem}-{attempt}")
        with contextlib.suppress(FileExistsError):
            folder.mkdir()
            return folder
    raise AssertionError("unreachable")


def earlier(out: Path) -> list[SavedRun]:
    """The demo and benchmark runs in ``out``, newest first; unreadable ones skipped."""
    paths = [*out.glob(f"demo-*/{RESULTS}"), *out.glob("bench-*.json")]
    runs = []
    for path in paths:
        try:
            runs.append(load(path.parent if path.name == RESULTS else path))
        except NotARun:
            continue
    return sorted(runs, key=lambda r: r.path.name.split("-", 1)[-1], reverse=True)
