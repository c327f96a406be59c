"""Proof files: one record (or a run of records) with its inclusion proof and a signed checkpoint note.

A proof of one record is a C2SP tlog-proof (``c2sp.org/tlog-proof@v1``): an ``extra`` line carrying
the record's entry bytes and record signature (and, for a record signed by a run key, the run key
entry that certifies that key, with its own inclusion path), the leaf ``index`` (the record's
sequence number), the RFC 6962 inclusion path, an empty line and the checkpoint note verbatim (FORMAT.md 16.7). A run of
records repeats the extra/index/path group once per record before the one note, under its own first
line, since tlog-proof holds one index per file.

Checking needs nothing but the file and the writer's public key; every check is named, so a bad file
is refused saying which check failed. This module reads and writes no files.
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from collector_ext.errors import DataError
from collector_ext.pb import archive_pb2
from collector_ext.seal.entry import (
    ENTRY_HEADER_SIZE,
    SIGNATURE_SIZE,
    SUPPORTED_FORMAT_VERSIONS,
    EntryKind,
    decode_entry_header,
    entry_hash,
    entry_payload,
    record_signature_message,
)
from collector_ext.seal.framing import MAX_ENTRY_BYTES
from collector_ext.seal.keys import PublicKey
from collector_ext.seal.merkle import HASH_SIZE, check_inclusion, leaf_hash
from collector_ext.seal.note import (
    Cosignature,
    NoteError,
    TreeHead,
    check_cosignature,
    check_note_signature,
    parse_note,
    parse_tree_head,
)
from collector_ext.verify.entries import run_key_of

TLOG_PROOF_LINE = "c2sp.org/tlog-proof@v1"
RUN_PROOF_LINE = "collector-ext/tlog-proof-run@v1"
# The extra data of each record: this prefix, the entry's length (u32), the entry, its signature.
EXTRA_PREFIX = b"collector-ext/v1/proof-record\x00"
# A record signed by a run key (FORMAT.md 7.7): as above, then the run key entry that certifies it
# (u64 sequence, u32 length, entry, signature, u8 path length, path hashes).
RUN_EXTRA_PREFIX = b"collector-ext/v2/proof-run-record\x00"
MAX_PROOF_RECORDS = 100_000
MAX_PATH = 63  # a tree of at most 2**63 leaves


class ProofFileError(DataError):
    """A proof file that does not hold; ``check`` names the check that failed (FORMAT.md 16.8)."""

    def __init__(self, check: str, problem: str) -> None:
        super().__init__(f"{check}: {problem}")
        self.check = check
        self.problem = problem


@dataclass(frozen=True, slots=True)
class Certification:
    """The run key entry (kind 5) that certifies the key a record is signed by, with its own
    inclusion path in the same tree (FORMAT.md 16.7)."""

    index: int
    entry: bytes
    signature: bytes
    path: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class RecordProof:
    """One record and its inclusion path in the note's tree; ``certification`` when a run key signed it."""

    index: int
    entry: bytes
    signature: bytes
    path: tuple[bytes, ...]
    certification: Certification | None = None


@dataclass(frozen=True, slots=True)
class ProofFile:
    records: tuple[RecordProof, ...]
    note: bytes


@dataclass(frozen=True, slots=True)
class ProofProblem:
    check: str
    message: str
    index: int | None = None


@dataclass(frozen=True, slots=True)
class ProofReport:
    """What checking a proof file found: the tree head it is checked against and every problem."""

    records: tuple[RecordProof, ...]
    tree: TreeHead | None
    problems: tuple[ProofProblem, ...]
    cosignatures: tuple[Cosignature, ...] = ()  # by the pinned witnesses, when any were pinned

    @property
    def ok(self) -> bool:
        return not self.problems


def _extra(record: RecordProof) -> str:
    cert = record.certification
    prefix = EXTRA_PREFIX if cert is None else RUN_EXTRA_PREFIX
    blob = prefix + struct.pack(">I", len(record.entry)) + record.entry + record.signature
    if cert is not None:
        blob += struct.pack(">QI", cert.index, len(cert.entry)) + cert.entry + cert.signature
        blob += bytes([len(cert.path)]) + b"".join(cert.path)
    return base64.b64encode(blob).decode("ascii")


