"""The C2SP tlog-witness protocol as pure functions: the add-checkpoint body and the witness's verdict.

A log POSTs ``<prefix>/add-checkpoint`` with ``old <size>``, the consistency-proof hashes (one base64
line each), an empty line and its signed checkpoint note. The witness answers with cosignature lines
(200) once it has checked that the note is signed by a log it trusts and extends, consistently, the
largest tree it cosigned for that origin. ``decide`` applies those checks in the order tlog-witness
gives them (proto/FORMAT.md 19.2) and returns the answer and the state to persist; it never reads or
writes anything, so the server (``server``) owns persistence and the compare-and-swap around it.

Not here: the HTTP server, the state file, the submitting client. Subtree cosignatures
(``sign-subtree``) are not implemented.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from collector_ext.errors import DataError
from collector_ext.seal.keys import PublicKey, Signer
from collector_ext.seal.merkle import EMPTY_ROOT, check_consistency
from collector_ext.seal.note import (
    MAX_NOTE_BYTES,
    Note,
    NoteError,
    check_note_signature,
    cosign,
    parse_note,
    parse_tree_head,
)

ADD_CHECKPOINT_PATH = "/add-checkpoint"
# tlog-witness: at most 63 proof lines (a tree of up to 2**63 leaves needs no more).
MAX_PROOF_HASHES = 63
MAX_REQUEST_BYTES = MAX_NOTE_BYTES + 64 * (MAX_PROOF_HASHES + 1)
SIZE_CONTENT_TYPE = "text/x.tlog.size"
COSIGNATURE_CONTENT_TYPE = "text/x.tlog.cosignature"  # any text type; C2SP names none for the 200 body


class AddCheckpointError(DataError):
    """An add-checkpoint body that does not parse (answered 400)."""


@dataclass(frozen=True, slots=True)
class AddCheckpoint:
    """One add-checkpoint request: the size the log believes the witness holds, the proof from that
    size to the checkpoint's, and the signed checkpoint note as sent."""

    old_size: int
    proof: tuple[bytes, ...]
    note: bytes

    def encode(self) -> bytes:
        lines = [f"old {self.old_size}\n".encode()]
        lines += [base64.b64encode(h) + b"\n" for h in self.proof]
        return b"".join(lines) + b"\n" + self.note


def _decimal(text: str, what: str) -> int:
    if not text.isascii() or not text.isdigit() or (text != "0" and text.startswith("0")) or len(text) > 20:
        raise AddCheckpointError(f"{what} {text!r} is not a decimal number without leading zeros")
    value = int(text)
    if value >= 1 << 63:
        raise AddCheckpointError(f"{what} {value} is beyond 2**63 - 1")
    return value


def parse_add_checkpoint(body: bytes) -> AddCheckpoint:
    """Split an add-checkpoint body into its parts (the note itself is parsed by ``decide``).

    Raises:
        AddCheckpointError: too large, no ``old`` line, a bad proof line, or no empty line before the note.
    """
    if len(body) > MAX_REQUEST_BYTES:
        raise AddCheckpointError(f"the body is larger than {MAX_REQUEST_BYTES} bytes")
    first, newline, rest = body.partition(b"\n")
    if not newline or not first.startswith(b"old "):
        raise AddCheckpointError("the body does not start with an 'old <size>' line")
    old_size = _decimal(first[4:].decode("ascii", errors="replace"), "old size")
    proof: list[bytes] = []
    while True:
        line, newline, rest = rest.partition(b"\n")
        if not newline:
            raise AddCheckpointError("no empty line between the proof and the checkpoint")
        if not line:
            break
        if len(proof) == MAX_PROOF_HASHES:
            raise AddCheckpointError(f"more than {MAX_PROOF_HASHES} consistency proof lines")
        try:
            digest = base64.b64decode(line, validate=True)
        except binascii.Error as exc:
            raise AddCheckpointError(f"proof line {len(proof) + 1} is not base64") from exc
        if len(digest) != 32:
            raise AddCheckpointError(f"proof line {len(proof) + 1} is not a 32-byte hash")
        proof.append(digest)
    return AddCheckpoint(old_size, tuple(proof), rest)


