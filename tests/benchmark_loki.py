"""The Loki part of the benchmark: CPU of mapping and encoding per record, in signatures.

    python tests/benchmark_loki.py [--records 20000]

Seals the benchmark's records (tests/benchmark.py ``make_request``), then times, on this process's
CPU clock and in the same run as a 1-thread Ed25519 signing rate:
  - the mapping's way: ``EntryMapper.map_entry`` then ``encode_protobuf_uncompressed`` (what the
    Loki sender did before it encoded entries directly, and what the verifier's cross-check uses);
  - the sender's way: ``EntryEncoder.encode`` then ``protobuf_body``;
both with the entry hash the sender computes and the snappy compression of the body. Best of five
rounds each. tests/benchmark.py imports ``encoding_cost`` and ``loki_process`` for its Loki phase.
This is a benchmark, not a test: it asserts only that both ways give the same body.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from collector_ext.deliver.loki.mapping import EntryMapper
from collector_ext.deliver.loki.process import PROCESS_NAME
from collector_ext.deliver.loki.push import (
    EntryEncoder,
    encode_protobuf_uncompressed,
    protobuf_body,
    snappy_block,
)
from collector_ext.seal.chain import ChainHead, chain_entries
from collector_ext.seal.entry import ENTRY_HASH_PREFIX, EntryKind
from collector_ext.seal.payload import log_payloads


def loki_process(pids: list[int]) -> int | None:
    """Which of ``pids`` is the sidecar's Loki sender (it names itself, see deliver/loki/process.py)."""
    for pid in pids:
        try:
            if Path(f"/proc/{pid}/comm").read_bytes().strip() == PROCESS_NAME:
                return pid
        except OSError:
            continue
    return None


def _sealed(records: int) -> tuple[list[bytes], list[bytes]]:
    from tests.benchmark import make_request

    entries: list[bytes] = []
    head = ChainHead(bytes(range(16)), 0, bytes(32))
    for seed in range(max(1, records // 500)):
        request = ExportLogsServiceRequest.FromString(make_request(500, seed))
        batch = chain_entries(head, EntryKind.LOG_RECORD, log_payloads(request), b"k" * 8, time.time_ns())
        entries += batch.entries
        head = batch.head
    # Signatures are opaque to the mapping: 64 bytes that differ per record are enough.
    signatures = [hashlib.sha512(entry).digest() for entry in entries]
    return entries, signatures


def _mapping_way(entries: list[bytes], signatures: list[bytes]) -> bytes:
    mapper = EntryMapper()
    base = hashlib.sha256(ENTRY_HASH_PREFIX)
    mapped = []
    for entry, signature in zip(entries, signatures, strict=True):
        digest = base.copy()
        digest.update(entry)
        loki_entry = mapper.map_entry(entry, digest.digest(), signature)
        if loki_entry is not None:
            mapped.append(loki_entry)
    return snappy_block(encode_protobuf_uncompressed(mapped))


def _sender_way(entries: list[bytes], signatures: list[bytes]) -> bytes:
    encoder = EntryEncoder(EntryMapper())
    base = hashlib.sha256(ENTRY_HASH_PREFIX)
    encoded = []
    for entry, signature in zip(entries, signatures, strict=True):
        digest = base.copy()
        digest.update(entry)
        loki_entry = encoder.encode(entry, digest.digest(), signature)
        if loki_entry is not None:
            encoded.append(loki_entry)
    return snappy_block(protobuf_body(encoded))


def encoding_cost(records: int = 20_000, rounds: int = 5) -> dict[str, float]:
    """CPU microseconds per record of both ways (best of ``rounds``), and the body size per record."""
    entries, signatures = _sealed(records)
    costs: dict[str, float] = {}
    bodies = {}
    for name, way in (("mapping", _mapping_way), ("sender", _sender_way)):
        best = float("inf")
        for _ in range(rounds):
            started = time.process_time()
            bodies[name] = way(entries, signatures)
            best = min(best, time.process_time() - started)
        costs[name] = best / len(entries) * 1e6
    # Both bodies hold one stream, so they are the same bytes.
    assert bodies["mapping"] == bodies["sender"], "the sender's encoding differs from the mapping's"
    costs["body_bytes"] = len(bodies["sender"]) / len(entries)
    return costs


def signature_cpu_us(count: int = 5000) -> dict[str, float]:
    """CPU microseconds of one signature of a record-sized message, by implementation (pyca's
    cryptography and libsodium through PyNaCl), best of three; on the CPU clock, like the costs it
    is compared with, so that a loaded machine does not flatter either side."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from nacl.signing import SigningKey

    message = b"collector-ext/v1/record-signature\x00" + bytes(32)
    signers = {
        "pyca": Ed25519PrivateKey.generate().sign,
        "libsodium": SigningKey.generate().sign,
    }
    costs = {}
    for name, sign in signers.items():
        best = float("inf")
        for _ in range(3):
            started = time.process_time()
            for _ in range(count):
                sign(message)
            best = min(best, time.process_time() - started)
        costs[name] = best / count * 1e6
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=20_000)
    args = parser.parse_args()
    signatures = signature_cpu_us()
    signature_us = min(signatures.values())
    costs = encoding_cost(args.records)
    print(
        "one Ed25519 signature, CPU (best of 3): "
        + ", ".join(f"{name} {us:.1f} us" for name, us in signatures.items())
        + f"; the unit below is the fastest, {signature_us:.1f} us"
    )
    for name in ("mapping", "sender"):
        print(
            f"Loki {name}'s way: {costs[name]:.1f} us CPU per record = {costs[name] / signature_us:.2f} signatures "
            "(hash, map, encode, snappy; target <= 0.30)"
        )
    print(f"snappy body: {costs['body_bytes']:.0f} bytes per record")


if __name__ == "__main__":
    main()
