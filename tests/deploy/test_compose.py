"""docker-compose.yml and .env.example: rendered from the code, and keeping the stack's promises.

Read without Docker; `make test-stack` runs the file for real.
"""

from __future__ import annotations

import ipaddress
import re
import stat
import subprocess
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

from echolab import catalogue, cli, ports, settings
from echolab.deploy import compose, generated, stack
from echolab.scenarios import SCENARIOS, Scenario
from echolab.settings import WORK_MODEL

ROOT = Path(__file__).resolve().parents[2]
SERVERS = catalogue.NAMES
SECURITY = {"cap_drop": ["ALL"], "security_opt": ["no-new-privileges:true"]}
VARIABLE = re.compile(r"\$\{(\w+)")


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("path", list(generated.FILES))
def test_generated_file_is_a_fresh_render(path: str) -> None:
    assert (ROOT / path).read_text() == generated.FILES[path](ROOT), "run: make generate"


def test_a_service_per_server_of_the_catalogue(services: dict[str, Any]) -> None:
    assert list(services)[: len(SERVERS)] == list(SERVERS)
    for name in SERVERS:
        assert services[name]["command"] == ["serve", name], "exec form: the server gets SIGTERM itself"


def test_every_server_runs_under_the_same_limits(services: dict[str, Any]) -> None:
    threaded = services["threaded"]
    for name in SERVERS:
        for key in ("deploy", "memswap_limit", "ulimits", "stop_grace_period", "build", "image", "user"):
            assert services[name][key] == threaded[key], f"{name} differs in {key}: the comparison is unfair"
    limits = threaded["deploy"]["resources"]["limits"]
    assert limits == {
        "cpus": "${SERVER_CPUS:-1}",
        "memory": "${SERVER_MEMORY:-512m}",
        "pids": "${SERVER_PIDS:-21024}",
    }
    assert threaded["memswap_limit"] == limits["memory"], "no swap beyond the memory limit"
    nofile = threaded["ulimits"]["nofile"]
    assert nofile["soft"] == nofile["hard"] == "${NOFILE_LIMIT:-20000}", "10,000 connections need fds"
    drain = float(threaded["environment"]["ECHO_DRAIN_TIMEOUT"])
    assert float(threaded["stop_grace_period"].rstrip("s")) > drain, "SIGKILL would cut the drain short"


def test_every_server_setting_passes_through_from_the_env_file(services: dict[str, Any]) -> None:
    for server in catalogue.SERVERS:
        environment = services[server.name]["environment"]
        readable = {option.env for option in settings.options(server.settings)}
        # The image sets ECHO_HOST, and its Python is the image's.
        assert set(environment) == readable - {"ECHO_HOST", "ECHO_PYTHON"}, server.name
        for option in stack.tunable_settings(server):
            # Unset or empty in .env: the server's own default, from settings.py only.
            assert environment[option.env] == f"${{{option.env}:-}}"


def test_services_are_hardened(services: dict[str, Any]) -> None:
    for name, service in services.items():
        assert {key: service.get(key) for key in SECURITY} == SECURITY, name
        assert service.get("pids_limit") or service["deploy"]["resources"]["limits"]["pids"], name
        assert service.get("restart") == "unless-stopped", name
        assert service.get("healthcheck", {}).get("test"), f"{name}: no healthcheck"
    # Ours run as the images' non-root user on a read-only root; Prometheus and Grafana
    # take files compose copies in, which it cannot do into a read-only container.
    for name in [*SERVERS, stack.MASTER_SERVICE, stack.WORKER_SERVICE]:
        assert services[name]["read_only"] is True, name
        assert services[name]["user"] == str(stack.UID), name
        assert services[name]["image"].startswith("${COMPOSE_PROJECT_NAME}-"), "a tag per compose project"
    for server in catalogue.SERVERS:
        mounts = [mount.split(":")[0] for mount in services[server.name].get("tmpfs", [])]
        assert mounts == list(stack.writable_paths(server)), server.name
    assert any(m.startswith("/tmp:") for m in services["threaded-http"]["tmpfs"]), "gunicorn's metrics files"


