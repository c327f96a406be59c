"""The HTML report in a real browser: headless Chromium renders it, logs nothing to its console, and
the screenshot shows the page (the verdict banner, the chart bars), not a blank one.

Chromium is the Debian package ``chromium``. Without it these tests fail and say how to install it:
a report that was never opened in a browser is not tested.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

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
DAY = 86_400 * NS
SINCE = 1_767_225_600 * NS  # 2026-01-01T00:00:00Z
UNTIL = SINCE + 7 * DAY
CHAINS = ("3f1c9a0b5d2e47f68a9b0c1d2e3f4a5b", "7e6d5c4b3a29180f0e1d2c3b4a596877")
USERS = ("alice", "bob", "carol", "dave", "erin")
EVENTS = ("gen_ai.client.inference", "auth.login", "auth.login.failed", "access.denied", "permission.change")
TIMEOUT = 60  # seconds for one Chromium run
GREEN = (0x17, 0x70, 0x3A)  # the verdict banner, VERIFIED
RED = (0xB3, 0x26, 0x1E)  # the verdict banner, NOT VERIFIED
BAR = (0x3A, 0x5F, 0x8F)  # chart bars


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail(
            "chromium is not installed; the HTML report test needs headless Chromium: "
            "apt-get install chromium (Debian package `chromium`)"
        )
    return path


def sample_rows() -> Iterator[ReportRow]:
    sequence = 0
    for day in range(7):
        for i in range(6 + 5 * (day % 3)):
            sequence += 1
            event = EVENTS[i % len(EVENTS)]
            ai = event.startswith("gen_ai")
            yield ReportRow(
                time_unix_nano=SINCE + day * DAY + i * 1_800 * NS,
                service="ai-workflow" if i % 4 else "gateway",
                event_name=event,
                severity="WARN" if "denied" in event or "failed" in event else "INFO",
                user=USERS[(day + i) % len(USERS)],
                model="gpt-4o-mini" if ai else "",
                operation="chat" if ai else "",
                input_tokens=120 + i if ai else None,
                output_tokens=300 + i if ai else None,
                body=f'{event} for <request {sequence}> & "quoted" \u00e9\u65e5\x1b[31m',
                trace_id=f"{sequence:032x}",
                chain_id=CHAINS[sequence % 2],
                sequence=sequence,
                entry_hash=f"{sequence * 7919:064x}",
                sealed_unix_nano=SINCE + day * DAY + i * 1_800 * NS + 2 * NS,
            )


def sample_report(*, verified: bool) -> PeriodReport:
    rows = list(sample_rows())
    by: dict[str, Counter[str]] = {"event": Counter(), "user": Counter(), "service": Counter(), "day": Counter()}
    for r in rows:
        by["event"][r.event_name] += 1
        by["user"][r.user] += 1
        by["service"][r.service] += 1
        by["day"][f"2026-01-{1 + (r.time_unix_nano - SINCE) // DAY:02d}"] += 1
    calls = [r for r in rows if r.model]
    findings = [Finding(FindingKind.RESTART, Severity.INFO, "writer restarted", CHAINS[0], 12)]
    if not verified:
        findings.insert(0, Finding(FindingKind.MODIFIED_RECORD, Severity.TAMPERING, "entry hash differs", CHAINS[1], 9))
    return PeriodReport(
        archive="s3://audit/logs/",
        since_unix_nano=SINCE,
        until_unix_nano=UNTIL,
        late_seconds=900.0,
        filters=(),
        generated_unix_nano=UNTIL + 3_600 * NS,
        verified=verified,
        findings=tuple(findings),
        chains=tuple(
            ChainBounds(
                chain_id=chain,
                before=SealPoint(0, SINCE - 60 * NS),
                after=SealPoint(500, UNTIL + 1_000 * NS),
                rows=sum(1 for r in rows if r.chain_id == chain),
                complete=True,
                reason="bounded before and after the period",
                newest_checkpoint_number=40,
                newest_checkpoint_sha256="c0ffee" * 10 + "abcd",
                newest_checkpoint_unix_nano=UNTIL + 1_200 * NS,
            )
            for chain in CHAINS
        ),
        summary=Summary(
            rows=len(rows),
            by_event_name=dict(by["event"]),
            by_user=dict(by["user"]),
            by_service=dict(by["service"]),
            by_day=dict(by["day"]),
            failed_logins=by["event"]["auth.login.failed"],
            access_denied=by["event"]["access.denied"],
            permission_changes=by["event"]["permission.change"],
            model_usage={
                "gpt-4o-mini": ModelUsage(
                    calls=len(calls),
                    input_tokens=sum(r.input_tokens or 0 for r in calls),
                    output_tokens=sum(r.output_tokens or 0 for r in calls),
                )
            },
            uses=(UseSpan("session-42", SINCE, SINCE + 3_600 * NS, 5, ("alice", "bob"), ("kb-policies",)),),
        ),
        records_read=1_000,
        signatures_checked=80,
        body_limit=2_000,
    )


def write_report(directory: Path, *, verified: bool) -> Path:
    page = directory / "report.html"
    with page.open("w", encoding="utf-8") as out:
        out.writelines(render_html(sample_report(verified=verified), sample_rows(), row_cap=50))
    return page


def run_chromium(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        chromium(),
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        f"--user-data-dir={directory / 'chromium-profile'}",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, cwd=directory)


def console_lines(stderr: str) -> list[str]:
    """What the page logged: Chromium writes console messages (errors, CSP refusals, uncaught
    exceptions) as ``...:CONSOLE:<line>] "message", source: ...`` lines at any level."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


