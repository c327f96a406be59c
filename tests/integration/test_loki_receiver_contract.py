"""Contract tests for tests/loki_receiver.py, the Loki stand-in.

Every request here is hand-made (http.client, protobuf bodies from collector_ext.pb.loki_push_pb2,
block snappy from cramjam) and every expected status and body comes from
shared/reference/loki-push-contract.md.
"""

from __future__ import annotations

import gzip
import http.client
import json
import os
import socket
import time
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import cramjam
import pytest

from collector_ext.pb import loki_push_pb2 as pb
from tests.loki_receiver import LokiReceiver, parse_labels, render_labels

TENANT = "tenant-a"
NS = 1_000_000_000
HOUR = 3600 * NS

Entry = tuple[int, str] | tuple[int, str, Mapping[str, str]]


@dataclass
class Reply:
    status: int
    body: str
    headers: dict[str, str]


def now_ns() -> int:
    return time.time_ns()


def build_request(streams: Sequence[tuple[str, Sequence[Entry]]]) -> pb.PushRequest:
    request = pb.PushRequest()
    for labels, entries in streams:
        stream = request.streams.add(labels=labels)
        for item in entries:
            entry = stream.entries.add(line=item[1])
            entry.timestamp.FromNanoseconds(item[0])
            if len(item) > 2:
                for name, value in item[2].items():
                    entry.structuredMetadata.add(name=name, value=value)
    return request


def proto_body(streams: Sequence[tuple[str, Sequence[Entry]]]) -> bytes:
    return bytes(cramjam.snappy.compress_raw(build_request(streams).SerializeToString()))


