"""RFC 3161 time-stamp tokens over checkpoint notes: the request, and the check of a reply.

A token says "a time-stamping authority saw these bytes' SHA-256 at this time". The sidecar asks for
one over each signed checkpoint note, exactly as stored, and stores the authority's whole reply
(``TimeStampResp``, DER) beside it (proto/FORMAT.md 19.3). The parsing and the cryptographic checks
are rfc3161-client's (Trail of Bits); this module decides what to ask, what to pin and what a
failure means. It does no I/O: ``tsa_client`` sends the request.
"""

from __future__ import annotations

import datetime
import hashlib
from dataclasses import dataclass

from cryptography import x509
from rfc3161_client import (
    HashAlgorithm,
    PKIStatus,
    TimestampRequestBuilder,
    TimeStampResponse,
    VerificationError,
    VerifierBuilder,
    decode_timestamp_response,
)

from collector_ext.errors import ConfigurationError, DataError

SHA256_OID = x509.ObjectIdentifier("2.16.840.1.101.3.4.2.1")
# A reply larger than this is not a time-stamp reply a verifier should parse (a token with a
# certificate chain is a few kilobytes).
MAX_REPLY_BYTES = 64 * 1024


class TimestampError(DataError):
    """A time-stamp reply that does not vouch for the bytes it was asked about."""


@dataclass(frozen=True, slots=True)
class TimestampRequest:
    """A DER ``TimeStampReq`` for SHA-256 of some bytes, with a random nonce and certReq set."""

    der: bytes
    nonce: int
    digest: bytes


@dataclass(frozen=True)
class TsaTrust:
    """What a token must chain to: the authority's own certificate, pinned, and its issuers.

    ``from_pem_bundle`` reads a PEM file whose first certificate is the TSA's and whose others are
    its issuers (the last one the root). A bundle of one self-signed certificate is its own root.
    """

    tsa_certificate: x509.Certificate
    intermediates: tuple[x509.Certificate, ...]
    roots: tuple[x509.Certificate, ...]

    @classmethod
    def from_pem_bundle(cls, data: bytes, source: str) -> TsaTrust:
        """Raises: ConfigurationError naming ``source`` when it holds no PEM certificate."""
        try:
            certificates = x509.load_pem_x509_certificates(data)
        except ValueError as exc:
            raise ConfigurationError(
                source, "holds no PEM certificate (give the TSA's certificate, then its issuers up to the root)"
            ) from exc
        tsa, issuers = certificates[0], certificates[1:]
        if not issuers:
            return cls(tsa, (), (tsa,))
        return cls(tsa, tuple(issuers[:-1]), (issuers[-1],))


@dataclass(frozen=True, slots=True)
class TimestampReport:
    """The outcome of checking one reply: ``problem`` is empty when it vouches for the bytes."""

    problem: str
    gen_time: datetime.datetime | None = None
    serial_number: int | None = None

    @property
    def ok(self) -> bool:
        return not self.problem


def timestamp_request(data: bytes) -> TimestampRequest:
    """The request to send for ``data`` (SHA-256; rfc3161-client defaults to SHA-512)."""
    request = (
        TimestampRequestBuilder()
        .data(data)
        .hash_algorithm(HashAlgorithm.SHA256)
        .nonce(nonce=True)
        .cert_request(cert_request=True)  # called without its argument it would turn certReq off
        .build()
    )
    nonce = request.nonce
    if nonce is None:  # pragma: no cover - the builder always draws one when asked to
        raise ValueError("rfc3161-client built a request without a nonce")
    return TimestampRequest(der=request.as_bytes(), nonce=nonce, digest=hashlib.sha256(data).digest())


def _decode(reply: bytes) -> TimeStampResponse | str:
    if len(reply) > MAX_REPLY_BYTES:
        return f"the reply is {len(reply)} bytes, more than the {MAX_REPLY_BYTES} a time-stamp reply may have"
    try:
        return decode_timestamp_response(reply)
    except ValueError as exc:
        return f"the reply is not a DER TimeStampResp ({exc})"


def check_reply_answers(reply: bytes, request: TimestampRequest) -> TimestampReport:
    """Does ``reply`` grant ``request`` (status, imprint, nonce)? Trust in the signer is not checked
    here: the sidecar may run without the TSA's certificate; verify always checks it. Never raises."""
    response = _decode(reply)
    if isinstance(response, str):
        return TimestampReport(response)
    if response.status not in (PKIStatus.GRANTED, PKIStatus.GRANTED_WITH_MODS):
        text = "; ".join(response.status_string) or "no status text"
        return TimestampReport(f"the TSA refused the request (PKIStatus {response.status}: {text})")
    info = response.tst_info
    if info.message_imprint.hash_algorithm != SHA256_OID or info.message_imprint.message != request.digest:
        return TimestampReport("the token is for other bytes than the ones sent")
    if info.nonce != request.nonce:
        return TimestampReport("the token does not echo the request's nonce (a replayed reply?)")
    return TimestampReport("", info.gen_time, info.serial_number)


def check_timestamp(reply: bytes, data: bytes, trust: TsaTrust) -> TimestampReport:
    """Does the stored ``reply`` vouch for ``data``, signed by the pinned TSA? Never raises.

    Checked (by rfc3161-client): status granted, the CMS signature and the chain to ``trust``'s
    roots at the token's time, exactly one signer whose certificate is the pinned one, the
    certificate's critical timeStamping key usage, and the imprint equal to SHA-256 of ``data``
    (proto/FORMAT.md 19.3). The imprint must be SHA-256, as the writer asks for.
    """
    response = _decode(reply)
    if isinstance(response, str):
        return TimestampReport(response)
    if response.status != PKIStatus.GRANTED:
        return TimestampReport(f"the reply does not grant a token (PKIStatus {response.status})")
    info = response.tst_info
    if info.message_imprint.hash_algorithm != SHA256_OID:
        return TimestampReport(
            f"the token's imprint uses {info.message_imprint.hash_algorithm.dotted_string}, not SHA-256"
        )
    if info.message_imprint.message != hashlib.sha256(data).digest():
        return TimestampReport("the token is for other bytes than this checkpoint note")
    builder = VerifierBuilder().tsa_certificate(trust.tsa_certificate)
    for certificate in trust.intermediates:
        builder = builder.add_intermediate_certificate(certificate)
    for certificate in trust.roots:
        builder = builder.add_root_certificate(certificate)
    try:
        builder.build().verify_message(response, data)
    except VerificationError as exc:
        return TimestampReport(f"the token is not signed by the pinned TSA certificate ({exc})")
    except ValueError as exc:
        return TimestampReport(f"the token cannot be checked ({exc})")
    return TimestampReport("", info.gen_time, info.serial_number)


def verify_timestamp(reply: bytes, data: bytes, trust: TsaTrust) -> datetime.datetime:
    """As ``check_timestamp``, raising when it finds a problem; returns the token's time.

    Raises:
        TimestampError: the reply does not vouch for ``data`` under ``trust``.
    """
    report = check_timestamp(reply, data, trust)
    if not report.ok or report.gen_time is None:
        raise TimestampError(report.problem or "the token has no time")
    return report.gen_time
