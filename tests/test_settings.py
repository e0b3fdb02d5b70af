"""Settings, seen from outside: default < environment < flag (echo_server_info shows them), and bad values.

A bad value, from a flag or from the environment, is one line on stderr and
exit status 2, before anything starts; so is a port in use.
"""

from __future__ import annotations

import pytest
from support.servers import run_command, taken_port

from echolab import catalogue, interpreters, settings
from echolab.servers import protections

# The work model's labels of echo_server_info, at their defaults: 100 ms of IO and nothing else.
# And every server's interpreter: this one.
IDLE_WORK = {
    "delay_ms": "100", "delay_distribution": "fixed", "cpu_ms": "0", "blocking_ms": "0", "io": "timer",
    **interpreters.here().facts(),
}  # fmt: skip


def test_environment_is_used_when_there_is_no_flag(start_server):
    env = {"ECHO_DELAY_MS": "37", "ECHO_FRAMING": "oneshot", "ECHO_MODEL": "pool", "ECHO_THREADS": "7"}
    server = start_server("threaded", "--framing", "oneshot", env=env)
    info = server.scrape().labels("echo_server_info")
    assert info == {
        "server": "threaded",
        "model": "pool",
        "framing": "oneshot",
        "threads": "7",
        **IDLE_WORK,
        "delay_ms": "37",
    }


def test_flag_wins_over_environment(start_server):
    env = {"ECHO_DELAY_MS": "37", "ECHO_FRAMING": "oneshot", "ECHO_LOOP": "asyncio", "ECHO_CPU_MS": "3"}
    server = start_server("async", "--delay-ms", "20", "--framing", "lines", "--loop", "uvloop", env=env)
    info = server.scrape().labels("echo_server_info")
    assert info == {
        "server": "async",
        "api": "streams",
        "loop": "uvloop",
        "framing": "lines",
        **IDLE_WORK,
        "delay_ms": "20",
        "cpu_ms": "3",
        "offload": "none",  # and no offload_threads: no pool to size
    }
    # The framing is not just a label: the server speaks lines.
    with server.connect() as conn:
        conn.send(b"one\ntwo\n")
        assert [conn.line(), conn.line()] == [b"ONE\n", b"TWO\n"]


def test_defaults_without_environment_or_flag(start_server):
    server = start_server("threaded", env={"ECHO_DELAY_MS": ""})  # empty counts as unset
    info = server.scrape().labels("echo_server_info")
    assert info == {
        "server": "threaded",
        "model": "thread-per-connection",
        "framing": "lines",  # and no threads: --threads sizes the pool model's
        **IDLE_WORK,
    }


BAD_FLAGS = [
    (("--delay-ms", "-5"), "--delay-ms"),
    (("--idle-timeout", "-1"), "--idle-timeout"),
    (("--idle-timeout", "0"), "--idle-timeout"),
    (("--port", "99999"), "--port"),
    (("--max-connections", "0"), "--max-connections"),
    (("--max-message-bytes", "soon"), "--max-message-bytes"),
    (("--log-level", "loud"), "--log-level"),
    (("--cpu-ms", "-1"), "--cpu-ms"),
    (("--blocking-ms", "lots"), "--blocking-ms"),
    (("--delay-distribution", "normal"), "--delay-distribution"),
    (("--io", "sql"), "--io"),
    (("--io", "postgres"), "--database-url"),  # which it needs
    (("--database-url", "mysql://db/x"), "--database-url"),
    (("--database-url", "postgresql://db:port/x"), "--database-url"),
    (("--database-password-file", "/nonexistent/password"), "--database-password-file"),
    (("--database-password-file", "/dev/null"), "--database-password-file"),  # no password in it
    (("--downstream-url", "ftp://host/"), "--downstream-url"),
    (("--pool-size", "-1"), "--pool-size"),
    (("--pool-timeout", "0"), "--pool-timeout"),
]


@pytest.mark.parametrize("name", catalogue.NAMES)
@pytest.mark.parametrize(("flags", "named"), BAD_FLAGS, ids=["=".join(f) for f, _ in BAD_FLAGS])
def test_a_bad_flag_is_one_line_and_exit_2(name: str, flags: tuple[str, ...], named: str) -> None:
    done = run_command("serve", name, *flags, timeout=30)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr
    assert named in done.stderr and "Traceback" not in done.stderr


def test_a_bad_database_url_is_refused_without_showing_its_password() -> None:
    url = "postgresql://echolab:s3cret@db:port/echolab"
    for done in (
        run_command("serve", "threaded", "--database-url", url, timeout=30),
        run_command("serve", "async", env={"ECHO_DATABASE_URL": url}, timeout=30),
        run_command("serve", "async", "--help", env={"ECHO_DATABASE_URL": url}, timeout=30),
    ):
        assert "s3cret" not in done.stdout + done.stderr
        assert "database" in done.stdout + done.stderr
    assert done.returncode == 0  # --help


@pytest.mark.parametrize("variable", ["ECHO_DELAY_MS=soon", "ECHO_PORT=99999", "ECHO_METRICS=maybe"])
def test_a_bad_environment_value_names_the_variable(variable: str) -> None:
    name, value = variable.split("=")
    done = run_command("serve", "async", env={name: value}, timeout=30)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and name in done.stderr, done.stderr


@pytest.mark.parametrize("name", ["threaded", "async"])
def test_an_unknown_protection_to_turn_off_is_one_line_and_exit_2(name: str) -> None:
    """The benchmark's switch (servers/protections.py) is checked like a setting."""
    done = run_command("serve", name, "--port", "0", env={protections.ENV: "deadlines,limits"}, timeout=30)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "limits" in done.stderr, done.stderr


def test_a_bad_variable_of_another_command_is_no_error() -> None:
    done = run_command("config", env={"ECHO_DELAY_MS": "soon"}, timeout=30)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("which", ["--port", "--metrics-port"])
@pytest.mark.parametrize("name", catalogue.NAMES)
def test_a_port_in_use_is_one_line_and_exit_2(name: str, which: str) -> None:
    with taken_port() as port:
        ports = {"--port": "0", "--metrics-port": "0", which: str(port)}
        done = run_command("serve", name, *(item for pair in ports.items() for item in pair), timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    what = "echo" if which == "--port" else "metrics"
    assert f"cannot start: the {what} port, 127.0.0.1:{port}: Address already in use" in done.stderr


def test_every_setting_has_a_flag_an_env_var_and_a_checked_default() -> None:
    classes = {s.settings for s in catalogue.SERVERS} | {
        settings.BenchSettings,
        settings.DemoSettings,
        settings.SuiteSettings,
    }
    for cls in classes:
        for option in settings.options(cls):
            assert option.env.startswith(cls.PREFIX) and option.flag.startswith("--")
            option.check(option.default)  # a default that fails its own check would be a trap


@pytest.mark.parametrize("name", ["threaded", "threaded-http"])
def test_offload_is_a_setting_of_the_event_loop_servers_only(name: str) -> None:
    """A thread has nothing to offload: the flag is not there, and saying so is one line."""
    done = run_command("serve", name, "--offload", "thread", timeout=30)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "--offload" in done.stderr, done.stderr
