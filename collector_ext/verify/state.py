"""What an auditor's earlier run verified (``verify --state FILE``, proto/FORMAT.md 13.9).

Nothing inside an archive can show that newer checkpoints once existed: deleting the newest
checkpoints together with the segments after the newest remaining one leaves a shorter, consistent
archive. A verifier that remembers what it saw can. The state holds, per chain, the newest
checkpoint verified (number, checkpoint hash, last sequence, head, the key the chain was bound to
there) and every chain id seen. The next run

- reports ``rollback`` when a remembered checkpoint is gone or changed, or the archive's history no
  longer extends it, and ``vanished-chain`` when a remembered chain is gone;
- checks only what is new: each chain resumes after its remembered checkpoint, so a daily audit of a
  year-old archive reads a day of data.

A chain's entry advances only when that run found no tampering or loss in it, so a finding is
reported again on every later run until someone deals with it.

Pure: bytes in and out. The caller reads and writes the file (atomically).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from collector_ext.errors import ConfigurationError
from collector_ext.seal.merkle import CompactRange
from collector_ext.verify.checkpoints import ResumePoint
from collector_ext.verify.findings import ChainSummary, Finding, FindingKind, Severity, Supersession
from collector_ext.verify.links import ChainStart

STATE_FORMAT = "collector-ext/verify-state/v1"


class StateFileError(ConfigurationError):
    """The state file is damaged, or belongs to another archive: never silently reset."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"--state {path}", problem)


@dataclass(frozen=True)
class RememberedChain:
    chain_id: str
    key_prefix: str  # what precedes "<chain>/" in the chain's object keys ("" at the archive root)
    format_version: int
    archive_id: str | None
    writer_id: str
    restart_marks: int
    supersedes: dict[str, Any] | None
    checkpoint: dict[str, Any] | None  # the newest verified checkpoint (ResumePoint fields, hex)
    first_seen_unix: int
    verified_unix: int


@dataclass(frozen=True)
class VerifierState:
    archive: str
    archive_id: str | None
    chains: dict[str, RememberedChain] = field(default_factory=dict)
    runs: int = 0

    def start_of(self, chain_id: str) -> ChainStart | None:
        """Where checking chain ``chain_id`` resumes, or None to check it from its genesis."""
        chain = self.chains.get(chain_id)
        if chain is None or chain.checkpoint is None:
            return None
        c = chain.checkpoint
        point = ResumePoint(
            checkpoint_number=c["number"],
            checkpoint_sha256=bytes.fromhex(c["sha256"]),
            last_sequence=c["last_sequence"],
            head_sha256=bytes.fromhex(c["head_sha256"]),
            key_id=bytes.fromhex(c["key_id"]),
            time_unix_nano=c["time_unix_nano"],
            final=c["final"],
            run_public_key=bytes.fromhex(c.get("run_public_key", "")),
            run_key_sequence=c.get("run_key_sequence", 0),
        )
        old = chain.supersedes
        return ChainStart(
            point=point,
            format_version=chain.format_version,
            archive_id=chain.archive_id,
            writer_id=chain.writer_id,
            supersedes=Supersession(**old) if old is not None else None,
            restart_marks=chain.restart_marks,
        )


def _fail(path: str, problem: str) -> StateFileError:
    return StateFileError(path, f"{problem}; it was not used. Restore it from a backup, or move it away to start over")


def load_state(data: bytes, path: str, archive: str) -> VerifierState:
    """Parse a state file written by ``dump_state`` for ``archive``.

    Raises:
        StateFileError: the file is damaged, of another format, or for another archive.
    """
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(path, f"is damaged (not JSON: {exc})") from exc
    if not isinstance(document, dict) or document.get("format") != STATE_FORMAT:
        raise _fail(path, f"is not a collector-ext verify state file (format {STATE_FORMAT})")
    if document.get("archive") != archive:
        raise StateFileError(
            path,
            f"was written for archive {document.get('archive')!r}, not {archive!r}: use one state file per archive",
        )
    try:
        chains = {
            chain_id: _chain(chain_id, entry) for chain_id, entry in _mapping(document["chains"], "chains").items()
        }
        archive_id = document["archive_id"]
        runs = document["runs"]
        if (archive_id is not None and not isinstance(archive_id, str)) or not isinstance(runs, int):
            raise ValueError("archive_id or runs")
    except (KeyError, TypeError, ValueError) as exc:
        raise _fail(path, f"is damaged ({exc})") from exc
    return VerifierState(archive=archive, archive_id=archive_id, chains=chains, runs=runs)


