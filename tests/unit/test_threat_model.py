"""docs/threat-model.md names a test for each claim: those tests must exist, and every actor the
product's users worry about has its section."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
THREAT_MODEL = ROOT / "docs" / "threat-model.md"


def test_every_test_the_threat_model_cites_exists() -> None:
    text = THREAT_MODEL.read_text(encoding="utf-8")
    cited = set(re.findall(r"\btests/[\w./-]*\w", text))
    assert len(cited) >= 15
    missing = sorted(path for path in cited if not (ROOT / path).exists() and not (ROOT / f"{path}.py").exists())
    assert not missing, f"docs/threat-model.md cites tests that do not exist: {missing}"


def test_every_actor_has_a_section() -> None:
    headings = re.findall(r"^### (.+)$", THREAT_MODEL.read_text(encoding="utf-8"), re.MULTILINE)
    for actor in (
        "Application",
        "Collector",
        "Network neighbour",
        "Node administrator",
        "Bucket insider",
        "Key thief",
        "Loki administrator",
    ):
        assert any(heading.startswith(actor) for heading in headings), actor
