"""The Loki part of the benchmark: CPU of mapping and encoding per record, in signatures.

    python tests/benchmark_loki.py [--records 20000]

Seals the benchmark's records (tests/benchmark.py ``make_request``), then times, on this process's
CPU clock and interleaved with one signature of each Ed25519 implementation the sidecar can use:
  - the mapping's way: ``EntryMapper.map_entry`` then ``encode_protobuf_uncompressed`` (what the
    Loki sender did before it encoded entries directly, and what the verifier's cross-check uses);
  - the sender's way: ``EntryEncoder.encode`` then ``protobuf_body``;
both with the entry hash the sender computes and the snappy compression of the body. Best of five
rounds. tests/benchmark.py imports ``encoding_cost`` and ``loki_process`` for its Loki phase.
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
    """CPU microseconds per record of both ways and of one signature by each implementation the
    sidecar can sign with (``signature:<name>``), best of ``rounds`` rounds that interleave them (so a
    busy moment of a shared machine weighs on both sides of the ratio), and the body size per record."""
    entries, signatures = _sealed(records)
    costs: dict[str, float] = {}
    bodies = {}
    for _ in range(rounds):
        for name, us in signature_cpu_us(2000).items():
            costs[f"signature:{name}"] = min(costs.get(f"signature:{name}", float("inf")), us)
        for name, way in (("mapping", _mapping_way), ("sender", _sender_way)):
            started = time.process_time()
            bodies[name] = way(entries, signatures)
            us = (time.process_time() - started) / len(entries) * 1e6
            costs[name] = min(costs.get(name, float("inf")), us)
    # Both bodies hold one stream, so they are the same bytes.
    assert bodies["mapping"] == bodies["sender"], "the sender's encoding differs from the mapping's"
    costs["body_bytes"] = len(bodies["sender"]) / len(entries)
    return costs


def signature_cpu_us(count: int = 5000) -> dict[str, float]:
    """CPU microseconds of one signature of a record-sized message by each Ed25519 implementation
    the sidecar can sign with (``keys.ED25519_IMPLEMENTATIONS``), on the CPU clock like the costs it
    is compared with."""
    from collector_ext.seal.keys import ED25519_IMPLEMENTATIONS

    message = b"collector-ext/v1/record-signature\x00" + bytes(32)
    costs = {}
    for name, make in ED25519_IMPLEMENTATIONS.items():
        sign = make(hashlib.sha256(name.encode()).digest())
        started = time.process_time()
        for _ in range(count):
            sign(message)
        costs[name] = (time.process_time() - started) / count * 1e6
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=20_000)
    args = parser.parse_args()
    from collector_ext.seal.keys import SIGNING_IMPLEMENTATION

    costs = encoding_cost(args.records)
    names = [key.split(":", 1)[1] for key in costs if key.startswith("signature:")]
    print("one Ed25519 signature, CPU: " + ", ".join(f"{name} {costs['signature:' + name]:.1f} us" for name in names))
    for way in ("mapping", "sender"):
        in_signatures = ", ".join(f"{costs[way] / costs['signature:' + name]:.2f} {name}" for name in names)
        print(
            f"Loki {way}'s way: {costs[way]:.1f} us CPU per record = {in_signatures} signatures "
            f"(hash, map, encode, snappy; target <= 0.30; the sidecar signs with {SIGNING_IMPLEMENTATION})"
        )
    print(f"snappy body: {costs['body_bytes']:.0f} bytes per record")


if __name__ == "__main__":
    main()
