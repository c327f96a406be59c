"""Prometheus metrics of the sidecar, on their own registry.

Per-request metrics (requests by outcome, records received, Export latency) are observed by the
receivers; everything the pipeline already counts is read from its stats when Prometheus scrapes,
so the per-record hot path pays nothing for metrics. Names are listed in METRIC_NAMES; the Grafana
dashboard and alert rules in deploy/ use only these, and a test checks that.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from collector_ext.receive.auth import AUTH_FAILURE_REASONS

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from collector_ext.deliver.loki.process import LokiProcess
    from collector_ext.deliver.loki.sender import LokiSender
    from collector_ext.pipeline import SealingPipeline
    from collector_ext.receive.admission import AdmissionControl
    from collector_ext.receive.otlp_http import OtlpHttpReceiver
    from collector_ext.tls import ReloadingTls
    from collector_ext.witness.submitter import WitnessSubmitter

OUTCOMES = ("ok", "empty", "invalid", "too_large", "unavailable")
# Where authentication is checked: the two OTLP receivers and the /metrics endpoint.
AUTH_RECEIVERS = ("grpc", "http", "metrics")


class _PipelineCollector(Collector):
    def __init__(self, pipeline: SealingPipeline) -> None:
        self._pipeline = pipeline

    def collect(self) -> Iterable[Metric]:
        pipeline = self._pipeline
        stats = pipeline.stats
        counters = {
            "collector_ext_records_sealed": ("Log records sealed into the chain.", stats.records_sealed),
            "collector_ext_records_archived": ("Sealed entries stored in the archive.", stats.records_archived),
            "collector_ext_segments_archived": ("Segment objects stored in the archive.", stats.segments_archived),
            "collector_ext_checkpoints_written": (
                "Signed checkpoints stored in the archive.",
                stats.checkpoints_written,
            ),
            "collector_ext_archive_write_retries": (
                "Archive writes that failed and were retried.",
                stats.upload_retries,
            ),
            "collector_ext_requests_refused_capacity": (
                "Requests refused because the spool was full or failing, or too much waited in memory.",
                stats.requests_refused,
            ),
            "collector_ext_records_spooled": ("Sealed entries fsynced to the local spool.", stats.records_spooled),
            "collector_ext_spool_write_retries": (
                "Spool writes that failed (disk full, I/O error) and were retried.",
                stats.spool_write_retries,
            ),
            "collector_ext_restarts": ("Times this chain was continued after a restart.", stats.restarts),
        }
        for name, (help_text, value) in counters.items():
            yield CounterMetricFamily(name, help_text, value=value)
        spool_failing = pipeline.spool_failing_since
        failing = pipeline.failing_since
        gauges: dict[str, tuple[str, float]] = {
            "collector_ext_pending_records": ("Records sealed but not yet archived.", pipeline.pending_records),
            "collector_ext_ready": ("1 when a request now would be accepted (gRPC health SERVING).", pipeline.ready),
            "collector_ext_chain_next_sequence": (
                "Next sequence number of the sidecar's chain.",
                pipeline.next_sequence,
            ),
            "collector_ext_last_checkpoint_timestamp_seconds": (
                "Unix time of the newest checkpoint stored in the archive (0: none yet).",
                stats.last_checkpoint_unix,
            ),
            "collector_ext_spool_bytes": ("Bytes of sealed segments in the local spool.", pipeline.spool_bytes),
            "collector_ext_spool_max_bytes": (
                "spool.max_bytes: beyond it requests are refused (0 without a spool).",
                pipeline.spool_max_bytes,
            ),
            "collector_ext_spool_failing_seconds": (
                "How long spool writes have been failing (0 when they succeed).",
                0.0 if spool_failing is None else time.monotonic() - spool_failing,
            ),
            "collector_ext_archive_failing_seconds": (
                "How long archive writes have been failing (0 when they succeed).",
                0.0 if failing is None else time.monotonic() - failing,
            ),
        }
        for name, (help_text, gauge) in gauges.items():
            yield GaugeMetricFamily(name, help_text, value=gauge)


class _LokiCollector(Collector):
    def __init__(self, sender: LokiSender | LokiProcess) -> None:
        self._sender = sender

    def collect(self) -> Iterable[Metric]:
        stats = self._sender.stats
        yield CounterMetricFamily(
            "collector_ext_loki_entries_pushed", "Entries Loki accepted.", value=stats.entries_pushed
        )
        yield CounterMetricFamily("collector_ext_loki_pushes", "Push requests Loki answered.", value=stats.pushes)
        yield CounterMetricFamily(
            "collector_ext_loki_push_retries", "Pushes that failed and were retried.", value=stats.push_retries
        )
        rejected = CounterMetricFamily(
            "collector_ext_loki_entries_rejected",
            "Entries not in Loki by reason (Loki's 400 reasons, queue_full); they are in the archive.",
            labels=["reason"],
        )
        for reason in sorted(set(LOKI_REASONS) | set(stats.rejected)):
            rejected.add_metric([reason], stats.rejected.get(reason, 0))
        yield rejected
        yield GaugeMetricFamily(
            "collector_ext_loki_queue_records", "Archived records waiting to be pushed.", value=stats.queued_records
        )
        failing = stats.failing_since
        yield GaugeMetricFamily(
            "collector_ext_loki_failing_seconds",
            "How long pushes to Loki have been failing (0 when they succeed).",
            value=0.0 if failing is None else time.monotonic() - failing,
        )
        undelivered = stats.undelivered_since
        yield GaugeMetricFamily(
            "collector_ext_loki_oldest_undelivered_seconds",
            "Age of the oldest record stored (spooled; archived, without a spool) that Loki does not have "
            "yet (0 when it has them all).",
            value=0.0 if undelivered is None else max(0.0, time.monotonic() - undelivered),
        )
        yield CounterMetricFamily(
            "collector_ext_loki_spool_records_missing",
            "Records passed because their spool file vanished before Loki had them (removed by hand).",
            value=stats.spool_records_missing,
        )


class _WitnessCollector(Collector):
    """Witness and TSA submissions (collector_ext.witness.submitter); zeros when none are configured,
    so the alert rules' series always exist."""

    def __init__(self, submitter: WitnessSubmitter | None) -> None:
        self._submitter = submitter

    def collect(self) -> Iterable[Metric]:
        now = time.monotonic()
        submitter = self._submitter
        witnesses = submitter.witness_stats if submitter is not None else {}
        stored = CounterMetricFamily(
            "collector_ext_witness_cosignatures_stored",
            "Witness cosignatures checked and stored beside checkpoint notes, by witness.",
            labels=["witness"],
        )
        failures = CounterMetricFamily(
            "collector_ext_witness_failures",
            "Submissions to a witness that failed (unreachable, refused, or no valid cosignature), by witness.",
            labels=["witness"],
        )
        size = GaugeMetricFamily(
            "collector_ext_witness_cosigned_tree_size",
            "Tree size of the newest checkpoint a witness cosigned (this run), by witness.",
            labels=["witness"],
        )
        failing = [now - stats.failing_since for stats in witnesses.values() if stats.failing_since is not None]
        for name, stats in sorted(witnesses.items()):
            stored.add_metric([name], stats.stored)
            failures.add_metric([name], stats.failures)
            size.add_metric([name], stats.last_size)
        yield stored
        yield failures
        yield size
        yield GaugeMetricFamily(
            "collector_ext_witness_failing_seconds",
            "How long the longest-failing configured witness has been failing (0 when all succeed or none).",
            value=max(failing, default=0.0),
        )
        yield GaugeMetricFamily(
            "collector_ext_witnesses_failing", "Configured witnesses whose last submission failed.", value=len(failing)
        )
        tsa = submitter.tsa_stats if submitter is not None else None
        yield CounterMetricFamily(
            "collector_ext_timestamps_stored",
            "RFC 3161 replies stored beside checkpoint notes.",
            value=tsa.stored if tsa is not None else 0,
        )
        yield CounterMetricFamily(
            "collector_ext_tsa_failures",
            "Time-stamp requests that failed (unreachable, refused, or a reply for other bytes).",
            value=tsa.failures if tsa is not None else 0,
        )
        yield GaugeMetricFamily(
            "collector_ext_tsa_failing_seconds",
            "How long time-stamp requests have been failing (0 when they succeed or no TSA is configured).",
            value=now - tsa.failing_since if tsa is not None and tsa.failing_since is not None else 0.0,
        )


