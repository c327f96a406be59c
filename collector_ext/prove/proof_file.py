"""Proof files: one record (or a run of records) with its inclusion proof and a signed checkpoint note.

A proof of one record is a C2SP tlog-proof (``c2sp.org/tlog-proof@v1``): an ``extra`` line carrying
the record's entry bytes and record signature, the leaf ``index`` (the record's sequence number), the
RFC 6962 inclusion path, an empty line and the checkpoint note verbatim (FORMAT.md 16.7). A run of
records repeats the extra/index/path group once per record before the one note, under its own first
line, since tlog-proof holds one index per file.

Checking needs nothing but the file and the writer's public key; every check is named, so a bad file
is refused saying which check failed. This module reads and writes no files.
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from collector_ext.errors import DataError
from collector_ext.seal.entry import (
    ENTRY_HEADER_SIZE,
    SIGNATURE_SIZE,
    SUPPORTED_FORMAT_VERSIONS,
    decode_entry_header,
    entry_hash,
    record_signature_message,
)
from collector_ext.seal.framing import MAX_ENTRY_BYTES
from collector_ext.seal.keys import PublicKey
from collector_ext.seal.merkle import HASH_SIZE, check_inclusion, leaf_hash
from collector_ext.seal.note import NoteError, TreeHead, check_note_signature, parse_note, parse_tree_head

TLOG_PROOF_LINE = "c2sp.org/tlog-proof@v1"
RUN_PROOF_LINE = "collector-ext/tlog-proof-run@v1"
# The extra data of each record: this prefix, the entry's length (u32), the entry, its signature.
EXTRA_PREFIX = b"collector-ext/v1/proof-record\x00"
MAX_PROOF_RECORDS = 100_000
MAX_PATH = 63  # a tree of at most 2**63 leaves


class ProofFileError(DataError):
    """A proof file that does not hold; ``check`` names the check that failed (FORMAT.md 16.8)."""

    def __init__(self, check: str, problem: str) -> None:
        super().__init__(f"{check}: {problem}")
        self.check = check
        self.problem = problem


@dataclass(frozen=True, slots=True)
class RecordProof:
    """One record and its inclusion path in the note's tree."""

    index: int
    entry: bytes
    signature: bytes
    path: tuple[bytes, ...]


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

    @property
    def ok(self) -> bool:
        return not self.problems


def _extra(record: RecordProof) -> str:
    blob = EXTRA_PREFIX + struct.pack(">I", len(record.entry)) + record.entry + record.signature
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
    if not blob.startswith(EXTRA_PREFIX) or len(blob) < len(EXTRA_PREFIX) + 4:
        raise ProofFileError("format", f"record {index}: the extra data is not a collector-ext record")
    (length,) = struct.unpack_from(">I", blob, len(EXTRA_PREFIX))
    start = len(EXTRA_PREFIX) + 4
    if length > MAX_ENTRY_BYTES or len(blob) != start + length + SIGNATURE_SIZE:
        raise ProofFileError("format", f"record {index}: the extra data is truncated or too long")
    return RecordProof(index, blob[start : start + length], blob[start + length :], path)


def check_proof(data: bytes, public_key: PublicKey) -> ProofReport:
    """Check a proof file against the writer's public key (FORMAT.md 16.8). Never raises."""
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
    for record in proof.records:
        problems.extend(_check_record(record, tree, public_key))
    return ProofReport(proof.records, tree, tuple(problems))


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
    # Step 5: the record signature, by the pinned key.
    if header.key_id != public_key.key_id:
        return [
            ProofProblem(
                "record signature",
                f"the record names key id {header.key_id.hex()}, not the given key's {public_key.key_id.hex()}",
                index,
            )
        ]
    if not public_key.is_valid_signature(record.signature, record_signature_message(entry_hash(record.entry))):
        return [ProofProblem("record signature", "the record signature does not verify", index)]
    return []


def verify_proof(data: bytes, public_key: PublicKey) -> ProofReport:
    """Like ``check_proof``, raising ``ProofFileError`` (naming the first failed check) unless it holds."""
    report = check_proof(data, public_key)
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
