"""deploy/kubernetes/sharded-audit: the Indexed Job runs `verify --shard I/N` for I = 0..N-1 with N its
completions, each writing the report the merge Job reads; both validate against the Kubernetes schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from collector_ext.verify.shard import parse_shard

DIRECTORY = Path(__file__).resolve().parents[3] / "deploy" / "kubernetes" / "sharded-audit"
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")


def _load(name: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((DIRECTORY / name).read_text(encoding="utf-8"))
    return document


def _container(job: dict[str, Any]) -> dict[str, Any]:
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return container


def _option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_validate_against_the_kubernetes_schema(version: str) -> None:
    for name in ("verify-job.yaml", "merge-job.yaml", "persistentvolumeclaim.yaml"):
        kubernetes_validate.validate(_load(name), version, strict=True)


def test_the_indexed_job_runs_every_shard_once_and_the_merge_reads_every_report() -> None:
    job = _load("verify-job.yaml")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    count = spec["completions"]
    assert spec["parallelism"] == count
    command = _container(job)["command"]
    assert command[:2] == ["collector-ext", "verify"]
    shard, report = _option(command, "--shard"), _option(command, "--shard-report")
    assert shard == f"$(JOB_COMPLETION_INDEX)/{count}"
    written = []
    for index in range(count):
        spec_of = parse_shard(shard.replace("$(JOB_COMPLETION_INDEX)", str(index)))
        assert (spec_of.index, spec_of.count) == (index, count)
        written.append(report.replace("$(JOB_COMPLETION_INDEX)", str(index)))
    merge = _container(_load("merge-job.yaml"))["command"]
    assert merge[:3] == ["collector-ext", "verify", "--merge"]
    assert [a for a in merge[3:] if not a.startswith("--")] == written
    assert "--json" in merge
    assert _load("merge-job.yaml")["spec"]["backoffLimit"] == 0, "a failed verdict stays failed"


def test_shards_and_merge_share_the_reports_volume_and_the_audit_identity() -> None:
    claim = _load("persistentvolumeclaim.yaml")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"], "shard pods on several nodes write at once"
    for name in ("verify-job.yaml", "merge-job.yaml"):
        pod = _load(name)["spec"]["template"]
        # The daily audit's NetworkPolicy (deploy/kubernetes/audit) selects this label.
        assert pod["metadata"]["labels"]["app.kubernetes.io/name"] == "collector-ext-audit"
        assert pod["spec"]["serviceAccountName"] == "collector-ext-audit"
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        assert volumes["reports"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
        context = _container(_load(name))["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
    kustomization = _load("kustomization.yaml")
    assert kustomization["resources"] == ["persistentvolumeclaim.yaml"], "the Jobs are created by hand, in order"
