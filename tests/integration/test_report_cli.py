"""`collector-ext report` through the command line on what a real sidecar archived from the
OpenTelemetry SDK: CSV, JSONL and HTML, the manifest check, a tampered copy, --state, bad options."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from collector_ext.seal.layout import parse_segment_key
from tests.integration.conftest import KeyPairFiles
from tests.integration.test_s3_archive import _send_with_otel_sdk


def _report(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "collector_ext.cli", "report", *arguments], capture_output=True, text=True
    )


def test_report_cli_end_to_end(run_sidecar: Any, key_pair: KeyPairFiles, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    with run_sidecar(str(archive)) as sidecar:
        _send_with_otel_sdk(f"127.0.0.1:{sidecar.port}", 30)
    keys = ["--archive", str(archive), "--public-key", str(key_pair.public)]
    period = ["--since", "2020-01-01", "--until", "2100-01-01T00:00:00Z"]

    as_csv = _report(*keys, *period, "--where", "user.id=alice", "--format", "csv", "--out", str(tmp_path / "r.csv"))
    assert as_csv.returncode == 0, as_csv.stderr
    assert "VERIFIED; 30 rows" in as_csv.stdout
    lines = (tmp_path / "r.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    assert lines[0].startswith("# verdict: VERIFIED")
    rows = list(csv.DictReader(line for line in lines if not line.startswith(("#", '"#'))))
    assert [r["body"] for r in rows] == [f"inference {i}" for i in range(30)]
    assert {r["service"] for r in rows} == {"ai-workflow"} and {r["status"] for r in rows} == {"verified"}

    as_jsonl = _report(*keys, *period, "--format", "jsonl", "--out", str(tmp_path / "r.jsonl"))
    assert as_jsonl.returncode == 0, as_jsonl.stderr
    header = json.loads((tmp_path / "r.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert header["verdict"] == "VERIFIED" and header["complete"] is True
    assert header["summary"]["by_user"] == {"alice": 30}

    as_html = _report(*keys, *period, "--format", "html", "--out", str(tmp_path / "r.html"))
    assert as_html.returncode == 0, as_html.stderr
    assert "VERIFIED" in (tmp_path / "r.html").read_text(encoding="utf-8")

    checked = _report("--check", str(tmp_path / "r.csv.manifest.json"), "--public-key", str(key_pair.public))
    assert checked.returncode == 0, checked.stdout + checked.stderr

    # A period report with --state remembers the archive like verify does.
    state = tmp_path / "state.json"
    first = _report(*keys, *period, "--out", str(tmp_path / "s.csv"), "--state", str(state))
    assert first.returncode == 0, first.stderr
    assert json.loads(state.read_text())["chains"]

    # A copy with one record changed: NOT VERIFIED at the top, the row marked, exit 1; the check fails.
    copy = tmp_path / "copy"
    shutil.copytree(archive, copy)
    segment = next(
        p
        for p in sorted(copy.rglob("*.cxseg"))
        if parse_segment_key(p.relative_to(copy).as_posix()) and b"inference 3" in p.read_bytes()
    )
    data = bytearray(segment.read_bytes())
    index = data.find(b"inference 3")
    data[index + len("inference ")] = ord("X")
    segment.chmod(0o644)
    segment.write_bytes(bytes(data))
    tampered = _report(
        "--archive", str(copy), "--public-key", str(key_pair.public), *period, "--out", str(tmp_path / "t.csv")
    )
    assert tampered.returncode == 1
    text = (tmp_path / "t.csv").read_text(encoding="utf-8")
    assert text.startswith("# verdict: NOT VERIFIED")
    statuses = {
        r["body"]: r["status"]
        for r in csv.DictReader(line for line in text.splitlines(keepends=True) if not line.startswith(("#", '"#')))
    }
    assert statuses["inference X"] == "tampered"
    assert statuses["inference 4"] == "verified"

    bad = _report(*keys, "--since", "2026-02-01", "--until", "2026-01-01", "--out", str(tmp_path / "x.csv"))
    assert bad.returncode == 2 and "--until" in bad.stderr
    unparseable = _report(*keys, "--since", "last tuesday", "--until", "2026-01-01", "--out", str(tmp_path / "x.csv"))
    assert unparseable.returncode == 2 and "--since" in unparseable.stderr
    missing = _report(*keys, "--since", "2026-01-01")
    assert missing.returncode == 2 and "--until" in missing.stderr and "--out" in missing.stderr
