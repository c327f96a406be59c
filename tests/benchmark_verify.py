"""Incremental verify: what a daily audit with ``verify --state`` costs next to a full verify.

Builds one chain in a local directory archive (deterministic: a longer build starts with the same
objects), verifies it whole with a state file, grows it by ``--growth`` (1% by default), and
verifies again with the state. Prints both times, the objects each run read, and the ratio; the
target is an incremental run that costs at most 5% of the full one when the archive grew by 1%.
Optionally does the same against the embedded SeaweedFS (``--s3``).

    python tests/benchmark_verify.py --segments 400 --per-segment 1000
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collector_ext.deliver.directory_archive import DirectoryArchive
from collector_ext.seal.keys import Ed25519Signer
from collector_ext.verify.run import VerifyOptions, check_archive_with_state
from collector_ext.verify.state import VerifierState, dump_state, load_state
from tests.archive_builder import build_archive


def write(root: Path, objects: dict[str, bytes]) -> None:
    for key, data in objects.items():
        path = root / key
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)


async def verify(root: Path, signer: Ed25519Signer, state: VerifierState | None) -> tuple[float, int, int, bytes, bool]:
    store = DirectoryArchive(root, for_writing=False)
    await store.open()
    started = time.perf_counter()
    checked = await check_archive_with_state(store, {signer.key_id: signer.public_key}, state, VerifyOptions())
    elapsed = time.perf_counter() - started
    report = checked.report
    return elapsed, report.objects_read, report.records_checked, dump_state(checked.state), report.clean


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segments", type=int, default=400)
    parser.add_argument("--per-segment", type=int, default=1000)
    parser.add_argument("--growth", type=float, default=0.01, help="how much the archive grows before the re-run")
    args = parser.parse_args()
    signer = Ed25519Signer(Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
    grown = args.segments + max(1, round(args.segments * args.growth))
    print(f"building {grown} segments of {args.per_segment} records ...", flush=True)
    started = time.perf_counter()
    full = build_archive(signer, segments=grown, per_segment=args.per_segment)
    print(f"built in {time.perf_counter() - started:.1f} s", flush=True)
    base_keys = set(full.segment_keys[: args.segments]) | set(full.checkpoint_keys[: args.segments])
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory) / "archive"
        write(root, {k: v for k, v in full.objects.items() if k in base_keys})
        full_time, full_objects, full_records, state_bytes, clean = asyncio.run(verify(root, signer, None))
        print(
            f"full verify:        {full_time:7.3f} s, {full_objects} objects, {full_records} records, "
            f"{full_records / full_time:,.0f} records/s, clean={clean}"
        )
        write(root, full.objects)
        state = load_state(state_bytes, "state", str(root))
        inc_time, inc_objects, inc_records, _, clean = asyncio.run(verify(root, signer, state))
        print(
            f"incremental verify: {inc_time:7.3f} s, {inc_objects} objects, {inc_records} records, clean={clean} "
            f"(archive grew by {grown - args.segments} segments, {args.growth:.0%})"
        )
        print(f"incremental / full: {inc_time / full_time:.3f} (target <= 0.05)")


if __name__ == "__main__":
    main()