def post(
    receiver: LokiReceiver,
    body: bytes,
    headers: Mapping[str, str] | None = None,
    path: str = "/loki/api/v1/push",
) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", receiver.port, timeout=10)
    try:
        conn.request("POST", path, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        return Reply(resp.status, resp.read().decode(), {k.lower(): v for k, v in resp.getheaders()})
    finally:
        conn.close()


def push(
    receiver: LokiReceiver,
    streams: Sequence[tuple[str, Sequence[Entry]]],
    *,
    tenant: str | None = TENANT,
    content_type: str = "application/x-protobuf",
    extra: Mapping[str, str] | None = None,
) -> Reply:
    headers = {"Content-Type": content_type, **(extra or {})}
    if tenant is not None:
        headers["X-Scope-OrgID"] = tenant
    return post(receiver, proto_body(streams), headers)


def push_json(receiver: LokiReceiver, doc: Any, *, tenant: str | None = TENANT) -> Reply:
    headers = {"Content-Type": "application/json"}
    if tenant is not None:
        headers["X-Scope-OrgID"] = tenant
    return post(receiver, json.dumps(doc).encode(), headers)


def query_range(
    receiver: LokiReceiver,
    query: str,
    *,
    tenant: str | None = TENANT,
    headers: Mapping[str, str] | None = None,
    **params: Any,
) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", receiver.port, timeout=10)
    try:
        all_headers = dict(headers or {})
        if tenant is not None:
            all_headers["X-Scope-OrgID"] = tenant
        url = "/loki/api/v1/query_range?" + urlencode({"query": query, **params})
        conn.request("GET", url, headers=all_headers)
        resp = conn.getresponse()
        raw = resp.read().decode()
        return resp.status, (json.loads(raw) if resp.status == 200 else raw)
    finally:
        conn.close()


def lines_of(doc: Any) -> list[str]:
    return [value[1] for stream in doc["data"]["result"] for value in stream["values"]]


@pytest.fixture
def loki() -> Iterator[LokiReceiver]:
    with LokiReceiver() as receiver:
        yield receiver


# ----------------------------------------------------------------------------------------------
# Accepted pushes
# ----------------------------------------------------------------------------------------------


def test_protobuf_push_with_structured_metadata_is_stored_and_queryable(loki: LokiReceiver) -> None:
    t = now_ns()
    reply = push(loki, [('{job="app", env="dev"}', [(t, "first line", {"trace_id": "abc", "user": "u1"})])])
    assert (reply.status, reply.body) == (204, "")

    streams = loki.streams(TENANT)
    key = '{env="dev", job="app", service_name="app"}'
    assert list(streams) == [key]  # sorted, with the service_name Loki 3.2+ discovers from job
    (entry,) = streams[key].entries
    assert (entry.ts, entry.line) == (t, "first line")
    assert entry.structured_metadata == {"trace_id": "abc", "user": "u1", "detected_level": "unknown"}

    record = loki.pushes[-1]
    assert record.tenant == TENANT
    assert record.status == 204
    assert record.decoded is not None
    assert record.decoded[0].labels == '{job="app", env="dev"}'
    assert record.decoded[0].entries[0].structured_metadata == (("trace_id", "abc"), ("user", "u1"))
    assert (
        bytes(cramjam.snappy.decompress_raw(record.body))
        == build_request(
            [('{job="app", env="dev"}', [(t, "first line", {"trace_id": "abc", "user": "u1"})])]
        ).SerializeToString()
    )

    # Default encoding: structured metadata merged into the stream labels.
    status, doc = query_range(loki, '{job="app"}', start=t - NS, end=t + NS)
    assert status == 200
    assert doc["status"] == "success"
    assert doc["data"]["resultType"] == "streams"
    assert doc["data"]["result"] == [
        {
            "stream": {
                "detected_level": "unknown",
                "env": "dev",
                "job": "app",
                "service_name": "app",
                "trace_id": "abc",
                "user": "u1",
            },
            "values": [[str(t), "first line"]],
        }
    ]
    assert "summary" in doc["data"]["stats"]

    # categorize-labels: index labels only, metadata as the third element.
    status, doc = query_range(
        loki,
        '{job="app"}',
        start=t - NS,
        end=t + NS,
        headers={"X-Loki-Response-Encoding-Flags": "categorize-labels"},
    )
    assert status == 200
    assert doc["data"]["encodingFlags"] == ["categorize-labels"]
    assert doc["data"]["result"] == [
        {
            "stream": {"env": "dev", "job": "app", "service_name": "app"},
            "values": [
                [
                    str(t),
                    "first line",
                    {"structuredMetadata": {"trace_id": "abc", "user": "u1", "detected_level": "unknown"}},
                ]
            ],
        }
    ]


def test_json_push_with_structured_metadata_third_element(loki: LokiReceiver) -> None:
    t = now_ns()
    doc = {
        "streams": [
            {
                "stream": {"job": "app", "env": "dev"},
                "values": [
                    [str(t), "a log line"],
                    [str(t + 1), "line with SM", {"trace_id": "abc", "user": "u1"}],
                    None,
                ],
            }
        ]
    }
    reply = push_json(loki, doc)
    assert (reply.status, reply.body) == (204, "")
    entries = loki.entries(TENANT)
    assert [(e.ts, e.line) for e in entries] == [(t, "a log line"), (t + 1, "line with SM")]
    assert entries[1].structured_metadata == {"trace_id": "abc", "user": "u1", "detected_level": "unknown"}
    assert entries[0].labels == {"env": "dev", "job": "app", "service_name": "app"}


def test_json_timestamp_must_be_a_string_of_nanoseconds(loki: LokiReceiver) -> None:
    t = now_ns()
    reply = push_json(loki, {"streams": [{"stream": {"job": "app"}, "values": [[t, "number ts"]]}]})
    assert reply.status == 400
    assert "Value is string, but can't find closing '\"' symbol" in reply.body
    reply = push_json(loki, {"streams": [{"stream": {"job": "app"}, "values": [["2024-01-01T00:00:00Z", "x"]]}]})
    assert reply.status == 400
    assert loki.entries(TENANT) == []


def test_json_label_key_that_is_not_an_identifier_rejects_the_whole_request(loki: LokiReceiver) -> None:
    t = now_ns()
    doc = {
        "streams": [
            {"stream": {"job": "ok"}, "values": [[str(t), "good"]]},
            {"stream": {"service.name": "x"}, "values": [[str(t), "bad"]]},
        ]
    }
    reply = push_json(loki, doc)
    assert reply.status == 400
    assert reply.body.startswith("couldn't parse labels: ")
    assert reply.body.endswith("\n")
    assert loki.tenants() == []


def test_content_encodings_gzip_and_raw_deflate_wrap_the_snappy_body(loki: LokiReceiver) -> None:
    t = now_ns()
    body = proto_body([('{job="gz"}', [(t, "gzip")])])
    headers = {"Content-Type": "application/x-protobuf", "X-Scope-OrgID": TENANT, "Content-Encoding": "gzip"}
    assert post(loki, gzip.compress(body), headers).status == 204

    compressor = zlib.compressobj(wbits=-15)  # raw DEFLATE, RFC 1951
    deflated = compressor.compress(proto_body([('{job="gz"}', [(t + 1, "deflate")])])) + compressor.flush()
    assert post(loki, deflated, {**headers, "Content-Encoding": "deflate"}).status == 204

    # "snappy" is tolerated as a no-op.
    body = proto_body([('{job="gz"}', [(t + 2, "snappy header")])])
    assert post(loki, body, {**headers, "Content-Encoding": "snappy"}).status == 204
    assert [e.line for e in loki.entries(TENANT)] == ["gzip", "deflate", "snappy header"]

    reply = post(loki, body, {**headers, "Content-Encoding": "br"})
    assert (reply.status, reply.body) == (400, 'Content-Encoding "br" not supported\n')
    reply = post(loki, body, {**headers, "Content-Encoding": "GZIP"})
    assert reply.status == 400


def test_any_non_json_content_type_means_snappy_protobuf(loki: LokiReceiver) -> None:
    t = now_ns()
    for i, ctype in enumerate(("application/octet-stream", "text/plain", "application/x-protobuf; foo=bar")):
        reply = push(loki, [('{job="ct"}', [(t + i, ctype)])], content_type=ctype)
        assert reply.status == 204, ctype
    assert len(loki.entries(TENANT)) == 3


def test_error_responses_are_go_http_error_text(loki: LokiReceiver) -> None:
    reply = post(loki, b"garbage", {"Content-Type": "application/x-protobuf", "X-Scope-OrgID": TENANT})
    assert reply.headers["content-type"] == "text/plain; charset=utf-8"
    assert reply.headers["x-content-type-options"] == "nosniff"
    assert reply.body.endswith("\n")


# ----------------------------------------------------------------------------------------------
# Body decoding failures
# ----------------------------------------------------------------------------------------------


def test_bad_snappy_is_400(loki: LokiReceiver) -> None:
    reply = post(
        loki,
        b"\xff\xff\xff\xffnot snappy",
        {"Content-Type": "application/x-protobuf", "X-Scope-OrgID": TENANT},
    )
    assert (reply.status, reply.body) == (400, "snappy: corrupt input\n")


def test_framed_snappy_instead_of_block_snappy_is_400(loki: LokiReceiver) -> None:
    raw = build_request([('{job="app"}', [(now_ns(), "x")])]).SerializeToString()
    framed = bytes(cramjam.snappy.compress(raw))
    assert framed.startswith(b"\xff\x06\x00\x00sNaPpY")
    reply = post(loki, framed, {"Content-Type": "application/x-protobuf", "X-Scope-OrgID": TENANT})
    assert (reply.status, reply.body) == (400, "snappy: corrupt input\n")
    assert loki.tenants() == []


def test_uncompressed_protobuf_is_400(loki: LokiReceiver) -> None:
    raw = build_request([('{job="app"}', [(now_ns(), "x" * 40)])]).SerializeToString()
    reply = post(loki, raw, {"Content-Type": "application/x-protobuf", "X-Scope-OrgID": TENANT})
    assert reply.status == 400
    assert loki.tenants() == []


def test_valid_snappy_of_invalid_protobuf_is_400(loki: LokiReceiver) -> None:
    body = bytes(cramjam.snappy.compress_raw(b"\x0a\xff\xff\xff\x0f"))
    reply = post(loki, body, {"Content-Type": "application/x-protobuf", "X-Scope-OrgID": TENANT})
    assert (reply.status, reply.body) == (400, "unexpected EOF\n")
    body = bytes(cramjam.snappy.compress_raw(b"\x08\x01"))  # field 1 (streams) as a varint
    reply = post(loki, body, {"Content-Type": "application/x-protobuf", "X-Scope-OrgID": TENANT})
    assert (reply.status, reply.body) == (400, "proto: wrong wireType = 0 for field Streams\n")


def test_missing_content_type_is_400_no_media_type(loki: LokiReceiver) -> None:
    body = proto_body([('{job="app"}', [(now_ns(), "x")])])
    reply = post(loki, body, {"X-Scope-OrgID": TENANT})
    assert (reply.status, reply.body) == (400, "mime: no media type\n")
    assert loki.tenants() == []


def test_invalid_utf8_line_is_accepted_like_loki(loki: LokiReceiver) -> None:
    request = build_request([('{job="bin"}', [(now_ns(), "placeholder")])])
    raw = request.SerializeToString().replace(b"placeholder", b"bad \xff\xfe!!!!!")  # same length as the placeholder
    reply = post(
        loki,
        bytes(cramjam.snappy.compress_raw(raw)),
        {"Content-Type": "application/x-protobuf", "X-Scope-OrgID": TENANT},
    )
    assert reply.status == 204
    status, doc = query_range(loki, '{job="bin"}', limit=5)
    assert status == 200
    assert lines_of(doc) == ["bad \ufffd\ufffd!!!!!"]


# ----------------------------------------------------------------------------------------------
# Labels
# ----------------------------------------------------------------------------------------------


def test_bad_label_syntax_rejects_the_whole_request(loki: LokiReceiver) -> None:
    t = now_ns()
    reply = push(loki, [('{job="good"}', [(t, "fine")]), ('{a="b', [(t, "broken")])])
    assert (reply.status, reply.body) == (
        400,
        "couldn't parse labels: 1:4: parse error: unterminated quoted string\n",
    )
    assert loki.tenants() == []  # nothing at all was written

    reply = push(loki, [('{a.b="c"}', [(t, "x")])])
    assert (reply.status, reply.body) == (
        400,
        "couldn't parse labels: 1:3: parse error: unexpected character inside braces: '.'\n",
    )
    reply = push(loki, [("job=app", [(t, "x")])])
    assert reply.status == 400
    assert reply.body.startswith("couldn't parse labels: ")


def test_label_string_rules() -> None:
    assert parse_labels("{ b = \"2\" , a=`raw\\n`, c='q\\'', }") == [("b", "2"), ("a", "raw\\n"), ("c", "q'")]
    assert parse_labels('up{job="x"}') == [("__name__", "up"), ("job", "x")]
    assert parse_labels("{}") == []
    assert parse_labels("") == []
    assert render_labels([("a", 'x"y\n')]) == '{a="x\\"y\\n"}'


def test_empty_values_are_dropped_and_labels_sorted(loki: LokiReceiver) -> None:
    reply = push(loki, [('{zeta="1", alpha="2", empty=""}', [(now_ns(), "x")])])
    assert reply.status == 204
    assert list(loki.streams(TENANT)) == ['{alpha="2", service_name="unknown_service", zeta="1"}']


def test_empty_label_set_becomes_unknown_service(loki: LokiReceiver) -> None:
    assert push(loki, [("{}", [(now_ns(), "x")])]).status == 204
    assert list(loki.streams(TENANT)) == ['{service_name="unknown_service"}']


def test_empty_label_set_is_rejected_without_service_name_discovery() -> None:
    with LokiReceiver(discover_service_name=()) as loki:
        reply = push(loki, [("{}", [(now_ns(), "x")])])
        assert (reply.status, reply.body) == (400, "error at least one label pair is required per stream\n")


def test_duplicate_label_names_are_rejected(loki: LokiReceiver) -> None:
    reply = push(loki, [('{a="1", a="2"}', [(now_ns(), "x")])])
    assert reply.status == 400
    assert reply.body == 'stream \'{a="1", a="2", service_name="unknown_service"}\' has duplicate label name: \'a\'\n'


def test_too_many_labels(loki: LokiReceiver) -> None:
    t = now_ns()
    fifteen = "{" + ", ".join(f'l{i:02d}="v"' for i in range(15)) + "}"
    assert push(loki, [(fifteen, [(t, "ok")])]).status == 204  # service_name is not counted

    sixteen = "{" + ", ".join(f'l{i:02d}="v"' for i in range(16)) + "}"
    reply = push(loki, [(sixteen, [(t, "too many")])])
    key = "{" + ", ".join(f'l{i:02d}="v"' for i in range(16)) + ', service_name="unknown_service"}'
    assert (reply.status, reply.body) == (400, f"entry for stream '{key}' has 16 label names; limit 15\n")
    assert [e.line for e in loki.entries(TENANT)] == ["ok"]


def test_label_name_and_value_length_limits(loki: LokiReceiver) -> None:
    t = now_ns()
    assert push(loki, [("{" + "n" * 1024 + '="v"}', [(t, "ok name")])]).status == 204
    assert push(loki, [('{job="' + "v" * 2048 + '"}', [(t, "ok value")])]).status == 204

    long_name = "n" * 1025
    reply = push(loki, [("{" + long_name + '="v"}', [(t, "x")])])
    key = "{" + long_name + '="v", service_name="unknown_service"}'
    assert (reply.status, reply.body) == (400, f"stream '{key}' has label name too long: '{long_name}'\n")

    long_value = "v" * 2049
    reply = push(loki, [('{job="' + long_value + '"}', [(t, "x")])])
    assert reply.status == 400
    assert reply.body.endswith(f"has label value too long: '{long_value}'\n")
    assert sorted(e.line for e in loki.entries(TENANT)) == ["ok name", "ok value"]


# ----------------------------------------------------------------------------------------------
# Entries
# ----------------------------------------------------------------------------------------------


def test_line_too_long(loki: LokiReceiver) -> None:
    t = now_ns()
    assert push(loki, [('{job="big"}', [(t, "x" * 262144)])]).status == 204
    reply = push(loki, [('{job="big"}', [(t + 1, "y" * 262145)])])
    assert (reply.status, reply.body) == (
        400,
        "max entry size '262144' bytes exceeded for stream '{job=\"big\", service_name=\"big\"}' "
        "while adding an entry with length '262145' bytes\n",
    )
    assert len(loki.entries(TENANT)) == 1


def test_structured_metadata_too_large(loki: LokiReceiver) -> None:
    t = now_ns()
    assert push(loki, [('{job="sm"}', [(t, "ok", {"k": "v" * (65536 - 1)})])]).status == 204
    reply = push(loki, [('{job="sm"}', [(t + 1, "big", {"k": "v" * 65536})])])
    assert reply.status == 400
    assert reply.body == (
        "stream '{job=\"sm\", service_name=\"sm\"}' has structured metadata too large: '65537' bytes, "
        "limit: '65536' bytes. Please see `limits_config.max_structured_metadata_size` or contact your "
        "Loki administrator to increase it\n"
    )


def test_too_many_structured_metadata_entries(loki: LokiReceiver) -> None:
    t = now_ns()
    assert push(loki, [('{job="sm"}', [(t, "ok", {f"k{i}": "v" for i in range(128)})])]).status == 204
    reply = push(loki, [('{job="sm"}', [(t + 1, "many", {f"k{i}": "v" for i in range(129)})])])
    assert reply.status == 400
    assert reply.body == (
        "stream '{job=\"sm\", service_name=\"sm\"}' has too many structured metadata labels: '129', "
        "limit: '128'. Please see `limits_config.max_structured_metadata_entries_count` or contact your "
        "Loki administrator to increase it\n"
    )


def test_structured_metadata_disallowed() -> None:
    with LokiReceiver(allow_structured_metadata=False) as loki:
        reply = push(loki, [('{job="sm"}', [(now_ns(), "x", {"k": "v"})])])
        assert reply.status == 400
        assert "includes structured metadata, but this feature is disallowed" in reply.body


def test_structured_metadata_names_are_normalised(loki: LokiReceiver) -> None:
    t = now_ns()
    assert push(loki, [('{job="n"}', [(t, "x", {"trace.id": "1", "a__b": "2", "9lives": "3"})])]).status == 204
    (entry,) = loki.entries(TENANT)
    assert entry.structured_metadata == {
        "a_b": "2",
        "key_9lives": "3",
        "trace_id": "1",
        "detected_level": "unknown",
    }


def test_detected_level_discovery(loki: LokiReceiver) -> None:
    t = now_ns()
    entries: list[Entry] = [
        (t, '{"level":"WARN","msg":"x"}'),
        (t + 1, "ts=1 lvl=dbg msg=y"),
        (t + 2, "an ERROR happened"),
        (t + 3, "plain", {"severity_number": "17"}),
    ]
    assert push(loki, [('{job="lv"}', entries)]).status == 204
    assert [e.structured_metadata["detected_level"] for e in loki.entries(TENANT)] == [
        "warn",
        "debug",
        "error",
        "error",
    ]


def test_timestamp_too_old(loki: LokiReceiver) -> None:
    old = now_ns() - 8 * 24 * HOUR
    reply = push(loki, [('{job="old"}', [(old, "x")])])
    assert reply.status == 400
    prefix = 'entry for stream \'{job="old", service_name="old"}\' has timestamp too old: '
    assert reply.body.startswith(prefix)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(old // NS))
    assert reply.body[len(prefix) :].startswith(stamp + ", oldest acceptable timestamp is: ")
    assert loki.tenants() == []


def test_missing_protobuf_timestamp_is_too_old(loki: LokiReceiver) -> None:
    request = pb.PushRequest()
    request.streams.add(labels='{job="nots"}').entries.add(line="no timestamp")
    body = bytes(cramjam.snappy.compress_raw(request.SerializeToString()))
    reply = post(loki, body, {"Content-Type": "application/x-protobuf", "X-Scope-OrgID": TENANT})
    assert reply.status == 400
    assert "has timestamp too old: 0001-01-01T00:00:00Z, oldest acceptable timestamp is: " in reply.body


def test_timestamp_too_new(loki: LokiReceiver) -> None:
    t = now_ns()
    assert push(loki, [('{job="new"}', [(t + 9 * 60 * NS, "within grace")])]).status == 204
    future = t + 11 * 60 * NS
    reply = push(loki, [('{job="new"}', [(future, "too new")])])
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(future // NS))
    assert (reply.status, reply.body) == (
        400,
        f'entry for stream \'{{job="new", service_name="new"}}\' has timestamp too new: {stamp}\n',
    )


def test_out_of_order_more_than_one_hour_behind(loki: LokiReceiver) -> None:
    t = now_ns()
    assert push(loki, [('{job="ooo"}', [(t, "newest")])]).status == 204
    assert push(loki, [('{job="ooo"}', [(t - 59 * 60 * NS, "59 min behind is fine")])]).status == 204

    behind = t - HOUR - NS
    reply = push(loki, [('{job="ooo"}', [(behind, "too far"), (t + 1, "still ok")])])
    assert reply.status == 400
    entry_ts = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(behind // NS))
    frac = f"{behind % NS:09d}".rstrip("0")
    go_string = entry_ts + ("." + frac if frac else "") + " +0000 UTC"
    cutoff = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime((t - HOUR) // NS))
    assert reply.body == (
        f"entry with timestamp {go_string} ignored, reason: 'entry too far behind, entry timestamp is: "
        f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(behind // NS))}, oldest acceptable timestamp is: "
        f"{cutoff}',\n"
        'user \'tenant-a\', total ignored: 1 out of 2 for stream: {job="ooo", service_name="ooo"}\n'
    )
    assert [e.line for e in loki.entries(TENANT)] == ["59 min behind is fine", "newest", "still ok"]


def test_partial_write_keeps_valid_entries_on_400(loki: LokiReceiver) -> None:
    t = now_ns()
    reply = push(
        loki,
        [
            ('{job="mixed"}', [(t, "good one"), (t - 30 * 24 * HOUR, "ancient"), (t + 1, "good two")]),
            ('{job="other"}', [(t, "y" * 300000)]),
            ('{job="fine"}', [(t, "good three")]),
        ],
    )
    assert reply.status == 400
    assert reply.body.startswith("1 errors like: ")
    assert "; 1 errors like: " in reply.body
    assert "has timestamp too old" in reply.body
    assert "max entry size '262144' bytes exceeded" in reply.body
    assert sorted(e.line for e in loki.entries(TENANT)) == ["good one", "good three", "good two"]
    status, doc = query_range(loki, '{job=~"mixed|fine"}', start=t - NS, end=t + NS, direction="forward")
    assert status == 200
    assert lines_of(doc) == ["good three", "good one", "good two"]


def test_grouped_errors_count_repeats(loki: LokiReceiver) -> None:
    old = now_ns() - 30 * 24 * HOUR
    reply = push(loki, [('{job="g"}', [(old, "a"), (old, "b")])])
    assert reply.status == 400
    assert reply.body.startswith("2 errors like: entry for stream")


def test_exact_duplicates_are_dropped_silently(loki: LokiReceiver) -> None:
    t = now_ns()
    streams = [('{job="dup"}', [(t, "same"), (t, "same"), (t, "other line, same ts")])]
    assert push(loki, streams).status == 204
    assert push(loki, streams).status == 204  # a retried batch
    assert [e.line for e in loki.entries(TENANT)] == ["same", "other line, same ts"]


def test_empty_streams_is_422_and_entryless_streams_204(loki: LokiReceiver) -> None:
    reply = push(loki, [])
    assert (reply.status, reply.body) == (422, "error at least one valid stream is required for ingestion\n")
    assert push_json(loki, {"streams": []}).status == 422
    assert push(loki, [('{job="empty"}', [])]).status == 204
    assert push_json(loki, {"streams": [{"stream": {"job": "x"}, "values": []}]}).status == 204
    assert loki.tenants() == []


# ----------------------------------------------------------------------------------------------
# Rate limiting, injected failures, body size
# ----------------------------------------------------------------------------------------------


def test_ingestion_rate_limit_is_429_and_writes_nothing() -> None:
    with LokiReceiver(ingestion_rate_mb=0.001, ingestion_burst_size_mb=0.001) as loki:  # burst 1048 bytes
        t = now_ns()
        assert push(loki, [('{job="rl"}', [(t, "x" * 1000)])]).status == 204
        reply = push(loki, [('{job="rl"}', [(t + 1, "y" * 500), (t + 2, "z" * 100)])])
        assert reply.status == 429
        assert reply.body == (
            "ingestion rate limit exceeded for user tenant-a (limit: 1048 bytes/sec) while attempting to "
            "ingest '2' lines totaling '600' bytes, reduce log volume or contact your Loki administrator to "
            "see if the limit can be increased\n"
        )
        assert "retry-after" not in reply.headers  # Loki sends no Retry-After
        assert [e.line for e in loki.entries(TENANT)] == ["x" * 1000]


def test_force_rate_limit_knob(loki: LokiReceiver) -> None:
    loki.force_rate_limit = True
    reply = push(loki, [('{job="rl"}', [(now_ns(), "abc")])])
    assert reply.status == 429
    assert reply.body.startswith("ingestion rate limit exceeded for user tenant-a ")
    assert "'1' lines totaling '3' bytes" in reply.body
    loki.force_rate_limit = False
    assert push(loki, [('{job="rl"}', [(now_ns(), "abc")])]).status == 204


def test_fail_next_with_retry_after(loki: LokiReceiver) -> None:
    t = now_ns()
    loki.fail_next(429, count=1, retry_after=7)
    loki.fail_next(503, count=2)
    first = push(loki, [('{job="f"}', [(t, "a")])])
    assert first.status == 429
    assert first.headers["retry-after"] == "7"
    assert first.body.startswith("ingestion rate limit exceeded for user tenant-a")
    assert [push(loki, [('{job="f"}', [(t, "a")])]).status for _ in range(3)] == [503, 503, 204]
    assert [e.line for e in loki.entries(TENANT)] == ["a"]
    assert [p.forced for p in loki.pushes] == [True, True, True, False]


def test_body_over_max_recv_msg_size_is_413() -> None:
    with LokiReceiver(max_recv_msg_size=1024) as loki:
        big = bytes(cramjam.snappy.compress_raw(os.urandom(4096)))
        reply = post(loki, big, {"Content-Type": "application/x-protobuf", "X-Scope-OrgID": TENANT})
        assert reply.status == 413
        assert reply.body.startswith("request body too large: ")
        assert push(loki, [('{job="small"}', [(now_ns(), "fits")])]).status == 204


# ----------------------------------------------------------------------------------------------
# Tenants
# ----------------------------------------------------------------------------------------------


def test_missing_tenant_with_auth_enabled_is_401(loki: LokiReceiver) -> None:
    reply = push(loki, [('{job="t"}', [(now_ns(), "x")])], tenant=None)
    assert (reply.status, reply.body) == (401, "no org id\n")
    reply = push(loki, [('{job="t"}', [(now_ns(), "x")])], tenant="")
    assert reply.status == 401


@pytest.mark.parametrize(
    ("tenant", "body"),
    [
        ("a/b", "tenant ID 'a/b' contains unsupported character '/'\n"),
        ("x" * 151, "tenant ID is too long: max 150 characters\n"),
        ("..", "tenant ID is '.' or '..'\n"),
        ("a|b", "multiple org IDs present\n"),
    ],
)
def test_bad_tenant_ids_are_400(loki: LokiReceiver, tenant: str, body: str) -> None:
    reply = push(loki, [('{job="t"}', [(now_ns(), "x")])], tenant=tenant)
    assert (reply.status, reply.body) == (400, body)


def test_tenants_are_isolated_and_subtenant_suffix_is_stripped(loki: LokiReceiver) -> None:
    t = now_ns()
    assert push(loki, [('{job="t"}', [(t, "for a")])], tenant="team-a").status == 204
    assert push(loki, [('{job="t"}', [(t, "for b")])], tenant="team-b:sub=1").status == 204
    assert push(loki, [('{job="t"}', [(t + 1, "for a again")])], tenant="team-a|team-a").status == 204
    assert loki.tenants() == ["team-a", "team-b"]
    assert [e.line for e in loki.entries("team-a")] == ["for a", "for a again"]
    status, doc = query_range(loki, '{job="t"}', tenant="team-b")
    assert status == 200
    assert lines_of(doc) == ["for b"]
    assert query_range(loki, '{job="t"}', tenant=None)[0] == 401


def test_auth_disabled_uses_tenant_fake_and_ignores_header() -> None:
    with LokiReceiver(auth_enabled=False) as loki:
        assert push(loki, [('{job="t"}', [(now_ns(), "x")])], tenant=None).status == 204
        assert push(loki, [('{job="t"}', [(now_ns(), "y")])], tenant="a/b").status == 204
        assert loki.tenants() == ["fake"]
        assert [e.line for e in loki.entries()] == ["x", "y"]


# ----------------------------------------------------------------------------------------------
# query_range
# ----------------------------------------------------------------------------------------------


def test_query_range_paging_with_limit_and_direction(loki: LokiReceiver) -> None:
    base = now_ns() - 600 * NS
    assert (
        push(loki, [('{job="page", pod="a"}', [(base + i * NS, f"line {i}") for i in range(0, 10, 2)])]).status == 204
    )
    assert (
        push(loki, [('{job="page", pod="b"}', [(base + i * NS, f"line {i}") for i in range(1, 10, 2)])]).status == 204
    )

    # Forward: pages of 3, start moves past the last returned timestamp.
    seen: list[str] = []
    start = base
    while True:
        status, doc = query_range(loki, '{job="page"}', start=start, end=base + 60 * NS, limit=3, direction="forward")
        assert status == 200
        values = sorted(v for s in doc["data"]["result"] for v in s["values"])
        if not values:
            break
        assert len(values) <= 3
        seen += [v[1] for v in values]
        start = int(values[-1][0]) + 1
    assert seen == [f"line {i}" for i in range(10)]

    # Backward (the default): the newest first; end is exclusive.
    seen = []
    end = base + 60 * NS
    while True:
        status, doc = query_range(loki, '{job="page"}', start=base, end=end, limit=4)
        values = sorted((v for s in doc["data"]["result"] for v in s["values"]), reverse=True)
        if not values:
            break
        seen += [v[1] for v in values]
        end = int(values[-1][0])
    assert seen == [f"line {i}" for i in reversed(range(10))]

    # One page groups its entries per stream, values ordered by the direction.
    status, doc = query_range(loki, '{job="page"}', start=base, end=base + 60 * NS, limit=4, direction="backward")
    assert [(s["stream"]["pod"], [v[1] for v in s["values"]]) for s in doc["data"]["result"]] == [
        ("a", ["line 8", "line 6"]),
        ("b", ["line 9", "line 7"]),
    ]

    # start given as RFC3339, end as float seconds; default limit is 100.
    rfc = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(base // NS)) + f".{base % NS:09d}Z"
    status, doc = query_range(loki, '{job="page"}', start=rfc, end=f"{(base + 4 * NS + NS // 2) / NS:.3f}")
    assert status == 200
    assert sorted(lines_of(doc)) == [f"line {i}" for i in range(5)]


def test_query_range_matchers_and_line_filters(loki: LokiReceiver) -> None:
    t = now_ns()
    push(loki, [('{job="m", env="dev"}', [(t, "alpha")]), ('{job="m", env="prod"}', [(t, "beta")])])
    cases = {
        '{job="m", env="dev"}': ["alpha"],
        '{job="m", env!="dev"}': ["beta"],
        '{env=~"d.v|prod"}': ["alpha", "beta"],
        '{job="m", env!~"pr.*"}': ["alpha"],
        '{job="m"} |= "alp"': ["alpha"],
        '{job="m"} != "alp"': ["beta"],
        '{job="m"} |~ "^b"': ["beta"],
        '{job="nope"}': [],
    }
    for query, expected in cases.items():
        status, doc = query_range(loki, query, start=t - NS, end=t + NS)
        assert status == 200, (query, doc)
        assert sorted(lines_of(doc)) == expected, query


@pytest.mark.parametrize(
    "query",
    ['{job="m"} | json', 'sum(rate({job="m"}[1m]))', "{}", '{job=~".*"}', '{job="m"', "job"],
)
def test_query_range_rejects_unsupported_or_invalid_queries(loki: LokiReceiver, query: str) -> None:
    status, body = query_range(loki, query)
    assert status == 400
    assert body.endswith("\n")
    assert "parse error" in body


def test_query_range_limit_bounds(loki: LokiReceiver) -> None:
    status, body = query_range(loki, '{job="x"}', limit=5001)
    assert (status, body) == (
        400,
        "max entries limit per query exceeded, limit > max_entries_limit_per_query (5001 > 5000)\n",
    )
    assert query_range(loki, '{job="x"}', limit=5000)[0] == 200
    assert query_range(loki, '{job="x"}', limit=0)[0] == 400
    assert query_range(loki, '{job="x"}', direction="sideways")[0] == 400


# ----------------------------------------------------------------------------------------------
# Test knobs
# ----------------------------------------------------------------------------------------------


def test_down_refuses_connections_then_recovers_on_the_same_port(loki: LokiReceiver) -> None:
    port = loki.port
    loki.down = True
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
    loki.down = False
    assert loki.port == port
    assert push(loki, [('{job="d"}', [(now_ns(), "back")])]).status == 204


def test_reset_mode_resets_connections(loki: LokiReceiver) -> None:
    loki.set_down("reset")
    with pytest.raises((ConnectionResetError, http.client.RemoteDisconnected, BrokenPipeError)):
        push(loki, [('{job="d"}', [(now_ns(), "lost")])])
    loki.set_down("up")
    assert push(loki, [('{job="d"}', [(now_ns(), "ok")])]).status == 204
    assert [e.line for e in loki.entries(TENANT)] == ["ok"]


def test_tampering_helpers(loki: LokiReceiver) -> None:
    t = now_ns()
    push(loki, [('{job="tam"}', [(t, "one"), (t + 1, "two"), (t + 2, "three")])])
    key = '{job="tam", service_name="tam"}'
    assert loki.replace_line(key, t + 1, "TWO") == 1
    assert loki.set_metadata({"job": "tam", "service_name": "tam"}, t + 2, {"forged": "yes"}) == 1
    assert loki.delete_entry(key, t) == 1
    loki.add_entry(key, t + 3, "injected", {"k": "v"})
    entries = loki.entries(TENANT)
    assert [(e.line, e.structured_metadata) for e in entries] == [
        ("TWO", {"detected_level": "unknown"}),
        ("three", {"forged": "yes"}),
        ("injected", {"k": "v"}),
    ]
    status, doc = query_range(loki, '{job="tam"}', start=t, end=t + 10, direction="forward")
    assert status == 200
    assert lines_of(doc) == ["TWO", "three", "injected"]
    with pytest.raises(KeyError):
        loki.delete_entry('{job="missing"}', t)


def test_legacy_path_accepts_protobuf(loki: LokiReceiver) -> None:
    body = proto_body([('{job="legacy"}', [(now_ns(), "old path")])])
    reply = post(loki, body, {"Content-Type": "application/x-protobuf", "X-Scope-OrgID": TENANT}, "/api/prom/push")
    assert reply.status == 204
    assert [e.line for e in loki.entries(TENANT)] == ["old path"]
