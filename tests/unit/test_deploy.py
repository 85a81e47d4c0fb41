"""The Dockerfile and Kubernetes manifests cannot run here (no container engine, no cluster), so they are
checked statically: every manifest parses, every reference resolves (Services to pods, ports, volumes,
claims, ConfigMap keys, $(VAR)s), probes use gRPC health on declared ports, and every container's command
line is accepted by the real daemon's argument parser with the flags it actually has; and every document
validates, strictly, against the Kubernetes schema (kubernetes-validate)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from server_node.__main__ import parser as node_parser
from server_node.config import NodeConfig
from splitinfer.config import load_config
from splitinfer.frontend.__main__ import parser as frontend_parser
from splitinfer.standalone import parser as standalone_parser

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
PARSERS = {
    "splitinfer.frontend": frontend_parser,
    "server_node": node_parser,
    "splitinfer.standalone": standalone_parser,
}
WORKLOADS = ("Deployment", "StatefulSet")


def _documents() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs = []
    for resource in kustomization["resources"]:
        path = K8S / resource
        assert path.is_file(), f"kustomization lists {resource}, which does not exist"
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


DOCS = _documents()


def _of(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in DOCS if d["kind"] == kind}


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return list(doc["spec"]["template"]["spec"]["containers"])


def test_every_manifest_file_is_listed_and_every_document_is_well_formed() -> None:
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk
    names = set()
    for doc in DOCS:
        assert {"apiVersion", "kind", "metadata"} <= doc.keys(), doc
        key = (doc["kind"], doc["metadata"]["name"])
        assert key not in names, f"{key} is defined twice"
        names.add(key)
    kinds = {kind for kind, _ in names}
    assert {"Deployment", "Service", "ConfigMap", "PersistentVolumeClaim"} <= kinds
    deployments = _of("Deployment")
    for component in ("splitinfer-frontend", "splitinfer-node", "splitinfer-pool", "splitinfer-results"):
        assert component in deployments, f"no Deployment for {component}"


def test_services_select_pods_and_target_declared_ports() -> None:
    workloads = [d for d in DOCS if d["kind"] in WORKLOADS]
    for service in _of("Service").values():
        selector = service["spec"]["selector"]
        matches = [w for w in workloads if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert matches, f"Service {service['metadata']['name']} selects no pods"
        ports = {p["name"] for w in matches for c in _containers(w) for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, f"{service['metadata']['name']} targets undeclared {port['targetPort']}"
    for workload in workloads:
        assert (
            workload["spec"]["selector"]["matchLabels"].items()
            <= workload["spec"]["template"]["metadata"]["labels"].items()
        ), f"{workload['metadata']['name']}: selector does not match its own pods"


def test_volumes_claims_and_config_references_resolve() -> None:
    claims, config_maps = _of("PersistentVolumeClaim"), _of("ConfigMap")
    for workload in (d for d in DOCS if d["kind"] in WORKLOADS):
        spec = workload["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        templates = {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
        for volume in volumes.values():
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
            if "configMap" in volume:
                data = config_maps[volume["configMap"]["name"]]["data"]
                assert all(item["key"] in data for item in volume["configMap"].get("items", []))
        for container in _containers(workload):
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes or mount["name"] in templates, mount
            env = {e["name"]: e for e in container.get("env", [])}
            for entry in env.values():
                ref = entry.get("valueFrom", {}).get("configMapKeyRef")
                if ref:
                    assert ref["key"] in config_maps[ref["name"]]["data"], ref
            for arg in [*container.get("args", []), *container.get("command", [])]:
                for var in re.findall(r"\$\((\w+)\)", arg):
                    assert var in env, f"{workload['metadata']['name']} uses $({var}) but does not define it"


def test_probes_use_grpc_health_on_declared_ports() -> None:
    for name, workload in _of("Deployment").items():
        for container in _containers(workload):
            declared = {p["containerPort"] for p in container["ports"]}
            for probe in ("readinessProbe", "livenessProbe"):
                assert "grpc" in container[probe], f"{name}: {probe} is not a gRPC health probe"
                assert container[probe]["grpc"]["port"] in declared


def _substituted(args: list[str]) -> list[str]:
    return [re.sub(r"\$\((\w+)\)", "10.0.0.1", a) for a in args]


@pytest.mark.parametrize("name", sorted(_of("Deployment")))
def test_container_command_lines_are_what_the_daemons_accept(name: str) -> None:
    for container in _containers(_of("Deployment")[name]):
        args = container["args"]
        assert container["image"] == "splitinfer" and args[:2] == ["python", "-m"], args
        module = args[2]
        assert module in PARSERS, f"{name} runs {module}, which is not a splitinfer daemon"
        parsed = PARSERS[module]().parse_args(_substituted(args[3:]))  # exits (fails the test) on bad flags
        assert parsed.host == "0.0.0.0", f"{name} must listen on all interfaces in a pod"
        ports = {p["containerPort"] for p in container["ports"]}
        assert parsed.port in ports


def test_node_config_in_the_config_map_is_a_valid_node_config(tmp_path: Path) -> None:
    text = _of("ConfigMap")["splitinfer-config"]["data"]["node.json"]
    (tmp_path / "node.json").write_text(text)
    config = load_config(NodeConfig, tmp_path / "node.json")
    assert config.torch_threads == json.loads(text)["torch_threads"]
    assert _of("ConfigMap")["splitinfer-config"]["data"]["SPLITINFER_REGISTRY"].startswith("etcd://")


def test_dockerfile_copies_what_exists_and_generates_every_proto() -> None:
    text = (ROOT / "Dockerfile").read_text()
    for source in re.findall(r"^COPY (.+) \S+$", text, flags=re.M):
        for item in source.split():
            assert (ROOT / item).exists(), f"Dockerfile copies {item}, which does not exist"
    for proto_dir in ("proto/splitinfer/v1", "proto/splitinfer/inference"):
        assert f"{proto_dir}/*.proto" in text
    pinned = re.search(r'"grpcio-tools==([\d.]+)"', (ROOT / "pyproject.toml").read_text())
    assert pinned is not None and f"grpcio-tools=={pinned.group(1)}" in text, "the image must generate with our pin"
    torch_pin = re.search(r'"torch==([\d.]+)"', (ROOT / "pyproject.toml").read_text())
    assert torch_pin is not None and f"torch=={torch_pin.group(1)}" in text


#: The Kubernetes release whose published OpenAPI schemas the manifests are validated against.
KUBERNETES_VERSION = "1.37.0"


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_every_document_validates_against_the_kubernetes_schema(doc: dict[str, Any]) -> None:
    """Strict validation: unknown fields (a misspelt ``livenesProbe``) fail as well as wrong types."""
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_schema_validator_refuses_a_broken_manifest() -> None:
    """The validation above can fail: a wrong type and a misspelt field are both caught."""
    workload = copy.deepcopy(next(d for d in DOCS if d["kind"] == "Deployment"))
    workload["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(workload, KUBERNETES_VERSION, strict=True)
    workload = copy.deepcopy(next(d for d in DOCS if d["kind"] == "Deployment"))
    container = workload["spec"]["template"]["spec"]["containers"][0]
    container["livenesProbe"] = container.pop("livenessProbe", {})
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(workload, KUBERNETES_VERSION, strict=True)