def read_png_pixels(data: bytes) -> list[tuple[int, ...]]:
    """The pixels of an 8-bit, non-interlaced RGB or RGBA PNG, as tuples (RGB only)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    offset, idat, header = 8, bytearray(), b""
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        offset += 12 + length
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
    channels = 3 if colour == 2 else 4
    stride = width * channels
    raw = zlib.decompress(bytes(idat))
    pixels: list[tuple[int, ...]] = []
    previous = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for x in range(stride):
            left = line[x - channels] if x >= channels else 0
            up = previous[x]
            corner = previous[x - channels] if x >= channels else 0
            if kind == 1:
                line[x] = (line[x] + left) & 0xFF
            elif kind == 2:
                line[x] = (line[x] + up) & 0xFF
            elif kind == 3:
                line[x] = (line[x] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                predictor = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                line[x] = (line[x] + predictor) & 0xFF
        pixels.extend(tuple(line[i : i + 3]) for i in range(0, stride, channels))
        previous = line
    return pixels


def near(colour: tuple[int, ...], target: tuple[int, int, int], tolerance: int = 6) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(colour, target, strict=True))


def test_console_lines_catch_what_a_broken_page_logs(tmp_path: Path) -> None:
    """The console check can fail: a page that throws and logs an error shows up in it."""
    page = tmp_path / "broken.html"
    page.write_text(
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>t</title></head><body>'
        '<script>console.error("report-broken"); undefinedFunction();</script></body></html>',
        encoding="utf-8",
    )
    result = run_chromium(tmp_path, "--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri())
    assert result.returncode == 0, result.stderr[-2000:]
    lines = console_lines(result.stderr)
    assert any("report-broken" in line for line in lines), result.stderr[-2000:]
    assert any("Uncaught ReferenceError" in line for line in lines), result.stderr[-2000:]


@pytest.mark.parametrize("verified", [True, False], ids=["verified", "tampered"])
def test_chromium_renders_the_report_without_console_errors(tmp_path: Path, verified: bool) -> None:
    page = write_report(tmp_path, verified=verified)
    result = run_chromium(tmp_path, "--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri())
    assert result.returncode == 0, result.stderr[-2000:]
    assert console_lines(result.stderr) == []
    dom = result.stdout
    verdict = VERDICT_OK if verified else VERDICT_BAD
    assert f'<span class="word">{verdict}</span>' in dom
    assert '<svg id="chart-days"' in dom and '<svg id="chart-users"' in dom and '<svg id="chart-events"' in dom
    assert dom.count('<rect class="bar"') >= 7 + 5 + 5
    total = sum(1 for _ in sample_rows())
    assert f"{total - 50} more rows are in the CSV/JSONL report." in dom  # 50 shown
    assert "<script" not in dom
    assert '&lt;request 1&gt; &amp; "quoted" \u00e9\u65e5\\x1b[31m' in dom  # escaped text, as text


@pytest.mark.parametrize("verified", [True, False], ids=["verified", "tampered"])
def test_the_screenshot_shows_the_verdict_and_a_chart(tmp_path: Path, verified: bool) -> None:
    page = write_report(tmp_path, verified=verified)
    shot = tmp_path / "report.png"
    result = run_chromium(
        tmp_path, f"--screenshot={shot}", "--window-size=1280,1600", "--hide-scrollbars", page.as_uri()
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert shot.is_file(), result.stderr[-2000:]
    pixels = read_png_pixels(shot.read_bytes())
    assert len(pixels) == 1280 * 1600
    counts = Counter(pixels)
    assert len(counts) > 50, f"the screenshot is nearly uniform ({len(counts)} colours): a blank page"
    banner = GREEN if verified else RED
    other = RED if verified else GREEN
    banner_pixels = sum(n for colour, n in counts.items() if near(colour, banner))
    # The banner spans the width of the page and is at least 80 px high.
    assert banner_pixels > 1000 * 80, f"verdict banner: {banner_pixels} pixels"
    assert sum(n for colour, n in counts.items() if near(colour, other, 2)) < 500
    # The banner is at the top: the first rows of its colour are within the first 200 px.
    top = pixels[: 1280 * 200]
    assert sum(1 for colour in top if near(colour, banner)) > 1000 * 60
    bar_pixels = sum(n for colour, n in counts.items() if near(colour, BAR))
    assert bar_pixels > 2000, f"chart bars: {bar_pixels} pixels"
