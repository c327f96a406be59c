"""The HTML report: hostile archive strings stay text, the verdict leads, rows stream and are capped."""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser

import pytest

from collector_ext.report.html import VERDICT_BAD, VERDICT_OK, render_html
from collector_ext.report.model import (
    ChainBounds,
    ModelUsage,
    PeriodReport,
    ReportRow,
    SealPoint,
    Summary,
    UseSpan,
)
from collector_ext.verify.findings import Finding, FindingKind, Severity

NS = 1_000_000_000
SINCE = 1_767_225_600 * NS  # 2026-01-01T00:00:00Z
DAY = 86_400 * NS
UNTIL = SINCE + 3 * DAY
CHAIN = "00112233445566778899aabbccddeeff"
SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'
CONTROLS = "\x1b[2K\rverdict: VERIFIED\u202egnp.exe\x00\x07\u2028"
HOSTILE = SCRIPT + IMG + CONTROLS


def row(sequence: int, **fields: object) -> ReportRow:
    values: dict[str, object] = {
        "time_unix_nano": SINCE + sequence * 3_600 * NS + 123_000_000,
        "service": "ai-workflow",
        "event_name": "gen_ai.call",
        "severity": "INFO",
        "user": "alice",
        "model": "gpt-x",
        "operation": "chat",
        "input_tokens": 10,
        "output_tokens": 20,
        "body": f"record {sequence}",
        "trace_id": "0af7651916cd43dd8448eb211c80319c",
        "chain_id": CHAIN,
        "sequence": sequence,
        "entry_hash": f"{sequence:064x}",
        "sealed_unix_nano": SINCE + sequence * 3_600 * NS + 200_000_000,
    }
    values.update(fields)
    return ReportRow(**values)  # type: ignore[arg-type]


def report(*, verified: bool = True, findings: tuple[Finding, ...] = (), **changes: object) -> PeriodReport:
    values: dict[str, object] = {
        "archive": "s3://audit-bucket/logs/",
        "since_unix_nano": SINCE,
        "until_unix_nano": UNTIL,
        "late_seconds": 900.0,
        "filters": ("service=ai-workflow",),
        "generated_unix_nano": UNTIL + DAY,
        "verified": verified,
        "findings": findings,
        "chains": (
            ChainBounds(
                chain_id=CHAIN,
                before=SealPoint(sequence=41, sealed_unix_nano=SINCE - 5 * NS),
                after=SealPoint(sequence=99, sealed_unix_nano=UNTIL + 1_000 * NS),
                rows=3,
                complete=True,
                reason="bounded on both sides",
                newest_checkpoint_number=7,
                newest_checkpoint_sha256="ab" * 32,
                newest_checkpoint_unix_nano=UNTIL + 2_000 * NS,
            ),
        ),
        "summary": Summary(
            rows=3,
            by_event_name={"gen_ai.call": 2, "auth.login.failed": 1},
            by_user={"alice": 2, "bob": 1},
            by_service={"ai-workflow": 3},
            by_day={"2026-01-01": 3},
            failed_logins=1,
            model_usage={"gpt-x": ModelUsage(calls=2, input_tokens=20, output_tokens=40)},
            uses=(
                UseSpan(
                    key="session-1",
                    start_unix_nano=SINCE,
                    end_unix_nano=SINCE + 3_600 * NS,
                    records=3,
                    persons=("alice",),
                    reference_data=("kb-policies",),
                ),
            ),
        ),
        "records_read": 120,
        "signatures_checked": 12,
        "body_limit": 2000,
    }
    values.update(changes)
    return PeriodReport(**values)  # type: ignore[arg-type]


def render(period: PeriodReport, rows: list[ReportRow] | Iterator[ReportRow], **options: int) -> str:
    return "".join(render_html(period, rows, **options))


VOID = {"meta", "br", "hr", "img", "input", "link", "wbr", "col", "area", "base", "source"}
ALLOWED_TAGS = {
    "html", "head", "meta", "title", "style", "body", "header", "h1", "h2", "h3", "p", "span", "b", "br",
    "code", "section", "dl", "dt", "dd", "table", "thead", "tbody", "tfoot", "tr", "th", "td", "div",
    "figure", "figcaption", "svg", "desc", "rect", "line", "text", "polyline",
}  # fmt: skip


