"""A segment's records read a chunk at a time (``seal.segment.SegmentRecords``) are exactly the
records the protobuf runtime gives for the whole body, on bodies no writer makes: records in
several chunks, unknown fields of every wire type between them, the header anywhere, over-long
varints, fields given twice inside a record, and bodies that do not parse at all."""

from __future__ import annotations

import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from collector_ext.errors import MalformedObjectError
from collector_ext.pb import archive_pb2
from collector_ext.seal import segment
from collector_ext.seal.entry import FORMAT_VERSION
from collector_ext.seal.framing import SEGMENT_MAGIC, frame
from collector_ext.seal.wire import encode_varint

HEADER = archive_pb2.SegmentHeader(
    format_version=FORMAT_VERSION, chain_id=bytes(16), record_count=1
).SerializeToString()


def _overlong(value: int, extra: int) -> bytes:
    """``value`` as a varint padded with ``extra`` continuation bytes (protobuf accepts up to 10)."""
    plain = bytearray(encode_varint(value))
    if extra:
        plain[-1] |= 0x80
        plain += b"\x80" * (extra - 1) + b"\x00"
    return bytes(plain)


def _field(number: int, wire_type: int, value: bytes, tag_extra: int = 0, length_extra: int = 0) -> bytes:
    tag = _overlong(number << 3 | wire_type, tag_extra)
    if wire_type == 2:
        return tag + _overlong(len(value), length_extra) + value
    return tag + value


_BYTES = st.binary(max_size=300)
_RECORD_FIELD = st.one_of(
    st.builds(lambda v: _field(1, 2, v), _BYTES),
    st.builds(lambda v: _field(2, 2, v), st.binary(min_size=64, max_size=64) | _BYTES),
    st.builds(lambda n: _field(n, 0, encode_varint(7)), st.integers(3, 40)),
    st.builds(lambda n, v: _field(n, 5, v), st.integers(3, 40), st.binary(min_size=4, max_size=4)),
)
_RECORD = st.lists(_RECORD_FIELD, max_size=5).map(b"".join)
_TOP_FIELD = st.one_of(
    st.builds(lambda r, t, n: _field(2, 2, r, t, n), _RECORD, st.integers(0, 2), st.integers(0, 2)),
    st.builds(lambda n, v: _field(n, 2, v), st.integers(3, 300), _BYTES),
    st.builds(lambda n: _field(n, 0, _overlong(5, 2)), st.integers(3, 300)),
    st.builds(lambda n, v: _field(n, 1, v), st.integers(3, 300), st.binary(min_size=8, max_size=8)),
)


@settings(max_examples=300, deadline=None)
@given(
    fields=st.lists(_TOP_FIELD, max_size=40),
    header_at=st.integers(0, 40),
    records_per_chunk=st.sampled_from([1, 2, 3, 4096]),
    keep=st.booleans(),
)
def test_chunks_give_the_records_of_the_whole_parse(
    fields: list[bytes], header_at: int, records_per_chunk: int, keep: bool
) -> None:
    fields.insert(min(header_at, len(fields)), _field(1, 2, HEADER))
    body = b"".join(fields)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(segment, "CHUNK_RECORDS", records_per_chunk)
        patch.setattr(segment, "KEEP_PARSED_BYTES", 1 << 30 if keep else 0)
        try:
            whole = archive_pb2.Segment.FromString(body)
        except DecodeError:
            with pytest.raises(MalformedObjectError):
                segment.decode_segment(frame(SEGMENT_MAGIC, body))
            return
        decoded = segment.decode_segment(frame(SEGMENT_MAGIC, body))
        expected = [(r.entry, r.signature) for r in whole.records]
        assert [(r.entry, r.signature) for r in decoded.records] == expected
        assert [(decoded.records[i].entry, decoded.records[i].signature) for i in range(len(expected))] == expected
        if expected:
            assert (decoded.records[-1].entry, decoded.records[-1].signature) == expected[-1]
        assert (decoded.format_version, decoded.record_count) == (FORMAT_VERSION, 1)


def test_a_record_that_runs_past_the_end_is_refused() -> None:
    body = _field(1, 2, HEADER) + _field(2, 2, _field(1, 2, b"x" * 200))
    with pytest.raises(MalformedObjectError, match="runs past its end"):
        segment.decode_segment(frame(SEGMENT_MAGIC, body[:-1]))


def test_more_records_than_the_format_allows_are_refused_before_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(segment, "MAX_SEGMENT_RECORDS", 3)
    body = _field(1, 2, HEADER) + _field(2, 2, b"") * 3
    assert len(segment.decode_segment(frame(SEGMENT_MAGIC, body)).records) == 3
    with pytest.raises(MalformedObjectError, match="more than 3 records"):
        segment.decode_segment(frame(SEGMENT_MAGIC, body + _field(2, 2, b"", 1)))