class _AdmissionCollector(Collector):
    """The receivers' shared memory budget (collector_ext.receive.admission) and the HTTP receiver's
    connection cap, read when Prometheus scrapes."""

    def __init__(self, admission: AdmissionControl, http_receiver: OtlpHttpReceiver | None) -> None:
        self._admission = admission
        self._http_receiver = http_receiver

    def collect(self) -> Iterable[Metric]:
        snapshot = self._admission.snapshot()
        settings = self._admission.settings
        yield GaugeMetricFamily(
            "collector_ext_inflight_bytes",
            "Bytes of the receivers' memory budget held by requests in flight (received, inflated, being decoded).",
            value=snapshot.inflight_bytes,
        )
        yield GaugeMetricFamily(
            "collector_ext_inflight_max_bytes",
            "limits.max_inflight_bytes: the receivers' memory budget, both receivers together.",
            value=settings.max_inflight_bytes,
        )
        yield GaugeMetricFamily(
            "collector_ext_inflight_requests", "OTLP requests in flight on both receivers.", value=snapshot.requests
        )
        yield GaugeMetricFamily(
            "collector_ext_inflight_max_requests",
            "limits.max_concurrent_requests: requests in flight allowed on both receivers.",
            value=settings.max_requests,
        )
        yield CounterMetricFamily(
            "collector_ext_admission_refused",
            "Requests refused by the memory budget or the request count (limits.max_inflight_bytes, "
            "limits.max_concurrent_requests): retried after UNAVAILABLE / 503, or too large (413).",
            value=snapshot.refused,
        )
        refused = CounterMetricFamily(
            "collector_ext_connections_refused",
            "Connections closed at once because limits.max_connections were open, by receiver (the gRPC "
            "receiver's cap is enforced by grpc core, which does not count them).",
            labels=["receiver"],
        )
        refused.add_metric(["http"], self._http_receiver.connections_refused if self._http_receiver else 0)
        yield refused


