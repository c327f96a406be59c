"""What outside parties said of a chain's checkpoint notes: witness cosignatures and RFC 3161 tokens.

Beside each checkpoint note the writer may store a witness's cosignature lines
(``.note.cosig.<witness tag>``) and a time-stamping authority's reply (``.note.tsr``), FORMAT.md 19.
``check_outside_evidence`` is pure: given the notes and those objects' bytes, the pinned witness keys
and TSA certificate, and the policy (k of n witnesses, a timestamp required), it returns findings
and never raises. ``read_outside_evidence`` is the thin adapter that reads the objects.

Rules (FORMAT.md 19.4): a stored cosignature by a pinned witness must verify over the note text
beside it, and a stored token must be for the note's exact bytes, signed by the pinned TSA
(tampering otherwise). With ``required_witnesses`` k, the chain's newest note older than the grace
period must lie within a tree that k distinct pinned witnesses cosigned: a larger, unwitnessed tree
means the witnesses never saw those records (an outage, or a log that showed them another history),
reported as loss. Cosignatures by witnesses that are not pinned are ignored, as C2SP requires.
With ``verify --witness-url``, the newest tree each witness holds for one of the archive's chains
must still be in the archive (``compare_witnessed``): a witness run by someone else makes a rolled
back or deleted chain visible without trusting the writer's storage.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from collector_ext.deliver.archive import ArchiveStore, ListedObject
from collector_ext.errors import UnreadableObjectError
from collector_ext.seal.keys import PublicKey
from collector_ext.seal.layout import NoteKey, WitnessObjectKey, witness_key_tag
from collector_ext.seal.note import (
    MAX_NOTE_BYTES,
    NoteError,
    add_signatures,
    check_cosignature,
    check_note_signature,
    parse_note,
    parse_tree_head,
)
from collector_ext.verify.findings import Finding, FindingKind, Severity
from collector_ext.witness.timestamp import MAX_REPLY_BYTES, TsaTrust, check_timestamp

MAX_COSIGNATURE_BYTES = 64 * 1024


@dataclass(frozen=True)
class WitnessPolicy:
    """What the auditor pinned and requires.

    ``witnesses``: name -> cosigning key (from vkeys). ``required_witnesses``: k of them must have
    cosigned the newest note older than ``grace_seconds`` (0: none required). ``tsa``: the pinned
    TSA; with ``require_timestamp`` that note must carry a valid token too.
    """

    witnesses: Mapping[str, PublicKey] = field(default_factory=dict)
    required_witnesses: int = 0
    tsa: TsaTrust | None = None
    require_timestamp: bool = False
    grace_seconds: float = 600.0

    @property
    def active(self) -> bool:
        return bool(self.witnesses) or self.tsa is not None or self.require_timestamp


@dataclass(frozen=True, slots=True)
class NoteEvidence:
    """One checkpoint note with what is stored beside it (bytes, or None when unreadable)."""

    key: NoteKey
    note: bytes | None
    cosignatures: Mapping[str, bytes]  # witness tag -> the object's bytes
    timestamp: bytes | None
    checkpoint_unix_nano: int | None = None  # its checkpoint's time, when known


def check_outside_evidence(
    chain_id_hex: str, notes: Sequence[NoteEvidence], policy: WitnessPolicy, now_unix_nano: int
) -> list[Finding]:
    """Findings about the cosignatures and tokens of one chain's notes (FORMAT.md 19.4). Never raises."""
    findings: list[Finding] = []
    by_tag = {witness_key_tag(name): (name, key) for name, key in policy.witnesses.items()}
    witnessed: list[tuple[int, int, tuple[str, ...]]] = []  # (number, size, witness names)
    stamped: dict[int, datetime.datetime] = {}
    sizes: dict[int, int] = {}
    for evidence in notes:
        number, where = evidence.key.checkpoint_number, evidence.key.key
        if evidence.note is None:
            continue
        try:
            note = parse_note(evidence.note)
            size = parse_tree_head(note.text).size
        except NoteError:
            continue  # the tree check reports a note that does not parse
        sizes[number] = size
        names: list[str] = []
        for tag, data in sorted(evidence.cosignatures.items()):
            pinned = by_tag.get(tag)
            if pinned is None:
                continue  # a witness the auditor did not pin: ignored
            name, key = pinned
            try:
                lines = [line for line in data.split(b"\n") if line]
                cosigned = parse_note(add_signatures(evidence.note, lines))
            except NoteError as exc:
                found: object = f"the object does not hold signature lines ({exc.problem})"
            else:
                found = check_cosignature(cosigned, name, key)
            if isinstance(found, str):
                # FORMAT.md 19.4 step 2: a pinned witness's stored cosignature must verify.
                findings.append(
                    Finding(
                        FindingKind.BAD_COSIGNATURE,
                        Severity.TAMPERING,
                        f"the cosignature of pinned witness {name} beside checkpoint note {number} does not hold: "
                        f"{found} (the note or the cosignature was changed)",
                        chain_id_hex,
                        object_key=f"{where}.cosig.{tag}",
                    )
                )
            else:
                names.append(name)
        if names:
            witnessed.append((number, size, tuple(names)))
        if evidence.timestamp is not None and policy.tsa is not None:
            # FORMAT.md 19.4 step 3: a token for the note's exact bytes, by the pinned TSA.
            report = check_timestamp(evidence.timestamp, evidence.note, policy.tsa)
            if report.ok and report.gen_time is not None:
                stamped[number] = report.gen_time
            else:
                findings.append(
                    Finding(
                        FindingKind.BAD_TIMESTAMP,
                        Severity.TAMPERING,
                        f"the time-stamp token beside checkpoint note {number} does not hold: {report.problem}",
                        chain_id_hex,
                        object_key=f"{where}.tsr",
                    )
                )
    target = _newest_due(notes, sizes, policy.grace_seconds, now_unix_nano)
    if target is None:
        return findings
    number, size = target.key.checkpoint_number, sizes[target.key.checkpoint_number]
    if policy.required_witnesses:
        quorum = [(n, s, names) for n, s, names in witnessed if len(names) >= policy.required_witnesses]
        covered = max((s for _, s, _ in quorum), default=0)
        if covered < size:
            # FORMAT.md 19.4 step 4: records the required witnesses never vouched for.
            findings.append(
                Finding(
                    FindingKind.UNWITNESSED_CHECKPOINT,
                    Severity.LOSS,
                    f"checkpoint note {number} (tree size {size}) is not within a tree cosigned by "
                    f"{policy.required_witnesses} of the {len(policy.witnesses)} pinned witnesses "
                    f"(largest such tree: {covered}): a witness outage, or a history the witnesses were not shown",
                    chain_id_hex,
                    covered,
                    size - 1,
                    target.key.key,
                )
            )
        else:
            best = max(quorum, key=lambda item: item[1])
            findings.append(
                Finding(
                    FindingKind.WITNESSED,
                    Severity.INFO,
                    f"checkpoint note {best[0]} (tree size {best[1]}) is cosigned by {len(best[2])} pinned witnesses "
                    f"({', '.join(sorted(best[2]))}); {policy.required_witnesses} required",
                    chain_id_hex,
                )
            )
    if policy.require_timestamp:
        stamped_sizes = [sizes[n] for n in stamped]
        if max(stamped_sizes, default=0) < size:
            findings.append(
                Finding(
                    FindingKind.MISSING_TIMESTAMP,
                    Severity.LOSS,
                    f"checkpoint note {number} (tree size {size}) is not within a tree with a valid time-stamp "
                    "token from the pinned TSA",
                    chain_id_hex,
                    object_key=target.key.key,
                )
            )
        else:
            newest = max(stamped, key=lambda n: (sizes[n], n))
            findings.append(
                Finding(
                    FindingKind.TIMESTAMPED,
                    Severity.INFO,
                    f"checkpoint note {newest} (tree size {sizes[newest]}) was time-stamped by the pinned TSA at "
                    f"{stamped[newest].isoformat()}",
                    chain_id_hex,
                )
            )
    return findings