@dataclass(frozen=True, slots=True)
class TrustedLog:
    """A log the witness cosigns for: every origin starting with ``origin_prefix`` whose note is
    signed by ``public_key`` under ``key_name`` (None: under the origin itself, as a collector-ext
    writer names its key for each chain)."""

    origin_prefix: str
    public_key: PublicKey
    key_name: str | None = None

    def matches(self, origin: str) -> bool:
        return origin.startswith(self.origin_prefix)


@dataclass(frozen=True, slots=True)
class OriginState:
    """The largest tree the witness cosigned for one origin."""

    size: int
    root: bytes


@dataclass(frozen=True, slots=True)
class Verdict:
    """The answer to one request. ``new_state`` is set only on success: persist it, then answer.

    ``evidence`` is True for a request that a trusted log signed but that does not extend what the
    witness saw (a rollback or a fork): worth keeping in the witness's log.
    """

    status: int
    body: bytes
    content_type: str
    reason: str
    origin: str | None = None
    new_state: OriginState | None = None
    evidence: bool = False


def _text(status: int, reason: str, origin: str | None = None, *, evidence: bool = False) -> Verdict:
    return Verdict(status, (reason + "\n").encode(), "text/plain; charset=utf-8", reason, origin, evidence=evidence)


def _signed_by_trusted_log(note: Note, origin: str, logs: Sequence[TrustedLog]) -> Verdict | None:
    candidates = [log for log in logs if log.matches(origin)]
    if not candidates:
        return _text(404, f"origin {origin!r} is not configured at this witness", origin)
    problems = []
    for log in candidates:
        problem = check_note_signature(note, log.key_name or origin, log.public_key)
        if problem is None:
            return None
        problems.append(problem)
    return _text(403, f"the checkpoint is not signed by a key trusted for {origin!r}: {problems[0]}", origin)


def decide(
    request: AddCheckpoint,
    logs: Sequence[TrustedLog],
    states: Mapping[str, OriginState],
    *,
    witness_name: str,
    signer: Signer,
    now: int,
) -> Verdict:
    """The witness's answer to ``request`` given what it cosigned so far (tlog-witness, in order):
    404 origin not configured; 403 not signed by a trusted key; 400 old size beyond the checkpoint's;
    409 old size is not the size the witness holds (body: that size); 422 a size-0 checkpoint with
    another root, a proof where none may be, a proof that does not verify, or the same size with
    another root; 200 the cosignature line, with the state to persist. Never raises.
    """
    try:
        note = parse_note(request.note)
        head = parse_tree_head(note.text)
    except NoteError as exc:
        return _text(400, f"the checkpoint note does not parse: {exc}")
    origin = head.origin
    refused = _signed_by_trusted_log(note, origin, logs)
    if refused is not None:
        return refused
    held = states.get(origin)
    held_size = held.size if held is not None else 0
    if request.old_size > head.size:
        # Also a rollback when the witness holds a larger tree than the checkpoint's.
        return _text(
            400,
            f"old size {request.old_size} is beyond the checkpoint's size {head.size}",
            origin,
            evidence=head.size < held_size,
        )
    if request.old_size != held_size:
        # A log that lost track (or that rolled back) learns the size to prove from; a rollback below
        # what was cosigned can never satisfy this, since the proof must start at held_size.
        evidence = head.size < held_size
        reason = f"old size {request.old_size} is not {held_size}, the size this witness cosigned for {origin!r}"
        return Verdict(409, f"{held_size}\n".encode(), SIZE_CONTENT_TYPE, reason, origin, evidence=evidence)
    if head.size == 0 and head.root != EMPTY_ROOT:
        return _text(422, "a checkpoint of size 0 must have the empty tree's root", origin)
    old_root = held.root if held is not None else EMPTY_ROOT
    if held is None and request.proof:
        return _text(422, "a proof from size 0 must be empty", origin)
    check = check_consistency(held_size, head.size, old_root, head.root, request.proof)
    if not check.ok:
        # Signed by a trusted log, yet not an extension of what was cosigned: a fork.
        return _text(
            422,
            f"the checkpoint does not extend the one cosigned at size {held_size}: {check.problem}",
            origin,
            evidence=True,
        )
    line = cosign(note.text, witness_name, signer, now).line()
    return Verdict(200, line, COSIGNATURE_CONTENT_TYPE, "cosigned", origin, OriginState(head.size, head.root))


def origin_digest(origin: str) -> str:
    """The lowercase hex SHA-256 of an origin: its path element on the monitoring endpoint."""
    return hashlib.sha256(origin.encode()).hexdigest()
