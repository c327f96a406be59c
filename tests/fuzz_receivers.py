"""Fuzzes both receivers' request decoding in-process: refused as invalid, or sealed exactly as sent.

    python tests/fuzz_receivers.py --runs 100000                  # atheris, coverage-guided
    python tests/fuzz_receivers.py --engine random --runs 100000  # without atheris: seeded mutations

Each case is a body for one of five paths: gRPC (the message as grpc hands it over, plain, gzip or
deflate: ``otlp_grpc.decode_message``) and OTLP/HTTP protobuf or JSON, plain, gzip or deflate
(``inflate.inflate_whole`` then the HTTP receiver's decoding). Seeds are valid requests with every
field type, nested values, ids and unknown fields; atheris (or ``random``) mutates them.

A case fails when decoding raises anything but InvalidRequestError or RequestTooLargeError (a 500),
or when a request is accepted and:

- a sealed payload does not decode back to the resource, scope and record of the request;
- (protobuf) decoding changed a value: the request decoded with every 32-bit integer and enum
  field widened to 64 bits does not re-encode to the same bytes (an oracle independent of the
  receiver's own wire check);
- (JSON) protobuf's own lenient JSON parser, given the same document, builds a different request
  (the strict reader may refuse more, never read differently).

The run prints cases, cases per second, outcomes, and the first failures with their bytes in hex.
The hypothesis test tests/unit/receive/test_fuzz_receivers.py uses ``check_case`` as its oracle.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``tests`` and ``collector_ext`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import base64
import binascii
import gzip
import json
import random
import time
import zlib
from collections import Counter
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from collector_ext.errors import InvalidRequestError, RequestTooLargeError
from collector_ext.pb.archive_pb2 import LogPayload
from collector_ext.receive import otlp_grpc, otlp_http
from collector_ext.receive.admission import AdmissionControl, AdmissionSettings
from collector_ext.receive.inflate import inflate_whole
from collector_ext.receive.validate import RequestLimits

PATHS = ("grpc", "http-protobuf", "http-json")
CODINGS = (None, "gzip", "deflate")
LIMIT = 1 << 20
LIMITS = RequestLimits(max_attributes=64, max_attributes_per_request=4096, max_value_depth=8)


def _value(depth: int, seed: int) -> AnyValue:
    kinds = seed % 7
    if depth <= 0 or kinds < 5:
        return [
            AnyValue(string_value=f"s{seed}é"),
            AnyValue(int_value=-(seed << 40)),
            AnyValue(double_value=seed / 3),
            AnyValue(bool_value=bool(seed & 1)),
            AnyValue(bytes_value=bytes([seed & 0xFF, 0, 0xFF])),
        ][kinds % 5]
    if kinds == 5:
        return AnyValue(array_value=ArrayValue(values=[_value(depth - 1, seed + i) for i in range(2)]))
    return AnyValue(
        kvlist_value=KeyValueList(
            values=[KeyValue(key=f"k{i}", value=_value(depth - 1, seed + i + 1)) for i in range(2)]
        )
    )


def seed_requests() -> list[ExportLogsServiceRequest]:
    """A few valid requests covering every field of the logs data model."""
    record = LogRecord(
        time_unix_nano=1_700_000_000_000_000_001,
        observed_time_unix_nano=(1 << 64) - 1,
        severity_number=9,
        severity_text="INFO",
        body=_value(3, 6),
        attributes=[KeyValue(key=f"a{i}", value=_value(2, i)) for i in range(7)],
        dropped_attributes_count=(1 << 32) - 1,
        flags=0x01,
        trace_id=bytes(range(16)),
        span_id=bytes(range(8)),
        event_name="model.output",
    )
    negative = LogRecord(severity_number=-5, body=AnyValue(double_value=float("-inf")))
    with_unknown = LogRecord(severity_text="x")
    with_unknown.MergeFromString(b"\xa8\x06\x05")  # field 101, varint 5: unknown, kept as sent
    resource = Resource(
        attributes=[KeyValue(key="service.name", value=AnyValue(string_value="svc"))], dropped_attributes_count=2
    )
    scope = InstrumentationScope(name="scope", version="1", attributes=[KeyValue(key="x", value=_value(1, 5))])
    return [
        ExportLogsServiceRequest(
            resource_logs=[
                ResourceLogs(
                    resource=resource,
                    schema_url="https://opentelemetry.io/schemas/1.26.0",
                    scope_logs=[ScopeLogs(scope=scope, log_records=[record, negative], schema_url="s")],
                )
            ]
        ),
        ExportLogsServiceRequest(
            resource_logs=[ResourceLogs(scope_logs=[ScopeLogs(log_records=[with_unknown, LogRecord()])])]
        ),
        ExportLogsServiceRequest(resource_logs=[ResourceLogs(), ResourceLogs(scope_logs=[ScopeLogs()])]),
    ]


def to_otlp_json(request: ExportLogsServiceRequest) -> bytes:
    """OTLP/JSON as an OTLP exporter writes it (hex ids, integer enums)."""
    document = json_format.MessageToDict(request, use_integers_for_enums=True)
    for resource_logs in document.get("resourceLogs", []):
        for scope_logs in resource_logs.get("scopeLogs", []):
            for record in scope_logs.get("logRecords", []):
                for key in ("traceId", "spanId"):
                    if key in record:
                        record[key] = base64.b64decode(record[key]).hex()
    return json.dumps(document).encode()


def compress(body: bytes, coding: str | None) -> bytes:
    if coding == "gzip":
        return gzip.compress(body, mtime=0)
    if coding == "deflate":
        return zlib.compress(body)
    return body


# --- the oracle ------------------------------------------------------------------------------


def _widened_request_class() -> type[Message]:
    """ExportLogsServiceRequest with every 32-bit integer and enum field declared 64-bit, in a pool of
    its own: decoding keeps the value as sent, and re-encodes it as the narrow type would when in range."""
    pool = descriptor_pool.DescriptorPool()
    files: list[descriptor_pb2.FileDescriptorProto] = []
    seen: set[str] = set()

    def collect(file: Any) -> None:
        if file.name in seen:
            return
        seen.add(file.name)
        for dependency in file.dependencies:
            collect(dependency)
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        files.append(proto)

    collect(ExportLogsServiceRequest.DESCRIPTOR.file)
    widen = {
        descriptor_pb2.FieldDescriptorProto.TYPE_INT32: descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
        descriptor_pb2.FieldDescriptorProto.TYPE_ENUM: descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
        descriptor_pb2.FieldDescriptorProto.TYPE_UINT32: descriptor_pb2.FieldDescriptorProto.TYPE_UINT64,
    }

    def widen_messages(messages: Any) -> None:
        for message in messages:
            for field in message.field:
                if field.type in widen:
                    field.type = widen[field.type]
                    field.ClearField("type_name")
            widen_messages(message.nested_type)

    for proto in files:
        widen_messages(proto.message_type)
        pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(ExportLogsServiceRequest.DESCRIPTOR.full_name))


_WIDENED = _widened_request_class()


def _lenient_json(body: bytes) -> bytes | None:
    """Protobuf's own JSON reading of an OTLP/JSON body (ids rewritten from hex), re-encoded; None if
    it refuses."""
    try:
        document = json.loads(body)
        for resource_logs in document.get("resourceLogs") or document.get("resource_logs") or []:
            for scope_logs in resource_logs.get("scopeLogs") or resource_logs.get("scope_logs") or []:
                for record in scope_logs.get("logRecords") or scope_logs.get("log_records") or []:
                    for key in ("traceId", "trace_id", "spanId", "span_id"):
                        if isinstance(record.get(key), str):
                            record[key] = base64.b64encode(binascii.unhexlify(record[key])).decode()
        parsed = json_format.ParseDict(document, ExportLogsServiceRequest(), ignore_unknown_fields=True)
    except Exception:
        return None
    return parsed.SerializeToString()


def _plain_body(path: str, body: bytes, coding: str | None) -> bytes:
    if path == "grpc":
        message_coding = otlp_grpc.message_coding(body)
        if message_coding is not None:
            try:
                return inflate_whole(body, message_coding, LIMIT)
            except InvalidRequestError:
                return body  # decode_message falls back to plain bytes the same way for deflate
        return body
    return inflate_whole(body, coding, LIMIT) if coding else body


def decode(path: str, body: bytes, coding: str | None) -> list[bytes]:
    """The sealed payloads the receiver on ``path`` makes of ``body``, or its refusal."""
    if path == "grpc":
        admission = AdmissionControl(AdmissionSettings(max_inflight_bytes=1 << 30, max_requests=4))
        with admission.admit() as reservation:
            return otlp_grpc.decode_message(body, LIMIT, reservation, None, LIMITS)
    plain = inflate_whole(body, coding, LIMIT) if coding else body
    media_type = otlp_http.PROTOBUF if path == "http-protobuf" else otlp_http.JSON
    return otlp_http._decode_payloads(plain, media_type, None, LIMITS)


def _expected_payloads(request: ExportLogsServiceRequest) -> list[tuple[bytes, bytes, bytes, bytes, bytes]]:
    return [
        (
            r.resource.SerializeToString(),
            r.schema_url.encode(),
            s.scope.SerializeToString(),
            s.schema_url.encode(),
            record.SerializeToString(),
        )
        for r in request.resource_logs
        for s in r.scope_logs
        for record in s.log_records
    ]


def check_case(path: str, body: bytes, coding: str | None = None) -> str:
    """'accepted' or 'refused'; AssertionError when the receiver broke its promise."""
    try:
        payloads = decode(path, body, coding)
    except (InvalidRequestError, RequestTooLargeError):
        return "refused"
    plain = _plain_body(path, body, coding)
    if path == "http-json":
        lenient = _lenient_json(plain) if plain else b""
        assert lenient is not None, "accepted a JSON body protobuf's own reader refuses"
        request = ExportLogsServiceRequest.FromString(lenient)
    else:
        request = ExportLogsServiceRequest.FromString(plain)
        widened = _WIDENED.FromString(plain)
        assert widened.SerializeToString() == request.SerializeToString(), "decoding changed a value"
    sealed = []
    for payload in payloads:
        decoded = LogPayload.FromString(payload)
        sealed.append(
            (
                decoded.resource,
                decoded.resource_schema_url.encode(),
                decoded.scope,
                decoded.scope_schema_url.encode(),
                decoded.log_record,
            )
        )
    assert sealed == _expected_payloads(request), "the sealed payloads differ from the request"
    return "accepted"


# --- engines ---------------------------------------------------------------------------------


def _seed_inputs() -> list[bytes]:
    """Atheris inputs: one selector byte (path, coding) and the plain body."""
    inputs = []
    for request in seed_requests():
        for selector, _ in enumerate(_CASES):
            path = _CASES[selector][0]
            plain = to_otlp_json(request) if path == "http-json" else request.SerializeToString()
            inputs.append(bytes([selector]) + plain)
    return inputs


_CASES = [(path, coding) for path in PATHS for coding in CODINGS]


def run_input(data: bytes) -> str:
    """One fuzzer input: the selector picks path and coding; the body is compressed here, so the
    mutations reach the decoders (a selector with the top bit set sends the bytes as they are)."""
    if not data:
        return "refused"
    path, coding = _CASES[(data[0] & 0x7F) % len(_CASES)]
    body = data[1:]
    if not data[0] & 0x80:
        body = compress(body, coding)
    return check_case(path, body, None if path == "grpc" else coding)


def _mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        choice = rng.randrange(7)
        position = rng.randrange(len(out) + 1) if out else 0
        if choice == 0 and out:
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        elif choice == 1:
            out[position:position] = rng.randbytes(rng.randint(1, 8))
        elif choice == 2 and out:
            del out[position : position + rng.randint(1, 16)]
        elif choice == 3:  # a varint beyond 32 or 64 bits
            out[position:position] = rng.choice(
                [b"\x10\x80\x80\x80\x80\x10", b"\x38\x80\x80\x80\x80\x10", b"\xff" * 9 + b"\x7f"]
            )
        elif choice == 4:  # a JSON value that lenient readers bend
            out[position:position] = rng.choice(
                [b"1e400", b'"1_0"', b"NaN", b'"INFO"', b"1.5", b"9223372036854775808", b'"\\ud800"', b"true", b"null"]
            )
        elif choice == 5 and len(out) > 2:
            start = rng.randrange(len(out))
            out[position:position] = out[start : start + rng.randint(1, 32)]
        else:
            out[0:1] = bytes([rng.randrange(256)])
    return bytes(out)


def run_random(runs: int, seed: int) -> tuple[Counter[str], list[str]]:
    rng = random.Random(seed)
    seeds = _seed_inputs()
    outcomes: Counter[str] = Counter()
    failures: list[str] = []
    for _ in range(runs):
        data = _mutate(rng, rng.choice(seeds))
        try:
            outcomes[run_input(data)] += 1
        except Exception as exc:
            outcomes["failed"] += 1
            if len(failures) < 10:
                failures.append(f"{type(exc).__name__}: {exc} input={data.hex()}")
    return outcomes, failures


def run_atheris(runs: int, corpus: Path) -> None:
    """Coverage-guided; libFuzzer ends the process itself (exit code 0, or its own on a failure after
    printing the input), so the figures are printed as the run goes and once it is done."""
    import atheris

    outcomes: Counter[str] = Counter()
    started = [time.monotonic()]

    def one(data: bytes) -> None:
        outcomes[run_input(data)] += 1
        done = outcomes.total()
        if done % 50_000 == 0 or done == runs:
            _report("atheris", outcomes, [], time.monotonic() - started[0])

    corpus.mkdir(parents=True, exist_ok=True)
    for index, data in enumerate(_seed_inputs()):
        (corpus / f"seed-{index}").write_bytes(data)
    atheris.instrument_all()
    argv = [sys.argv[0], f"-runs={runs}", "-max_len=8192", "-rss_limit_mb=2048", str(corpus)]
    atheris.Setup(argv, one)
    started[0] = time.monotonic()  # instrumenting takes a minute or two; not counted
    atheris.Fuzz()


def _report(engine: str, outcomes: Counter[str], failures: list[str], elapsed: float) -> None:
    cases = sum(outcomes.values())
    print(f"engine={engine} cases={cases} seconds={elapsed:.0f} cases/s={cases / max(elapsed, 1e-9):.0f}", flush=True)
    print("outcomes:", dict(outcomes), flush=True)
    for failure in failures:
        print("FAILURE", failure, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=("atheris", "random"), default="atheris")
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--corpus", type=Path, default=Path(".fuzz-receivers-corpus"))
    arguments = parser.parse_args()
    if arguments.engine == "atheris":
        run_atheris(arguments.runs, arguments.corpus)  # does not return
        return 0
    started = time.monotonic()
    outcomes, failures = run_random(arguments.runs, arguments.seed)
    _report("random", outcomes, failures, time.monotonic() - started)
    return 1 if failures or outcomes.get("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