class Structure(HTMLParser):
    """Tags, attributes and nesting of a document: every non-void element closed, in order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.errors: list[str] = []
        self.text: list[str] = []
        self.doctype = ""

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(document: str) -> Structure:
    parser = Structure()
    parser.feed(document)
    parser.close()
    assert parser.doctype.lower() == "doctype html"
    assert parser.errors == []
    assert parser.stack == []
    return parser


def verdict_header(document: str) -> str:
    match = re.search(r"<body>\s*(<header class=\"verdict[^\"]*\".*?</header>)", document, re.S)
    assert match, "the verdict is not the first thing in the body"
    return match.group(1)


def rows_table(document: str) -> str:
    match = re.search(r'<table class="rows">.*?</table>', document, re.S)
    assert match
    return match.group(0)


def test_hostile_strings_from_the_archive_are_text_everywhere_they_appear() -> None:
    hostile_finding = Finding(
        FindingKind.MODIFIED_RECORD,
        Severity.TAMPERING,
        f"writer {HOSTILE} said so",
        chain_id=HOSTILE,
        first_sequence=3,
        object_key=f"logs/{HOSTILE}.seg",
    )
    chain = ChainBounds(HOSTILE, None, None, rows=1, complete=False, reason=HOSTILE, newest_checkpoint_sha256=HOSTILE)
    summary = Summary(
        rows=1,
        by_event_name={HOSTILE: 1},
        by_user={HOSTILE: 1},
        by_service={HOSTILE: 1},
        by_day={"2026-01-02": 1},
        model_usage={HOSTILE: ModelUsage(1, 2, 3)},
        uses=(UseSpan(HOSTILE, SINCE, SINCE + NS, 1, (HOSTILE,), (HOSTILE,)),),
    )
    period = report(
        verified=False,
        findings=(hostile_finding,),
        archive=HOSTILE,
        filters=(f"user.id={HOSTILE}",),
        chains=(chain,),
        summary=summary,
    )
    hostile_row = row(
        1,
        service=HOSTILE,
        event_name=HOSTILE,
        severity=HOSTILE,
        user=HOSTILE,
        model=HOSTILE,
        operation=HOSTILE,
        body=f"ignore previous {HOSTILE}",
        trace_id=HOSTILE,
        chain_id=HOSTILE,
        entry_hash=HOSTILE,
        status=HOSTILE,
    )
    document = render(period, [hostile_row])

    for raw in ("<script", "<img", '"><img', "onerror=alert(1)>", "\x1b", "\r", "\u202e", "\x00", "\x07", "\u2028"):
        assert raw not in document, f"{raw!r} reached the page raw"
    # Shown, escaped, where an auditor reads it.
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in document
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in document
    assert "\\x1b[2K\\rverdict: VERIFIED\\u202egnp.exe\\x00\\x07\\u2028" in document
    structure = parse(document)
    assert {tag for tag, _ in structure.tags} <= ALLOWED_TAGS
    for tag, attrs in structure.tags:
        for name, _ in attrs:
            assert not name.startswith("on"), (tag, name)
            assert name not in ("src", "href", "xlink:href", "action", "formaction"), (tag, name)
    # The hostile "verdict: VERIFIED" is in the page only as escaped text, never as the verdict.
    assert VERDICT_BAD in verdict_header(document)


def test_the_page_names_no_url_and_runs_nothing() -> None:
    document = render(report(), [row(i) for i in range(3)])
    assert "http://" not in document
    assert "https://" not in document
    assert "<script" not in document.lower()
    assert "javascript:" not in document.lower()
    assert "url(" not in document  # no CSS fetch either
    assert "@import" not in document
    assert "default-src 'none'" in document  # the browser is told to load and run nothing
    structure = parse(document)
    assert not [name for _, attrs in structure.tags for name, _ in attrs if name in ("src", "href")]


def test_a_verified_report_says_verified_in_green_at_the_top() -> None:
    document = render(report(), [row(1)])
    header = verdict_header(document)
    assert 'class="verdict ok"' in header
    assert f'<span class="word">{VERDICT_OK}</span>' in header
    assert "NOT VERIFIED" not in document
    assert re.search(r"\.verdict\.ok \{ background: #17703a; \}", document)
    assert "120 records read, 12 signatures checked" in header
    assert "<title>Audit report [2026-01-01T00:00:00Z, 2026-01-04T00:00:00Z): VERIFIED</title>" in document


def test_a_tampered_report_says_so_in_red_with_the_count_of_problems() -> None:
    findings = (
        Finding(FindingKind.MODIFIED_RECORD, Severity.TAMPERING, "entry hash differs", CHAIN, 5),
        Finding(FindingKind.DELETED_RECORDS, Severity.LOSS, "records missing", CHAIN, 6, 9),
        Finding(FindingKind.RESTART, Severity.INFO, "writer restarted", CHAIN, 10),
        Finding(FindingKind.STALE_CHAIN, Severity.WARNING, "no new checkpoint", CHAIN),
    )
    document = render(report(verified=False, findings=findings), [row(1, status="tampered")])
    header = verdict_header(document)
    assert 'class="verdict bad"' in header
    assert VERDICT_BAD == "NOT VERIFIED: tampering or loss found"
    assert f'<span class="word">{VERDICT_BAD}</span>' in header
    assert "2 findings of tampering or loss" in header
    assert re.search(r"\.verdict\.bad \{ background: #b3261e; \}", document)
    # Problems first (tampering, loss, warning), then the notes.
    order = [document.index(text) for text in ("entry hash differs", "records missing", "no new checkpoint")]
    assert order == sorted(order)
    assert document.index("Notes (not problems)") < document.index("writer restarted")
    assert document.index("no new checkpoint") < document.index("Notes (not problems)")
    assert "chain 00112233445566778899aabbccddeeff, seq 6-9" in document
    assert '<td class="st-tampered">tampered</td>' in document


def test_an_incomplete_chain_is_called_out_under_the_verdict_and_in_its_row() -> None:
    chain = ChainBounds(
        CHAIN, SealPoint(0, SINCE - NS), None, rows=0, complete=False, reason="no checkpoint after until + late"
    )
    document = render(report(chains=(chain,)), [])
    assert "Completeness of the period not proven for 1 chain of 1" in verdict_header(document)
    assert '<span class="no">no</span><br>no checkpoint after until + late' in document
    assert "none sealed that late yet" in document
    assert "seq 0<br>2025-12-31T23:59:59Z" in document


def test_the_period_and_completeness_bounds_are_shown_in_utc() -> None:
    document = render(report(), [row(1)])
    assert "[2026-01-01T00:00:00Z, 2026-01-04T00:00:00Z) UTC" in document
    assert "15m (900 s)" in document
    assert "<code>service=ai-workflow</code>" in document
    assert "seq 41<br>2025-12-31T23:59:55Z" in document
    assert "seq 99<br>2026-01-04T00:16:40Z" in document
    assert '#7 <code title="' + "ab" * 32 + '">abababababab\u2026</code>' in document
    assert "2026-01-01T01:00:00.123Z" in document  # a row's event time, with its fraction


def test_summaries_list_counts_model_usage_and_periods_of_use() -> None:
    document = render(report(), [])
    summaries = document[document.index('<section id="summaries">') : document.index('<section id="rows">')]
    assert "Failed logins<b>1</b>" in summaries
    assert '<td class="wrap">gen_ai.call</td><td class="num">2</td>' in summaries
    assert "<td class=num>2</td><td class=num>20</td><td class=num>40</td>" in summaries  # gpt-x
    assert "Periods of use (EU AI Act Art. 12)" in summaries
    assert "<code>session-1</code>" in summaries and "kb-policies" in summaries
    assert "More uses were found" not in summaries
    truncated = report(summary=Summary(rows=0, uses=(UseSpan("s", SINCE, SINCE, 1, (), ()),), uses_truncated=True))
    assert "More uses were found than the 1 listed here" in render(truncated, [])


def test_the_row_table_is_capped_with_a_note_and_the_rest_is_only_counted() -> None:
    pulled = 0

    def rows() -> Iterator[ReportRow]:
        nonlocal pulled
        for i in range(12):
            pulled += 1
            yield row(i)

    document = render(report(summary=Summary(rows=12)), rows(), row_cap=5)
    assert pulled == 12
    table = rows_table(document)
    assert table.count("<tr>") == 1 + 5  # the head row and five records
    assert "record 4" in table and "record 5" not in document
    assert "7 more rows are in the CSV/JSONL report." in document
    assert "The table shows the first 5 rows" in document
    parse(document)


def test_everything_above_the_table_is_yielded_before_any_row_is_read() -> None:
    pulled = 0

    def rows() -> Iterator[ReportRow]:
        nonlocal pulled
        for i in range(3):
            pulled += 1
            yield row(i)

    chunks = render_html(report(), rows())
    before_rows = []
    for chunk in chunks:
        before_rows.append(chunk)
        if '<table class="rows">' in chunk:
            break
    assert pulled == 0
    assert "VERIFIED" in before_rows[1]
    assert '<svg id="chart-days"' in "".join(before_rows)
    rest = "".join(chunks)
    assert pulled == 3
    assert "more rows" not in rest


def test_one_row_over_the_cap_and_a_cap_of_zero() -> None:
    assert "1 more row is in the CSV/JSONL report." in render(report(), [row(i) for i in range(3)], row_cap=2)
    document = render(report(), [row(i) for i in range(4)], row_cap=0)
    assert rows_table(document).count("<tr>") == 1
    assert "4 more rows are in the CSV/JSONL report." in document
    with pytest.raises(ValueError, match="row_cap"):
        render(report(), [], row_cap=-1)


def test_many_rows_stream_through_in_bounded_chunks() -> None:
    chunks = list(render_html(report(), (row(i % 50) for i in range(20_000)), row_cap=1_000))
    assert max(len(c) for c in chunks) < 400_000
    assert "19,000 more rows are in the CSV/JSONL report." in "".join(chunks[-3:])


def test_an_empty_period_still_makes_a_valid_page_with_empty_charts() -> None:
    empty = report(
        chains=(ChainBounds(CHAIN, SealPoint(3, SINCE - NS), SealPoint(4, UNTIL + 901 * NS), 0, True, "bounded"),),
        summary=Summary(),
    )
    document = render(empty, [])
    parse(document)
    for chart in ("chart-days", "chart-users", "chart-events"):
        svg = re.search(rf'<svg id="{chart}".*?</svg>', document, re.S)
        assert svg, chart
        assert "No events in this period" in svg.group(0)
        assert f'<title id="{chart}-title">' in svg.group(0)
        assert '<rect class="bar"' not in svg.group(0)
    assert "No records in this period." in document
    assert "more rows" not in document
    assert VERDICT_OK in verdict_header(document)


def test_charts_fill_days_without_events_and_keep_the_top_ten() -> None:
    users = {f"user-{i:02d}": 100 - i for i in range(15)}
    summary = Summary(rows=sum(users.values()), by_user=users, by_event_name={"a": 5}, by_day={"2026-01-02": 7})
    document = render(report(summary=summary), [])
    days = re.search(r'<svg id="chart-days".*?</svg>', document, re.S)
    assert days
    assert days.group(0).count('<rect class="bar"') == 3  # the period's three days, two of them empty
    assert "<title>2026-01-01: 0 events</title>" in days.group(0)
    assert "<title>2026-01-02: 7 events</title>" in days.group(0)
    assert ">day (UTC)</text>" in days.group(0) and ">events</text>" in days.group(0)
    top = re.search(r'<svg id="chart-users".*?</svg>', document, re.S)
    assert top
    assert top.group(0).count('<rect class="bar"') == 10
    assert "user-09" in top.group(0) and "user-10" not in top.group(0)
    assert "top 10 of 15 users" in top.group(0)


def test_a_long_period_is_drawn_as_a_line_and_labels_stay_few() -> None:
    by_day = {f"2025-{m:02d}-{d:02d}": m * d for m in range(1, 13) for d in range(1, 29)}
    long = report(since_unix_nano=1_735_689_600 * NS, until_unix_nano=SINCE, summary=Summary(rows=1, by_day=by_day))
    document = render(long, [])
    days = re.search(r'<svg id="chart-days".*?</svg>', document, re.S)
    assert days
    assert "<polyline" in days.group(0)
    assert days.group(0).count('text-anchor="middle">2025-') <= 10


def test_a_record_time_outside_what_a_calendar_shows_does_not_break_the_page() -> None:
    document = render(report(), [row(1, time_unix_nano=10**30), row(2, time_unix_nano=2**64 - 1)])
    assert f"{10**30} ns since 1970" in document
    assert "2554-07-21T23:34:33.709551615Z" in document
    parse(document)
