"""Verify speed: a daily audit with ``verify --state`` next to a full verify, and (``--scale``) verify
from S3 at scale, in shards and worker processes.

Default: builds one chain in a local directory archive (deterministic: a longer build starts with the
same objects), verifies it whole with a state file, grows it by ``--growth`` (1% by default), and
verifies again with the state. Prints both times, the objects each run read, and the ratio; the
target is an incremental run that costs at most 5% of the full one when the archive grew by 1%.

``--scale``: builds ``--chains`` chains (in worker processes), stores them in the embedded SeaweedFS
(S3 with Object Lock, on loopback), and prints, from one run:

- the Ed25519 verify rates of pyca/cryptography and of libsodium (PyNaCl) on 1 and 2 threads;
- verify from S3 in one process, in records/s, through the chain and the signed checkpoints (the fast
  path) and with ``--all-signatures`` (as a ratio to the fastest 2-thread verify rate);
- ``verify --processes N`` for N in ``--processes`` (shards in local worker processes), split by chain
  and by range (``--shard-by range``: each chain cut into ranges of segments at checkpoints, so one long
  chain uses N processes), with the speed-up over one process;
- that the merged verdict of N shards equals the single run's, split either way, on the clean archive,
  on a tampered copy (a modified record, a removed segment, a stray object) and on a copy tampered at
  the seams of two ranges (the segment after the middle checkpoint removed, that checkpoint replaced
  by the next one's bytes).

    python tests/benchmark_verify.py --segments 400 --per-segment 1000
    python tests/benchmark_verify.py --scale --chains 8 --segments 25 --per-segment 1000 --processes 1,2,4
    python tests/benchmark_verify.py --scale --chains 1 --segments 40 --per-segment 2000 --processes 1,2
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import os
import resource
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import nacl.signing
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collector_ext.config import archive_id_for
from collector_ext.deliver.directory_archive import DirectoryArchive
from collector_ext.embedded_s3 import EmbeddedS3
from collector_ext.seal.chain import genesis_payload
from collector_ext.seal.keys import Ed25519Signer
from collector_ext.seal.layout import checkpoint_note_key, parse_checkpoint_key
from collector_ext.seal.merkle import CompactRange, leaf_hash
from collector_ext.seal.note import chain_origin, checkpoint_text, sign_note
from collector_ext.seal.segment import decode_segment
from collector_ext.service import open_archive
from collector_ext.verify.parallel import check_in_processes
from collector_ext.verify.run import VerifyOptions, check_archive, check_archive_with_state
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


# -- --scale ----------------------------------------------------------------------------------------

SIGNER_SEED = bytes(range(32))


def _build_chain(number: int, segments: int, per_segment: int, archive_id: str) -> dict[str, bytes]:
    """One chain of the scale archive (run in a worker process: building signs every record), with a
    checkpoint note beside each checkpoint, as the writer stores them by default (so verify's default
    mode also checks the Merkle tree, FORMAT.md 16.6)."""
    signer = Ed25519Signer(Ed25519PrivateKey.from_private_bytes(SIGNER_SEED))
    genesis = genesis_payload(signer.public_key, writer="benchmark", reason="benchmark", archive_id=archive_id)
    chain_id = hashlib.sha256(b"benchmark chain %d" % number).digest()[:16]
    built = build_archive(signer, segments=segments, per_segment=per_segment, chain_id=chain_id, genesis=genesis)
    origin = chain_origin(archive_id, chain_id)
    tree = CompactRange()
    for segment_key, checkpoint in zip(built.segment_keys, built.checkpoint_keys, strict=True):
        tree = tree.extend([leaf_hash(record.entry) for record in decode_segment(built.objects[segment_key]).records])
        parsed = parse_checkpoint_key(checkpoint)
        assert parsed is not None and parsed.last_sequence + 1 == tree.size
        note = sign_note(checkpoint_text(origin, tree.size, tree.root()), origin, signer)
        built.objects[checkpoint_note_key("", chain_id, parsed.checkpoint_number, parsed.last_sequence)] = note
    return built.objects


def _verify_rate(name: str, threads: int, seconds: float = 2.0) -> float:
    """Signatures verified per second by ``name`` (pyca or libsodium) on ``threads`` threads."""
    message = b"collector-ext record signature benchmark message".ljust(64, b".")
    if name == "pyca":
        private = Ed25519PrivateKey.from_private_bytes(SIGNER_SEED)
        public = private.public_key()
        signature = private.sign(message)

        def verify_many(count: int) -> None:
            for _ in range(count):
                public.verify(signature, message)

    else:
        signing = nacl.signing.SigningKey(SIGNER_SEED)
        verify_key = signing.verify_key
        signature = signing.sign(message).signature

        def verify_many(count: int) -> None:
            for _ in range(count):
                verify_key.verify(message, signature)

    verify_many(200)  # warm up
    batch = 500
    done = 0
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        while time.perf_counter() - started < seconds:
            list(pool.map(verify_many, [batch] * threads))
            done += batch * threads
    return done / (time.perf_counter() - started)


def _tampered(objects: dict[str, bytes]) -> dict[str, bytes]:
    """A copy with one record's payload changed, one segment removed and a stray object added."""
    copy = dict(objects)
    segments = sorted(k for k in copy if "/segments/" in k)
    target = segments[len(segments) // 3]
    data = bytearray(copy[target])
    data[len(data) // 2] ^= 0x01
    copy[target] = bytes(data)
    del copy[segments[(2 * len(segments)) // 3]]
    copy["stray.txt"] = b"not an archive object"
    return copy


def _tampered_at_seams(objects: dict[str, bytes]) -> dict[str, bytes]:
    """A copy where each chain is tampered at the seam of two equal ranges (its middle checkpoint): the
    segment after it removed, and the checkpoint replaced by the bytes of the next one."""
    copy = dict(objects)
    chains = sorted({key.split("/")[0] for key in copy if "/segments/" in key})
    for chain in chains:
        segments = sorted(k for k in copy if k.startswith(f"{chain}/segments/"))
        checkpoints = sorted(k for k in copy if k.startswith(f"{chain}/checkpoints/"))
        middle = len(segments) // 2
        del copy[segments[middle + 1]]
        copy[checkpoints[middle - 1]] = copy[checkpoints[middle]]
    return copy


def _upload(client: Any, bucket: str, prefix: str, objects: dict[str, bytes]) -> None:
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(
            pool.map(
                lambda item: client.put_object(Bucket=bucket, Key=f"{prefix}/{item[0]}", Body=item[1]), objects.items()
            )
        )


async def _verify_s3(
    url: str, endpoint_url: str, signer: Ed25519Signer, all_signatures: bool, archive_id: str
) -> tuple[float, Any]:
    store = open_archive(url, for_writing=False, endpoint_url=endpoint_url)
    await store.open()
    try:
        started = time.perf_counter()
        cpu = time.process_time()
        report = await check_archive(
            store,
            {signer.key_id: signer.public_key},
            VerifyOptions(check_all_signatures=all_signatures, archive_id=archive_id),
        )
        elapsed = time.perf_counter() - started
        print(
            f"  (the verifier's CPU: {(time.process_time() - cpu) * 1e6 / max(1, report.records_checked):.2f} us per "
            f"record, {elapsed:.2f} s wall)"
        )
        return elapsed, report
    finally:
        await store.close()


def _load_keys() -> dict[bytes, Any]:
    signer = Ed25519Signer(Ed25519PrivateKey.from_private_bytes(SIGNER_SEED))
    return {signer.key_id: signer.public_key}


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished child processes (the workers, once joined)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _in_processes(
    url: str, endpoint_url: str, processes: int, archive_id: str, by: str = "chain"
) -> tuple[float, float, Any]:
    """Wall time, CPU time (parent and workers) and the merged report of ``verify --processes``."""
    opener = functools.partial(open_archive, url, for_writing=False, endpoint_url=endpoint_url)
    cpu = _cpu_seconds()
    started = time.perf_counter()
    report, _ = check_in_processes(opener, _load_keys, VerifyOptions(archive_id=archive_id), processes, by)
    return time.perf_counter() - started, _cpu_seconds() - cpu, report


def run_scale(chains: int, segments: int, per_segment: int, process_counts: list[int]) -> None:
    print(f"load before: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} (1, 5 min) on {os.cpu_count()} CPUs")
    signer = Ed25519Signer(Ed25519PrivateKey.from_private_bytes(SIGNER_SEED))
    rates = {(name, threads): _verify_rate(name, threads) for name in ("pyca", "libsodium") for threads in (1, 2)}
    for (name, threads), rate in rates.items():
        print(f"Ed25519 verify, {name:9} {threads} thread(s): {rate:10,.0f} signatures/s")
    fastest_name = max(("pyca", "libsodium"), key=lambda name: rates[(name, 2)])
    with EmbeddedS3() as s3:
        os.environ.update(AWS_ACCESS_KEY_ID=s3.access_key, AWS_SECRET_ACCESS_KEY=s3.secret_key, AWS_REGION=s3.region)
        bucket = s3.create_bucket("verify-bench", mode="GOVERNANCE", days=1)
        url = f"s3://{bucket}/archive"
        archive_id = archive_id_for(url)  # the tampered copy is checked as if it were the archive
        print(f"building {chains} chains x {segments} segments x {per_segment} records ...", flush=True)
        started = time.perf_counter()
        objects: dict[str, bytes] = {}
        with ProcessPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            for built in pool.map(
                _build_chain, range(chains), [segments] * chains, [per_segment] * chains, [archive_id] * chains
            ):
                objects |= built
        records = chains * segments * per_segment
        megabytes = sum(len(v) for v in objects.values()) / 1e6
        print(
            f"built {records:,} records, {len(objects)} objects, {megabytes:.0f} MB in {time.perf_counter() - started:.0f} s"
        )
        client = s3.client()
        _upload(client, bucket, "archive", objects)
        tampered_url = f"s3://{bucket}/tampered"
        _upload(client, bucket, "tampered", _tampered(objects))
        print(f"load now: {os.getloadavg()[0]:.2f}", flush=True)

        for attempt in ("first run", "second run"):
            # The first reads from a SeaweedFS that has just been filled; both are shown.
            elapsed, single = asyncio.run(_verify_s3(url, s3.endpoint_url, signer, False, archive_id))
            print(
                f"verify from S3, 1 process, chain + signed checkpoints: {single.records_checked / elapsed:10,.0f} "
                f"records/s ({attempt}, {elapsed:.2f} s, clean={single.clean}; target >= 300,000)"
            )
        # The machine's load changes from minute to minute: the denominator is measured just before and
        # just after the run it divides.
        before = _verify_rate(fastest_name, 2)
        elapsed_all, thorough = asyncio.run(_verify_s3(url, s3.endpoint_url, signer, True, archive_id))
        around = (before + _verify_rate(fastest_name, 2)) / 2
        all_rate = thorough.records_checked / elapsed_all
        print(
            f"verify from S3, --all-signatures:                   {all_rate:10,.0f} records/s "
            f"= {all_rate / around:.2f} x the fastest 2-thread verify rate ({fastest_name}, {around:,.0f}/s "
            f"measured around it; target >= 0.8)"
        )
        with tempfile.TemporaryDirectory() as directory:
            # The same archive as a local copy: what reading from S3 costs on top of checking.
            write(Path(directory), objects)
            elapsed, local = asyncio.run(_verify_s3(directory, "", signer, False, archive_id))
            print(
                f"verify a local copy, 1 process:                     {local.records_checked / elapsed:10,.0f} records/s "
                f"({elapsed:.2f} s, clean={local.clean})"
            )
        start_method = "fork" if threading.active_count() == 1 else "spawn"
        print(f"worker processes are started with {start_method} ({threading.active_count()} thread(s) here)")
        for by in ("chain", "range"):
            base = None
            for processes in process_counts:
                load = os.getloadavg()[0]
                elapsed, cpu, merged = _in_processes(url, s3.endpoint_url, processes, archive_id, by)
                base = base or elapsed
                print(
                    f"verify --processes {processes} --shard-by {by:5}: {merged.records_checked / elapsed:10,.0f} "
                    f"records/s ({elapsed:.2f} s, {cpu:.2f} CPU s in the verifier's processes, load {load:.1f}), "
                    f"speed-up {base / elapsed:.2f} x over 1 process; merged == single run: {merged == single}"
                )
        seams_url = f"s3://{bucket}/tampered-at-seams"
        _upload(client, bucket, "tampered-at-seams", _tampered_at_seams(objects))
        for name, copy_url in (("tampered copy", tampered_url), ("copy tampered at the seams", seams_url)):
            _, tampered_single = asyncio.run(_verify_s3(copy_url, s3.endpoint_url, signer, False, archive_id))
            for by in ("chain", "range"):
                for processes in process_counts:
                    _, _, tampered_merged = _in_processes(copy_url, s3.endpoint_url, processes, archive_id, by)
                    kinds = sorted({f.kind.value for f in tampered_merged.findings})
                    print(
                        f"{name}, {processes} shard(s) by {by}: merged == single run: "
                        f"{tampered_merged == tampered_single}, clean={tampered_merged.clean}, kinds {kinds}"
                    )
    print(f"load after: {os.getloadavg()[0]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segments", type=int, default=400, help="segments (per chain with --scale)")
    parser.add_argument("--per-segment", type=int, default=1000)
    parser.add_argument("--growth", type=float, default=0.01, help="how much the archive grows before the re-run")
    parser.add_argument("--scale", action="store_true", help="verify from S3 at scale, in shards and processes")
    parser.add_argument("--chains", type=int, default=8, help="--scale: chains in the archive")
    parser.add_argument("--processes", default="1,2,4", help="--scale: worker process counts to measure")
    args = parser.parse_args()
    if args.scale:
        run_scale(args.chains, args.segments, args.per_segment, [int(n) for n in args.processes.split(",")])
        return
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