def test_ports_listen_on_bind_address_and_5557_only_in_the_overlay(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port.startswith("${BIND_ADDRESS:-127.0.0.1}:"), f"{name} publishes {port} on every address"
            assert not port.endswith(":5557"), "only remote workers need the master's port"
    overlay = yaml.safe_load((ROOT / "docker-compose.remote-workers.yml").read_text())
    assert overlay["services"]["locust-master"]["ports"] == [
        "${BIND_ADDRESS:-127.0.0.1}:${HOST_PORT_LOCUST_MASTER:-5557}:5557"
    ]


def test_dependents_wait_for_health(services: dict[str, Any]) -> None:
    for name in ("locust-master", "locust-worker", "grafana"):
        conditions = {dep["condition"] for dep in services[name]["depends_on"].values()}
        assert conditions == {"service_healthy"}, name
    assert set(SERVERS) <= set(services["locust-master"]["depends_on"])


def test_locust_aims_at_the_stack_and_rebalances(services: dict[str, Any]) -> None:
    assert "--enable-rebalancing" in services["locust-master"]["command"]
    for role in ("locust-master", "locust-worker"):
        environment = services[role]["environment"]
        for server in catalogue.SERVERS:
            prefix = f"LOCUST_{server.env_name}"
            assert (environment[f"{prefix}_HOST"], environment[f"{prefix}_PORT"]) == (server.name, "9090")


def test_each_server_keeps_one_address_outside_the_range_the_others_draw_from(
    services: dict[str, Any],
) -> None:
    """Recreated together, servers cannot take each other's address: each has its own, fixed, and so
    have the dependencies their pools reach."""
    document = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    variables = {stack.NETWORK_VARIABLE: "10.1.2"}  # as a user moves the network: every address follows
    (ipam,) = document["networks"]["default"]["ipam"]["config"]
    subnet = ipaddress.ip_network(expand(ipam["subnet"], variables))
    dynamic = ipaddress.ip_network(expand(ipam["ip_range"], variables))
    assert subnet == ipaddress.ip_network("10.1.2.0/24") and dynamic.subnet_of(subnet)
    assert ipaddress.ip_address(expand(ipam["gateway"], variables)) in subnet
    kept = [*SERVERS, stack.POSTGRES_SERVICE, stack.DOWNSTREAM_SERVICE]
    addresses = {name: services[name]["networks"]["default"]["ipv4_address"] for name in kept}
    fixed = {name: ipaddress.ip_address(expand(address, variables)) for name, address in addresses.items()}
    assert len(set(fixed.values())) == len(kept), fixed
    assert all(a in subnet and a not in dynamic and a != subnet.network_address + 1 for a in fixed.values())
    for name, service in services.items():
        if name not in kept:  # Locust, scaled workers, Prometheus, Grafana: from the range
            assert "networks" not in service, name
    # Named after its addresses: moved, the stack is recreated whole on the new network by `make up`.
    assert (
        expand(document["networks"]["default"]["name"], {**variables, "COMPOSE_PROJECT_NAME": "p"})
        == "p_10.1.2"
    )


def expand(value: str, variables: dict[str, str]) -> str:
    """Every ``${NAME:-default}`` of a value, as compose interpolates it."""
    return re.sub(r"\$\{(\w+)(?::-([^}]*))?\}", lambda m: variables.get(m.group(1), m.group(2) or ""), value)


def test_grafana_is_optional_and_its_password_a_secret(services: dict[str, Any]) -> None:
    grafana = services["grafana"]
    assert grafana["profiles"] == ["grafana"]
    assert "GF_SECURITY_ADMIN_PASSWORD" not in grafana["environment"], "docker inspect would show it"
    path = grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD__FILE"]
    assert [f"/run/secrets/{s['target']}" for s in grafana["secrets"]] == [path]
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    document = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert document["secrets"]["grafana-admin-password"] == {
        "file": "${SECRETS_FOLDER:-./secrets}/grafana-admin-password"
    }


def test_postgres_runs_unprivileged_with_its_password_a_secret(services: dict[str, Any]) -> None:
    """PostgreSQL: the official image's name, its own user from the start, no capability, a secret."""
    postgres = services["postgres"]
    assert postgres["image"] == "postgres:17" and postgres["user"] == "999"
    assert postgres["cap_drop"] == ["ALL"] and postgres["security_opt"] == ["no-new-privileges:true"]
    assert postgres["deploy"]["resources"]["limits"]["pids"] > stack.POSTGRES_MAX_CONNECTIONS, (
        "a process each"
    )
    assert postgres["command"] == ["postgres", "-c", f"max_connections={stack.POSTGRES_MAX_CONNECTIONS}"]
    assert "POSTGRES_PASSWORD" not in postgres["environment"], "docker inspect would show it"
    assert [s["source"] for s in postgres["secrets"]] == ["postgres-password"]
    assert f"/run/secrets/{postgres['secrets'][0]['target']}" in postgres["entrypoint"][2]
    document = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert document["secrets"]["postgres-password"] == {
        "file": "${SECRETS_FOLDER:-./secrets}/postgres-password"
    }
    assert postgres["healthcheck"]["test"][1] == "pg_isready"
    assert postgres["read_only"] is True
    assert [t.split(":")[0] for t in postgres["tmpfs"]] == [
        "/var/lib/postgresql",
        "/var/run/postgresql",
        "/tmp",
    ], "its data, sockets and scratch in memory: nothing left on disk"
    for server in SERVERS:  # every server reaches both dependencies by name, the password from the secret
        environment = services[server]["environment"]
        url = urllib.parse.urlsplit(environment["ECHO_DATABASE_URL"])
        assert (url.hostname, url.port, url.password) == ("postgres", 5432, None), server
        (secret,) = services[server]["secrets"]
        assert secret["source"] == "postgres-password" and not set(secret) - {"source", "target"}
        assert environment["ECHO_DATABASE_PASSWORD_FILE"] == f"/run/secrets/{secret['target']}"
        assert environment["ECHO_DOWNSTREAM_URL"] == f"http://downstream:{ports.DOWNSTREAM}"
    downstream = services["downstream"]
    assert downstream["command"] == ["downstream"] and downstream["read_only"] is True
    assert downstream["cap_drop"] == ["ALL"] and downstream["user"] == str(stack.UID)


def test_make_writes_each_secret_at_random_once_and_refuses_an_empty_one(tmp_path: Path) -> None:
    """The Makefile's secrets are the stack's. The first stack command writes each: the folder its
    owner's only, the files readable by the containers' users; a later one keeps them."""
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^SECRETS := (.*)$", makefile, re.M).group(1).split() == list(stack.SECRETS)  # type: ignore[union-attr]
    folder = tmp_path / "secrets"

    def check_env() -> subprocess.CompletedProcess[str]:
        command = ["make", "--no-print-directory", "-o", ".env", "check-env", f"SECRETS_FOLDER={folder}"]
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)

    assert check_env().returncode == 0
    written = {path.name: path.read_text() for path in folder.iterdir()}
    assert set(written) == set(stack.SECRETS) and len(set(written.values())) == len(written), "each its own"
    assert all(len(password.strip()) >= 24 for password in written.values()), written.keys()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert {stat.S_IMODE((folder / name).stat().st_mode) for name in written} == {0o644}
    assert check_env().returncode == 0 and {p.name: p.read_text() for p in folder.iterdir()} == written
    (folder / stack.POSTGRES_PASSWORD_SECRET).write_text("")
    refused = check_env()
    assert refused.returncode != 0 and f"{folder / stack.POSTGRES_PASSWORD_SECRET} is empty" in refused.stderr


