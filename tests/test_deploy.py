"""The deployment files, checked offline: every Kubernetes manifest against the API schema
(``kubernetes-validate``, strict: unknown fields are errors), the wiring between them (Services
select pods, Secrets exist, ports match), and the compose scale-out variant."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
K8S_VERSION = "1.30.0"


def _documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _one(kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in _documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


@pytest.mark.parametrize("version", [K8S_VERSION, latest_version()])
def test_manifests_match_the_kubernetes_schemas(version: str) -> None:
    docs = _documents()
    assert {d["kind"] for d in docs} == {"Secret", "Service", "StatefulSet", "Deployment"}
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_a_broken_manifest_is_refused() -> None:
    worker = _one("Deployment", "dicomnode-worker")
    worker["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(worker, K8S_VERSION, strict=True)


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_services_secrets_and_gpu_workers_are_wired() -> None:
    docs = _documents()
    secret_keys = {k for d in docs if d["kind"] == "Secret" for k in d["stringData"]}
    for doc in docs:
        if doc["kind"] in ("StatefulSet", "Deployment"):
            labels = doc["spec"]["template"]["metadata"]["labels"]
            assert doc["spec"]["selector"]["matchLabels"].items() <= labels.items()
            for c in doc["spec"]["template"]["spec"]["containers"]:
                for value in _env(c).values():
                    if isinstance(value, dict):
                        assert value["secretKeyRef"]["key"] in secret_keys
        if doc["kind"] == "Service":
            pods = [d for d in docs if d["kind"] in ("StatefulSet", "Deployment")
                    and doc["spec"]["selector"].items()
                    <= d["spec"]["template"]["metadata"]["labels"].items()]
            assert pods, f"Service {doc['metadata']['name']} selects no pod"
    node = _one("StatefulSet", "dicomnode")
    (container,) = node["spec"]["template"]["spec"]["containers"]
    assert _env(container)["DICOMNODE_NODE_WORKERS"] == "0"
    assert node["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    assert {p["containerPort"] for p in container["ports"]} == {11112, 8080}
    worker = _one("Deployment", "dicomnode-worker")
    (wc,) = worker["spec"]["template"]["spec"]["containers"]
    assert wc["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert wc["args"][:3] == ["worker", "--node-url", "http://dicomnode-web:8080"]
    assert wc["args"][4] == "$(DICOMNODE_WORKER_TOKEN)" and "DICOMNODE_WORKER_TOKEN" in _env(wc)


def test_compose_scale_out_variant() -> None:
    base = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    extra = yaml.safe_load((DEPLOY / "compose.scale-out.yaml").read_text())
    assert set(extra["services"]) == {"postgres", "node", "worker"}
    assert "node" in base["services"]
    node_env = extra["services"]["node"]["environment"]
    assert node_env["DICOMNODE_NODE_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert node_env["DICOMNODE_NODE_WORKERS"] == "0"
    command = extra["services"]["worker"]["command"]
    assert command[:3] == ["worker", "--node-url", "http://node:8080"]
