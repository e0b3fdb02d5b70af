"""The Locust web UI as a stranger meets it: it cannot aim the load elsewhere, and no run leaks into the next.

A real Locust with its web UI against a real server; the requests are what
the UI's form (or anyone's script) sends: ``POST /swarm``, ``POST /user``.
"""

from __future__ import annotations

import json
import re
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from support.locust import LocustProcess
from support.servers import HOST, TestServer

from echolab.launcher import free_port

USERS = ("ThreadedUser",)


class WebUi:
    """One Locust process with its web UI on a free port, loading the threaded server."""

    def __init__(
        self,
        locust: Callable[..., LocustProcess],
        server: TestServer,
        *more: str,
        files: str = "locustfile.py",
    ) -> None:
        self.port = free_port()
        self.server = server
        self.process = locust(
            "--web-host", HOST, "--web-port", str(self.port), "--threaded-host", HOST,
            "--threaded-port", str(server.port), *more, files=files, users=USERS, stats=False,
        )  # fmt: skip
        self.wait(lambda: self.get("/stats/requests").get("state") == "ready", "the web UI")

    def url(self, path: str) -> str:
        return f"http://{HOST}:{self.port}{path}"

    def get(self, path: str) -> Any:
        try:
            with urllib.request.urlopen(self.url(path), timeout=5) as response:
                return json.load(response)
        except OSError:
            return {}

    def post(self, path: str, form: dict[str, str] | None = None, body: bytes | None = None) -> Any:
        data = urllib.parse.urlencode(form).encode() if form is not None else body
        with urllib.request.urlopen(self.url(path), data=data, timeout=10) as response:
            text = response.read()
        return json.loads(text) if text else {}

    def swarm(self, **fields: str) -> Any:
        return self.post("/swarm", {"user_count": "2", "spawn_rate": "2", "host": "", **fields})

    def wait(self, check: Callable[[], bool], what: str) -> None:
        self.process.poll(what, check, interval=0.2)  # each look is a stats request of the web UI

    def reply_length(self) -> float:
        """The average reply length Locust saw for the threaded server in this run (0 before any)."""
        stats = self.get("/stats/requests").get("stats", [])
        return next((float(s["avg_content_length"]) for s in stats if s["name"] == "threaded"), 0.0)


@pytest.fixture
def web_ui(module_server: Callable[..., TestServer], locust: Callable[..., LocustProcess]) -> WebUi:
    """A Locust of the test's own, against the threaded server the module's tests share."""
    return WebUi(locust, module_server("threaded", "--delay-ms", "10"))


REFUSED = [
    {"threaded_host": "127.0.0.2"},  # a target: not shown in the UI, fixed by the command line
    {"threaded_port": "9"},
    {"host": "http://elsewhere.example:80"},  # Locust's host field, which it copies to every class
    {"html_file": "/tmp/written-by-a-stranger.html"},  # Locust's own options: no UI field for them
    {"exit_code_on_error": "0"},
    {"max_fail_ratio": "1"},  # the thresholds: not shown either
]


@pytest.mark.parametrize("fields", REFUSED, ids=[next(iter(f)) for f in REFUSED])
def test_a_swarm_that_would_aim_the_load_elsewhere_is_refused(web_ui: WebUi, fields: dict[str, str]) -> None:
    before = web_ui.server.scrape()
    answer = web_ui.swarm(**fields)
    assert answer["success"] is False, answer
    assert f"cannot be changed from the web UI: {next(iter(fields))}" in answer["message"], answer
    assert web_ui.get("/stats/requests")["state"] == "ready", "nothing started"
    assert (web_ui.server.scrape() - before).value("echo_requests_total") == 0


def test_load_parameters_apply_to_their_run_only(web_ui: WebUi) -> None:
    """A run with a bigger message, then one without the field: back to the startup size (32 + newline)."""
    # The UI sends every field it has: a fixed one at its startup value passes.
    answer = web_ui.swarm(message_size="100", threaded_port=str(web_ui.server.port))
    assert answer["success"] is True, answer
    web_ui.wait(lambda: web_ui.reply_length() == 101, "replies of the 100-byte message, and its newline")
    web_ui.post("/stop", {})
    web_ui.wait(lambda: web_ui.get("/stats/requests")["state"] == "stopped", "the run stopped")
    assert web_ui.swarm()["success"] is True
    web_ui.wait(lambda: web_ui.reply_length() == 33, "replies of the startup size again")
    web_ui.post("/stop", {})


