"""A period report as one self-contained HTML page an auditor can open, print or hand in.

The page holds everything inline: CSS in one <style> element and the charts as SVG drawn here, at
report time. It has no JavaScript and refers to nothing outside itself (no fonts, images, links or
scripts), and a Content-Security-Policy meta element tells the browser to load and run nothing, so
the page works offline and stays inert even if a value got through unescaped.

Much of what the page shows comes from the archive, which may be hostile: record bodies, user ids,
event names, chain ids, finding messages that quote payload fields, object keys, filter values. Every
such string goes through ``escape_controls`` (a control or bidi character is shown as a visible escape
and cannot reorder or hide the verdict) and then ``html.escape`` with quotes, so it is text in any
element or attribute it lands in.

Rows are streamed: the table shows the first ``row_cap`` of them and only counts the rest, so memory
stays bounded however long the period. The page is not the complete record: the CSV and JSONL reports
are never capped, and the page says how many rows it left out. It does not verify or select anything
itself; it renders what the report engine decided.
"""

from __future__ import annotations

import datetime as dt
import html
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from collector_ext.report.model import ChainBounds, PeriodReport, ReportRow, SealPoint, Summary, UseSpan
from collector_ext.verify.findings import Finding, Severity
from collector_ext.verify.render import escape_controls

VERDICT_OK = "VERIFIED"
VERDICT_BAD = "NOT VERIFIED: tampering or loss found"
TOP_N = 10  # bars in the "top users" and "by event name" charts
COUNT_TABLE_CAP = 100  # entries in the per-event-name, per-user and per-service count tables
_ROW_BATCH = 200  # table rows per yielded chunk
_SHORT_HEX = 12  # characters of a chain id or hash shown in a cell (the full value is in its title)
_LABEL_CHARS = 30  # characters of a chart label (the full value is in the bar's title)
_MAX_FILLED_DAYS = 1100  # fill days without events with zeros when the period spans at most this many
_LINE_CHART_DAYS = 180  # more days than this: a line instead of bars

_GREEN = "#17703a"
_RED = "#b3261e"
_AMBER = "#8a5a00"
_BAR = "#3a5f8f"

_CSP = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"

