"""Locust's web UI, made safe to expose: load parameters tunable, targets fixed, no run leaking into the next.

Locust's ``POST /swarm`` (what the web UI's form sends) writes every form
field that names one of its parsed options into the live options, for that
run and every later one. So anyone who reached the UI could aim the load at
any host and port (the targets' fields, or fields the UI does not even
show), have Locust write its report to a path of their choosing
(``html_file``) or change its exit code; and a run's values stayed in force
for the next run started without them. ``POST /user`` sets any attribute of
a user class, on the master and every worker.

:func:`install` runs before those two endpoints, on the process that serves
the UI:

* at the start of each new test it puts the options, the host and the user
  classes' hosts back as the command line and environment gave them;
* a form may change Locust's own run fields (users, spawn rate, run time,
  shape, user classes, profile) and the arguments the UI shows: the load
  parameters. What the UI does not show, the targets among them, is fixed
  by whoever started Locust. A field left at its startup value passes (the
  UI sends every field it has);
* anything else is refused with Locust's own reply for a bad request
  (``success: false`` and a message, which the UI shows), naming the fields;
* ``POST /user`` may change a class's weight, fixed count and tasks only.

It also adds a "Targets" tab: per server, where its users send, how many
there are, and what came back; and hides Locust's Host field and header,
which would name one host for every class (each class has its own target,
and a host typed there is refused).

Importing this module imports Locust (see :mod:`echolab.load.locust_plugin`).
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from flask import Response, jsonify, request
from locust import User
from locust.argument_parser import ui_extra_args_dict
from locust.env import Environment
from locust.runners import STATE_RUNNING, STATE_SPAWNING
from werkzeug.datastructures import ImmutableMultiDict

log = logging.getLogger("echolab.locust")

# The fields of Locust's own start form; swarm() handles each itself.
RUN_FIELDS = frozenset({"user_count", "spawn_rate", "run_time", "profile", "user_classes", "shape_class"})
USER_CLASS_FIELDS = frozenset({"user_class_name", "weight", "fixed_count", "tasks"})


def unchanged(startup: Any, posted: str) -> bool:
    """Whether a posted form value is the startup value, compared as swarm() would convert it."""
    if isinstance(startup, bool):
        return startup == (posted == "true")
    if startup is None:
        return posted == ""
    try:
        return bool(startup == type(startup)(posted))
    except (TypeError, ValueError):
        return False


class Guard:
    """The startup state of one Locust process's UI, and the checks made against it."""

    def __init__(self, environment: Environment) -> None:
        assert environment.parsed_options is not None and environment.web_ui is not None
        self.environment = environment
        self.options = vars(environment.parsed_options)
        self.startup = copy.deepcopy(self.options)
        self.host = environment.host
        self.tunable = frozenset(ui_extra_args_dict())
        picker: dict[str, Any] = environment.available_user_classes or {}  # (Locust annotates it wrongly)
        classes: list[type[User]] = [*picker.values()] or environment.user_classes
        # Locust sets every class's host to a host from the form (or --host) at each start, and never back.
        self.class_hosts = {cls: cls.host for cls in classes}

    def reset(self) -> None:
        """Back to the startup state, before a new test: nothing of the last one carries over."""
        self.options.clear()
        self.options.update(copy.deepcopy(self.startup))
        self.environment.host = self.host
        for cls, host in self.class_hosts.items():
            cls.host = host

    def fixed(self, key: str) -> bool:
        """Whether a form field names an option that only the command line and environment set."""
        return key != "host" and key not in RUN_FIELDS and key not in self.tunable and key in self.options

    def refused(self, form: ImmutableMultiDict[str, str]) -> list[str]:
        """The form's fields that ask for a fixed option to change, or for another host."""
        assert self.environment.web_ui is not None
        shown_host = self.environment.web_ui.template_args.get("host") or ""
        refused = []
        for key in form:
            values = form.getlist(key)
            if key == "host":
                ok = all(value in ("", self.host or "", shown_host) for value in values)
            else:
                ok = not self.fixed(key) or all(unchanged(self.startup.get(key), value) for value in values)
            if not ok:
                refused.append(key)
        return refused

    def check_swarm(self) -> Response | None:
        runner = self.environment.runner
        if runner is not None and runner.state not in (STATE_RUNNING, STATE_SPAWNING):
            self.reset()
        refused = self.refused(request.form)
        if refused:
            return self.refuse(
                f"these parameters cannot be changed from the web UI: {', '.join(sorted(refused))}"
            )
        # A fixed field at its startup value has nothing to apply: swarm() never sees it.
        kept = [
            (key, value) for key in request.form if not self.fixed(key) for value in request.form.getlist(key)
        ]
        request.form = ImmutableMultiDict(kept)  # werkzeug caches it per request: settable
        return None

    def check_user_class(self) -> Response | None:
        settings = request.get_json(force=True, silent=True) or {}
        cls = (self.environment.available_user_classes or {}).get(settings.get("user_class_name", ""))
        refused = [key for key in settings if key not in USER_CLASS_FIELDS]
        if "host" in refused and cls is not None and settings["host"] in ("", cls.host):
            refused.remove("host")  # the UI's class editor sends the host it shows
        if refused:
            return self.refuse(f"user class settings that cannot be changed: {', '.join(sorted(refused))}")
        return None

    def refuse(self, message: str) -> Response:
        log.warning("web UI: refused %s", message)
        return jsonify({"success": False, "message": message, "host": self.environment.host})


