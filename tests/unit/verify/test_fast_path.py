"""The verifier's fast paths (a segment's clean run checked a segment at a time, its signatures as one
batch, the tree extended a level at a time) give the report the record-by-record walk gives, on clean
archives and on every mutation tests/fuzz_verify.py makes; and so does reading segments in chunks of a
few records, not kept, the way the largest segments are read."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector_ext.seal import segment
from collector_ext.seal.entry import ENTRY_HEADER_SIZE
from collector_ext.seal.keys import Ed25519Signer
from collector_ext.seal.layout import checkpoint_note_key, parse_checkpoint_key
from collector_ext.seal.merkle import CompactRange, leaf_hash
from collector_ext.seal.note import chain_origin, checkpoint_text, sign_note
from collector_ext.seal.segment import decode_segment, encode_segment
from collector_ext.verify import links, tree
from collector_ext.verify.findings import VerificationReport
from collector_ext.verify.run import VerifyOptions
from tests.archive_builder import build_archive, restart_mark
from tests.fuzz_verify import base_archives, make_case, verify_in_process
from tests.unit.verify.test_fuzz import HypothesisChooser

BASES = base_archives()


def _report(objects: dict[str, bytes], keys: Any, options: VerifyOptions) -> VerificationReport | str:
    outcome = verify_in_process(objects, keys, options)
    return outcome.report if outcome.report is not None else f"exit {outcome.exit_code}: {outcome.error}"


def _record_by_record(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(links.ChainChecker, "_clean_run", lambda self, chunks, verify_signatures, **_: None)
    monkeypatch.setattr(tree, "consecutive_from", lambda entries, first: False)


def _both_ways(objects: dict[str, bytes], keys: Any, options: VerifyOptions) -> tuple[Any, Any]:
    fast = _report(objects, keys, options)
    with pytest.MonkeyPatch.context() as patch:
        _record_by_record(patch)
        slow = _report(objects, keys, options)
    return fast, slow


def _with_notes(signer: Ed25519Signer, objects: dict[str, bytes], chain_id: bytes, archive_id: str) -> None:
    """A checkpoint note beside each checkpoint, as the writer stores them (FORMAT.md 16.4)."""
    origin = chain_origin(archive_id, chain_id)
    leaves = CompactRange()
    for key in sorted(k for k in objects if k.endswith(".cxseg")):
        leaves = leaves.extend([leaf_hash(r.entry) for r in decode_segment(objects[key]).records])
        for checkpoint in [k for k in objects if k.endswith(".cxckpt")]:
            parsed = parse_checkpoint_key(checkpoint)
            if parsed is not None and parsed.last_sequence + 1 == leaves.size:
                text = checkpoint_text(origin, leaves.size, leaves.root())
                note_key = checkpoint_note_key("", chain_id, parsed.checkpoint_number, parsed.last_sequence)
                objects[note_key] = sign_note(text, origin, signer)


@settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_archives_give_the_record_by_record_report(data: st.DataObject) -> None:
    case = make_case(BASES, HypothesisChooser(data))
    fast, slow = _both_ways(case.objects, case.base.keys, case.options)
    assert fast == slow, case.mutations


@settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), records_per_chunk=st.sampled_from([1, 2, 3, 5]), records_per_piece=st.sampled_from([1, 2]))
def test_mutated_archives_read_in_small_chunks_give_the_same_report(
    data: st.DataObject, records_per_chunk: int, records_per_piece: int
) -> None:
    # Chunks of a few records, parsed again on every pass, record-by-record walks that cross chunk
    # boundaries, and chunks that are not clean looked at again in pieces: what segments of the
    # largest size, and segments with a genesis or restart mark, go through, on small archives.
    case = make_case(BASES, HypothesisChooser(data))
    whole = _report(case.objects, case.base.keys, case.options)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(segment, "CHUNK_RECORDS", records_per_chunk)
        patch.setattr(segment, "KEEP_PARSED_BYTES", 0)
        patch.setattr(links, "CHUNK_RECORDS", records_per_chunk)
        patch.setattr(links, "PIECE_RECORDS", records_per_piece)
        chunked = _report(case.objects, case.base.keys, case.options)
    assert chunked == whole, case.mutations


@pytest.mark.parametrize("all_signatures", [False, True])
def test_a_clean_archive_with_notes_gives_the_same_report(signer: Ed25519Signer, all_signatures: bool) -> None:
    built = build_archive(signer, segments=6, per_segment=50)
    _with_notes(signer, built.objects, built.chain_id, "")
    keys = {signer.key_id: signer.public_key}
    fast, slow = _both_ways(built.objects, keys, VerifyOptions(check_all_signatures=all_signatures))
    assert isinstance(fast, VerificationReport) and fast.clean
    assert fast == slow
    assert fast.signatures_checked == (6 * 50 + 6 if all_signatures else slow.signatures_checked)


@pytest.mark.parametrize("all_signatures", [False, True])
@pytest.mark.parametrize(
    "change",
    ["flip-entry", "flip-signature", "flip-link", "short-entry", "swap-records", "drop-record", "wrong-note"],
)
def test_tampered_archives_with_notes_give_the_same_report(
    signer: Ed25519Signer, change: str, all_signatures: bool
) -> None:
    built = build_archive(signer, segments=4, per_segment=40)
    _with_notes(signer, built.objects, built.chain_id, "")
    key = built.segment_keys[2]
    segment = decode_segment(built.objects[key])
    entries = [r.entry for r in segment.records]
    signatures = [r.signature for r in segment.records]
    if change == "flip-entry":
        entries[7] = entries[7][:-1] + bytes([entries[7][-1] ^ 1])
    elif change == "flip-signature":
        signatures[7] = signatures[7][:-1] + bytes([signatures[7][-1] ^ 1])
    elif change == "flip-link":
        entries[7] = entries[7][:30] + bytes([entries[7][30] ^ 1]) + entries[7][31:]
    elif change == "short-entry":
        entries[7] = entries[7][: ENTRY_HEADER_SIZE - 1]
    elif change == "swap-records":
        entries[7], entries[8] = entries[8], entries[7]
        signatures[7], signatures[8] = signatures[8], signatures[7]
    elif change == "drop-record":
        del entries[7], signatures[7]
    if change == "wrong-note":
        note = next(
            k for k in built.objects if "/notes/" in k and k.endswith(f"{segment.first_sequence + 39:020d}.note")
        )
        origin = chain_origin("", built.chain_id)
        built.objects[note] = sign_note(checkpoint_text(origin, segment.first_sequence + 40, bytes(32)), origin, signer)
    else:
        built.objects[key] = encode_segment(
            chain_id=segment.chain_id,
            first_sequence=segment.first_sequence,
            created_unix_nano=segment.created_unix_nano,
            entries=entries,
            signatures=signatures,
            format_version=segment.format_version,
        )
    keys = {signer.key_id: signer.public_key}
    fast, slow = _both_ways(built.objects, keys, VerifyOptions(check_all_signatures=all_signatures))
    assert isinstance(fast, VerificationReport) and not fast.clean
    assert fast == slow


def test_an_authentic_segment_with_a_short_entry_is_not_accepted_whole(signer: Ed25519Signer) -> None:
    """A checkpoint may list a segment holding an entry too short for a header (only the key's holder
    can make one): the fast path does not accept it, so it gets the walk's finding."""
    built = build_archive(signer, segments=2, per_segment=10, checkpoints=False)
    key = built.segment_keys[1]
    segment = decode_segment(built.objects[key])
    entries = [r.entry for r in segment.records]
    entries[3] = entries[3][:70]
    built.objects[key] = encode_segment(
        chain_id=segment.chain_id,
        first_sequence=segment.first_sequence,
        created_unix_nano=segment.created_unix_nano,
        entries=entries,
        signatures=[r.signature for r in segment.records],
        format_version=segment.format_version,
    )
    keys = {signer.key_id: signer.public_key}
    fast, slow = _both_ways(built.objects, keys, VerifyOptions())
    assert fast == slow
    assert isinstance(fast, VerificationReport)
    assert "modified-record" in {f.kind.value for f in fast.findings}