_CSS = f"""
:root {{ color-scheme: light; }}
* {{ box-sizing: border-box; }}
body {{ margin: 0 auto; max-width: 1400px; padding: 24px 28px 48px; color: #1d1d1f; background: #fff;
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }}
h1 {{ font-size: 20px; margin: 0 0 4px; }}
h2 {{ font-size: 17px; margin: 32px 0 8px; padding-bottom: 4px; border-bottom: 1px solid #d0d4da; }}
h3 {{ font-size: 15px; margin: 20px 0 6px; }}
p {{ margin: 6px 0; }}
code, .mono {{ font-family: ui-monospace, "SFMono-Regular", "DejaVu Sans Mono", Menlo, Consolas, monospace;
  font-size: 12px; }}
.verdict {{ margin: 0 0 20px; padding: 20px 24px; border-radius: 6px; color: #fff;
  -webkit-print-color-adjust: exact; print-color-adjust: exact; }}
.verdict.ok {{ background: {_GREEN}; }}
.verdict.bad {{ background: {_RED}; }}
.verdict .word {{ display: block; font-size: 34px; font-weight: 800; letter-spacing: .02em; line-height: 1.15; }}
.verdict .detail {{ display: block; font-size: 15px; margin-top: 6px; }}
.verdict .incomplete {{ display: block; font-size: 15px; margin-top: 6px; font-weight: 600; }}
dl.facts {{ display: grid; grid-template-columns: max-content 1fr; gap: 3px 18px; margin: 8px 0; }}
dl.facts dt {{ color: #555; }}
dl.facts dd {{ margin: 0; }}
table {{ border-collapse: collapse; margin: 6px 0 10px; }}
th, td {{ border: 1px solid #d0d4da; padding: 3px 7px; text-align: left; vertical-align: top; }}
th {{ background: #f0f2f5; font-weight: 600; -webkit-print-color-adjust: exact; print-color-adjust: exact; }}
td.num, th.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
table.rows {{ font-size: 12px; width: 100%; }}
table.rows td {{ padding: 3px 5px; overflow-wrap: anywhere; }}
table.rows td.body {{ min-width: 150px; max-width: 480px; overflow-wrap: anywhere; }}
table.rows td.sender {{ max-width: 260px; overflow-wrap: anywhere; }}
table.rows td.time, table.rows td.id {{ white-space: nowrap; overflow-wrap: normal; }}
table.rows td.ev {{ min-width: 8em; }}
table.rows td.trace code {{ display: inline-block; width: 16.5ch; font-size: 11px; overflow-wrap: anywhere; }}
td.wrap {{ overflow-wrap: anywhere; }}
.none {{ color: #777; font-style: italic; }}
.yes {{ color: {_GREEN}; font-weight: 600; }}
.no {{ color: {_RED}; font-weight: 600; }}
.sev-tampering, .sev-loss, .st-tampered {{ color: {_RED}; font-weight: 700; }}
.sev-warning, .st-unverified {{ color: {_AMBER}; font-weight: 700; }}
.sev-info {{ color: #555; }}
.st-verified {{ color: {_GREEN}; }}
.note {{ padding: 8px 12px; border-left: 4px solid {_AMBER}; background: #fbf6ea; margin: 10px 0;
  -webkit-print-color-adjust: exact; print-color-adjust: exact; }}
.stats {{ display: flex; flex-wrap: wrap; gap: 10px; margin: 8px 0; }}
.stat {{ border: 1px solid #d0d4da; border-radius: 6px; padding: 8px 14px; min-width: 150px; }}
.stat b {{ display: block; font-size: 22px; }}
.grid {{ display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }}
figure {{ margin: 10px 0 18px; }}
figcaption {{ font-weight: 600; margin-bottom: 4px; }}
svg {{ max-width: 100%; height: auto; }}
svg text {{ font: 11px system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif; fill: #333; }}
svg .axis {{ stroke: #888; stroke-width: 1; }}
svg .grid {{ stroke: #e3e6ea; stroke-width: 1; }}
svg .bar {{ fill: {_BAR}; }}
svg .line {{ fill: none; stroke: {_BAR}; stroke-width: 1.5; }}
svg .empty {{ font-size: 14px; fill: #777; }}
svg .frame {{ fill: #fafbfc; stroke: #d0d4da; }}
@media print {{
  body {{ max-width: none; padding: 0; font-size: 11px; }}
  h2 {{ break-after: avoid; }}
  figure, .verdict, tr {{ break-inside: avoid; }}
  table.rows {{ font-size: 9px; }}
}}
"""


def _text(value: object) -> str:
    """A value from the archive (or derived from one) as HTML text, safe in elements and attributes."""
    return html.escape(escape_controls(str(value)), quote=True)


def _or_none(value: str, none: str = "(none)") -> str:
    return _text(value) if value else f'<span class="none">{html.escape(none)}</span>'


def _int(number: int) -> str:
    return f"{number:,}"


def _utc(unix_nano: int | None, *, fraction: bool = True) -> str:
    """ISO 8601 in UTC with a Z; fractional seconds only when there are any."""
    if unix_nano is None:
        return "never"
    seconds, nanos = divmod(unix_nano, 1_000_000_000)
    try:
        moment = dt.datetime.fromtimestamp(seconds, dt.UTC)
    except (OverflowError, OSError, ValueError):
        # A hostile or broken record time outside what datetime can show: show the number.
        return f"{unix_nano} ns since 1970"
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if fraction and nanos:
        text += "." + f"{nanos:09d}".rstrip("0")
    return text + "Z"


def _plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}" if count == 1 else f"{count:,} {noun}s"


def _duration(seconds: float) -> str:
    if seconds <= 0:
        return "none"
    whole = int(seconds)
    if whole == seconds:
        for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
            if whole % size == 0:
                return f"{whole // size}{unit} ({whole:,} s)"
    return f"{seconds:g} s"