def test_user_classes_show_their_target_and_keep_it(web_ui: WebUi) -> None:
    target = f"tcp://{HOST}:{web_ui.server.port}"
    with urllib.request.urlopen(web_ui.url("/"), timeout=5) as response:
        page = response.read().decode()
    assert target in page, "the start page shows the class's host (and warns of none missing)"
    body = json.dumps({"user_class_name": "ThreadedUser", "host": "tcp://elsewhere:1", "weight": 1}).encode()
    answer = web_ui.post("/user", body=body)
    assert answer["success"] is False and "host" in answer["message"], answer
    shown = json.dumps(
        {"user_class_name": "ThreadedUser", "host": f"tcp://{HOST}:{web_ui.server.port}", "weight": 2}
    )
    assert web_ui.post("/user", body=shown.encode()) == {}, "the UI's class editor sends the host it shows"


def test_the_targets_tab_shows_each_server_s_users_and_requests(web_ui: WebUi) -> None:
    assert web_ui.swarm()["success"] is True

    def row() -> dict[str, Any]:
        extended = web_ui.get("/stats/requests").get("extended_stats", [])
        rows = next((e["data"] for e in extended if e["key"] == "targets"), [])
        return next((r for r in rows if r["server"] == "threaded"), {})

    web_ui.wait(lambda: row().get("users") == 2 and row().get("requests", 0) > 0, "the threaded server's row")
    assert row()["target"] == f"tcp://{HOST}:{web_ui.server.port}" and row()["failures"] == 0
    web_ui.post("/stop", {})


@pytest.fixture
def shapes_ui(module_server: Callable[..., TestServer], locust: Callable[..., LocustProcess]) -> WebUi:
    """A Locust with the shapes beside the users, picked in the form as with the stack and `make locust`."""
    server = module_server("threaded", "--delay-ms", "10")
    return WebUi(locust, server, "--class-picker", files="locustfile.py,step_ramp.py,spike.py")


def template_args(web_ui: WebUi) -> tuple[str, dict[str, Any]]:
    """The start page, and the arguments its form is drawn from (Locust puts them in the page as JSON)."""
    with urllib.request.urlopen(web_ui.url("/"), timeout=5) as response:
        page = response.read().decode()
    start = page.index("window.templateArgs = ") + len("window.templateArgs = ")
    args, _ = json.JSONDecoder().raw_decode(page[start:])
    return page, args


def test_the_form_shows_what_it_uses_in_labels_read_whole(shapes_ui: WebUi) -> None:
    page, args = template_args(shapes_ui)
    # Locust's Host field would send every class to one host (and is refused): the page hides it.
    # (Not imported from locust_web, which imports Locust: its gevent patching would break pytest.)
    assert '.MuiFormControl-root:has(input[name="host"])' in page and "{display:none}</style>" in page
    # The form labels a parameter "Name (help)" in one line, cut at the field's width: about 60
    # characters fit a narrow window's field.
    labels = {
        name: f"{name.replace('_', ' ')} ({o['help_text']})" for name, o in args["extra_options"].items()
    }
    assert {"message_size", "target_rps", "step_users", "spike_users"} <= set(labels), labels
    assert max(len(label) for label in labels.values()) <= 60, labels


def test_a_shape_takes_the_users_and_ramp_up_typed_in_the_form(shapes_ui: WebUi) -> None:
    shape_ui = shapes_ui
    form = {"shape_class": "StepRamp", "user_classes": USERS[0], "step_users": "2", "step_seconds": "1"}
    answer = shape_ui.post("/swarm", {"user_count": "3", "spawn_rate": "7", "host": "", **form})
    assert answer["success"] is True, answer
    shape_ui.wait(
        lambda: shape_ui.get("/stats/requests").get("user_count") == 3, "the ceiling typed: 3 users"
    )
    shape_ui.post("/stop", {})
    asked = re.findall(r"Shape test updating to (\d+) users at ([\d.]+) spawn rate", shape_ui.process.log)
    assert asked[:2] == [("2", "7.00"), ("3", "7.00")], asked
