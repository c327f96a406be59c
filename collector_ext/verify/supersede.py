"""Relations between chains: a new chain whose genesis names the chain it supersedes.

A writer that lost its local state cannot continue its chain, so it starts a new one whose genesis
names the old chain and where the writer saw it end (proto/FORMAT.md, "GenesisPayload"). Each chain
is checked on its own by ``verify.check``; only after all of them are checked can the verifier hold
the new chain's claim against what the archive has of the old one:

- the old chain's tail after its newest checkpoint is explained (its writer stopped before writing
  the next checkpoint and a successor took over), so its ``uncovered-tail`` becomes a note;
- records of the old chain beyond where the successor saw it end were written after the takeover:
  two writers believed they owned one writer id (``written-after-superseded``, a warning);
- an old chain that is not in the archive at all may have been deleted as a whole, which nothing
  else could reveal (``superseded-chain-missing``, a warning). This is only meaningful when every
  chain of the archive was listed; a verification restricted to some chains cannot tell.

Pure: findings and summaries in, findings out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from collector_ext.verify.findings import ChainSummary, Finding, FindingKind, Severity


def relate_chains(
    summaries: Sequence[ChainSummary], findings: Sequence[Finding], *, all_chains_listed: bool
) -> list[Finding]:
    """``findings`` with each superseded chain's uncovered tail turned into a note, followed by the
    findings that relate one chain to another."""
    by_id = {summary.chain_id: summary for summary in summaries}
    successors: dict[str, list[ChainSummary]] = {}
    written_after: set[str] = set()
    related: list[Finding] = []
    for summary in summaries:
        old = summary.supersedes
        if old is None:
            continue
        previous = by_id.get(old.chain_id)
        if previous is None:
            if all_chains_listed:
                related.append(
                    Finding(
                        FindingKind.SUPERSEDED_CHAIN_MISSING,
                        Severity.WARNING,
                        f"chain {summary.chain_id} supersedes chain {old.chain_id}, which is not in the archive: "
                        f"its writer saw it up to seq {old.last_sequence}; it was removed as a whole, or is "
                        "stored under another archive prefix",
                        summary.chain_id,
                        0,
                    )
                )
            continue
        successors.setdefault(old.chain_id, []).append(summary)
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
        if newer is not None and finding.kind is FindingKind.UNCOVERED_TAIL:
            names = ", ".join(s.chain_id for s in newer)
            later = (
                f" (records it sealed after that: {FindingKind.WRITTEN_AFTER_SUPERSEDED.value})"
                if finding.chain_id in written_after
                else ""
            )
            finding = dataclasses.replace(
                finding,
                severity=Severity.INFO,
                message=f"records after the newest checkpoint, not yet covered by a checkpoint: the writer stopped "
                f"before its next checkpoint and was superseded by chain {names}{later}; each record's signature "
                "verified",
            )
        out.append(finding)
    return [*out, *related]