def encode_proof(proof: ProofFile) -> bytes:
    """The proof file's bytes (a plain tlog-proof when it holds one record)."""
    if not proof.records:
        raise ValueError("a proof holds at least one record")
    lines = [TLOG_PROOF_LINE if len(proof.records) == 1 else RUN_PROOF_LINE]
    for record in proof.records:
        lines.append(f"extra {_extra(record)}")
        lines.append(f"index {record.index}")
        lines.extend(base64.b64encode(h).decode("ascii") for h in record.path)
    return ("\n".join(lines) + "\n\n").encode("ascii") + proof.note


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProofFileError("format", f"{what} is not base64") from exc


def parse_proof(data: bytes) -> ProofFile:
    """Split a proof file into records and note (nothing is verified here).

    Raises:
        ProofFileError: (check ``format``) the file is not a proof file, or is truncated or damaged.
    """
    split = data.find(b"\n\n")
    if split < 0:
        raise ProofFileError("format", "no empty line before the checkpoint note: the file is truncated or not a proof")
    try:
        head = data[:split].decode("ascii")
    except UnicodeDecodeError as exc:
        raise ProofFileError("format", "the proof lines are not ASCII") from exc
    lines = head.split("\n")
    if lines[0] not in (TLOG_PROOF_LINE, RUN_PROOF_LINE):
        raise ProofFileError("format", f"the first line is not {TLOG_PROOF_LINE!r}")
    records: list[RecordProof] = []
    position = 1
    while position < len(lines):
        if not lines[position].startswith("extra "):
            raise ProofFileError("format", f"line {position + 1}: expected 'extra <base64>'")
        blob = _b64(lines[position][len("extra ") :], f"line {position + 1}")
        if position + 1 >= len(lines) or not lines[position + 1].startswith("index "):
            raise ProofFileError("format", f"line {position + 2}: expected 'index <number>'")
        index_text = lines[position + 1][len("index ") :]
        if not index_text.isascii() or not index_text.isdigit() or (index_text != "0" and index_text[0] == "0"):
            raise ProofFileError("format", f"line {position + 2}: the index is not a decimal number")
        position += 2
        path: list[bytes] = []
        while position < len(lines) and not lines[position].startswith("extra "):
            node = _b64(lines[position], f"line {position + 1}")
            if len(node) != HASH_SIZE:
                raise ProofFileError("format", f"line {position + 1}: a path hash is {len(node)} bytes, not 32")
            path.append(node)
            position += 1
        if len(path) > MAX_PATH:
            raise ProofFileError("format", f"an inclusion path of {len(path)} hashes is longer than any tree needs")
        records.append(_record(blob, int(index_text), tuple(path)))
        if len(records) > MAX_PROOF_RECORDS:
            raise ProofFileError("format", f"more than {MAX_PROOF_RECORDS} records")
    if not records:
        raise ProofFileError("format", "the proof holds no record")
    if lines[0] == TLOG_PROOF_LINE and len(records) != 1:
        raise ProofFileError("format", f"a {TLOG_PROOF_LINE} file holds exactly one record")
    return ProofFile(tuple(records), data[split + 2 :])