TARGETS_TABLE = [
    {"key": "server", "title": "Server"},
    {"key": "target", "title": "Target"},
    {"key": "users", "title": "Users"},
    {"key": "requests", "title": "Requests"},
    {"key": "failures", "title": "Failures"},
    {"key": "rps", "title": "Current RPS"},
]


def targets(environment: Environment, users: Callable[[], Mapping[str, int]]) -> list[dict[str, Any]]:
    """A row per user class that loads a server: where it sends, how many users, what came back."""
    picker: dict[str, Any] = environment.available_user_classes or {}
    rows = []
    running = users()
    for cls in [*picker.values()] or environment.user_classes:
        server = getattr(cls, "server", None)
        if server is None:
            continue
        entries = [e for (name, _), e in environment.stats.entries.items() if name == server]
        rows.append({
            "server": server,
            "target": cls.host,
            "users": running.get(server, 0),
            "requests": sum(e.num_requests for e in entries),
            "failures": sum(e.num_failures for e in entries),
            "rps": round(sum(e.current_rps for e in entries), 1),
        })  # fmt: skip
    return rows


def show_targets_tab(environment: Environment, users: Callable[[], Mapping[str, int]]) -> None:
    """A "Targets" tab in the web UI: the targets table, refreshed with the stats while a test runs.

    The UI renders a tab declared in its template arguments as a table whose
    rows it reads from ``extended_stats`` in ``GET /stats/requests``.
    """
    web_ui = environment.web_ui
    assert web_ui is not None and web_ui.app is not None
    web_ui.template_args.update(
        extended_tabs=[{"title": "Targets", "key": "targets"}],
        extended_tables=[{"key": "targets", "structure": TARGETS_TABLE}],
    )

    def add_rows(response: Response) -> Response:
        if request.path.endswith("/stats/requests") and response.is_json:
            data = response.get_json()
            data["extended_stats"] = [{"key": "targets", "data": targets(environment, users)}]
            response.set_data(json.dumps(data))
        return response

    web_ui.app.after_request(add_rows)


# The form's Host field, and the header's Host (empty: the classes' hosts differ). Locust's UI has
# no switch for either; its Material UI markup does: the field's input is named "host", the
# header's value is the text with an aria-label, followed by a divider.
HIDE_HOST = (
    "<style>"
    '.MuiFormControl-root:has(input[name="host"]),'
    "header div:has(> p[aria-label]), header div:has(> p[aria-label]) + .MuiDivider-root"
    "{display:none}</style>"
)


def hide_host(web_ui: Any) -> None:
    """Add HIDE_HOST to the UI's page (the form and the header are drawn there, in the browser)."""

    def add_style(response: Response) -> Response:
        if request.endpoint == "locust.index" and response.mimetype == "text/html":
            response.set_data(response.get_data(as_text=True).replace("</head>", f"{HIDE_HOST}</head>", 1))
        return response

    web_ui.app.after_request(add_style)


def install(environment: Environment, users: Callable[[], Mapping[str, int]]) -> None:
    """Guard ``POST /swarm`` and ``POST /user`` of this process's web UI (none: nothing to guard),
    and show the targets, ``users`` counting the users per server."""
    web_ui = environment.web_ui
    if web_ui is None or web_ui.app is None or environment.parsed_options is None:
        return
    show_targets_tab(environment, users)
    hide_host(web_ui)
    guard = Guard(environment)

    def check() -> Response | None:
        if request.method != "POST":
            return None
        if request.endpoint == "locust.swarm":
            return guard.check_swarm()
        if request.endpoint == "locust.update_user":
            return guard.check_user_class()
        return None

    web_ui.app.before_request(check)
