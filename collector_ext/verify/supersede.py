"""Relations between chains: a new chain whose genesis names the chain it supersedes.

A writer that lost its local state cannot continue its chain, so it starts a new one whose genesis
names the old chain and where the writer saw it end (proto/FORMAT.md, "GenesisPayload"). Each chain
is checked on its own by ``verify.links``; only after all of them are checked can the verifier hold
the new chain's claim against what the archive has of the old one:

- the old chain's tail after its newest checkpoint is explained (its writer stopped before writing
  the next checkpoint and a successor took over), so its ``uncovered-tail`` becomes a note;
- records of the old chain beyond where the successor saw it end were written after the takeover:
  two writers believed they owned one writer id (``written-after-superseded``, a warning);
- an old chain that is not in the archive at all was deleted as a whole (``superseded-chain-missing``:
  tampering when the successor is version 2, whose writer looks only in its own archive). This is
  only meaningful when every chain of the archive was listed;
- the successor's genesis signs how far the old chain reached (its last sequence and, in version 2,
  that entry's hash) and how far its checkpoints covered (in version 2, the newest checkpoint's
  number and hash): it acts as a checkpoint for the old chain. An old chain that now ends earlier,
  whose checkpoints stop earlier, or whose head differs was cut (``superseded-chain-cut``), and
  records missing before that point are tampering, not loss.

``relate_archive`` holds each chain's archive name (version 2) against the archive being verified.

Pure: findings and summaries in, findings out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from collector_ext.verify.findings import ChainSummary, Finding, FindingKind, Severity, Supersession


def relate_chains(
    summaries: Sequence[ChainSummary], findings: Sequence[Finding], *, all_chains_listed: bool
) -> list[Finding]:
    """``findings`` adjusted by what successors vouch for (13.6), followed by the findings that
    relate one chain to another."""
    by_id = {summary.chain_id: summary for summary in summaries}
    successors: dict[str, list[ChainSummary]] = {}
    written_after: set[str] = set()
    vouched: dict[str, tuple[int, str, bool]] = {}  # old chain -> (last sequence, successor, head matched)
    related: list[Finding] = []
    for summary in summaries:
        old = summary.supersedes
        if old is None:
            continue
        previous = by_id.get(old.chain_id)
        if previous is None:
            if all_chains_listed:
                related.append(_missing(summary, old))
            continue
        successors.setdefault(old.chain_id, []).append(summary)
        related += _compare_claims(summary, old, previous)
        head_matched = bool(old.head_sha256) and previous.head_sha256 == old.head_sha256
        vouched[old.chain_id] = (old.last_sequence, summary.chain_id, head_matched)
        if previous.last_sequence is not None and previous.last_sequence > old.last_sequence:
            written_after.add(old.chain_id)
            related.append(
                Finding(
                    FindingKind.WRITTEN_AFTER_SUPERSEDED,
                    Severity.WARNING,
                    f"records after seq {old.last_sequence}, where chain {summary.chain_id} saw this chain end when "
                    "it took over: the old writer went on sealing after it was superseded (two instances "
                    "with one writer id?)",
                    old.chain_id,
                    old.last_sequence + 1,
                    previous.last_sequence,
                )
            )
    if not successors:
        return [*findings, *related]
    out: list[Finding] = []
    for finding in findings:
        newer = successors.get(finding.chain_id)
        claim = vouched.get(finding.chain_id)
        if newer is not None and finding.kind is FindingKind.UNCOVERED_TAIL:
            names = ", ".join(s.chain_id for s in newer)
            later = (
                f" (records it sealed after that: {FindingKind.WRITTEN_AFTER_SUPERSEDED.value})"
                if finding.chain_id in written_after
                else ""
            )
            proven = (
                f"; chain {claim[1]}'s genesis names the hash of seq {claim[0]}, which matches, so nothing of it "
                "is missing"
                if claim is not None and claim[2]
                else ""
            )
            finding = dataclasses.replace(
                finding,
                severity=Severity.INFO,
                message=f"records after the newest checkpoint, not covered by a checkpoint: the writer stopped "
                f"before its next checkpoint and was superseded by chain {names}{later}; each record's signature "
                f"was checked{proven}",
            )
        elif (
            claim is not None
            and finding.severity is Severity.LOSS
            and finding.last_sequence is not None
            and finding.last_sequence <= claim[0]
        ):
            # 13.6 step 1: the successor's signed genesis vouches that these records existed: not a crash.
            finding = dataclasses.replace(
                finding,
                severity=Severity.TAMPERING,
                message=f"{finding.message}; chain {claim[1]}'s signed genesis vouches that this chain reached "
                f"seq {claim[0]}, so they were removed",
            )
        out.append(finding)
    return [*out, *related]


def _missing(successor: ChainSummary, old: Supersession) -> Finding:
    """13.6 step 3."""
    # Version 2 writers look for the chain they supersede only in their own archive, so it must be
    # here; a version 1 successor may have found it elsewhere.
    severity = Severity.TAMPERING if old.format_version >= 2 else Severity.WARNING
    return Finding(
        FindingKind.SUPERSEDED_CHAIN_MISSING,
        severity,
        f"chain {successor.chain_id} supersedes chain {old.chain_id}, which is not in the archive: its writer "
        f"saw it up to seq {old.last_sequence}; it was removed as a whole"
        + ("" if old.format_version >= 2 else ", or is stored under another archive prefix"),
        successor.chain_id,
        0,
    )


def _compare_claims(successor: ChainSummary, old: Supersession, previous: ChainSummary) -> list[Finding]:
    """FORMAT.md 13.6 step 2: what the successor's genesis signs about the old chain must hold."""
    cuts: list[str] = []
    last = previous.last_sequence if previous.last_sequence is not None else -1
    covered = previous.covered_until if previous.covered_until is not None else -1
    if last < old.last_sequence:
        cuts.append(
            f"it ends at seq {last}, but chain {successor.chain_id}'s genesis says it reached {old.last_sequence}"
        )
    # In version 1, covered_until 0 cannot be told from "no checkpoint".
    if old.covered_until > covered and (old.format_version >= 2 or old.covered_until > 0):
        cuts.append(
            f"its valid checkpoints cover seq 0-{covered}, but chain {successor.chain_id}'s genesis says they "
            f"covered 0-{old.covered_until}"
        )
    if old.checkpoint_sha256:
        newest = previous.newest_checkpoint_number if previous.newest_checkpoint_number is not None else -1
        if newest < old.checkpoint_number:
            cuts.append(
                f"its newest valid checkpoint is number {newest}, but chain {successor.chain_id}'s genesis names "
                f"checkpoint {old.checkpoint_number}"
            )
        elif newest == old.checkpoint_number and previous.newest_checkpoint_sha256 != old.checkpoint_sha256:
            cuts.append(f"its checkpoint {newest} is not the one chain {successor.chain_id}'s genesis names")
    if old.head_sha256 and last == old.last_sequence and previous.head_sha256 not in ("", old.head_sha256):
        cuts.append(
            f"its entry at seq {last} does not hash to the head chain {successor.chain_id}'s genesis names for it"
        )
    return [
        Finding(
            FindingKind.SUPERSEDED_CHAIN_CUT,
            Severity.TAMPERING,
            f"the chain was changed after chain {successor.chain_id} superseded it: {cut}",
            old.chain_id,
            min(last + 1, old.last_sequence) if last < old.last_sequence else None,
            old.last_sequence if last < old.last_sequence else None,
        )
        for cut in cuts
    ]


