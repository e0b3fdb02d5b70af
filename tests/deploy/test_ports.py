"""Every port, written once in echolab.ports (and the servers' own in the catalogue): the files
that cannot import it say the same, and the rendered ones were rendered from it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from echolab import catalogue, ports
from echolab.deploy.kustomize import containers, render

ROOT = Path(__file__).resolve().parents[2]
SERVERS = set(catalogue.NAMES)
LOCUST = {ports.LOCUST_WEB, ports.LOCUST_MASTER, ports.LOCUST_METRICS}


def compose_ports() -> dict[str, set[int]]:
    """The container ports each service publishes, in docker-compose.yml and its overlay."""
    published: dict[str, set[int]] = {}
    for path in ("docker-compose.yml", "docker-compose.remote-workers.yml"):
        for name, service in yaml.safe_load((ROOT / path).read_text())["services"].items():
            for port in service.get("ports", []):
                published.setdefault(name, set()).add(int(port.rsplit(":", 1)[1]))
    return published


def test_the_makefile_asks_compose_for_ports_the_stack_publishes() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^LOCUST_WEB_PORT \?= (\d+)$", makefile, re.M).group(1) == str(ports.LOCUST_WEB)  # type: ignore[union-attr]
    published = compose_ports()
    asked = re.findall(r"port ([\w-]+|\$\$s) (\d+)", makefile) + re.findall(r'"([\w-]+) (\d+) \w+"', makefile)
    assert {service for service, _ in asked} >= {"grafana", "locust-master", "prometheus", "$$s"}
    for service, port in asked:
        if service == "$$s":  # every server's echo port in its container
            assert int(port) == ports.SERVER
        else:
            assert int(port) in published[service], f"make asks compose for {service}'s port {port}"


def test_the_dockerfile_listens_where_the_stack_looks() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    server, locust = dockerfile.split("AS locust")
    assert f"ECHO_PORT={ports.SERVER} ECHO_METRICS_PORT={ports.SERVER_METRICS}" in server
    assert set(map(int, re.search(r"^EXPOSE (.*)$", server, re.M).group(1).split())) == {  # type: ignore[union-attr]
        ports.SERVER,
        ports.SERVER_METRICS,
    }
    assert f"LOCUST_METRICS_PORT={ports.LOCUST_METRICS}" in locust
    assert set(map(int, re.search(r"^EXPOSE (.*)$", locust, re.M).group(1).split())) == LOCUST  # type: ignore[union-attr]


def test_prometheus_scrapes_locust_and_itself_on_their_ports() -> None:
    config = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["locust-master"]["static_configs"] == [{"targets": [f"locust-master:{ports.LOCUST_METRICS}"]}]
    assert [sd["port"] for sd in jobs["locust-workers"]["dns_sd_configs"]] == [ports.LOCUST_METRICS]
    assert jobs["prometheus"]["static_configs"] == [{"targets": [f"localhost:{ports.PROMETHEUS}"]}]


def test_compose_publishes_each_port_on_its_own_host_port() -> None:
    document = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services: dict[str, Any] = document["services"]
    published = compose_ports()
    for server in catalogue.SERVERS:
        assert services[server.name]["ports"] == [
            f"${{BIND_ADDRESS:-127.0.0.1}}:${{HOST_PORT_{server.env_name}:-{server.port}}}:{ports.SERVER}"
        ]
    assert services["prometheus"]["ports"] == [
        f"${{BIND_ADDRESS:-127.0.0.1}}:${{HOST_PORT_PROMETHEUS:-{ports.PROMETHEUS_HOST}}}:{ports.PROMETHEUS}"
    ]
    assert published["grafana"] == {ports.GRAFANA}
    assert published["locust-master"] == {ports.LOCUST_WEB, ports.LOCUST_MASTER}
    targets = yaml.safe_load(document["configs"]["echo-server-targets"]["content"])
    assert {t["targets"][0] for t in targets} == {f"{name}:{ports.SERVER_METRICS}" for name in SERVERS}


def test_kubernetes_deployments_declare_the_ports() -> None:
    declared: dict[str, set[int]] = {}
    for o in render(ROOT / "deploy" / "kubernetes" / "base"):
        for container in containers(o):
            ports_of = declared.setdefault(o["metadata"]["name"], set())
            ports_of.update(p["containerPort"] for p in container.get("ports", []))
    for name in SERVERS:
        assert declared[name] == {ports.SERVER, ports.SERVER_METRICS}, name
    assert declared["prometheus"] == {ports.PROMETHEUS}
    assert declared["grafana"] == {ports.GRAFANA}
    assert declared["locust-master"] == LOCUST
    assert declared["locust-worker"] == {ports.LOCUST_METRICS}