class _CertificateCollector(Collector):
    """Seconds until each configured server certificate's notAfter (the one being served, after reloads)."""

    def __init__(self, certificates: Mapping[str, ReloadingTls], now: Callable[[], dt.datetime]) -> None:
        self._certificates = dict(certificates)
        self._now = now

    def collect(self) -> Iterable[Metric]:
        expiry = GaugeMetricFamily(
            "collector_ext_certificate_expiry_seconds",
            "Seconds until the server certificate of a TLS setting (tls, metrics_tls) expires (notAfter); "
            "negative once it has. Present only for the settings configured.",
            labels=["setting"],
        )
        now = self._now()
        for setting, tls in sorted(self._certificates.items()):
            expiry.add_metric([setting], (tls.material.not_after - now).total_seconds())
        yield expiry


LOKI_REASONS = (
    "too_old",
    "too_new",
    "line_too_long",
    "metadata_too_large",
    "metadata_too_many",
    "metadata_disallowed",
    "out_of_order",
    "labels",
    "request_too_large",
    "queue_full",
    "other",
)


class Metrics:
    """The sidecar's metrics. Receivers call ``observe_export``; ``watch`` adds a pipeline."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.export_requests = Counter(
            "collector_ext_export_requests",
            "OTLP Export requests by transport and outcome.",
            ["transport", "outcome"],
            registry=self.registry,
        )
        self.records_received = Counter(
            "collector_ext_records_received",
            "Log records in Export requests that were accepted.",
            ["transport"],
            registry=self.registry,
        )
        self.export_duration = Histogram(
            "collector_ext_export_duration_seconds",
            "Time from receiving an Export request to answering it.",
            ["transport"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=self.registry,
        )
        for transport in ("grpc", "http"):
            for outcome in OUTCOMES:
                self.export_requests.labels(transport, outcome)
            self.records_received.labels(transport)
            self.export_duration.labels(transport)
        self.auth_failures = Counter(
            "collector_ext_auth_failures",
            "Requests refused by client authentication, by receiver (grpc, http, metrics) and reason "
            "(missing_token, not_bearer, invalid_token, certificate_required, client_not_allowed, ...).",
            ["receiver", "reason"],
            registry=self.registry,
        )
        for receiver in AUTH_RECEIVERS:
            for reason in AUTH_FAILURE_REASONS:
                self.auth_failures.labels(receiver, reason)
        self.insecure_setting = Gauge(
            "collector_ext_insecure_setting",
            "1 for a setting that leaves the evidence or the sidecar exposed (retention NONE, a listener on a "
            "non-loopback address without TLS or client authentication); the start-up log says why.",
            ["setting"],
            registry=self.registry,
        )

    def report_insecure_settings(self, watched: Iterable[str], insecure: Iterable[str]) -> None:
        """Set the insecure-setting gauge: 1 for each of ``insecure``, 0 for the rest of ``watched``."""
        flagged = set(insecure)
        for setting in sorted(set(watched) | flagged):
            self.insecure_setting.labels(setting).set(1 if setting in flagged else 0)

    def watch(self, pipeline: SealingPipeline) -> None:
        self.registry.register(_PipelineCollector(pipeline))

    def watch_admission(self, admission: AdmissionControl, http_receiver: OtlpHttpReceiver | None) -> None:
        """The receivers' memory budget and refusals, and the HTTP receiver's refused connections."""
        self.registry.register(_AdmissionCollector(admission, http_receiver))

    def watch_certificates(
        self,
        certificates: Mapping[str, ReloadingTls | None],
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        """Expiry of the configured server certificates, by setting name (None: not configured)."""
        configured = {setting: tls for setting, tls in certificates.items() if tls is not None}
        self.registry.register(_CertificateCollector(configured, now))

    def observe_auth_failure(self, receiver: str, reason: str) -> None:
        """A refused request (``Authenticator``'s ``on_failure``): never a token, only why."""
        self.auth_failures.labels(receiver, reason).inc()

    def watch_loki(self, sender: LokiSender | LokiProcess) -> None:
        self.registry.register(_LokiCollector(sender))

    def watch_witnesses(self, submitter: WitnessSubmitter | None) -> None:
        """Witness and TSA metrics; registered with None too, so their unlabelled series read 0."""
        self.registry.register(_WitnessCollector(submitter))

    def observe_export(self, transport: str, outcome: str, records: int, seconds: float) -> None:
        self.export_requests.labels(transport, outcome).inc()
        if outcome == "ok":
            self.records_received.labels(transport).inc(records)
        self.export_duration.labels(transport).observe(seconds)

    def exposition(self) -> bytes:
        """The text exposition format Prometheus scrapes."""
        return generate_latest(self.registry)


METRIC_NAMES = (
    "collector_ext_export_requests_total",
    "collector_ext_records_received_total",
    "collector_ext_export_duration_seconds",
    "collector_ext_records_sealed_total",
    "collector_ext_records_archived_total",
    "collector_ext_segments_archived_total",
    "collector_ext_checkpoints_written_total",
    "collector_ext_archive_write_retries_total",
    "collector_ext_requests_refused_capacity_total",
    "collector_ext_pending_records",
    "collector_ext_ready",
    "collector_ext_chain_next_sequence",
    "collector_ext_last_checkpoint_timestamp_seconds",
    "collector_ext_archive_failing_seconds",
    "collector_ext_records_spooled_total",
    "collector_ext_spool_write_retries_total",
    "collector_ext_restarts_total",
    "collector_ext_spool_bytes",
    "collector_ext_spool_max_bytes",
    "collector_ext_spool_failing_seconds",
    "collector_ext_insecure_setting",
    "collector_ext_witness_failing_seconds",
    "collector_ext_witnesses_failing",
    "collector_ext_timestamps_stored_total",
    "collector_ext_tsa_failures_total",
    "collector_ext_tsa_failing_seconds",
    "collector_ext_inflight_bytes",
    "collector_ext_inflight_max_bytes",
    "collector_ext_inflight_requests",
    "collector_ext_inflight_max_requests",
    "collector_ext_admission_refused_total",
    "collector_ext_connections_refused_total",
    "collector_ext_auth_failures_total",
)
# Present per configured TLS setting (label setting: tls, metrics_tls).
TLS_METRIC_NAMES = ("collector_ext_certificate_expiry_seconds",)
# Present per configured witness (label witness).
WITNESS_METRIC_NAMES = (
    "collector_ext_witness_cosignatures_stored_total",
    "collector_ext_witness_failures_total",
    "collector_ext_witness_cosigned_tree_size",
)
# Present when loki is configured.
LOKI_METRIC_NAMES = (
    "collector_ext_loki_entries_pushed_total",
    "collector_ext_loki_pushes_total",
    "collector_ext_loki_push_retries_total",
    "collector_ext_loki_entries_rejected_total",
    "collector_ext_loki_queue_records",
    "collector_ext_loki_failing_seconds",
    "collector_ext_loki_oldest_undelivered_seconds",
    "collector_ext_loki_spool_records_missing_total",
)
