"""Runs collector_ext's verifier on the conformance cases (tests/golden/conformance/cases) and
compares its findings with the expected ones exactly: kind, severity, chain id, sequence range and
object key (not the messages, which are for people), and the verdict.

A case marked ``known_reference_verifier_bug`` in its case.json pins what FORMAT.md requires while
collector_ext's verifier still disagrees: it runs as a strict xfail, so fixing the verifier turns it
into a failure that says to drop the mark.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from collector_ext.deliver.directory_archive import DirectoryArchive
from collector_ext.seal.keys import PublicKey, load_public_key_pem
from collector_ext.verify.render import report_as_json
from collector_ext.verify.run import VerifyOptions, check_archive
from collector_ext.verify.witnesses import WitnessPolicy
from collector_ext.witness.vkey import parse_witness_vkey

CASES = Path(__file__).resolve().parent / "conformance" / "cases"
CASE_NAMES = sorted(p.name for p in CASES.iterdir() if (p / "case.json").is_file())


def _order(f: dict[str, Any]) -> tuple[Any, ...]:
    return (
        f["chain_id"] or "",
        f["kind"],
        -1 if f["first_sequence"] is None else f["first_sequence"],
        f["object_key"] or "",
    )


def run_case(directory: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(what the verifier found, what the case expects), both as {verified, findings}."""
    case = json.loads((directory / "case.json").read_text(encoding="utf-8"))
    keys: dict[bytes, PublicKey] = {}
    for pinned in case["pinned_keys"]:
        key = load_public_key_pem(pinned["pem"].encode(), directory.name)
        assert key.raw.hex() == pinned["raw_hex"] and key.key_id.hex() == pinned["key_id"]
        keys[key.key_id] = key
    witnesses = dict(parse_witness_vkey(vkey) for vkey in case["options"].get("witnesses", []))
    options = VerifyOptions(
        archive_id=case["options"]["archive_id"],
        check_all_signatures=case["options"]["check_all_signatures"],
        signature_threads=1,
        witness_policy=WitnessPolicy(
            witnesses=witnesses,
            required_witnesses=case["options"].get("witnesses_required", 0),
            grace_seconds=case["options"].get("witness_grace_seconds", 600.0),
        )
        if witnesses
        else None,
    )

    async def verify() -> Any:
        store = DirectoryArchive(directory / "objects", for_writing=False)
        await store.open()
        try:
            return await check_archive(store, keys, options)
        finally:
            await store.close()

    report = report_as_json(asyncio.run(verify()), "case")
    fields = ("kind", "severity", "chain_id", "first_sequence", "last_sequence", "object_key")
    found = sorted(({name: f[name] for name in fields} for f in report["findings"]), key=_order)
    return {"verified": report["verified"], "findings": found}, case


def _params() -> list[Any]:
    params = []
    for name in CASE_NAMES:
        case = json.loads((CASES / name / "case.json").read_text(encoding="utf-8"))
        bug = case.get("known_reference_verifier_bug")
        marks = [pytest.mark.xfail(strict=True, reason=bug)] if bug else []
        params.append(pytest.param(name, id=name, marks=marks))
    return params


def test_there_are_cases() -> None:
    assert len(CASE_NAMES) >= 15


@pytest.mark.parametrize("name", _params())
def test_conformance_case(name: str) -> None:
    found, case = run_case(CASES / name)
    # The objects on disk are the ones the case was generated with.
    for key, digest in case["objects"].items():
        assert hashlib.sha256((CASES / name / "objects" / key).read_bytes()).hexdigest() == digest, key
    assert found == case["expected"]
