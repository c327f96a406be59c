"""``seal.wire.encode_varint`` gives the protobuf runtime's varint bytes for every value: around the
edges of its lookup table and of its three-byte shortcut, and for 64-bit values."""

from __future__ import annotations

from google.protobuf.internal.encoder import _VarintBytes
from hypothesis import given
from hypothesis import strategies as st

from collector_ext.seal.wire import encode_varint


def test_values_around_each_edge() -> None:
    edges = [0, 1 << 7, 1 << 14, 1 << 21, 1 << 28, 1 << 63]
    for edge in edges:
        for value in range(max(0, edge - 300), edge + 300):
            assert encode_varint(value) == _VarintBytes(value), value


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_any_64_bit_value(value: int) -> None:
    assert encode_varint(value) == _VarintBytes(value)