def _record(blob: bytes, index: int, path: tuple[bytes, ...]) -> RecordProof:
    run = blob.startswith(RUN_EXTRA_PREFIX)
    prefix = RUN_EXTRA_PREFIX if run else EXTRA_PREFIX
    if not blob.startswith(prefix) or len(blob) < len(prefix) + 4:
        raise ProofFileError("format", f"record {index}: the extra data is not a collector-ext record")
    (length,) = struct.unpack_from(">I", blob, len(prefix))
    start = len(prefix) + 4
    end = start + length + SIGNATURE_SIZE
    if length > MAX_ENTRY_BYTES or len(blob) < end or (not run and len(blob) != end):
        raise ProofFileError("format", f"record {index}: the extra data is truncated or too long")
    entry, signature = blob[start : start + length], blob[start + length : end]
    if not run:
        return RecordProof(index, entry, signature, path)
    truncated = ProofFileError("format", f"record {index}: the run key certification is truncated or too long")
    if len(blob) < end + 12:
        raise truncated
    cert_index, cert_length = struct.unpack_from(">QI", blob, end)
    start = end + 12
    end = start + cert_length + SIGNATURE_SIZE
    if cert_length > MAX_ENTRY_BYTES or len(blob) < end + 1:
        raise truncated
    count = blob[end]
    if count > MAX_PATH or len(blob) != end + 1 + count * HASH_SIZE:
        raise truncated
    cert_path = tuple(blob[end + 1 + i * HASH_SIZE : end + 1 + (i + 1) * HASH_SIZE] for i in range(count))
    cert = Certification(cert_index, blob[start : start + cert_length], blob[start + cert_length : end], cert_path)
    return RecordProof(index, entry, signature, path, cert)


def check_proof(
    data: bytes,
    public_key: PublicKey,
    witnesses: Mapping[str, PublicKey] | None = None,
    witnesses_required: int = 0,
) -> ProofReport:
    """Check a proof file against the writer's public key (FORMAT.md 16.8). Never raises.

    ``witnesses`` (name -> cosigning key, from pinned vkeys): at least ``witnesses_required`` of them
    must have cosigned the note the proof carries (step 9).
    """
    try:
        proof = parse_proof(data)
    except ProofFileError as exc:
        return ProofReport((), None, (ProofProblem(exc.check, exc.problem),))
    try:
        note = parse_note(proof.note)
        tree = parse_tree_head(note.text)
    except NoteError as exc:
        return ProofReport(proof.records, None, (ProofProblem("checkpoint note", str(exc)),))
    # Step 2: the note is signed by the pinned key under its origin.
    problem = check_note_signature(note, tree.origin, public_key)
    if problem is not None:
        return ProofReport(proof.records, tree, (ProofProblem("checkpoint signature", problem),))
    problems: list[ProofProblem] = []
    # Step 9: k of the pinned witnesses cosigned this very note (FORMAT.md 19.2).
    cosignatures: list[Cosignature] = []
    refused: list[str] = []
    for name, key in sorted((witnesses or {}).items()):
        found = check_cosignature(note, name, key)
        if isinstance(found, Cosignature):
            cosignatures.append(found)
        else:
            refused.append(found)
    if len(cosignatures) < witnesses_required:
        problems.append(
            ProofProblem(
                "witnesses",
                f"{len(cosignatures)} of the pinned witnesses cosigned the checkpoint, {witnesses_required} "
                f"required: {'; '.join(refused)}",
            )
        )
    for record in proof.records:
        problems.extend(_check_record(record, tree, public_key))
    return ProofReport(proof.records, tree, tuple(problems), tuple(cosignatures))


def _check_record(record: RecordProof, tree: TreeHead, public_key: PublicKey) -> list[ProofProblem]:
    index = record.index
    if len(record.entry) < ENTRY_HEADER_SIZE:
        return [ProofProblem("record", "the entry is shorter than the 76-byte header", index)]
    header = decode_entry_header(record.entry) if record.entry[1] in SUPPORTED_FORMAT_VERSIONS else None
    if header is None or record.entry[0] != 0:
        return [ProofProblem("record", "the entry is of an unknown format version", index)]
    # Step 3: the record is the one the index names, in the chain the note is about.
    if header.sequence != index:
        return [ProofProblem("record", f"the entry has sequence number {header.sequence}, not {index}", index)]
    if not tree.origin.endswith("/" + header.chain_id.hex()):
        return [
            ProofProblem(
                "origin", f"the note is about {tree.origin!r}, not chain {header.chain_id.hex()} of the record", index
            )
        ]
    # Step 4: the inclusion path leads from the entry's leaf hash to the signed root.
    inclusion = check_inclusion(index, tree.size, leaf_hash(record.entry), record.path, tree.root)
    if not inclusion.ok:
        return [ProofProblem("inclusion", str(inclusion.problem), index)]
    # Step 7: the record signature, by the pinned key, or by a run key it certified (step 8).
    signer = public_key
    if record.certification is not None:
        run_key, problem = _certified_run_key(record, header.kind, tree, public_key)
        if run_key is None:
            return [ProofProblem("run key", problem, index)]
        signer = run_key
    if header.key_id != signer.key_id:
        hint = "" if record.certification is not None else " (a record signed by a run key needs its certification)"
        return [
            ProofProblem(
                "record signature",
                f"the record names key id {header.key_id.hex()}, not the given key's {signer.key_id.hex()}{hint}",
                index,
            )
        ]
    if not signer.is_valid_signature(record.signature, record_signature_message(entry_hash(record.entry))):
        return [ProofProblem("record signature", "the record signature does not verify", index)]
    return []


