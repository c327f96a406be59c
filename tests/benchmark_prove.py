"""Benchmark: one record's proof from a 10-million-record chain in the embedded S3.

    python tests/benchmark_prove.py [--records 10000000] [--per-segment 100000] [--samples 20] [--sign-all]

Builds one chain in a fresh embedded S3 (SeaweedFS, Object Lock GOVERNANCE) the way the writer stores
it: segments of ``--per-segment`` records, a checkpoint and its signed note after each, and the hash
tiles above level 0. Then, for ``--samples`` records spread over the chain, it times
``build_proof`` (a fresh S3 client each time: the binary search for the newest note, the tiles on the
path, the segment listing and the segments holding the record's level-0 tile) and checks each proof
offline with ``verify_proof``; last it times the ``collector-ext prove`` and ``verify-proof`` commands
as a user runs them (Python start-up included).

Signing ten million records with Ed25519 takes this machine 20 minutes or more, and the proof of one
record checks only that record's signature. So by default only the sampled records are signed and
the others carry a placeholder signature (64 zero bytes): the archive is a benchmark fixture that
`verify` would refuse, while every proof measured here verifies in full. ``--sign-all`` signs every
record. This is a benchmark, not a test: it asserts nothing and is not collected by pytest.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from collector_ext.deliver.archive import ArchiveStore
from collector_ext.embedded_s3 import EmbeddedS3
from collector_ext.prove.build import build_proof
from collector_ext.prove.proof_file import encode_proof, verify_proof
from collector_ext.seal.chain import ChainHead, chain_entries, genesis_payload, sign_entry_hashes
from collector_ext.seal.checkpoint import Checkpoint, SegmentRef, sign_checkpoint
from collector_ext.seal.entry import EntryKind
from collector_ext.seal.keys import Ed25519Signer
from collector_ext.seal.layout import checkpoint_key, checkpoint_note_key, segment_key, tile_key
from collector_ext.seal.merkle import leaf_hash
from collector_ext.seal.note import chain_origin, checkpoint_text, sign_note
from collector_ext.seal.segment import encode_segment
from collector_ext.seal.tiles import Tile, TileBuilder
from collector_ext.service import open_archive

BASE_TIME = 1_790_000_000_000_000_000
PLACEHOLDER_SIGNATURE = bytes(64)


async def build_chain(
    store: ArchiveStore,
    signer: Ed25519Signer,
    archive_id: str,
    records: int,
    per_segment: int,
    sampled: set[int],
    sign_all: bool,
) -> bytes:
    chain_id = bytes(range(0xC0, 0xD0))
    head = ChainHead.new(chain_id)
    tiles = TileBuilder()
    origin = chain_origin(archive_id, chain_id)
    previous_checkpoint = b""
    stored_partials: set[tuple[int, int, int]] = set()
    started = time.monotonic()
    puts: list[asyncio.Task[None]] = []

    async def put(key: str, data: bytes) -> None:
        await store.put(key, data, hashlib.sha256(data).digest())

    number = 0
    while head.next_sequence < records:
        first = head.next_sequence
        count = min(per_segment, records - first)
        entries: list[bytes] = []
        hashes: list[bytes] = []
        if first == 0:
            genesis = genesis_payload(signer.public_key, writer="benchmark", reason="benchmark", archive_id=archive_id)
            batch = chain_entries(head, EntryKind.GENESIS, [genesis], signer.key_id, BASE_TIME)
            head = batch.head
            entries += batch.entries
            hashes += batch.hashes
        payloads = [b"inference %d" % s for s in range(head.next_sequence, first + count)]
        batch = chain_entries(head, EntryKind.LOG_RECORD, payloads, signer.key_id, BASE_TIME + first)
        head = batch.head
        entries += batch.entries
        hashes += batch.hashes
        if sign_all:
            signatures = sign_entry_hashes(signer, hashes)
        else:
            signatures = [
                sign_entry_hashes(signer, [h])[0] if first + i in sampled else PLACEHOLDER_SIGNATURE
                for i, h in enumerate(hashes)
            ]
        data = encode_segment(
            chain_id=chain_id,
            first_sequence=first,
            created_unix_nano=BASE_TIME,
            entries=entries,
            signatures=signatures,
        )
        last = first + len(entries) - 1
        key = segment_key("", chain_id, first, last, BASE_TIME)
        await put(key, data)
        completed: list[Tile] = [t for t in tiles.extend(leaf_hash(e) for e in entries) if t.level > 0]
        partials = tiles.partial_tiles()
        new_partials = [t for t in partials if (t.level, t.index, t.width) not in stored_partials]
        stored_partials = {(t.level, t.index, t.width) for t in partials}
        puts += [
            asyncio.create_task(put(tile_key("", chain_id, t.level, t.index, t.width), t.encode()))
            for t in completed + new_partials
        ]
        checkpoint = Checkpoint(
            chain_id=chain_id,
            checkpoint_number=number,
            previous_checkpoint_sha256=previous_checkpoint,
            last_sequence=last,
            head_sha256=head.head_hash,
            time_unix_nano=BASE_TIME + last,
            key_id=signer.key_id,
            segments=(SegmentRef(key, first, last, hashlib.sha256(data).digest(), len(data)),),
        )
        checkpoint_data, previous_checkpoint = sign_checkpoint(checkpoint, signer)
        note = sign_note(checkpoint_text(origin, tiles.size, tiles.root()), origin, signer)
        await asyncio.gather(*puts)
        puts = []
        await put(checkpoint_note_key("", chain_id, number, last), note)
        await put(checkpoint_key("", chain_id, number, last), checkpoint_data)
        number += 1
        if number % 10 == 0:
            rate = tiles.size / (time.monotonic() - started)
            print(f"  built {tiles.size:,} records ({rate:,.0f}/s)", file=sys.stderr, flush=True)
    return chain_id


async def time_proofs(
    url: str, endpoint: str, chain_id: bytes, samples: list[int], signer: Ed25519Signer
) -> tuple[list[float], int, int]:
    times = []
    objects = size = 0
    for sequence in samples:
        started = time.perf_counter()
        store = open_archive(url, for_writing=False, endpoint_url=endpoint)
        await store.open()
        try:
            built = await build_proof(store, chain_id, sequence, sequence)
        finally:
            await store.close()
        times.append(time.perf_counter() - started)
        data = encode_proof(built.proof)
        verify_proof(data, signer.public_key)  # raises if the proof does not hold
        objects = max(objects, built.objects_read)
        size = max(size, len(data))
    return times, objects, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=10_000_000)
    parser.add_argument("--per-segment", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--sign-all", action="store_true", help="sign every record (slow), not only the sampled")
    args = parser.parse_args()
    rng = random.Random(11)
    samples = sorted({0, args.records - 1, *(rng.randrange(args.records) for _ in range(args.samples - 2))})
    signer = Ed25519Signer(Ed25519PrivateKey.generate())
    with tempfile.TemporaryDirectory(prefix="benchmark-prove-") as work, EmbeddedS3(Path(work) / "s3") as s3:
        os.environ.update(AWS_ACCESS_KEY_ID=s3.access_key, AWS_SECRET_ACCESS_KEY=s3.secret_key, AWS_REGION=s3.region)
        bucket = s3.create_bucket("proofs", mode="GOVERNANCE", days=1)
        url = f"s3://{bucket}/audit"

        async def build() -> bytes:
            store = open_archive(
                url, for_writing=True, retention_mode="GOVERNANCE", retention_days=1, endpoint_url=s3.endpoint_url
            )
            await store.open()
            try:
                return await build_chain(
                    store, signer, url, args.records, args.per_segment, set(samples), args.sign_all
                )
            finally:
                await store.close()

        started = time.monotonic()
        chain_id = asyncio.run(build())
        print(f"archive: {args.records:,} records in one chain, built in {time.monotonic() - started:.0f} s")
        times, objects, size = asyncio.run(time_proofs(url, s3.endpoint_url, chain_id, samples, signer))
        print(
            f"build_proof, one record, fresh S3 client each: median {statistics.median(times) * 1000:.0f} ms, "
            f"max {max(times) * 1000:.0f} ms over {len(times)} records (every proof verified); "
            f"at most {objects} objects read; proof file at most {size:,} bytes"
        )
        public = Path(work) / "signing.pub"
        public.write_bytes(signer.public_key.pem())
        command = [sys.executable, "-m", "collector_ext.cli"]
        proof_path = Path(work) / "one.tlog-proof"
        middle = samples[len(samples) // 2]
        started = time.perf_counter()
        subprocess.run(
            [*command, "prove", "--archive", url, "--endpoint-url", s3.endpoint_url, "--chain", chain_id.hex(),
             "--seq", str(middle), "--out", str(proof_path)],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        prove_seconds = time.perf_counter() - started
        started = time.perf_counter()
        subprocess.run(
            [*command, "verify-proof", str(proof_path), "--public-key", str(public)],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        check_seconds = time.perf_counter() - started
        print(
            f"collector-ext prove (seq {middle}): {prove_seconds:.2f} s wall, Python start-up included; "
            f"verify-proof: {check_seconds:.2f} s"
        )


if __name__ == "__main__":
    main()