def _mapping(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{what} is not a mapping")
    return value


def _chain(chain_id: str, entry: Any) -> RememberedChain:
    entry = _mapping(entry, f"chain {chain_id}")
    if len(chain_id) != 32 or any(c not in "0123456789abcdef" for c in chain_id):
        raise ValueError(f"{chain_id!r} is not a chain id")
    checkpoint = entry["checkpoint"]
    if checkpoint is not None:
        checkpoint = _mapping(checkpoint, f"chain {chain_id} checkpoint")
        for name in ("sha256", "head_sha256"):
            if len(bytes.fromhex(checkpoint[name])) != 32:
                raise ValueError(f"chain {chain_id} checkpoint {name}")
        if len(bytes.fromhex(checkpoint["key_id"])) != 8:
            raise ValueError(f"chain {chain_id} checkpoint key_id")
        for name in ("number", "last_sequence", "time_unix_nano"):
            if not isinstance(checkpoint[name], int) or checkpoint[name] < 0:
                raise ValueError(f"chain {chain_id} checkpoint {name}")
        if not isinstance(checkpoint["final"], bool):
            raise ValueError(f"chain {chain_id} checkpoint final")
        if len(bytes.fromhex(checkpoint.get("run_public_key", ""))) not in (0, 32):
            raise ValueError(f"chain {chain_id} checkpoint run_public_key")
        run_sequence = checkpoint.get("run_key_sequence", 0)
        if not isinstance(run_sequence, int) or run_sequence < 0:
            raise ValueError(f"chain {chain_id} checkpoint run_key_sequence")
        if checkpoint.get("tree") is not None:
            remembered_tree(checkpoint, chain_id)  # raises ValueError when damaged
    supersedes = entry["supersedes"]
    if supersedes is not None:
        Supersession(**_mapping(supersedes, f"chain {chain_id} supersedes"))
    remembered = RememberedChain(
        chain_id=chain_id,
        key_prefix=str(entry["key_prefix"]),
        format_version=int(entry["format_version"]),
        archive_id=entry["archive_id"],
        writer_id=str(entry["writer_id"]),
        restart_marks=int(entry["restart_marks"]),
        supersedes=supersedes,
        checkpoint=checkpoint,
        first_seen_unix=int(entry["first_seen_unix"]),
        verified_unix=int(entry["verified_unix"]),
    )
    if remembered.format_version not in (0, 1, 2):
        raise ValueError(f"chain {chain_id} format_version")
    return remembered


def remembered_tree(checkpoint: Mapping[str, Any] | None, chain_id: str) -> CompactRange | None:
    """The chain's Merkle tree at the remembered checkpoint (FORMAT.md 13.9 step 6), if remembered.

    Raises:
        ValueError: the ``tree`` field is damaged (its nodes do not give its root, or its size is not
            the checkpoint's).
    """
    tree = checkpoint.get("tree") if checkpoint is not None else None
    if tree is None or checkpoint is None:
        return None
    tree = _mapping(tree, f"chain {chain_id} checkpoint tree")
    size = tree["size"]
    if not isinstance(size, int) or size != checkpoint["last_sequence"] + 1:
        raise ValueError(f"chain {chain_id} checkpoint tree size")
    nodes = tree["nodes"]
    if not isinstance(nodes, list) or not all(isinstance(n, str) and len(n) == 64 for n in nodes):
        raise ValueError(f"chain {chain_id} checkpoint tree nodes")
    compact = CompactRange(size, tuple(bytes.fromhex(n) for n in nodes))
    if compact.root().hex() != tree["root"]:
        raise ValueError(f"chain {chain_id} checkpoint tree root")
    return compact


def tree_entry(compact: CompactRange) -> dict[str, Any]:
    """The ``tree`` field remembered with a checkpoint: size, root and the compact range's nodes."""
    return {"size": compact.size, "root": compact.root().hex(), "nodes": [n.hex() for n in compact.nodes]}


def dump_state(state: VerifierState) -> bytes:
    document = {
        "format": STATE_FORMAT,
        "archive": state.archive,
        "archive_id": state.archive_id,
        "runs": state.runs,
        "chains": {chain_id: asdict(chain) for chain_id, chain in sorted(state.chains.items())},
    }
    return json.dumps(document, indent=1, sort_keys=True).encode() + b"\n"


def vanished_chains(state: VerifierState, present: set[str]) -> list[Finding]:
    """Remembered chains of which the archive now holds nothing."""
    return [
        Finding(
            FindingKind.VANISHED_CHAIN,
            Severity.TAMPERING,
            "a chain verified by an earlier run is not in the archive any more: every object of it was removed"
            + (
                f" (its newest verified checkpoint was number {chain.checkpoint['number']}, "
                f"covering seq 0-{chain.checkpoint['last_sequence']})"
                if chain.checkpoint is not None
                else ""
            ),
            chain_id,
        )
        for chain_id, chain in sorted(state.chains.items())
        if chain_id not in present
    ]


def rollback_finding(chain_id: str, remembered: RememberedChain, found: str, object_key: str) -> Finding:
    """The remembered newest checkpoint is gone or changed: the archive was rolled back."""
    checkpoint = remembered.checkpoint or {}
    return Finding(
        FindingKind.ROLLBACK,
        Severity.TAMPERING,
        f"checkpoint {checkpoint.get('number')} (covering seq 0-{checkpoint.get('last_sequence')}), verified by an "
        f"earlier run, {found}: the archive was rolled back or rewritten",
        chain_id,
        checkpoint.get("last_sequence"),
        None,
        object_key,
    )


def next_state(
    previous: VerifierState | None,
    archive: str,
    archive_id: str | None,
    summaries: Sequence[ChainSummary],
    resume_points: Mapping[str, ResumePoint | None],
    key_prefixes: Mapping[str, str],
    findings: Sequence[Finding],
    now_unix: int,
    trees: Mapping[str, CompactRange] | None = None,
) -> VerifierState:
    """The state after this run: chains without tampering or loss advance to their newest checkpoint;
    the others, and chains not seen now, keep what was remembered."""
    failed = {f.chain_id for f in findings if f.severity in (Severity.TAMPERING, Severity.LOSS)}
    chains = dict(previous.chains) if previous is not None else {}
    for summary in summaries:
        old = chains.get(summary.chain_id)
        if old is not None and summary.chain_id in failed:
            continue
        point = resume_points.get(summary.chain_id)
        if summary.chain_id in failed:
            point = None  # first seen with findings: remember the id only, check it whole next time
        checkpoint = (
            {
                "number": point.checkpoint_number,
                "sha256": point.checkpoint_sha256.hex(),
                "last_sequence": point.last_sequence,
                "head_sha256": point.head_sha256.hex(),
                "key_id": point.key_id.hex(),
                "time_unix_nano": point.time_unix_nano,
                "final": point.final,
                # Version 2 run keys (FORMAT.md 13.9): absent in state files of earlier verifiers.
                **(
                    {"run_public_key": point.run_public_key.hex(), "run_key_sequence": point.run_key_sequence}
                    if point.run_public_key
                    else {}
                ),
                # The tree at this checkpoint, when its note was verified (FORMAT.md 13.9 step 6).
                **(
                    {"tree": tree_entry(trees[summary.chain_id])}
                    if trees is not None
                    and summary.chain_id in trees
                    and trees[summary.chain_id].size == point.last_sequence + 1
                    else {}
                ),
            }
            if point is not None
            else (old.checkpoint if old is not None else None)
        )
        chains[summary.chain_id] = RememberedChain(
            chain_id=summary.chain_id,
            key_prefix=key_prefixes.get(summary.chain_id, old.key_prefix if old is not None else ""),
            format_version=summary.format_version,
            archive_id=summary.archive_id,
            writer_id=summary.writer_id,
            restart_marks=summary.restart_marks,
            supersedes=asdict(summary.supersedes) if summary.supersedes is not None else None,
            checkpoint=checkpoint,
            first_seen_unix=old.first_seen_unix if old is not None else now_unix,
            verified_unix=now_unix,
        )
    return VerifierState(
        archive=archive, archive_id=archive_id, chains=chains, runs=(previous.runs if previous else 0) + 1
    )