def _newest_due(
    notes: Sequence[NoteEvidence], sizes: Mapping[int, int], grace_seconds: float, now_unix_nano: int
) -> NoteEvidence | None:
    """The newest readable note whose checkpoint is older than the grace period (one of unknown age
    counts as old)."""
    limit = now_unix_nano - int(grace_seconds * 1e9)
    for evidence in sorted(notes, key=lambda e: e.key.checkpoint_number, reverse=True):
        if evidence.key.checkpoint_number not in sizes:
            continue
        if evidence.checkpoint_unix_nano is None or evidence.checkpoint_unix_nano <= limit:
            return evidence
    return None


async def _get(store: ArchiveStore, listed: ListedObject, limit: int) -> bytes | None:
    if listed.problem or listed.size > limit:
        return None
    try:
        return await store.get(listed.key, limit)
    except UnreadableObjectError:
        return None


async def read_outside_evidence(
    store: ArchiveStore,
    notes: Sequence[tuple[NoteKey, ListedObject]],
    objects: Sequence[tuple[WitnessObjectKey, ListedObject]],
    checkpoint_times: Mapping[int, int],
) -> list[NoteEvidence]:
    """Read each note that has cosignatures or a token beside it, and the newest notes (the policy's
    targets), with those objects. ``checkpoint_times``: checkpoint number -> its time, where known.

    Raises:
        ArchiveUnavailableError: the store cannot be read now.
    """
    beside: dict[str, list[tuple[WitnessObjectKey, ListedObject]]] = {}
    for object_key, object_listed in objects:
        beside.setdefault(object_key.note_key, []).append((object_key, object_listed))
    ordered = sorted(notes, key=lambda item: item[0].checkpoint_number)
    wanted = {key.key for key, _ in ordered[-64:]} | set(beside)
    evidence = []
    for key, listed in ordered:
        if key.key not in wanted:
            continue
        note = await _get(store, listed, MAX_NOTE_BYTES)
        cosignatures: dict[str, bytes] = {}
        timestamp = None
        for object_key, object_listed in beside.get(key.key, []):
            if object_key.witness_tag is not None:
                data = await _get(store, object_listed, MAX_COSIGNATURE_BYTES)
                cosignatures[object_key.witness_tag] = data if data is not None else b"unreadable"
            else:
                timestamp = await _get(store, object_listed, MAX_REPLY_BYTES)
                timestamp = timestamp if timestamp is not None else b""
        evidence.append(NoteEvidence(key, note, cosignatures, timestamp, checkpoint_times.get(key.checkpoint_number)))
    return evidence


