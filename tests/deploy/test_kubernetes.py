"""The Kubernetes manifests, offline: schemas, our promises, the Prometheus config, agreement with compose.

No cluster runs here. Every kustomization is rendered (echolab's renderer of
the subset it uses) and every object validated against the Kubernetes API's
schemas in strict mode (kubernetes-validate); what schemas cannot say
(selectors, named ports, references, limits) is checked below; the rendered
Prometheus config goes through promtool (see support/kubernetes.py for how,
with a promtool built without Kubernetes discovery).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from support.kubernetes import (
    by_kind,
    config_map,
    discovered,
    named,
    offline_config,
    pod_targets,
    run_promtool,
    sd_problems,
)

from echolab import catalogue, ports
from echolab.deploy import kubernetes, stack
from echolab.deploy.kustomize import KustomizeError, Object, containers, pod_specs, render

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES_VERSION = "1.37"  # the newest the pinned kubernetes-validate knows
TREES = ["base", "overlays/local", "overlays/large", "jobs/headless"]
SERVERS = catalogue.NAMES


def rendered(tree: str) -> list[Object]:
    return render(ROOT / "deploy" / "kubernetes" / tree)


@pytest.fixture(scope="module")
def base() -> list[Object]:
    return rendered("base")


def deployment_of(objects: list[Object], name: str) -> tuple[Object, Object]:
    """A Deployment's pod spec and its only container."""
    spec = next(pod_specs(named(objects, "Deployment", name)))
    return spec, spec["containers"][0]


# --- every object, every tree --------------------------------------------------------


