"""The Kubernetes manifests as the tests check them without a cluster.

Debian's promtool is built without Kubernetes service discovery
(``field kubernetes_sd_configs not found``). So the rendered Prometheus
config is checked in three steps: its ``kubernetes_sd_configs`` against the
fields Prometheus accepts there, then a copy in which each is replaced by a
``file_sd_configs`` listing the targets that ``role: pod`` would produce from
the rendered pod templates (the same ``__meta_kubernetes_pod_*`` labels), so
that ``promtool check config`` checks the rest and ``promtool check
service-discovery`` runs the real relabelling on them. Nothing is scraped.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from echolab.deploy.kustomize import Object, pod_specs

# What Prometheus' Kubernetes SD accepts (discovery/kubernetes), without the HTTP client's options.
SD_FIELDS = {"api_server", "role", "kubeconfig_file", "namespaces", "selectors", "attach_metadata"}
SD_ROLES = {"pod", "service", "endpoints", "endpointslice", "node", "ingress"}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: install Prometheus (Debian/Ubuntu: apt-get install prometheus)")
    return path


def sd_problems(config: dict[str, Any]) -> list[str]:
    problems = []
    for job in config["scrape_configs"]:
        for sd in job.get("kubernetes_sd_configs", []):
            where = f"job {job['job_name']}"
            if sd.get("role") not in SD_ROLES:
                problems.append(f"{where}: role {sd.get('role')!r}")
            problems += [f"{where}: unknown field {key!r}" for key in set(sd) - SD_FIELDS]
            problems += [
                f"{where}: namespaces.{key}?"
                for key in set(sd.get("namespaces", {})) - {"own_namespace", "names"}
            ]
    return problems


def meta(prefix: str, values: dict[str, str]) -> dict[str, str]:
    """``__meta_kubernetes_pod_label_app_kubernetes_io_name`` and its ``labelpresent_`` twin, say."""
    out = {}
    for key, value in values.items():
        name = re.sub(r"[^a-zA-Z0-9_]", "_", key)
        out[f"__meta_kubernetes_pod_{prefix}_{name}"] = str(value)
        out[f"__meta_kubernetes_pod_{prefix}present_{name}"] = "true"
    return out


def pod_targets(objects: list[Object]) -> list[dict[str, Any]]:
    """file_sd groups as role: pod gives them: one target per declared container port of each pod."""
    groups = []
    for number, workload in enumerate(o for o in objects if o["kind"] in WORKLOADS):
        template = workload["spec"]["template"]
        ip = f"10.0.0.{number + 1}"
        common = {
            "__meta_kubernetes_namespace": workload["metadata"].get("namespace", "default"),
            "__meta_kubernetes_pod_name": f"{workload['metadata']['name']}-6d4f9-x2x7q",
            "__meta_kubernetes_pod_ip": ip,
            "__meta_kubernetes_pod_phase": "Running",
            **meta("label", template["metadata"].get("labels", {})),
            **meta("annotation", template["metadata"].get("annotations", {})),
        }
        for spec in pod_specs(workload):
            for container in spec["containers"]:
                for port in container.get("ports", []):
                    labels = {
                        **common,
                        "__meta_kubernetes_pod_container_name": container["name"],
                        "__meta_kubernetes_pod_container_port_name": port.get("name", ""),
                        "__meta_kubernetes_pod_container_port_number": str(port["containerPort"]),
                        "__meta_kubernetes_pod_container_port_protocol": "TCP",
                    }
                    groups.append({"targets": [f"{ip}:{port['containerPort']}"], "labels": labels})
    return groups


def offline_config(config: dict[str, Any], targets: list[dict[str, Any]], workdir: Path) -> Path:
    """A copy of ``config`` in ``workdir`` whose Kubernetes discovery reads ``targets`` from a file."""
    copy = json.loads(json.dumps(config))
    (workdir / "pods.json").write_text(json.dumps(targets))
    for job in copy["scrape_configs"]:
        if job.pop("kubernetes_sd_configs", None) is not None:
            job["file_sd_configs"] = [{"files": ["pods.json"]}]
    path = workdir / "prometheus.yml"
    path.write_text(yaml.safe_dump(copy, sort_keys=False))
    return path


def run_promtool(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([promtool(), *args], cwd=workdir, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def discovered(workdir: Path, job: str) -> list[dict[str, str]]:
    """The label sets ``job``'s relabelling keeps, as Prometheus would scrape them."""
    done = run_promtool(workdir, "check", "service-discovery", "--timeout=1s", "prometheus.yml", job)
    return [target["labels"] for target in json.loads(done.stdout) if target["labels"]]


def by_kind(objects: list[Object], kind: str) -> Iterator[Object]:
    return (o for o in objects if o["kind"] == kind)


def named(objects: list[Object], kind: str, name: str) -> Object:
    hits = [o for o in by_kind(objects, kind) if o["metadata"]["name"] == name]
    assert len(hits) == 1, f"{kind}/{name}: {len(hits)} found"
    return hits[0]


def config_map(objects: list[Object], prefix: str) -> dict[str, str]:
    """The data of the ConfigMap generated as ``prefix`` (its name has a hash suffix)."""
    hits = [o for o in by_kind(objects, "ConfigMap") if o["metadata"]["name"].rsplit("-", 1)[0] == prefix]
    assert len(hits) == 1, f"ConfigMap {prefix}: {[o['metadata']['name'] for o in hits]}"
    data: dict[str, str] = hits[0]["data"]
    return data