@dataclass(frozen=True, slots=True)
class WitnessedHead:
    """A tree a pinned witness cosigned for one of this archive's chains, as the witness holds it."""

    chain_id_hex: str
    origin: str
    size: int
    text: bytes
    witnesses: tuple[str, ...]


def authenticate_witnessed(
    notes: Sequence[bytes], policy: WitnessPolicy, log_keys: Sequence[PublicKey]
) -> list[WitnessedHead]:
    """The notes a witness served (``verify --witness-url``) that are signed by a pinned log key
    under their origin (FORMAT.md 16.4) and cosigned by a pinned witness; others are dropped, since
    nothing about them can be trusted. Never raises."""
    heads = []
    for data in notes:
        try:
            note = parse_note(data)
            head = parse_tree_head(note.text)
        except NoteError:
            continue
        chain_id_hex = head.origin.rsplit("/", 1)[-1]
        if len(chain_id_hex) != 32 or any(c not in "0123456789abcdef" for c in chain_id_hex):
            continue
        if not any(check_note_signature(note, head.origin, key) is None for key in log_keys):
            continue
        names = tuple(
            sorted(
                name
                for name, key in policy.witnesses.items()
                if not isinstance(check_cosignature(note, name, key), str)
            )
        )
        if names:
            heads.append(WitnessedHead(chain_id_hex, head.origin, head.size, note.text, names))
    return heads


def compare_witnessed(
    head: WitnessedHead,
    *,
    chain_listed: bool,
    archive_text: bytes | None,
    newest_size: int | None,
    remembered_size: int | None,
) -> Finding | None:
    """Does the archive still hold the tree a pinned witness cosigned (FORMAT.md 19.4 step 5)?

    ``archive_text``: the text of the archive's note of the witnessed size (None: there is none);
    ``newest_size``: the largest tree size of the chain's notes that were listed; ``remembered_size``:
    the tree size an earlier run verified (``--state``), below which notes are not listed again.
    """
    who = ", ".join(head.witnesses)
    if not chain_listed:
        problem = "the chain is not in the archive"
    elif remembered_size is not None and head.size <= remembered_size:
        return None  # verified by an earlier run against the same witnesses' evidence (13.9)
    elif archive_text is None:
        newest = "none" if newest_size is None else str(newest_size)
        problem = f"the archive has no checkpoint note of that size (its newest listed: {newest})"
    elif archive_text != head.text:
        problem = "the archive's note of that size has another root"
    else:
        return None
    return Finding(
        FindingKind.WITNESS_ROLLBACK,
        Severity.TAMPERING,
        f"pinned witness {who} cosigned tree size {head.size} of this chain, but {problem}: the archive was "
        "rolled back or replaced after the witness saw it",
        head.chain_id_hex,
        None if head.size == 0 else head.size - 1,
    )