@pytest.mark.parametrize("tree", TREES)
def test_every_object_is_valid_against_the_api_schemas(tree: str) -> None:
    problems = []
    for o in rendered(tree):
        try:
            kubernetes_validate.validate(o, KUBERNETES_VERSION, strict=True)
        except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as exc:
            problems.append(f"{o['kind']}/{o['metadata']['name']}: {exc}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("tree", TREES)
def test_selectors_ports_and_references_hold(tree: str) -> None:
    objects = rendered(tree)
    pods = [o for o in objects if o["kind"] in ("Deployment", "Job")]
    config_maps = {o["metadata"]["name"] for o in by_kind(objects, "ConfigMap")}
    problems = []
    for o in pods:
        name, template = o["metadata"]["name"], o["spec"]["template"]
        selector = o["spec"].get("selector", {}).get("matchLabels", {})
        if selector.items() - template["metadata"]["labels"].items():
            problems.append(f"{name}: selector {selector} does not select its own pods")
        for container in containers(o):
            ports = {p["name"] for p in container.get("ports", [])}
            for probe in ("readinessProbe", "livenessProbe"):
                port = (
                    container.get(probe, {})
                    .get("httpGet", container.get(probe, {}).get("tcpSocket", {}))
                    .get("port")
                )
                if port is not None and port not in ports:
                    problems.append(f"{name}: {probe} on undeclared port {port}")
        for spec in pod_specs(o):
            for volume in spec.get("volumes", []):
                sources = [
                    volume.get("configMap"),
                    *(s.get("configMap") for s in volume.get("projected", {}).get("sources", [])),
                ]
                for source in filter(None, sources):
                    if source["name"] not in config_maps:
                        problems.append(
                            f"{name}: volume {volume['name']} names ConfigMap {source['name']}, not rendered"
                        )
    for s in by_kind(objects, "Service"):
        selected = [
            p
            for p in pods
            if s["spec"]["selector"].items() <= p["spec"]["template"]["metadata"]["labels"].items()
        ]
        if not selected:
            problems.append(f"Service {s['metadata']['name']} selects no pod")
        declared = {p["name"] for pod in selected for c in containers(pod) for p in c.get("ports", [])}
        problems += [f"Service {s['metadata']['name']}: no port {p['targetPort']}" for p in s["spec"]["ports"]
                     if p["targetPort"] not in declared]  # fmt: skip
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("tree", TREES)
def test_every_pod_is_hardened(tree: str) -> None:
    for o in rendered(tree):
        for spec in pod_specs(o):
            assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, o["metadata"][
                "name"
            ]
            for container in spec["containers"]:
                context = container["securityContext"]
                assert context["runAsNonRoot"] is True and context["runAsUser"] > 0, container["name"]
                assert context["allowPrivilegeEscalation"] is False, container["name"]
                assert context["capabilities"] == {"drop": ["ALL"]}, container["name"]
                # Ours and Prometheus read-only; Grafana's root stays writable (see kubernetes.py).
                assert context["readOnlyRootFilesystem"] is (container["name"] != "grafana"), container[
                    "name"
                ]


# --- the servers ----------------------------------------------------------------------


def test_servers_have_equal_guaranteed_limits_and_drain_before_they_are_killed(base: list[Object]) -> None:
    limits = []
    for server in catalogue.SERVERS:
        spec, container = deployment_of(base, server.name)
        resources = container["resources"]
        assert resources["requests"] == resources["limits"], f"{server.name}: requests equal limits"
        limits.append(resources["limits"])
        assert spec["terminationGracePeriodSeconds"] > stack.DRAIN_TIMEOUT, (
            "SIGKILL would cut the drain short"
        )
        writable = [m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")]
        assert writable == list(stack.writable_paths(server)), server.name
    assert all(limit == limits[0] for limit in limits), limits


@pytest.mark.parametrize("overlay", kubernetes.OVERLAYS, ids=[o.name for o in kubernetes.OVERLAYS])
def test_an_overlay_sets_every_server_s_limits_and_the_workers(overlay: kubernetes.Overlay) -> None:
    objects = rendered(f"overlays/{overlay.name}")
    expected = kubernetes.server_resources(overlay.limits)
    for server in SERVERS:
        workload = named(objects, "Deployment", server)
        _, container = deployment_of(objects, server)
        assert container["resources"] == expected, server
        annotations = workload["spec"]["template"]["metadata"]["annotations"]
        shown = (float(annotations[kubernetes.CPUS]), annotations[kubernetes.MEMORY])
        in_force = (cores(expected["limits"]["cpu"]), expected["limits"]["memory"])
        assert shown == in_force, "the dashboards show the limits in force"
    assert named(objects, "Deployment", stack.WORKER_SERVICE)["spec"]["replicas"] == overlay.workers


# --- compose and Kubernetes agree -------------------------------------------------------


def compose_default(value: str) -> str:
    """``${NAME:-default}`` -> ``default``: what compose runs with when .env leaves it."""
    match = re.fullmatch(r"\$\{\w+:-(.*)\}", value)
    return match.group(1) if match else value


def cores(quantity: str) -> float:
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def as_mib(quantity: str) -> int:
    number, unit = re.fullmatch(r"(\d+)(Mi|Gi|m|g)", quantity).groups()  # type: ignore[union-attr]
    return int(number) * (1024 if unit in ("Gi", "g") else 1)


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]  # type: ignore[no-any-return]


def test_compose_and_kubernetes_run_the_servers_alike(base: list[Object], services: dict[str, Any]) -> None:
    for server in catalogue.SERVERS:
        composed = services[server.name]
        spec, container = deployment_of(base, server.name)
        assert composed["build"]["target"] == stack.SERVER_IMAGE.target
        assert container["image"].split(":")[0] == stack.SERVER_IMAGE.name
        assert container["args"] == composed["command"]
        fixed = {k: v for k, v in composed["environment"].items() if not v.startswith("${")}
        assert {e["name"]: e.get("value") for e in container["env"]} == fixed, (
            "the rest is .env's, unset here"
        )
        # The database's password: a file at the same path, compose's from its secret, here the Secret's.
        (secret,) = composed["secrets"]
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/run/secrets"]
        (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
        assert volume["secret"] == {
            "secretName": "postgres",
            "items": [{"key": "password", "path": secret["target"]}],
        }
        assert {p["containerPort"] for p in container["ports"]} == {ports.SERVER, ports.SERVER_METRICS}
        assert composed["ports"][0].endswith(f":{ports.SERVER}")
        limits = {k: compose_default(v) for k, v in composed["deploy"]["resources"]["limits"].items()}
        assert float(limits["cpus"]) == cores(container["resources"]["limits"]["cpu"])
        assert as_mib(limits["memory"]) == as_mib(container["resources"]["limits"]["memory"])
        probe = container["readinessProbe"]["httpGet"]
        port = {p["name"]: p["containerPort"] for p in container["ports"]}[probe["port"]]
        assert f"http://127.0.0.1:{port}{probe['path']}" in " ".join(composed["healthcheck"]["test"])
        assert f"{spec['terminationGracePeriodSeconds']}s" == composed["stop_grace_period"]


def test_locust_reaches_each_server_through_its_service_never_a_pod(base: list[Object]) -> None:
    """A Service's virtual address outlives the pods: a recreated server is where its users look.

    Each Locust target is a Service named for its server, with a cluster IP
    (not headless, whose name resolves to the pods' own addresses), selecting
    that server's pods only, on the port the target names.
    """
    _, master = deployment_of(base, stack.MASTER_SERVICE)
    environment = {e["name"]: e["value"] for e in master["env"]}
    pods = {
        server: named(base, "Deployment", server)["spec"]["template"]["metadata"]["labels"]
        for server in SERVERS
    }
    for server in catalogue.SERVERS:
        host, port = (environment[option.env] for option in server.locust_target)
        service = named(base, "Service", host)
        assert host == server.name and service["spec"].get("clusterIP") != "None", service
        selector = service["spec"]["selector"].items()
        assert [name for name, labels in pods.items() if selector <= labels.items()] == [server.name], (
            selector
        )
        assert int(port) in {p["port"] for p in service["spec"]["ports"]}


def test_compose_and_kubernetes_run_locust_and_grafana_alike(
    base: list[Object], services: dict[str, Any]
) -> None:
    for name in (stack.MASTER_SERVICE, stack.WORKER_SERVICE, "grafana"):
        _, container = deployment_of(base, name)
        composed = services[name]
        assert container.get("args", composed.get("command")) == composed.get("command"), name
        environment = {k: compose_default(v) for k, v in composed["environment"].items()}
        assert {e["name"]: e["value"] for e in container["env"]} == environment, name
    assert (
        named(base, "Deployment", "prometheus")["spec"]["template"]["spec"]["containers"][0]["image"]
        == (services["prometheus"]["image"])
    )


def test_compose_and_kubernetes_run_the_dependencies_alike(
    base: list[Object], services: dict[str, Any]
) -> None:
    """PostgreSQL and the downstream: the same image, command, environment; the password a Secret's."""
    _, postgres = deployment_of(base, stack.POSTGRES_SERVICE)
    composed = services[stack.POSTGRES_SERVICE]
    assert postgres["image"] == composed["image"] and postgres["args"] == composed["command"]
    assert {e["name"]: e.get("value") for e in postgres["env"]} == {
        **composed["environment"],
        "POSTGRES_PASSWORD": None,
    }
    assert postgres["securityContext"]["runAsUser"] == int(composed["user"])
    assert postgres["securityContext"]["readOnlyRootFilesystem"] is True
    _, downstream = deployment_of(base, stack.DOWNSTREAM_SERVICE)
    composed = services[stack.DOWNSTREAM_SERVICE]
    assert downstream["args"] == composed["command"]
    assert {e["name"]: e["value"] for e in downstream["env"]} == composed["environment"]


# --- monitoring -------------------------------------------------------------------------


def test_rules_provisioning_and_dashboards_are_the_files_compose_mounts(base: list[Object]) -> None:
    assert config_map(base, "prometheus-rules") == {"rules.yml": (ROOT / "prometheus/rules.yml").read_text()}
    dashboards = config_map(base, "grafana-dashboards")
    assert dashboards == {p.name: p.read_text() for p in (ROOT / "grafana/dashboards").glob("*.json")}
    provider = yaml.safe_load(config_map(base, "grafana-dashboard-providers")["dashboards.yml"])
    _, grafana = deployment_of(base, "grafana")
    mounts = {m["mountPath"] for m in grafana["volumeMounts"]}
    assert provider["providers"][0]["options"]["path"] in mounts
    assert "/etc/grafana/provisioning/datasources" in mounts
    password = next(e["value"] for e in grafana["env"] if e["name"] == "GF_SECURITY_ADMIN_PASSWORD__FILE")
    assert password.rsplit("/", 1)[0] in mounts


def test_prometheus_config_passes_promtool_and_finds_every_pod(base: list[Object], tmp_path: Path) -> None:
    config = yaml.safe_load(config_map(base, "prometheus-config")["prometheus.yml"])
    assert not sd_problems(config)
    (tmp_path / "rules.yml").write_text(config_map(base, "prometheus-rules")["rules.yml"])
    offline_config(config, pod_targets(base), tmp_path)
    checked = run_promtool(tmp_path, "check", "config", "prometheus.yml")
    assert "SUCCESS: 1 rule files found" in checked.stdout + checked.stderr
    servers = discovered(tmp_path, "echo-servers")
    limits = {"cpus": "1", "memory": "512Mi"}
    assert sorted(t["server"] for t in servers) == sorted(SERVERS), "each server once, on its metrics port"
    assert all({k: t[k] for k in limits} == limits and t["__address__"].endswith(":8000") for t in servers)
    workers = discovered(tmp_path, "locust-workers")
    assert [t["__address__"].split(":")[1] for t in workers] == ["9646"]
    assert len(discovered(tmp_path, "locust-master")) == 1
    assert [t["__address__"].split(":")[1] for t in discovered(tmp_path, "downstream")] == ["8004"]


# --- the headless run -------------------------------------------------------------------


def test_the_headless_run_ends_by_itself_and_leaves_nothing(base: list[Object]) -> None:
    objects = rendered("jobs/headless")
    master_job = named(objects, "Job", f"{kubernetes.RUN}-master")
    workers_job = named(objects, "Job", f"{kubernetes.RUN}-workers")
    master = master_job["spec"]["template"]["spec"]["containers"][0]
    run_env = {e["name"]: e["value"] for e in master["env"]}
    assert "--headless" in master["args"] and run_env["LOCUST_RUN_TIME"], "it ends by itself"
    assert (
        workers_job["spec"]["parallelism"]
        == workers_job["spec"]["completions"]
        == int(run_env["LOCUST_EXPECT_WORKERS"])
    )
    for job in (master_job, workers_job):
        assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
        assert job["spec"]["ttlSecondsAfterFinished"] > 0, "its pods are deleted once read"
        assert job["spec"]["activeDeadlineSeconds"] > int(run_env["LOCUST_RUN_TIME"].rstrip("s"))
    # No web UI headless: an HTTP probe on it would never pass (the Locust Helm chart's trap).
    assert master["readinessProbe"] == {"tcpSocket": {"port": "master"}, "periodSeconds": 5}
    worker = workers_job["spec"]["template"]["spec"]["containers"][0]
    service = named(objects, "Service", worker["args"][worker["args"].index("--master-host") + 1])
    assert service["spec"]["publishNotReadyAddresses"] is True, "workers find the master before it is ready"


# --- the renderer -------------------------------------------------------------------------


def test_make_k8s_prints_one_stream_of_every_object() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "echolab.deploy.kustomize", str(ROOT / "deploy/kubernetes/overlays/local")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    kinds = [o["kind"] for o in yaml.safe_load_all(done.stdout)]
    assert kinds[0] == "Namespace" and {"Deployment", "Service", "ConfigMap", "Role"} <= set(kinds)


def test_a_kustomization_outside_the_subset_is_refused(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("commonLabels: {a: b}\nresources: []\n")
    with pytest.raises(KustomizeError, match="outside the supported subset: \\['commonLabels'\\]"):
        render(tmp_path)
