"""The composition root: builds the running sidecar from a SidecarConfig.

Nothing else in the package reads configuration files or the environment. ``Sidecar`` wires
receiver -> sealing pipeline -> archive, keeps the gRPC health status current, and shuts down in
order: health NOT_SERVING, stop taking requests (in-flight ones finish within the grace period),
archive what is sealed, write a final checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import ssl
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc

from collector_ext import __version__
from collector_ext.config import SidecarConfig, TlsConfig, TokenConfig
from collector_ext.deliver.archive import ArchiveStore, parse_s3_url
from collector_ext.deliver.directory_archive import DirectoryArchive
from collector_ext.deliver.loki.client import LokiConnection
from collector_ext.deliver.loki.mapping import MappingSettings
from collector_ext.deliver.loki.process import LokiProcess
from collector_ext.deliver.loki.sender import LokiSettings
from collector_ext.deliver.s3_archive import S3Archive
from collector_ext.errors import ConfigurationError, KeyFileError
from collector_ext.memory import HeapTrimmer, settle_garbage_collector
from collector_ext.metrics import Metrics
from collector_ext.metrics_server import MetricsServer
from collector_ext.pipeline import PipelineSettings, SealingPipeline
from collector_ext.receive.admission import (
    PROTOBUF_DECODE_FACTOR,
    AdmissionControl,
    AdmissionSettings,
    ReceiverLimits,
)
from collector_ext.receive.auth import Authenticator, TokenFile
from collector_ext.receive.descriptors import connection_cap, raise_open_file_limit
from collector_ext.receive.otlp_grpc import OtlpGrpcReceiver
from collector_ext.receive.otlp_http import OtlpHttpReceiver
from collector_ext.receive.validate import RequestLimits
from collector_ext.seal.keys import Ed25519Signer, Signer, load_private_key_pem
from collector_ext.security_settings import WATCHED_SETTINGS, insecure_settings, security_summary
from collector_ext.spool import Spool, SpoolError
from collector_ext.startup_checks import check_configuration_files, key_file_problem
from collector_ext.tls import ReloadingTls, TlsFiles
from collector_ext.token_signer import TokenSettings, TokenSigner
from collector_ext.witness.client import WitnessClient
from collector_ext.witness.proofs import ArchiveTreeReader
from collector_ext.witness.submitter import PinnedWitness, StoredCheckpoint, WitnessSubmitter
from collector_ext.witness.tsa_client import TsaClient
from collector_ext.witness.vkey import parse_witness_vkey

log = logging.getLogger(__name__)


def read_signing_key(path: Path, setting: str = "signing_key") -> Ed25519Signer:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(setting, f"cannot read {path}: {exc.strerror}") from exc
    return load_private_key_pem(data, f"{setting} ({path})")


def read_token_pin(path: Path) -> str:
    """The token's user PIN from ``signing_token.pin_file``: the file's first line. Refused when
    group or others may read it or another user owns it (as ssh refuses such a private key)."""
    setting = "signing_token.pin_file"
    try:
        with open(path, "rb") as handle:
            status = os.fstat(handle.fileno())
            data = handle.read(4096)
    except OSError as exc:
        raise ConfigurationError(setting, f"cannot read {path}: {exc.strerror}") from exc
    # The same rule as for key files (startup_checks), on the file actually opened.
    problem = key_file_problem(path, status.st_mode, status.st_uid, os.geteuid())
    if problem is not None:
        raise ConfigurationError(setting, problem)
    pin = data.decode("utf-8", errors="replace").splitlines()[0].strip() if data.strip() else ""
    if not pin:
        raise ConfigurationError(setting, f"{path} is empty; write the token's user PIN on its first line")
    return pin


def read_signer(config: SidecarConfig) -> Signer:
    """The signing key: a key file (``signing_key``) or a key in a PKCS#11 token (``signing_token``)."""
    token = config.signing_token
    if token is None:
        assert config.signing_key is not None  # the config allows exactly one of them
        return read_signing_key(config.signing_key)
    settings = TokenSettings(
        module=str(token.module),
        token_label=token.token_label,
        key_label=token.key_label,
        pin=read_token_pin(token.pin_file),
    )
    return TokenSigner(settings)