def test_server_targets_carry_the_limits() -> None:
    document = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    targets = yaml.safe_load(document["configs"]["echo-server-targets"]["content"])
    assert [t["labels"]["server"] for t in targets] == list(SERVERS)
    for target in targets:
        assert target["targets"] == [f"{target['labels']['server']}:8000"]
        labels = target["labels"]
        assert (labels["cpus"], labels["memory"]) == (compose.SERVER_CPUS, compose.SERVER_MEMORY)


def test_env_example_names_every_variable_the_compose_files_read() -> None:
    example = (ROOT / ".env.example").read_text()
    defined = set(re.findall(r"^#?(\w+)=", example, re.M))
    used = set()
    for path in ("docker-compose.yml", "docker-compose.remote-workers.yml"):
        used |= set(VARIABLE.findall((ROOT / path).read_text()))
    assert used - defined == {"COMPOSE_PROJECT_NAME"}, "compose sets that one itself"


@pytest.mark.parametrize("scenario", SCENARIOS.values(), ids=SCENARIOS)
def test_make_scenario_gives_each_server_the_flags_it_reads(
    services: dict[str, Any], scenario: Scenario, capsys: pytest.CaptureFixture[str]
) -> None:
    """`make scenario`: `echolab scenario NAME`'s variables, as compose hands them to each server."""
    assert cli.main(["scenario", scenario.name]) == 0
    printed = dict(line.split("=", 1) for line in capsys.readouterr().out.splitlines())
    assert printed == stack.scenario_environment(scenario)
    assert cli.main(["scenario", scenario.name, "--services"]) == 0
    assert capsys.readouterr().out.split() == list(SERVERS)
    # What .env may have set before: the scenario's variables win, as a shell's do over .env's.
    env_file = {"ECHO_CPU_MS": "7", "ECHO_DELAY_DISTRIBUTION": "exponential", "ECHO_OFFLOAD": "thread"}
    for server in catalogue.SERVERS:
        given = {**env_file, **printed}
        environment = {name: expand(v, given) for name, v in services[server.name]["environment"].items()}
        url = ["--database-url", stack.FIXED_SERVER_ENV["ECHO_DATABASE_URL"]]  # the stack's, fixed
        del environment["ECHO_DATABASE_PASSWORD_FILE"]  # a file in the container only
        args = cli.build_parser().parse_args(["serve", server.name, *url, *scenario.options_for(server)])
        expected = settings.from_namespace(server.settings, args)
        got = settings.from_environment(server.settings, environment)
        fields = [f for f in WORK_MODEL if hasattr(expected, f)]
        assert {f: getattr(got, f) for f in fields} == {f: getattr(expected, f) for f in fields}, server.name
