"""``collector-ext demo``: the whole product on embedded defaults, in about half a minute.

1. starts an embedded SeaweedFS (S3 with Object Lock) on loopback and creates a locked bucket;
2. creates a signing key and starts the sidecar, archiving to that bucket;
3. runs a small AI workflow that emits audit events through the OpenTelemetry SDK's OTLP exporter,
   some with the SDK's log API and some with structlog (through collector_ext.instrument), and says
   whether PostgreSQL 15 is here for the pgaudit source (it does not start a database);
4. stops the sidecar (final checkpoint), verifies the bucket with the public key and prints the verdict;
5. tries to delete an archived object version and shows that Object Lock refuses it;
6. proves one record it printed (the failed login) into a self-contained proof file, read from a few
   objects of the bucket;
7. overwrites a segment with one byte changed (a new object version) and shows that verify names it;
8. checks the proof file offline with the public key alone, as an auditor would (`verify-proof`);
9. stops everything and removes its temporary files (``--keep DIR`` keeps keys and a copy of the archive).

It is a demonstration, not a deployment: see README "Deploy on Kubernetes" for that.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from collector_ext.config import ArchiveConfig, SidecarConfig, SpoolConfig
from collector_ext.errors import CollectorExtError, ConfigurationError
from collector_ext.seal.keys import generate_key_pair, load_public_key_pem
from collector_ext.service import open_archive, running_in_thread
from collector_ext.verify.render import render_text
from collector_ext.verify.run import check_archive

BUCKET = "collector-ext-demo"
PREFIX = "ai-workflow"
# Debian's postgresql-15 installs its server commands here, off PATH.
POSTGRES_15_BIN = Path("/usr/lib/postgresql/15/bin")
_PGAUDIT_SECTION = 'README "Sources: PostgreSQL pgaudit"'


def _step(text: str) -> None:
    click.secho(f"==> {text}", bold=True)


def run_ai_workflow(endpoint: str) -> int:
    """A toy AI workflow that writes audit events through the OpenTelemetry SDK, directly and from
    structlog; returns how many."""
    try:
        import structlog
        from opentelemetry._logs import SeverityNumber
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
        from opentelemetry.sdk._logs import LoggerProvider
        from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
        from opentelemetry.sdk.resources import Resource
    except ImportError as exc:
        raise ConfigurationError(
            "demo", "needs the OpenTelemetry SDK and structlog: pip install 'collector-ext[demo]'"
        ) from exc

    from collector_ext.instrument import OpenTelemetryProcessor

    provider = LoggerProvider(
        resource=Resource.create(
            {"service.name": "ai-workflow", "service.version": "1.4.2", "deployment.environment.name": "demo"}
        )
    )
    provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter(endpoint=endpoint, insecure=True)))
    logger = provider.get_logger("ai_workflow.audit", "1.0.0")
    info, warn, error = SeverityNumber.INFO, SeverityNumber.WARN, SeverityNumber.ERROR
    events: list[dict[str, Any]] = [
        {
            "event_name": "user.action",
            "severity_number": info,
            "body": "alice uploaded a training data set",
            "attributes": {"user.id": "alice", "action": "dataset.upload", "dataset.id": "ds-2026-11"},
        },
        {
            "event_name": "gen_ai.client.inference.operation.details",
            "severity_number": info,
            "body": {"input": "Summarise the Q3 incident report", "output": "Three outages, all resolved."},
            "attributes": {
                "gen_ai.provider.name": "openai",
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": "gpt-4o",
                "gen_ai.response.model": "gpt-4o-2024-08-06",
                "gen_ai.usage.input_tokens": 812,
                "gen_ai.usage.output_tokens": 64,
                "user.id": "alice",
            },
        },
        {
            "event_name": "access.denied",
            "severity_number": warn,
            "body": "login_failed: bob tried to open the model registry",
            "attributes": {"user.id": "bob", "action": "model_registry.read", "outcome": "denied"},
        },
        {
            "event_name": "permission.change",
            "severity_number": warn,
            "body": "carol granted model.deploy to dave",
            "attributes": {"user.id": "carol", "target.user.id": "dave", "permission": "model.deploy"},
        },
        {
            "event_name": "model.drift",
            "severity_number": warn,
            "body": "input distribution drift above threshold",
            "attributes": {"model.name": "risk-scorer", "drift.psi": 0.31},
        },
    ]
    for event in events:
        logger.emit(**event)
    try:
        raise TimeoutError("model endpoint did not answer within 30 s")
    except TimeoutError as exc:
        logger.emit(
            event_name="exception",
            severity_number=error,
            body="inference failed",
            attributes={"gen_ai.request.model": "gpt-4o", "user.id": "alice"},
            exception=exc,
        )
    for step in range(20):
        logger.emit(
            event_name="workflow.step",
            severity_number=info,
            body=f"pipeline step {step} finished",
            attributes={"workflow.run_id": "run-0042", "step": step},
        )
    # Workflow code that logs with structlog: the same provider carries its events to the sidecar, and
    # structlog still renders them (here as the demo's indented output).
    log = structlog.wrap_logger(
        structlog.PrintLogger(sys.stdout),
        wrapper_class=structlog.make_filtering_bound_logger(0),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            OpenTelemetryProcessor(provider, scope_name="ai_workflow.structlog"),
            structlog.processors.KeyValueRenderer(key_order=["event", "level"], drop_missing=True),
            _indent_structlog_line,
        ],
    )
    log.info(
        "ai_task_started",
        input={"prompt": "Draft a reply to ticket 4711", "documents": ["ticket-4711.eml"], "max_tokens": 256},
        user_id="alice",
        session_id="sess-7f3a",
    )
    log.warning("ai_task_output_flagged", reason="contains an e-mail address", user_id="alice", session_id="sess-7f3a")
    structlog_events = 2
    flushed = provider.force_flush(timeout_millis=30_000)
    provider.shutdown()
    if not flushed:
        raise CollectorExtError("the OpenTelemetry SDK could not deliver the demo's events to the sidecar")
    return len(events) + 1 + 20 + structlog_events


def _indent_structlog_line(_logger: Any, _method: str, line: Any) -> str:
    return f"    structlog: {line}"


def pgaudit_note(debian_bin: Path = POSTGRES_15_BIN) -> str:
    """One line on the PostgreSQL pgaudit source: how to add it, or where it is described.

    Looks for PostgreSQL 15's ``postgres`` and ``initdb`` on PATH and in Debian's directory; runs
    ``postgres --version`` only, never a server.
    """
    on_path = [shutil.which("postgres"), shutil.which("initdb")]
    candidates = [on_path] if all(on_path) else []
    candidates.append([str(debian_bin / "postgres"), str(debian_bin / "initdb")])
    for postgres, initdb in candidates:
        usable = all(c and os.access(c, os.X_OK) for c in (postgres, initdb))
        if usable and _postgres_major(str(postgres)) == "15":
            return (
                'PostgreSQL 15 is installed: the pgaudit pipeline is described in README "Sources: PostgreSQL pgaudit".'
            )
    return (
        "PostgreSQL 15 is not installed: to seal database actions too, install the Debian packages "
        f"postgresql-15 and postgresql-15-pgaudit and follow {_PGAUDIT_SECTION}."
    )


def run_pgaudit_sample(endpoint: str) -> str:
    """With PostgreSQL 15 and pgaudit installed: a throwaway cluster (collector_ext.embedded_postgres),
    one audited INSERT, and its jsonlog line sealed through the sidecar as the collector's
    filelog/pgaudit pipeline sends it, the raw line as the body (the pipeline also parses it into
    ``db.*`` and ``pgaudit.*`` attributes: README "Sources: PostgreSQL pgaudit"). Without them: how to
    add the source. Returns the line to print; never fails the demo."""
    from collector_ext.embedded_postgres import APP_DATABASE, EmbeddedPostgres, EmbeddedPostgresError

    try:
        server = EmbeddedPostgres()
    except EmbeddedPostgresError:
        return pgaudit_note()
    try:
        with server:
            server.superuser_sql(
                "CREATE TABLE model_registry (name text, owner text);"
                "INSERT INTO model_registry VALUES ('fraud-detector', 'carol');",
                database=APP_DATABASE,
            )
            lines = server.wait_for_log(
                lambda parsed: any("AUDIT: " in p.get("message", "") and ",INSERT," in p["message"] for p in parsed)
            )
    except EmbeddedPostgresError as exc:
        return f"PostgreSQL 15 could not be started for a pgaudit sample ({str(exc).splitlines()[0]})"
    line = next(text for text in lines if "AUDIT: " in text and ",INSERT," in text)
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
    from opentelemetry.sdk.resources import Resource

    provider = LoggerProvider(resource=Resource.create({"service.name": "postgresql"}))
    provider.add_log_record_processor(SimpleLogRecordProcessor(OTLPLogExporter(endpoint=endpoint, insecure=True)))
    provider.get_logger("filelog/pgaudit").emit(
        body=line, attributes={"db.system.name": "postgresql", "log.file.name": "postgresql.json"}
    )
    provider.shutdown()
    return f"pgaudit (PostgreSQL 15, sealed as its jsonlog line): {json.loads(line)['message']}"


def _postgres_major(postgres: str) -> str | None:
    try:
        result = subprocess.run([postgres, "--version"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    # "postgres (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)"
    words = result.stdout.split()
    version = words[2] if len(words) > 2 else ""
    return version.split(".")[0] or None


def _try_delete_locked_version(s3: Any, key: str) -> str:
    versions = s3.list_object_versions(Bucket=BUCKET, Prefix=key)["Versions"]
    version_id = versions[0]["VersionId"]
    head = s3.head_object(Bucket=BUCKET, Key=key, VersionId=version_id)
    click.echo(
        f"    object {key}\n    version {version_id}: lock {head.get('ObjectLockMode')} "
        f"until {head.get('ObjectLockRetainUntilDate')}"
    )
    from botocore.exceptions import ClientError

    try:
        s3.delete_object(Bucket=BUCKET, Key=key, VersionId=version_id)
    except ClientError as exc:
        return str(exc.response.get("Error", {}).get("Code", "refused"))
    return ""


def run_demo(keep: Path | None = None) -> bool:
    """Run the demo; True when the archive verified and deletion was refused."""
    from collector_ext.embedded_s3 import EmbeddedS3

    workdir = Path(tempfile.mkdtemp(prefix="collector-ext-demo-"))
    try:
        _step("starting an embedded S3 (SeaweedFS) with Object Lock on 127.0.0.1")
        with EmbeddedS3(data_dir=workdir / "s3") as s3_server:
            s3_server.create_bucket(BUCKET, mode="GOVERNANCE", days=365)
            # The sidecar takes S3 credentials the AWS SDK way; give it the embedded server's.
            os.environ["AWS_ACCESS_KEY_ID"] = s3_server.access_key
            os.environ["AWS_SECRET_ACCESS_KEY"] = s3_server.secret_key
            os.environ.setdefault("AWS_REGION", s3_server.region)
            click.echo(f"    {s3_server.endpoint_url}, bucket {BUCKET} (GOVERNANCE, 365 days)")

            _step("creating a signing key")
            pair = generate_key_pair()
            keys = workdir / "keys"
            keys.mkdir()
            private = keys / "signing.key"
            private.touch(mode=0o600)
            private.write_bytes(pair.private_pem)
            (keys / "signing.pub").write_bytes(pair.public_pem)
            click.echo(f"    key id {pair.key_id.hex()}")

            archive_url = f"s3://{BUCKET}/{PREFIX}"
            config = SidecarConfig(
                listen="127.0.0.1:0",
                http_listen="127.0.0.1:0",
                metrics_listen="127.0.0.1:0",
                signing_key=private,
                archive=ArchiveConfig(url=archive_url, endpoint_url=s3_server.endpoint_url),
                spool=SpoolConfig(directory=workdir / "spool"),
                checkpoint_interval_seconds=5,
                shutdown_grace_seconds=10,
            )
            _step(f"starting the sidecar, archiving to {archive_url}")
            with running_in_thread(config) as sidecar:
                endpoint = f"127.0.0.1:{sidecar.port}"
                click.echo(f"    OTLP/gRPC on {endpoint}, chain {sidecar.pipeline.chain_id.hex()}")
                _step("running the AI workflow (OpenTelemetry SDK and structlog -> OTLP/gRPC -> sidecar)")
                started = time.monotonic()
                sent = run_ai_workflow(endpoint)
                click.echo(f"    {sent} audit events sealed and archived in {time.monotonic() - started:.2f}s")
                click.echo("    " + run_pgaudit_sample(endpoint))
            _step("sidecar stopped (final checkpoint written)")

            _step(f"verifying {archive_url} with the pinned public key")
            public_key = load_public_key_pem(pair.public_pem, "demo key")
            store = open_archive(archive_url, for_writing=False, endpoint_url=s3_server.endpoint_url)

            async def verify() -> Any:
                await store.open()
                try:
                    return await check_archive(store, {public_key.key_id: public_key})
                finally:
                    await store.close()

            report = asyncio.run(verify())
            click.echo("    " + render_text(report, archive_url).replace("\n", "\n    "))

            _step("trying to delete an archived segment version (Object Lock should refuse)")
            client = s3_server.client()
            segments = [
                o["Key"]
                for o in client.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/")["Contents"]
                if o["Key"].endswith(".cxseg")
            ]
            segment = next(
                (k for k in segments if b"login_failed" in client.get_object(Bucket=BUCKET, Key=k)["Body"].read()),
                segments[-1],
            )
            refusal = _try_delete_locked_version(client, segment)
            if refusal:
                click.echo(f"    deletion refused: {refusal}")
            else:
                click.secho("    deletion was NOT refused: the bucket does not enforce Object Lock", fg="red")
            if keep is not None:
                _keep(keep, keys, client)

            proof_path = workdir / "failed-login.tlog-proof"
            proved = _prove_failed_login(client, segment, archive_url, s3_server.endpoint_url, proof_path)
            if keep is not None and proved:
                shutil.copy(proof_path, keep / proof_path.name)

            _step("overwriting that segment with one record changed (S3 keeps the locked original as an older version)")
            tampered = asyncio.run(_tamper_and_verify(client, segment, archive_url, s3_server.endpoint_url, public_key))
            for finding in tampered.findings:
                click.echo(f"    {finding.severity.value.upper()} {finding.kind.value} {finding.location()}")
            caught = not tampered.clean
            click.echo("    verify: " + ("tampering DETECTED" if caught else "tampering NOT detected"))

            _step(f"checking {proof_path.name} offline with the public key only (collector-ext verify-proof)")
            proof_ok = proved and _check_proof(proof_path, public_key)
        verified = report.clean and report.records_checked >= sent
        ok = verified and bool(refusal) and caught and proof_ok
        _step(
            "demo "
            + (
                "succeeded: archive VERIFIED, deletion REFUSED, tampering DETECTED, one record PROVEN"
                if ok
                else "FAILED"
            )
        )
        return ok
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


async def _tamper_and_verify(client: Any, key: str, archive_url: str, endpoint_url: str, public_key: Any) -> Any:
    original = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    # Rewrite history: the failed access attempt becomes someone else's.
    changed = original.replace(b"login_failed: bob", b"login_failed: eve", 1)
    click.echo("    'login_failed: bob' -> 'login_failed: eve'" if changed != original else "    (record not found)")
    client.put_object(Bucket=BUCKET, Key=key, Body=changed)
    store = open_archive(archive_url, for_writing=False, endpoint_url=endpoint_url)
    await store.open()
    try:
        return await check_archive(store, {public_key.key_id: public_key})
    finally:
        await store.close()


def _prove_failed_login(client: Any, key: str, archive_url: str, endpoint_url: str, out: Path) -> bool:
    """Write the proof of the 'login_failed: bob' record (as `collector-ext prove` does); False if none."""
    from collector_ext.prove.build import build_proof
    from collector_ext.prove.proof_file import encode_proof
    from collector_ext.seal.entry import decode_entry_header
    from collector_ext.seal.segment import decode_segment

    segment = decode_segment(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    record = next((r for r in segment.records if b"login_failed: bob" in r.entry), None)
    if record is None:
        click.secho("    no 'login_failed: bob' record to prove", fg="red")
        return False
    header = decode_entry_header(record.entry)
    _step(f"proving record {header.sequence} ('login_failed: bob') on its own (collector-ext prove)")
    store = open_archive(archive_url, for_writing=False, endpoint_url=endpoint_url)

    async def prove() -> Any:
        await store.open()
        try:
            return await build_proof(store, header.chain_id, header.sequence, header.sequence)
        finally:
            await store.close()

    try:
        built = asyncio.run(prove())
    except CollectorExtError as exc:
        click.secho(f"    no proof: {exc.diagnostics()}", fg="red")
        return False
    out.write_bytes(encode_proof(built.proof))
    click.echo(
        f"    {out.name}: {out.stat().st_size} bytes, the record, its inclusion path in the tree of "
        f"{built.tree.size} records and the signed checkpoint note ({built.objects_read} objects read)"
    )
    return True


def _check_proof(path: Path, public_key: Any) -> bool:
    from collector_ext.prove.proof_file import check_proof
    from collector_ext.prove.render import render_proof_text

    report = check_proof(path.read_bytes(), public_key)
    click.echo("    " + render_proof_text(report, path.name).replace("\n", "\n    "))
    if report.ok:
        click.echo("    (made before the tampering, checked with nothing but the key: the record as sealed)")
    return report.ok


def _keep(destination: Path, keys: Path, client: Any) -> None:
    destination.mkdir(parents=True, exist_ok=True)
    shutil.copytree(keys, destination / "keys", dirs_exist_ok=True)
    archive = destination / "archive"
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{PREFIX}/"):
        for item in page.get("Contents", []):
            target = archive / item["Key"][len(PREFIX) + 1 :]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(client.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read())
    click.echo(f"    kept keys and an archive copy in {destination} (verify it with `collector-ext verify`)")