def open_archive(
    url: str,
    *,
    for_writing: bool,
    retention_mode: str = "GOVERNANCE",
    retention_days: int = 365,
    endpoint_url: str | None = None,
    region: str | None = None,
) -> ArchiveStore:
    """An ArchiveStore for ``s3://bucket/prefix`` or a directory path."""
    location = parse_s3_url(url)
    if location is None:
        return DirectoryArchive(Path(url), for_writing=for_writing)
    if retention_mode not in ("GOVERNANCE", "COMPLIANCE", "NONE"):
        raise ConfigurationError("archive.retention_mode", "must be GOVERNANCE, COMPLIANCE or NONE")
    return S3Archive(
        location,
        retention_mode=retention_mode,  # type: ignore[arg-type]
        retention_days=retention_days,
        endpoint_url=endpoint_url,
        region=region,
        for_writing=for_writing,
    )


def _reloading_tls(tls: TlsConfig | None, setting: str) -> ReloadingTls | None:
    """A listener's certificate, key and client CA, re-read when the files change (collector_ext.tls)."""
    if tls is None:
        return None
    return ReloadingTls(TlsFiles(tls.cert_file, tls.key_file, tls.client_ca_file, setting))


def _server_credentials(tls: ReloadingTls | None) -> grpc.ServerCredentials | None:
    """The gRPC receiver's TLS: certificates fetched again on new handshakes after the files change."""
    return tls.grpc_credentials() if tls is not None else None


def _server_ssl_context(tls: ReloadingTls | None) -> ssl.SSLContext | None:
    """The OTLP/HTTP receiver's TLS: the same certificate, and client certificates when client_ca_file is set."""
    return tls.ssl_context() if tls is not None else None


def _authenticator(tls: TlsConfig | None, tokens: Sequence[TokenConfig], setting: str) -> Authenticator:
    """Who may use a listener: bearer tokens (read now; a bad file stops start-up) and the allow-list.

    With neither configured everyone may, and the Sender sealed with each record names the peer (and
    the verified client certificate, if any) alone.
    """
    allowed = tls.allowed_clients if tls is not None else ()
    files = [TokenFile(token.name, token.file) for token in tokens]
    return Authenticator.from_files(files, allowed, setting=setting)


def _admission(config: SidecarConfig) -> tuple[AdmissionControl, ReceiverLimits]:
    """The memory budget both receivers share, and each receiver's connection limits and timeouts.

    The open-file limit is raised here (soft to hard) and the connection cap kept below it."""
    limits = config.limits
    open_files = raise_open_file_limit()
    cap = connection_cap(limits.max_connections, open_files)
    if cap < limits.max_connections:
        log.warning(
            "limits.max_connections lowered to stay below the open-file limit",
            extra={"max_connections": cap, "configured": limits.max_connections, "open_file_limit": open_files},
        )
    largest = limits.max_inflight_bytes // (1 + PROTOBUF_DECODE_FACTOR)
    if config.max_message_bytes > largest:
        log.warning(
            "requests above max_inflight_bytes / (1 + decode factor) cannot be decoded within the memory budget "
            "and are refused (RESOURCE_EXHAUSTED / 413): lower max_message_bytes or raise limits.max_inflight_bytes",
            extra={"max_message_bytes": config.max_message_bytes, "largest_protobuf_request": largest},
        )
    admission = AdmissionControl(
        AdmissionSettings(max_inflight_bytes=limits.max_inflight_bytes, max_requests=limits.max_concurrent_requests),
        on_request_end=HeapTrimmer().request_ended,
    )
    receiver_limits = ReceiverLimits(
        max_connections=cap,
        idle_timeout=limits.idle_timeout_seconds,
        body_timeout=limits.body_timeout_seconds,
        request=RequestLimits(
            max_attributes=limits.max_attributes,
            max_attributes_per_request=limits.max_attributes_per_request,
            max_value_depth=limits.max_value_depth,
        ),
    )
    return admission, receiver_limits


