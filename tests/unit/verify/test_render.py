"""The report as text and JSON: nothing the archive controls reaches a terminal raw."""

from __future__ import annotations

import json

import pytest

from collector_ext.verify.findings import (
    ChainSummary,
    Finding,
    FindingKind,
    Severity,
    Supersession,
    VerificationReport,
)
from collector_ext.verify.render import escape_controls, render_json, render_text

CHAIN = "000102030405060708090a0b0c0d0e0f"
# What an archive could put in a key or a payload field to draw on the auditor's terminal.
HOSTILE = (
    "\x1b]0;owned\x07"  # OSC: set the window title
    "\x1b[2K\rverdict: VERIFIED"  # CSI erase line, carriage return, a fake verdict
    "\x9b31m"  # C1 CSI
    "\u202egnp.exe"  # right-to-left override
    "\u2066x\u2069"  # isolates
    "\u2028\u2029"  # line and paragraph separators
    "\x7f\x00\x08\n"  # DEL, NUL, backspace, newline
)


def _is_safe_line(line: str) -> bool:
    return line.isprintable()


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("plain text, é 日本 ✓", "plain text, é 日本 ✓"),
        ("\x1b[31mred", "\\x1b[31mred"),
        ("\x1b]8;;http://x\x07link", "\\x1b]8;;http://x\\x07link"),
        ("a\rb\nc\td", "a\\rb\\nc\\td"),
        ("\x7f\x85\x9b", "\\x7f\\x85\\x9b"),
        ("\u202a\u202b\u202c\u202d\u202e", "\\u202a\\u202b\\u202c\\u202d\\u202e"),
        ("\u2066\u2067\u2068\u2069", "\\u2066\\u2067\\u2068\\u2069"),
        ("\u2028\u2029\u200e\u200f\u061c\ufeff", "\\u2028\\u2029\\u200e\\u200f\\u061c\\ufeff"),
        ("name-\udcff", "name-\\udcff"),  # a file name that is not UTF-8
        ("\U000e0041\U0010fffd", "\\U000e0041\\U0010fffd"),  # tag character, private use
        ("back\\slash", "back\\slash"),
    ],
)
def test_escape_controls(raw: str, shown: str) -> None:
    assert escape_controls(raw) == shown
    assert escape_controls(raw).isprintable()


def test_every_code_point_comes_out_printable() -> None:
    text = "".join(map(chr, range(0x110000)))
    escaped = escape_controls(text)
    assert escaped.isprintable()
    assert escaped.isascii() is False  # printable non-ASCII is kept as it is
    assert escape_controls(escaped) == escaped


def _report(text: str) -> VerificationReport:
    findings = (
        Finding(FindingKind.UNRECOGNISED_OBJECT, Severity.WARNING, "not in the layout", object_key=text),
        Finding(
            FindingKind.MALFORMED_OBJECT,
            Severity.TAMPERING,
            f"restart mark of writer {text!s}: bad",
            chain_id=CHAIN + text,
            first_sequence=3,
            object_key=f"{CHAIN}/segments/{text}",
        ),
        Finding(FindingKind.RESTART, Severity.INFO, f"writer {text} restarted: {text}", chain_id=CHAIN),
    )
    chain = ChainSummary(
        chain_id=CHAIN + text,
        records=10,
        last_sequence=9,
        covered_until=9,
        segments=1,
        checkpoints=1,
        newest_checkpoint_unix_nano=1_790_000_000_000_000_000,
        key_ids=("0011223344556677" + text,),
        supersedes=Supersession(
            chain_id="ff" * 16 + text, last_sequence=4, covered_until=4, reason=text, writer_id=text
        ),
        restart_marks=1,
    )
    return VerificationReport(
        findings=findings,
        chains=(chain,),
        objects_read=2,
        records_checked=10,
        signatures_checked=1,
        counts={"warning": 1, "tampering": 1, "info": 1},
    )


def test_text_output_escapes_everything_the_archive_controls() -> None:
    text = render_text(_report(HOSTILE), "s3://bucket/prefix")
    lines = text.split("\n")
    assert all(map(_is_safe_line, lines)), [line for line in lines if not _is_safe_line(line)]
    assert "\x1b" not in text and "\r" not in text and "\u202e" not in text
    # The fake verdict is shown inside its finding; the one real verdict line is the last.
    assert lines[-1] == "verdict: NOT VERIFIED (tampering or loss found)"
    assert [line for line in lines if line.startswith("verdict:")] == [lines[-1]]
    assert "\\x1b]0;owned\\x07\\x1b[2K\\rverdict: VERIFIED\\x9b31m\\u202egnp.exe" in text


def test_text_layout_is_unchanged_for_an_ordinary_report() -> None:
    text = render_text(_report("pod-0"), "/audit/copy")
    assert text.split("\n") == [
        "archive: /audit/copy",
        f"chain {CHAIN}pod-0 (format v?, open): 10 entries (seq 0-9), 1 segments, 1 checkpoints (checkpointed to seq 9, newest "
        f"2026-09-21T14:13:20Z), key ids 0011223344556677pod-0, restart marks: 1, supersedes chain {'ff' * 16}pod-0",
        "findings (2):",
        "  WARNING   unrecognised-object      object pod-0: not in the layout",
        f"  TAMPERING malformed-object         chain {CHAIN}pod-0, seq 3, object {CHAIN}/segments/pod-0: "
        "restart mark of writer pod-0: bad",
        "notes (1, not problems):",
        f"  INFO      restart                  chain {CHAIN}: writer pod-0 restarted: pod-0",
        "totals: 1 chains, 2 objects, 10 entries, 1 signatures checked; findings: 1 tampering, 0 loss, 1 warning, "
        "1 info",
        "verdict: NOT VERIFIED (tampering or loss found)",
    ]


def test_json_output_is_ascii_and_carries_the_exact_values() -> None:
    document = render_json(_report(HOSTILE), "s3://bucket/prefix")
    assert document.isascii()
    assert all(" " <= c <= "~" or c == "\n" for c in document)  # no control character, not even DEL
    parsed = json.loads(document)
    assert parsed["findings"][0]["object_key"] == HOSTILE
    assert parsed["chains"][0]["supersedes"]["writer_id"] == HOSTILE


def test_json_output_survives_a_name_that_is_not_utf8() -> None:
    document = render_json(_report("name-\udcff"), "/audit")
    assert document.isascii()
    assert "name-\\udcff" in document
