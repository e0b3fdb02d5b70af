"""A renderer for the small subset of kustomize our manifests use: ``make k8s`` and the tests read through it.

``kubectl apply -k`` renders the same files with the real kustomize. This
one exists because no kustomize can be installed from the package registries
(only a third party's repackaged kubectl binary), and the tests need the
rendered objects to validate them. It supports, and refuses anything beyond:

``resources``          files (YAML, one or more objects) and directories (kustomizations)
``namespace``          set on every namespaced object; a Namespace object is renamed to it
``configMapGenerator`` ``name`` and ``files`` (``[key=]path``); ``options.disableNameSuffixHash``
``images``             ``name`` to ``newName`` and/or ``newTag``
``replicas``           ``name`` and ``count``
``patches``            strategic merge, ``path`` or inline ``patch``, optional ``target``
                       (``kind``, ``name``, ``labelSelector`` of ``key=value`` terms)

As kustomize does, a generated ConfigMap's name gets a suffix hashed from its
data (so a change rolls the pods that mount it), every reference to it from a
pod template follows, and the output is in kustomize's (legacy) kind order.
"""

from __future__ import annotations

import copy
import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

Object = dict[str, Any]

FIELDS = {"apiVersion", "kind", "resources", "namespace", "configMapGenerator", "images", "replicas",
          "patches"}  # fmt: skip
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
# kustomize's legacy order (its SortOrderTransformer); other kinds in between, by name.
FIRST = [
    "Namespace", "ResourceQuota", "StorageClass", "CustomResourceDefinition", "ServiceAccount",
    "PodSecurityPolicy", "Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding", "ConfigMap", "Secret",
    "Endpoints", "Service", "LimitRange", "PriorityClass", "PersistentVolume", "PersistentVolumeClaim",
    "Deployment", "StatefulSet", "CronJob", "PodDisruptionBudget",
]  # fmt: skip
LAST = ["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"]
# The merge key of the lists a strategic merge patch merges; other lists it replaces whole.
MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name", "volumes": "name",
              "volumeMounts": "mountPath", "ports": "containerPort"}  # fmt: skip
HASHED = "echolab.deploy/hash-suffix"  # marks a generated ConfigMap until its name is final


class KustomizeError(Exception):
    """A kustomization outside the subset, or one that does not render; the message says which."""


def render(directory: Path) -> list[Object]:
    """The objects ``kubectl kustomize directory`` gives, for the supported subset."""
    objects = _build(directory)
    _hash_names(objects)
    return sorted(objects, key=_order)


def dump(objects: list[Object]) -> str:
    text: str = yaml.safe_dump_all(objects, sort_keys=False, default_flow_style=False, width=110)
    return text


def _build(directory: Path) -> list[Object]:
    path = directory / "kustomization.yaml"
    if not path.is_file():
        raise KustomizeError(f"{directory}: no kustomization.yaml")
    spec = yaml.safe_load(path.read_text()) or {}
    unknown = set(spec) - FIELDS
    if unknown:
        raise KustomizeError(f"{path}: fields outside the supported subset: {sorted(unknown)}")
    objects: list[Object] = []
    for resource in spec.get("resources", []):
        target = directory / resource
        objects += _build(target) if target.is_dir() else _load(target)
    objects += [_config_map(generator, directory) for generator in spec.get("configMapGenerator", [])]
    for patch in spec.get("patches", []):
        _patch(objects, patch, directory)
    if "namespace" in spec:
        _set_namespace(objects, spec["namespace"])
    for image in spec.get("images", []):
        _set_image(objects, image)
    for replicas in spec.get("replicas", []):
        _set_replicas(objects, replicas)
    ids = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objects]
    duplicates = sorted({str(i) for i in ids if ids.count(i) > 1})
    if duplicates:
        raise KustomizeError(f"{path}: the same object twice: {duplicates}")
    return objects


def _load(path: Path) -> list[Object]:
    objects = [o for o in yaml.safe_load_all(path.read_text()) if o]
    for o in objects:
        if not isinstance(o, dict) or "kind" not in o or "metadata" not in o:
            raise KustomizeError(f"{path}: not a Kubernetes object: {str(o)[:80]}")
    return objects


def _config_map(generator: dict[str, Any], directory: Path) -> Object:
    unknown = set(generator) - {"name", "files", "options"}
    options = generator.get("options", {})
    if unknown or set(options) - {"disableNameSuffixHash"}:
        raise KustomizeError(f"configMapGenerator {generator.get('name')}: outside the supported subset")
    data = {}
    for entry in generator.get("files", []):
        key, _, relative = entry.rpartition("=")
        path = directory / relative
        data[key or path.name] = path.read_text()
    metadata: dict[str, Any] = {"name": generator["name"]}
    if not options.get("disableNameSuffixHash"):
        metadata["annotations"] = {HASHED: "true"}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": dict(sorted(data.items()))}


def _patch(objects: list[Object], patch: dict[str, Any], directory: Path) -> None:
    if set(patch) - {"path", "patch", "target"}:
        raise KustomizeError(f"patch fields outside the supported subset: {sorted(patch)}")
    body = yaml.safe_load((directory / patch["path"]).read_text() if "path" in patch else patch["patch"])
    if not isinstance(body, dict):
        raise KustomizeError("only strategic merge patches are supported")
    target = patch.get("target") or {"kind": body["kind"], "name": body["metadata"]["name"]}
    if "target" in patch:
        body = copy.deepcopy(body)
        body["metadata"].pop("name", None)  # with a target, the body's name only placates the parser
    hits = [i for i, o in enumerate(objects) if _matches(o, target)]
    if not hits:
        raise KustomizeError(f"patch matched nothing: {target}")
    for i in hits:
        objects[i] = _merge(objects[i], body)


