"""RFC 3161 tokens from a real TSA (`openssl ts -reply` behind a loopback HTTP server): granted and
checked; a token for other bytes, by another TSA, or a reply to another request is refused."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector_ext.errors import ConfigurationError
from collector_ext.witness.timestamp import (
    TimestampError,
    TsaTrust,
    check_reply_answers,
    check_timestamp,
    timestamp_request,
    verify_timestamp,
)
from collector_ext.witness.tsa_client import TsaClient, TsaUnavailableError
from tests.tsa_server import LocalTsa

NOTE = b"archive.example/prod/chain\n12\nq2b0c0VvQ29udGVudE5vdFJlYWxseUFSb290SGFzaA==\n\n\xe2\x80\x94 archive sig\n"


@pytest.fixture
def tsa(tmp_path: Path) -> Iterator[LocalTsa]:
    with LocalTsa(tmp_path / "tsa") as server:
        yield server


def _timestamp(url: str, data: bytes) -> bytes:
    async def run() -> bytes:
        client = TsaClient(url, timeout_seconds=10)
        try:
            return await client.timestamp(data)
        finally:
            await client.close()

    return asyncio.run(asyncio.wait_for(run(), 30))


def test_token_from_the_tsa_checks_against_its_pinned_certificate(tsa: LocalTsa):
    reply = _timestamp(tsa.url, NOTE)
    trust = TsaTrust.from_pem_bundle(tsa.bundle.read_bytes(), "--tsa-cert")
    report = check_timestamp(reply, NOTE, trust)
    assert report.ok, report.problem
    assert report.gen_time is not None
    assert verify_timestamp(reply, NOTE, trust) == report.gen_time


def test_token_for_other_bytes_is_refused(tsa: LocalTsa):
    reply = _timestamp(tsa.url, NOTE)
    trust = TsaTrust.from_pem_bundle(tsa.bundle.read_bytes(), "--tsa-cert")
    report = check_timestamp(reply, NOTE.replace(b"12", b"13"), trust)
    assert "other bytes" in report.problem
    with pytest.raises(TimestampError, match="other bytes"):
        verify_timestamp(reply, NOTE + b"x", trust)


def test_token_by_another_tsa_is_refused(tsa: LocalTsa, tmp_path: Path):
    other = LocalTsa(tmp_path / "other", name="another TSA")
    reply = _timestamp(tsa.url, NOTE)
    report = check_timestamp(reply, NOTE, TsaTrust.from_pem_bundle(other.bundle.read_bytes(), "--tsa-cert"))
    assert not report.ok and "pinned TSA certificate" in report.problem
    # The right TSA certificate with another CA as root does not chain either.
    mixed = TsaTrust.from_pem_bundle(tsa.certificate.read_bytes() + other.ca.read_bytes(), "--tsa-cert")
    assert not check_timestamp(reply, NOTE, mixed).ok


def test_reply_to_another_request_is_not_taken(tsa: LocalTsa):
    first = timestamp_request(NOTE)
    reply = tsa.reply(first.der)
    assert check_reply_answers(reply, first).ok
    again = timestamp_request(NOTE)  # same bytes, a fresh nonce: a replayed reply is refused
    assert "nonce" in check_reply_answers(reply, again).problem
    assert "other bytes" in check_reply_answers(reply, timestamp_request(b"other")).problem


def test_garbage_and_truncated_replies_are_refused_without_raising(tsa: LocalTsa):
    trust = TsaTrust.from_pem_bundle(tsa.bundle.read_bytes(), "--tsa-cert")
    reply = _timestamp(tsa.url, NOTE)
    for bad in [b"", b"\x30\x03\x02\x01\x00", reply[: len(reply) // 2], b"\x00" * 70_000]:
        assert not check_timestamp(bad, NOTE, trust).ok


def test_tsa_outage_is_a_retryable_error_naming_the_setting(tsa: LocalTsa):
    tsa.failing = True
    with pytest.raises(TsaUnavailableError, match=r"checkpoint\.tsa_url.*503"):
        _timestamp(tsa.url, NOTE)
    with pytest.raises(TsaUnavailableError, match="cannot be reached"):
        _timestamp("http://127.0.0.1:9/", NOTE)


def test_a_bundle_without_certificates_names_the_option():
    with pytest.raises(ConfigurationError, match="--tsa-cert"):
        TsaTrust.from_pem_bundle(b"not a certificate", "--tsa-cert")