class Sidecar:
    """The running service: receiver, pipeline and archive, built from one config."""

    def __init__(self, config: SidecarConfig) -> None:
        self.config = config
        # Before any key is read: key files' owners and modes, certificates' validity and pairing.
        check_configuration_files(config)
        self.signer = read_signer(config)
        retired = [read_signing_key(path, "previous_signing_keys") for path in config.previous_signing_keys]
        self.store = open_archive(
            config.archive.url,
            for_writing=True,
            retention_mode=config.archive.retention_mode,
            retention_days=config.archive.retention_days,
            endpoint_url=config.archive.endpoint_url,
            region=config.archive.region,
        )
        self.spool = Spool(config.spool.directory) if config.spool is not None else None
        if self.spool is None and config.ack == "spool":
            log.warning("no spool is configured: Export succeeds only once records are in the archive (ack=archive)")
        self.loki = _loki_sender(config)
        spool = self.spool
        self.pipeline = SealingPipeline(
            self.signer,
            self.store,
            PipelineSettings(
                segment_max_records=config.segment.max_records,
                segment_max_bytes=config.segment.max_bytes,
                max_linger=config.segment.max_linger_ms / 1000,
                upload_concurrency=config.segment.upload_concurrency,
                checkpoint_interval=config.checkpoint_interval_seconds,
                checkpoint_min_spacing=config.checkpoint_min_spacing_seconds,
                merkle_tree=config.checkpoint.merkle_tree,
                ack_timeout=config.ack_timeout_seconds,
                ack=config.ack if self.spool is not None else "archive",
                max_pending_records=config.max_pending_records,
                max_pending_bytes=config.max_pending_bytes,
                spool_max_bytes=config.spool.max_bytes if config.spool is not None else 0,
                signing_workers=config.signing_workers,
                signing_worker_count=config.signing_worker_count,
            ),
            spool=self.spool,
            writer=f"collector-ext/{__version__}",
            writer_id=config.writer_id,
            archive_id=config.archive.archive_id,
            retired_signers=retired,
            run_key=config.signing_token is not None and config.signing_token.mode == "run_key",
            # With a spool the Loki sender reads it itself; without one it is handed archived segments.
            on_archived=self.loki.offer if self.loki is not None and spool is None else None,
            on_spooled=self.loki.notify if self.loki is not None and spool is not None else None,
            loki_cursor=spool.loki_cursor if self.loki is not None and spool is not None else None,
        )
        self.metrics = Metrics()
        self._report_security_settings()
        self.metrics.watch(self.pipeline)
        # Witnesses and the TSA vouch for each stored checkpoint note, off the acknowledgement path.
        self.witnesses = _witness_submitter(config, self.store)
        if self.witnesses is not None:
            self.pipeline.subscribe_checkpoints(self._checkpoint_stored)
        self.metrics.watch_witnesses(self.witnesses)
        if self.loki is not None:
            self.metrics.watch_loki(self.loki)
        self.tls = _reloading_tls(config.tls, "tls")
        self.authenticator = _authenticator(config.tls, config.auth.tokens, "auth.tokens")
        self.admission, self.receiver_limits = _admission(config)
        self.receiver = OtlpGrpcReceiver(
            self.pipeline,
            listen=config.listen,
            max_message_bytes=config.max_message_bytes,
            metrics=self.metrics,
            admission=self.admission,
            limits=self.receiver_limits,
            server_credentials=_server_credentials(self.tls),
            authenticator=self.authenticator.for_receiver("grpc", self.metrics.observe_auth_failure),
        )
        self.http_receiver = (
            OtlpHttpReceiver(
                self.pipeline,
                listen=config.http_listen,
                max_message_bytes=config.max_message_bytes,
                metrics=self.metrics,
                admission=self.admission,
                limits=self.receiver_limits,
                ssl_context=_server_ssl_context(self.tls),
                authenticator=self.authenticator.for_receiver("http", self.metrics.observe_auth_failure),
            )
            if config.http_listen
            else None
        )
        self.http_port = 0
        self.metrics_tls = _reloading_tls(config.metrics_tls, "metrics_tls")
        self.metrics_server = (
            MetricsServer(
                self.metrics,
                config.metrics_listen,
                ssl_context=_server_ssl_context(self.metrics_tls),
                authenticator=_authenticator(
                    config.metrics_tls, config.auth.metrics_tokens, "auth.metrics_tokens"
                ).for_receiver("metrics", self.metrics.observe_auth_failure),
            )
            if config.metrics_listen
            else None
        )
        self.metrics_port = 0
        # The receivers' memory budget, refused connections, and the server certificates' expiry.
        self.metrics.watch_admission(self.admission, self.http_receiver)
        self.metrics.watch_certificates({"tls": self.tls, "metrics_tls": self.metrics_tls})
        self._health_task: asyncio.Task[None] | None = None
        self._stopped = False
        self.port = 0

    def _checkpoint_stored(self, note: bytes, size: int, previous_size: int) -> None:
        """The pipeline's checkpoint hook: hand the stored note to the witnesses and the TSA (returns at once)."""
        if self.witnesses is not None:
            self.witnesses.offer(StoredCheckpoint(self.pipeline.chain_id, note, size))

    def _report_security_settings(self) -> None:
        """One INFO line with the effective security settings, a WARNING per unsafe one, and the
        collector_ext_insecure_setting gauge."""
        config = self.config
        summary = security_summary(config, key_id=self.signer.key_id.hex())
        log.info("effective security settings", extra=summary)
        unsafe = insecure_settings(config)
        for item in unsafe:
            log.warning(f"INSECURE SETTING {item.setting}: {item.reason}", extra={"setting": item.setting})
        self.metrics.report_insecure_settings(WATCHED_SETTINGS, [item.setting for item in unsafe])

    async def start(self) -> int:
        """Open the archive, start the chain, the Loki sender and the receivers; returns the gRPC
        port. If any part fails, the parts already started are stopped again."""
        try:
            return await self._start()
        except BaseException:
            with contextlib.suppress(Exception):
                await self.stop()
            raise

    async def _start(self) -> int:
        await self.store.open()
        if self.loki is not None:
            await self.loki.start()
        if self.witnesses is not None:
            await self.witnesses.start()
        await self.pipeline.start()
        try:
            self.port = await self.receiver.start()
        except OSError as exc:
            raise ConfigurationError("listen", f"cannot listen on {self.config.listen}: {exc}") from exc
        if self.http_receiver is not None:
            try:
                self.http_port = await self.http_receiver.start()
            except OSError as exc:
                raise ConfigurationError("http_listen", f"cannot listen on {self.config.http_listen}: {exc}") from exc
        if self.metrics_server is not None:
            try:
                self.metrics_port = await self.metrics_server.start()
            except OSError as exc:
                raise ConfigurationError(
                    "metrics_listen", f"cannot listen on {self.config.metrics_listen}: {exc}"
                ) from exc
        self._health_task = asyncio.create_task(self._watch_health(), name="health")
        settle_garbage_collector()
        log.info(
            "sidecar serving",
            extra={
                "listen": self.config.listen,
                "port": self.port,
                "http_port": self.http_port,
                "metrics_port": self.metrics_port,
                "archive": self.store.description,
                "chain_id": self.pipeline.chain_id.hex(),
                "key_id": self.signer.key_id.hex(),
            },
        )
        return self.port

    async def _watch_health(self) -> None:
        while True:
            await self.receiver.update_health()
            await asyncio.sleep(0.5)

    async def stop(self) -> None:
        if self._stopped:
            return
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        grace = self.config.shutdown_grace_seconds
        if self.http_receiver is None:
            await self.receiver.stop(grace)
        else:
            await asyncio.gather(self.receiver.stop(grace), self.http_receiver.stop(grace))
        drain = self.config.drain_timeout_seconds
        await self.pipeline.close(drain_timeout=drain)
        if self.witnesses is not None:
            # The final checkpoint's note gets a few seconds; the witnesses see the next run's anyway.
            await self.witnesses.close(drain_timeout=min(drain, 5.0))
        if isinstance(self.signer, TokenSigner):
            self.signer.close()
        await self.store.close()
        if self.loki is not None:
            await self.loki.close(drain_timeout=drain)
        if self.spool is not None:
            if self.pipeline.clean_shutdown:
                try:
                    self.spool.mark_clean_shutdown()
                except SpoolError as exc:
                    log.warning("clean shutdown not recorded in the spool", extra={"error": str(exc)})
            self.spool.close()
        if self.metrics_server is not None:
            await self.metrics_server.stop()
        log.info("sidecar stopped", extra={"chain_id": self.pipeline.chain_id.hex(), **vars(self.pipeline.stats)})
        self._stopped = True

    async def run_until_signalled(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await self.start()
        await stop.wait()
        log.info("shutting down")
        await self.stop()


@contextlib.contextmanager
def running_in_thread(config: SidecarConfig) -> Iterator[Sidecar]:
    """Run a Sidecar on its own event-loop thread (for the demo and tests); stops it on exit."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="sidecar", daemon=True)
    thread.start()
    try:
        sidecar = asyncio.run_coroutine_threadsafe(_build_and_start(config), loop).result(timeout=60)
        try:
            yield sidecar
        finally:
            asyncio.run_coroutine_threadsafe(sidecar.stop(), loop).result(timeout=120)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


async def _build_and_start(config: SidecarConfig) -> Sidecar:
    sidecar = Sidecar(config)
    await sidecar.start()
    return sidecar


def _witness_submitter(config: SidecarConfig, store: ArchiveStore) -> WitnessSubmitter | None:
    """The submitter to ``witnesses`` and ``checkpoint.tsa_url``; None when neither is configured."""
    if not config.witnesses and config.checkpoint.tsa_url is None:
        return None
    pinned = []
    for witness in config.witnesses:
        name, key = parse_witness_vkey(witness.key)  # checked by the config already
        pinned.append(PinnedWitness(WitnessClient(name, witness.url, timeout_seconds=witness.timeout_seconds), key))
    tsa_url = config.checkpoint.tsa_url
    tsa = TsaClient(tsa_url, timeout_seconds=config.checkpoint.tsa_timeout_seconds) if tsa_url else None
    return WitnessSubmitter(store, pinned, tsa, ArchiveTreeReader(store).consistency_proof)


def _loki_sender(config: SidecarConfig) -> LokiProcess | None:
    if config.loki is None:
        return None
    loki = config.loki
    return LokiProcess(
        LokiConnection(
            url=loki.url,
            tenant=loki.tenant,
            username=loki.username,
            password=loki.password,
            bearer_token=loki.bearer_token,
            ca_file=str(loki.ca_file) if loki.ca_file else None,
            timeout_seconds=loki.timeout_seconds,
        ),
        MappingSettings(label_attributes=loki.label_attributes, seal_in_line=loki.seal_in_line),
        LokiSettings(
            batch_max_bytes=loki.batch_max_bytes,
            batch_max_wait=loki.batch_max_wait_seconds,
            max_queue_records=loki.max_queue_records,
            max_queue_bytes=loki.max_queue_bytes,
            json_body=loki.json_body,
        ),
        spool_directory=config.spool.directory if config.spool is not None else None,
    )