def _matches(o: Object, target: dict[str, str]) -> bool:
    if set(target) - {"kind", "name", "labelSelector"}:
        raise KustomizeError(f"patch target fields outside the supported subset: {sorted(target)}")
    labels = o["metadata"].get("labels", {})
    terms = [term.partition("=") for term in target.get("labelSelector", "").split(",") if term]
    return (
        target.get("kind", o["kind"]) == o["kind"]
        and target.get("name", o["metadata"]["name"]) == o["metadata"]["name"]
        and all(labels.get(key) == value for key, _, value in terms)
    )


def _merge(target: Any, patch: Any) -> Any:
    if not isinstance(target, dict) or not isinstance(patch, dict):
        return copy.deepcopy(patch)
    merged = dict(target)
    for key, value in patch.items():
        if key.startswith("$"):
            raise KustomizeError(f"patch directive {key} is not supported")
        if value is None:
            merged.pop(key, None)
        elif key in MERGE_KEYS and isinstance(value, list) and isinstance(merged.get(key), list):
            by = MERGE_KEYS[key]
            items = list(merged[key])
            for item in value:
                index = next((i for i, old in enumerate(items) if old.get(by) == item.get(by)), None)
                if index is None:
                    items.append(copy.deepcopy(item))
                else:
                    items[index] = _merge(items[index], item)
            merged[key] = items
        else:
            merged[key] = _merge(merged.get(key), value)
    return merged


def _set_namespace(objects: list[Object], namespace: str) -> None:
    for o in objects:
        if o["kind"] == "Namespace":
            o["metadata"]["name"] = namespace
        elif o["kind"] not in CLUSTER_SCOPED:
            o["metadata"]["namespace"] = namespace
        for subject in o.get("subjects", []):
            if subject.get("kind") == "ServiceAccount":
                subject["namespace"] = namespace


def pod_specs(o: Object) -> Iterator[dict[str, Any]]:
    """The pod spec of a workload (Deployment, Job...), if it has one."""
    template = o.get("spec", {}).get("template")
    if isinstance(template, dict):
        yield template.setdefault("spec", {})


def containers(o: Object) -> Iterator[dict[str, Any]]:
    for spec in pod_specs(o):
        yield from spec.get("initContainers", [])
        yield from spec.get("containers", [])


def _set_image(objects: list[Object], image: dict[str, str]) -> None:
    if set(image) - {"name", "newName", "newTag"}:
        raise KustomizeError(f"images fields outside the supported subset: {sorted(image)}")
    for container in (c for o in objects for c in containers(o)):
        name, _, tag = container["image"].partition(":")
        if name == image["name"]:
            container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}".rstrip(":")


def _set_replicas(objects: list[Object], replicas: dict[str, Any]) -> None:
    hits = [o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == replicas["name"]]
    if not hits:
        raise KustomizeError(f"replicas: no Deployment named {replicas['name']}")
    for o in hits:
        o["spec"]["replicas"] = int(replicas["count"])


def suffix(config_map: Object) -> str:
    """kustomize's name suffix: sha256 of the JSON of kind, data and an empty name; 10 characters
    of it, with the letters and digits that could spell words replaced as kustomize does."""
    encoded = json.dumps(
        {"data": config_map.get("data", {}), "kind": "ConfigMap", "name": ""},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    # Go's encoder escapes these three in strings.
    encoded = encoded.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return hashlib.sha256(encoded.encode()).hexdigest()[:10].translate(str.maketrans("013ae", "ghkmt"))


def _hash_names(objects: list[Object]) -> None:
    renamed: dict[tuple[str | None, str], str] = {}
    for o in objects:
        annotations = o["metadata"].get("annotations", {})
        if annotations.pop(HASHED, None):
            old = o["metadata"]["name"]
            o["metadata"]["name"] = f"{old}-{suffix(o)}"
            renamed[(o["metadata"].get("namespace"), old)] = o["metadata"]["name"]
        if not annotations:
            o["metadata"].pop("annotations", None)

    def follow(reference: dict[str, Any] | None, namespace: str | None) -> None:
        if reference and (namespace, reference.get("name")) in renamed:
            reference["name"] = renamed[(namespace, reference["name"])]

    for o in objects:
        namespace = o["metadata"].get("namespace")
        for spec in pod_specs(o):
            for volume in spec.get("volumes", []):
                follow(volume.get("configMap"), namespace)
                for source in volume.get("projected", {}).get("sources", []):
                    follow(source.get("configMap"), namespace)
        for container in containers(o):
            for source in container.get("envFrom", []):
                follow(source.get("configMapRef"), namespace)
            for variable in container.get("env", []):
                follow(variable.get("valueFrom", {}).get("configMapKeyRef"), namespace)


def _order(o: Object) -> tuple[int, str, str, str]:
    kind = o["kind"]
    rank = FIRST.index(kind) - len(FIRST) if kind in FIRST else 1 + LAST.index(kind) if kind in LAST else 0
    group, _, version = o["apiVersion"].rpartition("/")
    return (rank, f"{group}_{version}_{kind}", o["metadata"].get("namespace", ""), o["metadata"]["name"])


def main(argv: list[str]) -> int:
    """``python -m echolab.deploy.kustomize DIR``: the rendered objects, one YAML stream."""
    if len(argv) != 1:
        print("usage: python -m echolab.deploy.kustomize DIR", file=sys.stderr)
        return 2
    try:
        print(dump(render(Path(argv[0]))), end="")
    except (KustomizeError, OSError) as exc:
        print(f"kustomize: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