def relate_archive(summaries: Sequence[ChainSummary], expected_archive_id: str | None) -> list[Finding]:
    """FORMAT.md 13.6a: every version 2 chain names the archive it was written to. With the archive
    known (the S3 URL verified, ``--archive-id``, or a remembered state), a chain naming another is
    a copy from elsewhere; without it, chains that disagree are shown."""
    named = [s for s in summaries if s.archive_id is not None]
    findings: list[Finding] = []
    if expected_archive_id is not None:
        for summary in named:
            if summary.archive_id != expected_archive_id:
                findings.append(
                    Finding(
                        FindingKind.FOREIGN_CHAIN,
                        Severity.TAMPERING,
                        f"the chain's genesis says it was written to archive {summary.archive_id!r}, not to this "
                        f"archive ({expected_archive_id!r}): it was copied here from elsewhere",
                        summary.chain_id,
                        0,
                    )
                )
        return findings
    names = sorted({s.archive_id or "" for s in named})
    if len(names) > 1:
        for summary in named:
            findings.append(
                Finding(
                    FindingKind.FOREIGN_CHAIN,
                    Severity.WARNING,
                    f"the chains here name {len(names)} different archives ({', '.join(map(repr, names))}); this "
                    f"one names {summary.archive_id!r}: pass --archive-id to say which archive this is",
                    summary.chain_id,
                    0,
                )
            )
    return findings