def _short(hex_text: str, length: int = _SHORT_HEX) -> str:
    """The first characters of an id or hash in <code>, the whole of it in the title."""
    if not hex_text:
        return '<span class="none">-</span>'
    shown = hex_text if len(hex_text) <= length else hex_text[:length] + "\u2026"
    return f'<code title="{_text(hex_text)}">{_text(shown)}</code>'


def _problem(finding: Finding) -> bool:
    return finding.severity in (Severity.TAMPERING, Severity.LOSS)


# --- header: verdict and period ----------------------------------------------------------------


def _verdict(report: PeriodReport) -> str:
    problems = sum(1 for f in report.findings if _problem(f))
    incomplete = [c for c in report.chains if not c.complete]
    if incomplete:
        some = "1 chain" if len(incomplete) == 1 else f"{len(incomplete)} chains"
        completeness = (
            f'<span class="incomplete">Completeness of the period not proven for {some} of '
            f"{len(report.chains)} (see Completeness).</span>"
        )
    else:
        completeness = ""
    if report.verified:
        detail = (
            f"No tampering or loss found: {_int(report.records_read)} records read, "
            f"{_int(report.signatures_checked)} signatures checked."
        )
        return (
            f'<header class="verdict ok" id="verdict" role="status"><span class="word">{VERDICT_OK}</span>'
            f'<span class="detail">{detail}</span>{completeness}</header>'
        )
    count = "1 finding" if problems == 1 else f"{_int(problems)} findings"
    return (
        f'<header class="verdict bad" id="verdict" role="alert"><span class="word">{VERDICT_BAD}</span>'
        f'<span class="detail">{count} of tampering or loss (see Findings). '
        f"Rows this report shows may be altered or incomplete.</span>{completeness}</header>"
    )


def _period(report: PeriodReport) -> str:
    filters = ", ".join(f"<code>{_text(f)}</code>" for f in report.filters) or '<span class="none">none</span>'
    facts = [
        ("Period", f"[{_utc(report.since_unix_nano)}, {_utc(report.until_unix_nano)}) UTC, by event time"),
        ("Late allowance", _text(_duration(report.late_seconds))),
        ("Filters", filters),
        ("Archive", f'<code class="wrap">{_text(report.archive)}</code>'),
        ("Generated", _utc(report.generated_unix_nano, fraction=False)),
        ("Records read", _int(report.records_read)),
        ("Signatures checked", _int(report.signatures_checked)),
        ("Rows in the period", _int(report.summary.rows)),
        ("Body length limit", f"{_int(report.body_limit)} characters"),
    ]
    items = "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in facts)
    return f'<section id="period"><h2>Period</h2><dl class="facts">{items}</dl></section>'


def _seal_point(point: SealPoint | None, missing: str) -> str:
    if point is None:
        return f'<span class="none">{html.escape(missing)}</span>'
    return f"seq {_int(point.sequence)}<br>{_utc(point.sealed_unix_nano)}"


def _chain_row(chain: ChainBounds) -> str:
    reason = _text(chain.reason)
    if chain.sealed_outside:
        reason += (
            f"<br>{_int(chain.sealed_outside)} record(s) of the period sealed outside "
            "[since, until + late) (clock skew)"
        )
    if chain.newest_checkpoint_number is not None:
        checkpoint = (
            f"#{_int(chain.newest_checkpoint_number)} {_short(chain.newest_checkpoint_sha256)}"
            f"<br>{_utc(chain.newest_checkpoint_unix_nano)}"
        )
    else:
        checkpoint = '<span class="none">none</span>'
    complete = '<span class="yes">yes</span>' if chain.complete else '<span class="no">no</span>'
    return (
        f'<tr><td class="wrap"><code>{_text(chain.chain_id)}</code></td>'
        f"<td>{_seal_point(chain.before, 'none: the chain began in the period')}</td>"
        f"<td>{_seal_point(chain.after, 'none sealed that late yet')}</td>"
        f'<td class="num">{_int(chain.rows)}</td><td>{complete}<br>{reason}</td><td>{checkpoint}</td></tr>'
    )