def test_the_record_by_record_patch_reaches_the_walk(monkeypatch: pytest.MonkeyPatch, signer: Ed25519Signer) -> None:
    """The comparison above is not vacuous: with the patch, the record-by-record walk runs."""
    calls: list[int] = []
    original = links.ChainChecker._check_records

    def counting(self: links.ChainChecker, *args: Any, **kwargs: Any) -> None:
        calls.append(1)
        original(self, *args, **kwargs)

    _record_by_record(monkeypatch)
    monkeypatch.setattr(links.ChainChecker, "_check_records", counting)
    built = build_archive(signer, segments=3, per_segment=10)
    report = _report(built.objects, {signer.key_id: signer.public_key}, dataclasses.replace(VerifyOptions()))
    assert isinstance(report, VerificationReport) and report.clean
    assert len(calls) == 3


@pytest.mark.parametrize("records_per_chunk", [1, 2, 3])
def test_a_segment_clean_up_to_a_late_restart_mark_gives_the_same_report(
    signer: Ed25519Signer, records_per_chunk: int
) -> None:
    # The last segment's first chunks are clean; the restart mark and a modified record near its end
    # send the segment to the record-by-record walk, which takes those chunks as found.
    archive = build_archive(signer, segments=3, per_segment=10, special={27: restart_mark()})
    records = archive.segment_records(2)
    records[-1].signature = bytes(64)
    archive.rewrite_segment(2, records)
    options = VerifyOptions(check_all_signatures=True)
    whole, slow = _both_ways(archive.objects, {signer.key_id: signer.public_key}, options)
    assert whole == slow
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(segment, "CHUNK_RECORDS", records_per_chunk)
        patch.setattr(segment, "KEEP_PARSED_BYTES", 0)
        patch.setattr(links, "PIECE_RECORDS", 1)
        chunked = _report(archive.objects, {signer.key_id: signer.public_key}, options)
    assert chunked == whole
    assert isinstance(whole, VerificationReport)
    assert {f.kind.value for f in whole.findings} >= {"restart", "modified-record"}
