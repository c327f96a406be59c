"""Who submitted a log record: the ``Sender`` message sealed as field 6 of every LogPayload.

A receiver that authenticated a request (a bearer token, a verified client certificate, or just the
peer address it came from) describes the submitter with a ``Sender``; ``log_payloads`` appends its
encoding to every payload of the request, so the signature covers who sent each record
(proto/FORMAT.md 7.3 and 7.3a). The encoding is written by hand in canonical form (fields in
ascending order, empty fields omitted) so it is byte-for-byte reproducible from the document alone.

Pure: bytes and dataclasses in, bytes and dataclasses out. Authentication itself happens in
``collector_ext.receive.auth``; this module only describes its result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from collector_ext.errors import MalformedObjectError
from collector_ext.seal.wire import length_delimited, wire_fields

_SHA256_BYTES = 32
# Bounds a Sender field may reach (FORMAT.md 7.3a); a receiver never produces longer ones.
MAX_PEER_BYTES = 256
MAX_NAME_BYTES = 256
MAX_SUBJECT_BYTES = 4096


@dataclass(frozen=True, slots=True)
class Sender:
    """The authenticated submitter of a request.

    Attributes:
        peer: the client's address as the receiver saw it, ``"127.0.0.1:53422"`` or ``"[::1]:53422"``.
        token_name: the configured name of the bearer token that matched (never the token itself).
        certificate_subject: RFC 4514 subject of the verified client certificate.
        certificate_sha256: SHA-256 of the client certificate's DER encoding (32 bytes, or empty).
    """

    peer: str
    token_name: str | None = None
    certificate_subject: str | None = None
    certificate_sha256: bytes = b""

    def __post_init__(self) -> None:
        if len(self.peer.encode()) > MAX_PEER_BYTES:
            raise ValueError(f"a sender's peer is at most {MAX_PEER_BYTES} bytes")
        if self.token_name is not None and not 0 < len(self.token_name.encode()) <= MAX_NAME_BYTES:
            raise ValueError(f"a token name has 1 to {MAX_NAME_BYTES} bytes")
        if self.certificate_subject is not None and len(self.certificate_subject.encode()) > MAX_SUBJECT_BYTES:
            raise ValueError(f"a certificate subject is at most {MAX_SUBJECT_BYTES} bytes")
        if self.certificate_sha256 and len(self.certificate_sha256) != _SHA256_BYTES:
            raise ValueError("a certificate digest is 32 bytes (SHA-256)")

    def encode(self) -> bytes:
        """The canonical protobuf encoding of the ``Sender`` message (FORMAT.md 7.3a)."""
        return (
            length_delimited(1, self.peer.encode())
            + length_delimited(2, (self.token_name or "").encode())
            + length_delimited(3, (self.certificate_subject or "").encode())
            + length_delimited(4, self.certificate_sha256)
        )

    def describe(self) -> str:
        """One line for people (report column, Loki metadata): who, then from where.

        ``token:NAME cert:SUBJECT from PEER``, with the parts that are set; ``from PEER`` alone for
        a request that carried neither a token nor a certificate.
        """
        return _describe(self.peer, self.token_name, self.certificate_subject)


def _describe(peer: str, token_name: str | None, subject: str | None) -> str:
    parts = []
    if token_name:
        parts.append(f"token:{token_name}")
    if subject:
        parts.append(f"cert:{subject}")
    if peer:
        parts.append(f"from {peer}")
    return " ".join(parts)


class SenderFields(Protocol):
    """The parsed ``Sender`` message (``archive_pb2.Sender``), as readers of the archive hold it."""

    @property
    def peer(self) -> str: ...
    @property
    def token_name(self) -> str: ...
    @property
    def certificate_subject(self) -> str: ...


def describe_sender_message(message: SenderFields) -> str:
    """``Sender.describe()`` of a parsed message, without its bounds checks: archived bytes are
    shown as they were sealed."""
    return _describe(message.peer, message.token_name, message.certificate_subject)


def decode_sender(data: bytes | memoryview) -> Sender:
    """Parse a ``Sender`` message with proto3 semantics (unknown fields skipped, last value wins).

    Raises:
        MalformedObjectError: the bytes do not parse, a string is not UTF-8, or a field is out of
            its bounds.
    """
    peer = ""
    token_name: str | None = None
    subject: str | None = None
    digest = b""
    try:
        for number, value in wire_fields(memoryview(data)):
            if value is None:
                continue
            if number == 1:
                peer = bytes(value).decode()
            elif number == 2:
                token_name = bytes(value).decode() or None
            elif number == 3:
                subject = bytes(value).decode() or None
            elif number == 4:
                digest = bytes(value)
        return Sender(peer=peer, token_name=token_name, certificate_subject=subject, certificate_sha256=digest)
    except UnicodeDecodeError as exc:
        raise MalformedObjectError("sender: a string field is not UTF-8") from exc
    except ValueError as exc:
        raise MalformedObjectError(f"sender: {exc}") from exc


_SENDER_TAG = 6 << 3 | 2


def without_sender(payload: bytes) -> bytes:
    """A LogPayload's bytes with its top-level ``sender`` field (6) removed, for telling a resent
    record from a new one: a collector's resend arrives on a new connection, so only the sender's
    peer differs (FORMAT.md 10.1). Bytes that are not a sequence of length-delimited fields are
    returned unchanged."""
    offset, end = 0, len(payload)
    while offset < end:
        start = offset
        tag = payload[offset]
        if tag & 0x87 != 2:  # a multi-byte tag or another wire type: no field of LogPayload
            return payload
        offset += 1
        length = shift = 0
        while offset < end:
            byte = payload[offset]
            offset += 1
            length |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
        offset += length
        if tag == _SENDER_TAG:
            return payload[:start] + payload[offset:]
    return payload