def _completeness(report: PeriodReport) -> str:
    intro = (
        "<p>Within a chain, sealing times do not decrease. A record whose event time is in the period was "
        "sealed in [since, until + late allowance), so the entries between the last one sealed before the "
        "period and the first one sealed at or after its end plus the late allowance hold every such record "
        "of the chain; all of them were read and verified. The bounds are listed per chain.</p>"
    )
    if not report.chains:
        return (
            f'<section id="completeness"><h2>Completeness</h2>{intro}'
            '<p class="none">No chains in the archive read.</p></section>'
        )
    head = (
        "<tr><th>Chain</th><th>Before (last sealed before the period)</th>"
        "<th>After (first sealed at or after until + late)</th><th class=num>Rows</th><th>Complete</th>"
        "<th>Newest checkpoint</th></tr>"
    )
    body = "".join(_chain_row(c) for c in report.chains)
    return (
        f'<section id="completeness"><h2>Completeness ({_plural(len(report.chains), "chain")})</h2>{intro}'
        f"<table><thead>{head}</thead><tbody>{body}</tbody></table></section>"
    )


def _finding_rows(findings: Sequence[Finding]) -> str:
    return "".join(
        f'<tr><td class="sev-{_text(f.severity.value)}">{_text(f.severity.value)}</td>'
        f"<td><code>{_text(f.kind.value)}</code></td><td class=wrap>{_text(f.location())}</td>"
        f"<td class=wrap>{_text(f.message)}</td></tr>"
        for f in findings
    )


def _findings(report: PeriodReport) -> str:
    order = {Severity.TAMPERING: 0, Severity.LOSS: 1, Severity.WARNING: 2}
    problems = sorted((f for f in report.findings if f.severity is not Severity.INFO), key=lambda f: order[f.severity])
    notes = [f for f in report.findings if f.severity is Severity.INFO]
    head = "<thead><tr><th>Severity</th><th>Kind</th><th>Location</th><th>Message</th></tr></thead>"
    counted = f"{_plural(len(problems), 'problem')}, {_plural(len(notes), 'note')}"
    parts = [f'<section id="findings"><h2>Findings ({counted})</h2>']
    if problems:
        parts.append(f"<h3>Problems</h3><table>{head}<tbody>{_finding_rows(problems)}</tbody></table>")
    else:
        parts.append("<p>No problems found.</p>")
    if notes:
        parts.append(
            "<h3>Notes (not problems)</h3><p>How the archive came to be: restarts, replaced chains, "
            f"batches sealed twice.</p><table>{head}<tbody>{_finding_rows(notes)}</tbody></table>"
        )
    parts.append("</section>")
    return "".join(parts)


# --- summaries -----------------------------------------------------------------------------------


def _ranked(counts: Mapping[str, int]) -> list[tuple[str, int]]:
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def _count_table(title: str, column: str, counts: Mapping[str, int], *, ranked: bool = True) -> str:
    items = _ranked(counts) if ranked else sorted(counts.items())
    shown = items[:COUNT_TABLE_CAP] if ranked else items
    if not shown:
        return f'<div><h3>{title}</h3><p class="none">None.</p></div>'
    body = "".join(f'<tr><td class="wrap">{_or_none(key)}</td><td class="num">{_int(n)}</td></tr>' for key, n in shown)
    more = ""
    if len(items) > len(shown):
        more = f'<p class="note">{_int(len(items) - len(shown))} more; the CSV/JSONL report has every row.</p>'
    return (
        f"<div><h3>{title}</h3><table><thead><tr><th>{column}</th><th class=num>Records</th></tr></thead>"
        f"<tbody>{body}</tbody></table>{more}</div>"
    )


