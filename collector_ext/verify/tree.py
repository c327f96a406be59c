"""Checking a chain's Merkle tree against its signed checkpoint notes (FORMAT.md 16.6).

The verifier's chain walk hands every segment's records here in sequence order; this module hashes
each entry into the RFC 6962 tree and, when the tree reaches the size a checkpoint note states,
compares the roots. A note signed by a pinned key whose root is not the root of the stored entries
is a signed statement about another history: tampering. Notes the walk cannot reach (records
missing before them) are left unchecked: the missing records are reported by the walk.

Nothing here reads the archive: the caller passes the notes' bytes and the records. Hash tiles are
not checked here; they are an index for building proofs, and every proof is checked against a
signed note (FORMAT.md 16.5).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

from collector_ext.seal.entry import ENTRY_HEADER_SIZE, SEQUENCE_SLICE
from collector_ext.seal.layout import NoteKey
from collector_ext.seal.merkle import CompactRange, leaf_hash
from collector_ext.seal.note import (
    ED25519_TYPE,
    NoteError,
    TreeHead,
    key_hint,
    parse_note,
    parse_tree_head,
)
from collector_ext.seal.segment import SealedRecord
from collector_ext.verify.batch import consecutive_from, entries_of, extend_range, leaf_hashes
from collector_ext.verify.findings import Finding, FindingKind, Severity
from collector_ext.verify.keys import Keyring

# How many leaf hashes after a resumed tree size are kept for the level-0 tile a consistency proof
# from that size needs (FORMAT.md 13.9 step 6).
TILE_LEAVES = 256


@dataclass(frozen=True, slots=True)
class VerifiedNote:
    """A checkpoint note whose signature and root were checked against the entries."""

    object_key: str
    checkpoint_number: int
    size: int
    root: bytes
    note: bytes


@dataclass(frozen=True, slots=True)
class _PendingNote:
    key: NoteKey
    head: TreeHead
    data: bytes


class TreeChecker:
    """One chain's tree: fed records in order, checks the notes' roots as it reaches their sizes."""

    def __init__(self, chain_id_hex: str, keyring: Keyring) -> None:
        self.chain_id_hex = chain_id_hex
        self._keyring = keyring
        self._tree = CompactRange()
        self._pending: list[tuple[int, int, _PendingNote]] = []  # (size, tie-break, note), sorted
        self._counter = 0
        self.findings: list[Finding] = []
        self._root_mismatches: list[Finding] = []
        self.newest: VerifiedNote | None = None
        self.notes = 0
        self.resumed_at = 0
        self.first_leaves: list[bytes] = []  # the first TILE_LEAVES leaves after a resumed size
        self.newest_tree: CompactRange | None = None  # the tree at ``newest``'s size
        self.remembered: CompactRange | None = None  # the tree an earlier run verified
        # An incremental run without a remembered tree cannot compute roots: notes are then only
        # authenticated (FORMAT.md 13.9 step 6).
        self._blind = False

    @property
    def size(self) -> int:
        return self._tree.size

    def _report(self, kind: FindingKind, severity: Severity, message: str, key: NoteKey, size: int | None) -> None:
        self.findings.append(
            Finding(
                kind,
                severity,
                message,
                self.chain_id_hex,
                None if size is None else max(size - 1, 0),
                None,
                key.key,
            )
        )

    def resume(self, tree: CompactRange | None) -> None:
        """Continue from a tree already verified (an incremental run, FORMAT.md 13.9); None: the
        tree at the resume point is not known, so roots are not compared."""
        if tree is None:
            self._blind = True
            return
        self._tree = tree
        self.resumed_at = tree.size
        self.remembered = tree

    def add_note(self, key: NoteKey, data: bytes) -> None:
        """Authenticate a note (FORMAT.md 16.6 steps 1-4); its root is compared once the walk reaches it."""
        self.notes += 1
        try:
            note = parse_note(data)
            head = parse_tree_head(note.text)
        except NoteError as exc:
            self._report(
                FindingKind.MALFORMED_OBJECT, Severity.TAMPERING, f"checkpoint note: {exc}", key, key.last_sequence + 1
            )
            return
        # Step 2: the note names this chain (its origin ends with the chain id) and the size its key says.
        if not head.origin.endswith("/" + self.chain_id_hex) or head.size != key.last_sequence + 1:
            self._report(
                FindingKind.TREE_MISMATCH,
                Severity.TAMPERING,
                f"checkpoint note states origin {head.origin!r} and tree size {head.size}, not chain "
                f"{self.chain_id_hex} at size {key.last_sequence + 1} as its key says",
                key,
                key.last_sequence + 1,
            )
            return
        # Step 3: a signature by a pinned key under the origin as key name (other signatures, such as
        # witness cosignatures, are ignored here).
        signed = False
        for pinned in self._keyring:
            hint = key_hint(head.origin, ED25519_TYPE, pinned.key.raw)
            for signature in note.signatures:
                if signature.name != head.origin or signature.key_hint != hint:
                    continue
                if not pinned.key.is_valid_signature(signature.signature, note.text):
                    self._report(
                        FindingKind.FORGED_CHECKPOINT,
                        Severity.TAMPERING,
                        f"checkpoint note signature by pinned key {pinned.key.key_id.hex()} does not verify",
                        key,
                        head.size,
                    )
                    return
                signed = True
        if not signed:
            self._report(
                FindingKind.UNKNOWN_KEY,
                Severity.TAMPERING,
                "checkpoint note is not signed by any pinned key under its origin",
                key,
                head.size,
            )
            return
        if self._blind or (head.size <= self._tree.size and head.size != self._tree.size):
            return  # before a resumed size (an earlier run checked it), or no tree to compare with
        self._counter += 1
        bisect.insort(self._pending, (head.size, self._counter, _PendingNote(key, head, data)))
        if head.size == self._tree.size:
            self._compare_reached()

    def add_records(self, records: Sequence[SealedRecord]) -> None:
        """The next records of the walk; those that continue the tree's sequence are hashed in (only
        while a note waits to be compared: a chain without notes costs the walk nothing)."""
        if self._blind or not self._pending:
            return
        entries = entries_of(records)
        start = self._tree.size
        if consecutive_from(entries, start):
            # The usual case: the records continue the tree. Hashed a segment at a time (verify.batch),
            # the tree extended up to each note's size in turn.
            leaves = leaf_hashes(entries)
            done = 0
            while self._pending and self._pending[0][0] <= start + len(leaves):
                reach = self._pending[0][0] - start
                self._extend(leaves[done:reach])
                done = reach
                self._compare_reached()
            self._extend(leaves[done:])
            return
        leaves = []
        for entry in entries:
            if len(entry) < ENTRY_HEADER_SIZE:
                continue
            sequence = int.from_bytes(entry[SEQUENCE_SLICE], "big")
            if sequence != self._tree.size + len(leaves):
                continue  # a duplicate or out-of-place record: the walk reports it
            leaves.append(leaf_hash(entry))
            if self._pending and self._pending[0][0] == self._tree.size + len(leaves):
                self._extend(leaves)
                leaves = []
                self._compare_reached()
        self._extend(leaves)

    def _extend(self, leaves: list[bytes]) -> None:
        if not leaves:
            return
        if self.resumed_at and len(self.first_leaves) < TILE_LEAVES:
            self.first_leaves += leaves[: TILE_LEAVES - len(self.first_leaves)]
        self._tree = extend_range(self._tree, leaves)

    def _compare_reached(self) -> None:
        size = self._tree.size
        while self._pending and self._pending[0][0] <= size:
            note_size, _, pending = self._pending.pop(0)
            if note_size != size:
                continue  # passed over: unreachable in order (cannot happen: sizes are compared as reached)
            root = self._tree.root()
            # Step 5: the note's root is the root of the stored entries 0 .. size - 1.
            if pending.head.root != root:
                self._root_mismatches.append(
                    Finding(
                        FindingKind.TREE_MISMATCH,
                        Severity.TAMPERING,
                        f"checkpoint note states tree root {pending.head.root.hex()} at size {size}, but the "
                        f"stored entries give {root.hex()}",
                        self.chain_id_hex,
                        size - 1,
                        None,
                        pending.key.key,
                    )
                )
                continue
            if self.newest is None or size >= self.newest.size:
                self.newest = VerifiedNote(pending.key.key, pending.key.checkpoint_number, size, root, pending.data)
                self.newest_tree = self._tree

    def finish(self, walk_findings: Sequence[Finding] = ()) -> list[Finding]:
        """The findings of the notes checked. A root that differs because the walk found entries
        changed, removed or added at or below the note's size is not reported again: those entries
        are the finding (FORMAT.md 16.6 step 5). Notes the walk never reached are not reported."""
        damaged = [
            f.first_sequence
            for f in walk_findings
            if f.severity in (Severity.TAMPERING, Severity.LOSS) and f.first_sequence is not None
        ]
        first_damage = min(damaged) if damaged else None
        kept = [
            f
            for f in self._root_mismatches
            if first_damage is None or f.first_sequence is None or f.first_sequence < first_damage
        ]
        return self.findings + kept
