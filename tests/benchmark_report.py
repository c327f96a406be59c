"""What a period report costs next to verifying the same archive.

Builds one chain of ``--records`` OTLP log records (one segment per 10,000, event times spread over
30 days) in a local directory archive, then times, in the same run: verify; a report of the whole
period (every record a row); a report of one day; in CSV (and HTML with ``--html``). Prints the
times, records/s and the ratios; the target is a report at most 2x a verify.

    python tests/benchmark_report.py --records 1000000
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collector_ext.deliver.directory_archive import DirectoryArchive
from collector_ext.report.period import Period
from collector_ext.report.run import ReportOptions, build_report
from collector_ext.seal.keys import Ed25519Signer
from collector_ext.seal.payload import log_payloads
from collector_ext.verify.run import VerifyOptions, check_archive
from tests.archive_builder import BASE_TIME, build_archive

DAY = 86_400 * 10**9
PER_SEGMENT = 10_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--html", action="store_true", help="also time an HTML report")
    args = parser.parse_args()
    signer = Ed25519Signer(Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
    spread = 30 * DAY // max(1, args.records)
    users = [KeyValue(key="user.id", value=AnyValue(string_value=f"user-{i}")) for i in range(50)]
    resource_ = Resource(attributes=[KeyValue(key="service.name", value=AnyValue(string_value="ai-workflow"))])

    def payload(sequence: int) -> bytes:
        record = LogRecord(
            time_unix_nano=BASE_TIME + sequence * spread,
            severity_text="INFO",
            event_name="gen_ai.client.inference.operation.details" if sequence % 3 else "access.denied",
            body=AnyValue(string_value=f"inference {sequence} for the quarterly report"),
            attributes=[users[sequence % 50], KeyValue(key="gen_ai.request.model", value=AnyValue(string_value="m"))],
        )
        request = ExportLogsServiceRequest(
            resource_logs=[ResourceLogs(resource=resource_, scope_logs=[ScopeLogs(log_records=[record])])]
        )
        return log_payloads(request)[0]

    segments = -(-args.records // PER_SEGMENT)
    print(f"building {segments * PER_SEGMENT:,} records ...", flush=True)
    started = time.perf_counter()
    # Each segment sealed when its last record happened: seal times follow event times, as in a sidecar.
    built = build_archive(
        signer,
        segments=segments,
        per_segment=PER_SEGMENT,
        payloads=payload,
        seal_time=lambda index: BASE_TIME + ((index + 1) * PER_SEGMENT - 1) * spread,
    )
    print(f"built in {time.perf_counter() - started:.0f} s", flush=True)
    keys = {signer.key_id: signer.public_key}
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory) / "archive"
        for key, data in built.objects.items():
            path = root / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        del built

        async def verify() -> float:
            store = DirectoryArchive(root, for_writing=False)
            await store.open()
            began = time.perf_counter()
            report = await check_archive(store, keys, VerifyOptions())
            assert report.clean
            return time.perf_counter() - began

        async def report(since: int, until: int, out: Path, report_format: str) -> tuple[float, int]:
            store = DirectoryArchive(root, for_writing=False)
            await store.open()
            began = time.perf_counter()
            options = ReportOptions(period=Period(since, until, 0), format=report_format)  # type: ignore[arg-type]
            result = await build_report(store, keys, options, out)
            assert result.report.verified
            return time.perf_counter() - began, result.manifest["report"]["rows"]

        verify_time = asyncio.run(verify())
        records = segments * PER_SEGMENT
        print(f"verify:                    {verify_time:7.2f} s  {records / verify_time:12,.0f} records/s")
        runs = [("report, whole period, csv", BASE_TIME, BASE_TIME + 31 * DAY, "csv")]
        runs.append(("report, one day, csv", BASE_TIME + 10 * DAY, BASE_TIME + 11 * DAY, "csv"))
        runs.append(("report, one day, jsonl", BASE_TIME + 10 * DAY, BASE_TIME + 11 * DAY, "jsonl"))
        if args.html:
            runs.append(("report, whole period, html", BASE_TIME, BASE_TIME + 31 * DAY, "html"))
        for name, since, until, report_format in runs:
            elapsed, rows = asyncio.run(report(since, until, Path(directory) / f"r.{report_format}", report_format))
            print(
                f"{name + ':':27}{elapsed:7.2f} s  {records / elapsed:12,.0f} records/s  {rows:,} rows  "
                f"RATIO to verify {elapsed / verify_time:.2f} (target <= 2)"
            )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process (building included): {peak:.0f} MiB")


if __name__ == "__main__":
    main()