def _model_usage(summary: Summary) -> str:
    if not summary.model_usage:
        return '<h3>Model usage</h3><p class="none">No model calls in the period.</p>'
    items = sorted(summary.model_usage.items(), key=lambda item: (-item[1].calls, item[0]))
    body = "".join(
        f'<tr><td class="wrap">{_or_none(model)}</td><td class=num>{_int(u.calls)}</td>'
        f"<td class=num>{_int(u.input_tokens)}</td><td class=num>{_int(u.output_tokens)}</td></tr>"
        for model, u in items
    )
    total = (
        f"<tr><th>Total</th><th class=num>{_int(sum(u.calls for _, u in items))}</th>"
        f"<th class=num>{_int(sum(u.input_tokens for _, u in items))}</th>"
        f"<th class=num>{_int(sum(u.output_tokens for _, u in items))}</th></tr>"
    )
    return (
        "<h3>Model usage</h3><table><thead><tr><th>Model</th><th class=num>Calls</th>"
        "<th class=num>Input tokens</th><th class=num>Output tokens</th></tr></thead>"
        f"<tbody>{body}</tbody><tfoot>{total}</tfoot></table>"
    )


def _joined(values: Sequence[str]) -> str:
    return ", ".join(_text(v) for v in values) if values else '<span class="none">-</span>'


def _use_row(use: UseSpan) -> str:
    return (
        f'<tr><td class="wrap"><code>{_text(use.key)}</code></td><td>{_utc(use.start_unix_nano)}</td>'
        f"<td>{_utc(use.end_unix_nano)}</td><td class=num>{_int(use.records)}</td>"
        f'<td class="wrap">{_joined(use.persons)}</td><td class="wrap">{_joined(use.reference_data)}</td></tr>'
    )


def _uses(summary: Summary) -> str:
    intro = (
        "<h3>Periods of use (EU AI Act Art. 12)</h3><p>Start and end of each use of the system (per session, "
        "else per trace), the persons involved and the reference data logged.</p>"
    )
    if not summary.uses:
        return intro + '<p class="none">No uses in the period.</p>'
    body = "".join(_use_row(u) for u in summary.uses)
    table = (
        "<table><thead><tr><th>Session or trace</th><th>Start (UTC)</th><th>End (UTC)</th>"
        "<th class=num>Records</th><th>Persons</th><th>Reference data</th></tr></thead>"
        f"<tbody>{body}</tbody></table>"
    )
    more = ""
    if summary.uses_truncated:
        more = (
            f'<p class="note">More uses were found than the {_int(len(summary.uses))} listed here; '
            "narrow the period or the filters to list them all.</p>"
        )
    return intro + table + more


def _summaries(summary: Summary) -> str:
    stats = [
        ("Failed logins", summary.failed_logins),
        ("Access denied", summary.access_denied),
        ("Permission changes", summary.permission_changes),
        ("Exceptions", summary.exceptions),
    ]
    cards = "".join(f'<div class="stat">{name}<b>{_int(n)}</b></div>' for name, n in stats)
    tables = "".join(
        [
            _count_table("By event name", "Event name", summary.by_event_name),
            _count_table("By user", "User", summary.by_user),
            _count_table("By service", "Service", summary.by_service),
            _count_table("By day (UTC)", "Day", summary.by_day, ranked=False),
        ]
    )
    return (
        f'<section id="summaries"><h2>Summaries ({_int(summary.rows)} rows)</h2>'
        f'<h3>Security events</h3><div class="stats">{cards}</div>'
        f'<div class="grid">{tables}</div>{_model_usage(summary)}{_uses(summary)}</section>'
    )


# --- charts (inline SVG) -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Chart:
    ident: str
    title: str
    description: str


def _svg_open(chart: _Chart, width: int, height: int) -> str:
    # No xmlns: inline SVG in HTML does not need one, and the page then names no URL at all.
    return (
        f'<svg id="{chart.ident}" role="img" aria-labelledby="{chart.ident}-title {chart.ident}-desc" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}">'
        f'<title id="{chart.ident}-title">{_text(chart.title)}</title>'
        f'<desc id="{chart.ident}-desc">{_text(chart.description)}</desc>'
    )