def _certified_run_key(
    record: RecordProof, kind: int, tree: TreeHead, public_key: PublicKey
) -> tuple[PublicKey | None, str]:
    """The run key the record's certification vouches for, if it holds (FORMAT.md 16.8 step 8)."""
    cert = record.certification
    assert cert is not None
    if len(cert.entry) < ENTRY_HEADER_SIZE or cert.entry[0] != 0 or cert.entry[1] != 2:
        return None, "the certification is not a format version 2 entry"
    header = decode_entry_header(cert.entry)
    record_chain = record.entry[4:20]
    # 8a: a run key entry of the record's chain, at the index it is proven at.
    if header.kind != EntryKind.RUN_KEY or header.sequence != cert.index:
        return None, f"the certification is not a run key entry at sequence {cert.index}"
    if header.chain_id != record_chain:
        return None, f"the run key was certified in chain {header.chain_id.hex()}, not the record's"
    # 8b: the record lies in the run: a log record after the certification. That no restart, rotation
    # or run key entry ends the run before it is not shown here: both are leaves of a tree the pinned
    # key signed, so only its holder could have put them there (16.8; `verify` checks the run's end).
    if kind != EntryKind.LOG_RECORD or cert.index >= record.index:
        return None, f"the record is not a log record after the run key entry at sequence {cert.index}"
    # 8c: the certification is in the same tree.
    inclusion = check_inclusion(cert.index, tree.size, leaf_hash(cert.entry), cert.path, tree.root)
    if not inclusion.ok:
        return None, f"the certification's inclusion: {inclusion.problem}"
    # 8d: signed by the pinned key.
    if header.key_id != public_key.key_id:
        return None, f"the certification names key id {header.key_id.hex()}, not the given key's"
    if not public_key.is_valid_signature(cert.signature, record_signature_message(entry_hash(cert.entry))):
        return None, "the certification's signature does not verify"
    # 8e: the run key proves possession of its private half.
    try:
        payload = archive_pb2.RunKeyPayload.FromString(entry_payload(cert.entry))
    except DecodeError:
        return None, "the run key payload does not parse"
    run_key, problem = run_key_of(payload, header.chain_id, header.sequence, header.key_id)
    if run_key is None:
        return None, problem
    return run_key.key, ""


def verify_proof(
    data: bytes,
    public_key: PublicKey,
    witnesses: Mapping[str, PublicKey] | None = None,
    witnesses_required: int = 0,
) -> ProofReport:
    """Like ``check_proof``, raising ``ProofFileError`` (naming the first failed check) unless it holds."""
    report = check_proof(data, public_key, witnesses, witnesses_required)
    if report.problems:
        first = report.problems[0]
        where = f"record {first.index}: " if first.index is not None else ""
        raise ProofFileError(first.check, where + first.message)
    return report


def proof_for(records: Sequence[tuple[int, bytes, bytes]], paths: Sequence[Sequence[bytes]], note: bytes) -> ProofFile:
    """A proof file from (index, entry, signature) triples, their paths and the note they lead to."""
    return ProofFile(
        tuple(
            RecordProof(index, entry, signature, tuple(path))
            for (index, entry, signature), path in zip(records, paths, strict=True)
        ),
        note,
    )