def _empty_chart(chart: _Chart, width: int, height: int) -> str:
    return (
        _svg_open(chart, width, height)
        + f'<rect class="frame" x="0.5" y="0.5" width="{width - 1}" height="{height - 1}"></rect>'
        + f'<text class="empty" x="{width / 2:g}" y="{height / 2:g}" text-anchor="middle">'
        + "No events in this period</text></svg>"
    )


def _nice_step(maximum: int, ticks: int = 4) -> int:
    """A round tick step (1, 2 or 5 times a power of ten) so that ``ticks`` steps reach ``maximum``."""
    raw = max(maximum / ticks, 1)
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if factor * power >= raw:
            return int(factor * power)
    return int(10 * power)


def _label(text: str) -> str:
    shown = text if len(text) <= _LABEL_CHARS else text[: _LABEL_CHARS - 1] + "\u2026"
    return _text(shown) if text else "(none)"


def _day_series(summary: Summary, since_unix_nano: int, until_unix_nano: int) -> list[tuple[str, int]]:
    """Days in order, with the days of the period that had no events filled in as zeros."""
    try:
        days = {dt.date.fromisoformat(day): n for day, n in summary.by_day.items()}
        first = dt.datetime.fromtimestamp(since_unix_nano // 1_000_000_000, dt.UTC).date()
        last = dt.datetime.fromtimestamp((until_unix_nano - 1) // 1_000_000_000, dt.UTC).date()
    except (ValueError, OverflowError, OSError):
        return sorted(summary.by_day.items())
    if days:
        first, last = min(first, *days), max(last, *days)
    span = (last - first).days + 1
    if span <= 0 or span > _MAX_FILLED_DAYS:
        return sorted(summary.by_day.items())
    dates = (first + dt.timedelta(days=i) for i in range(span))
    return [(day.isoformat(), days.get(day, 0)) for day in dates]


def _day_chart(summary: Summary, since_unix_nano: int, until_unix_nano: int) -> str:
    series = _day_series(summary, since_unix_nano, until_unix_nano)
    total = sum(n for _, n in series)
    width, height = 960, 280
    if not series or total == 0:
        chart = _Chart("chart-days", "Events per day (UTC)", "No events in this period.")
        return _empty_chart(chart, width, height)
    peak_day, peak = max(series, key=lambda item: item[1])
    chart = _Chart(
        "chart-days",
        "Events per day (UTC)",
        f"{total:,} events over {len(series)} days, from {series[0][0]} to {series[-1][0]}; "
        f"the most on {peak_day}: {peak:,}.",
    )
    left, right, top, bottom = 64, 16, 16, 56
    plot_w, plot_h = width - left - right, height - top - bottom
    step = _nice_step(peak)
    y_max = step * math.ceil(peak / step)
    parts = [_svg_open(chart, width, height)]

    def y_of(value: int) -> float:
        return top + plot_h - plot_h * value / y_max

    for tick in range(0, y_max + 1, step):
        y = y_of(tick)
        parts.append(f'<line class="grid" x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}"></line>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{tick:,}</text>')
    slot = plot_w / len(series)
    if len(series) <= _LINE_CHART_DAYS:
        gap = slot * 0.15 if slot > 4 else 0
        for i, (day, n) in enumerate(series):
            y = y_of(n)
            parts.append(
                f'<rect class="bar" x="{left + i * slot + gap / 2:.2f}" y="{y:.2f}" '
                f'width="{max(slot - gap, 0.5):.2f}" height="{top + plot_h - y:.2f}">'
                f"<title>{day}: {n:,} events</title></rect>"
            )
    else:
        points = " ".join(f"{left + (i + 0.5) * slot:.2f},{y_of(n):.2f}" for i, (_, n) in enumerate(series))
        parts.append(f'<polyline class="line" points="{points}"></polyline>')
    label_every = max(1, math.ceil(len(series) / 10))
    for i in range(0, len(series), label_every):
        x = left + (i + 0.5) * slot
        parts.append(
            f'<line class="axis" x1="{x:.1f}" x2="{x:.1f}" y1="{top + plot_h}" y2="{top + plot_h + 4}"></line>'
        )
        parts.append(f'<text x="{x:.1f}" y="{top + plot_h + 17}" text-anchor="middle">{_text(series[i][0])}</text>')
    parts.append(f'<line class="axis" x1="{left}" x2="{width - right}" y1="{top + plot_h}" y2="{top + plot_h}"></line>')
    parts.append(f'<line class="axis" x1="{left}" x2="{left}" y1="{top}" y2="{top + plot_h}"></line>')
    parts.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 8}" text-anchor="middle">day (UTC)</text>')
    parts.append(
        f'<text x="14" y="{top + plot_h / 2:.1f}" text-anchor="middle" '
        f'transform="rotate(-90 14 {top + plot_h / 2:.1f})">events</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


def _bar_chart(ident: str, title: str, noun: str, counts: Mapping[str, int]) -> str:
    """Horizontal bars for the TOP_N largest counts, with the label left and the value right of each."""
    items = [(k, n) for k, n in _ranked(counts) if n > 0]
    top_items = items[:TOP_N]
    width = 580
    row_h, top, bottom, label_w, value_w = 24, 12, 40, 210, 70
    if not top_items:
        return _empty_chart(_Chart(ident, title, "No events in this period."), width, 160)
    height = top + row_h * len(top_items) + bottom
    shown = f"top {len(top_items)} of {len(items)}" if len(items) > len(top_items) else f"all {len(items)}"
    description = f"{shown} {noun}: " + "; ".join(f"{k or '(none)'}: {n:,}" for k, n in top_items)
    parts = [_svg_open(_Chart(ident, title, description), width, height)]
    plot_x, plot_w = label_w + 8, width - label_w - 8 - value_w
    peak = top_items[0][1]
    for i, (key, n) in enumerate(top_items):
        y = top + i * row_h
        bar_w = max(plot_w * n / peak, 1)
        parts.append(
            f'<text x="{label_w}" y="{y + row_h / 2 + 4:.1f}" text-anchor="end">{_label(key)}'
            f"<title>{_text(key)}</title></text>"
        )
        parts.append(
            f'<rect class="bar" x="{plot_x}" y="{y + 3}" width="{bar_w:.2f}" height="{row_h - 6}">'
            f"<title>{_text(key) or '(none)'}: {n:,} events</title></rect>"
        )
        parts.append(f'<text x="{plot_x + bar_w + 6:.2f}" y="{y + row_h / 2 + 4:.1f}">{n:,}</text>')
    axis_y = top + row_h * len(top_items)
    parts.append(f'<line class="axis" x1="{plot_x}" x2="{plot_x}" y1="{top}" y2="{axis_y}"></line>')
    parts.append(
        f'<text x="{plot_x + plot_w / 2:.1f}" y="{height - 12}" text-anchor="middle">events ({_text(shown)})</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


def _figure(svg: str, caption: str) -> str:
    return f"<figure><figcaption>{caption}</figcaption>{svg}</figure>"


def _charts(report: PeriodReport) -> str:
    summary = report.summary
    return (
        '<section id="charts"><h2>Charts</h2>'
        + _figure(_day_chart(summary, report.since_unix_nano, report.until_unix_nano), "Events per day (UTC)")
        + '<div class="grid">'
        + _figure(_bar_chart("chart-users", "Top 10 users", "users", summary.by_user), "Top 10 users")
        + _figure(
            _bar_chart("chart-events", "Events by event name (top 10)", "event names", summary.by_event_name),
            "Events by event name (top 10)",
        )
        + "</div></section>"
    )


# --- rows ----------------------------------------------------------------------------------------

_ROW_HEAD = (
    "<thead><tr><th>Time (UTC)</th><th>Service</th><th>Event name</th><th>Severity</th><th>User</th>"
    "<th>Model</th><th>Operation</th><th class=num>Input tokens</th><th class=num>Output tokens</th>"
    "<th>Body</th><th>Trace id</th><th>Chain</th><th class=num>Seq</th><th>Entry hash</th><th>Sender</th>"
    "<th>Status</th>"
    "</tr></thead>"
)


def _tokens(count: int | None) -> str:
    return "" if count is None else _int(count)


def _row(row: ReportRow) -> str:
    status = _text(row.status)
    return (
        f'<tr><td class="time">{_utc(row.time_unix_nano)}</td><td>{_text(row.service)}</td>'
        f'<td class="ev">{_text(row.event_name)}</td>'
        f"<td>{_text(row.severity)}</td><td>{_text(row.user)}</td><td>{_text(row.model)}</td>"
        f"<td>{_text(row.operation)}</td><td class=num>{_tokens(row.input_tokens)}</td>"
        f'<td class=num>{_tokens(row.output_tokens)}</td><td class="body">{_text(row.body)}</td>'
        f'<td class="trace"><code>{_text(row.trace_id)}</code></td><td class="id">{_short(row.chain_id, 8)}</td>'
        f'<td class=num>{_int(row.sequence)}</td><td class="id">{_short(row.entry_hash, 8)}</td>'
        f'<td class="sender">{_text(row.sender)}</td><td class="st-{status}">{status}</td></tr>'
    )


def _rows(rows: Iterable[ReportRow], row_cap: int, expected: int) -> Iterator[str]:
    title = f"Records ({_int(expected)})"
    intro = ""
    if expected > row_cap:
        intro = (
            f'<p class="note">The table shows the first {_int(row_cap)} rows; the CSV/JSONL report has every row.</p>'
        )
    yield f'<section id="rows"><h2>{title}</h2>{intro}<table class="rows">{_ROW_HEAD}<tbody>'
    shown = 0
    more = 0
    batch: list[str] = []
    for row in rows:
        if shown < row_cap:
            batch.append(_row(row))
            shown += 1
            if len(batch) >= _ROW_BATCH:
                yield "".join(batch)
                batch.clear()
        else:
            more += 1  # counted, not kept: the CSV/JSONL report carries them
    if batch:
        yield "".join(batch)
    yield "</tbody></table>"
    if shown == 0 and more == 0:
        yield '<p class="none">No records in this period.</p>'
    if more:
        noun = "row is" if more == 1 else "rows are"
        yield f'<p class="note" id="rows-cut">{_int(more)} more {noun} in the CSV/JSONL report.</p>'
    yield "</section>"


# --- the document --------------------------------------------------------------------------------


def render_html(report: PeriodReport, rows: Iterable[ReportRow], *, row_cap: int = 5000) -> Iterator[str]:
    """Chunks of one self-contained HTML5 document for ``report`` and its ``rows``.

    Everything above the table is yielded before the first row is read; rows are then read one at a
    time, the first ``row_cap`` shown and the rest only counted (all of ``rows`` is consumed).

    Raises:
        ValueError: ``row_cap`` is negative.
    """
    if row_cap < 0:
        raise ValueError(f"row_cap must be 0 or more, not {row_cap}")
    verdict = VERDICT_OK if report.verified else VERDICT_BAD
    title = f"Audit report [{_utc(report.since_unix_nano)}, {_utc(report.until_unix_nano)}): {verdict}"
    yield (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="no-referrer"><meta name="generator" content="collector-ext report">'
        f"<title>{_text(title)}</title><style>{_CSS}</style></head><body>\n"
    )
    yield _verdict(report)
    yield f"<h1>Audit report: {_utc(report.since_unix_nano)} to {_utc(report.until_unix_nano)}</h1>\n"
    yield _period(report) + "\n"
    yield _completeness(report) + "\n"
    yield _findings(report) + "\n"
    yield _charts(report) + "\n"
    yield _summaries(report.summary) + "\n"
    yield from _rows(rows, row_cap, report.summary.rows)
    yield "\n</body></html>\n"
