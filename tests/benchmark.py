"""End-to-end benchmark: records/s through the whole sidecar beside this machine's Ed25519 rate.

    python tests/benchmark.py [--seconds 10] [--archive s3|dir] [--batch 500] [--in-flight 8]
                              [--modes spool,archive] [--loki]

One run measures, on the same machine and at the same time of day:
  1. the raw Ed25519 signing rate with 1 and 2 threads of every implementation the package depends on
     (libsodium through PyNaCl, pyca/cryptography; the sidecar's message size); the fastest 2-thread
     rate is the denominator of every ratio below;
  2. the sidecar (`collector-ext serve`, its own process) sealing and archiving OTLP batches sent by a
     load generator in another process, at full speed: records/s acknowledged (every acknowledged
     record is signed, chained and stored in the archive);
  3. Export latency (p50/p99) at half that rate, paced;
  4. the sidecar's peak RSS (VmHWM) over the whole run, which ends with an overload phase (many
     more requests in flight than the sidecar can take: it must refuse, not grow);
  5. the CPU per record of each pure stage of the sealing path (parse, checks, payloads, chain, leaf
     hashes, segment encoding), in signatures;
  6. `verify` of the resulting archive: records/s through chain and signed checkpoints, and with
     every record signature checked.
Steps 2-4 run once per acknowledgement mode (``spool``: Export succeeds once fsynced to the local
spool; ``archive``: once stored in the archive), and a table compares them. The first mode then
runs full speed in ``--tree-pairs`` pairs with the Merkle tree on, then off (``checkpoint.merkle_tree``),
alternating, for the tree's cost: the median drop of the ratio and the CPU per record it adds. It
prints ratios, because absolute numbers on shared machines are noisy. This is a benchmark, not a
test: it asserts nothing and is not collected by pytest.

With ``--loki`` the sidecar also pushes to the test Loki (tests/loki_receiver.py, in a process of its own),
and the run adds: the Loki mapping and encoding CPU per record in signatures (tests/benchmark_loki.py),
the Loki process's own CPU per entry pushed, and the Loki process (``loki``) among the peak RSS by
process, which the overload phase's total includes.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import multiprocessing as mp
import os
import pickle
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path

import grpc
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs

EXPORT = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
MESSAGE = b"collector-ext/v1/record-signature\x00" + bytes(32)


def signing_rate(threads: int, seconds: float = 2.0, implementation: str = "pyca") -> tuple[float, float]:
    """Signatures/s of one Ed25519 implementation (``keys.ED25519_IMPLEMENTATIONS``) on ``threads``
    threads, through the same signing function the sidecar would call, and the CPU seconds one
    signature took (thread CPU time, which other load on the machine does not inflate)."""
    from collector_ext.seal.keys import ED25519_IMPLEMENTATIONS

    sign = ED25519_IMPLEMENTATIONS[implementation](os.urandom(32))
    counts = [0] * threads
    cpu = [0.0] * threads
    stop = time.monotonic() + seconds

    def work(index: int) -> None:
        n = 0
        cpu_started = time.thread_time()
        while time.monotonic() < stop:
            for _ in range(200):
                sign(MESSAGE)
            n += 200
        cpu[index] = time.thread_time() - cpu_started
        counts[index] = n

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    started = time.monotonic()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(counts) / (time.monotonic() - started), sum(cpu) / max(1, sum(counts))


def signing_rates(rounds: int = 3, seconds: float = 1.0) -> tuple[dict[tuple[str, int], float], dict[str, float]]:
    """Best of ``rounds`` for every implementation on 1 and 2 threads, interleaved so that a slow
    moment of the shared machine does not fall on one implementation only; and each
    implementation's least CPU time per signature (1 thread)."""
    from collector_ext.seal.keys import ED25519_IMPLEMENTATIONS

    best: dict[tuple[str, int], float] = {}
    cpu: dict[str, float] = {}
    for _ in range(rounds):
        for name in ED25519_IMPLEMENTATIONS:
            for threads in (1, 2):
                rate, cpu_per_signature = signing_rate(threads, seconds, name)
                best[name, threads] = max(best.get((name, threads), 0.0), rate)
                if threads == 1:
                    cpu[name] = min(cpu.get(name, float("inf")), cpu_per_signature)
    return best, cpu


def stage_costs(batch: int, signature_cpu: float, rounds: int = 20) -> dict[str, float]:
    """CPU per record of each pure stage of the sealing path, in the sidecar's signatures, on the
    benchmark's own requests (the least of ``rounds`` on the thread CPU clock). What is left of the
    sidecar's CPU per record beyond these and the signature is gRPC, hand-offs and I/O."""
    from collector_ext.receive.otlp_protobuf import parse_protobuf_request, parse_scalar_request
    from collector_ext.receive.validate import check_request
    from collector_ext.receive.wire_cost import protobuf_decode_cost
    from collector_ext.seal.chain import ChainHead
    from collector_ext.seal.chain import chain_entries as chain
    from collector_ext.seal.entry import EntryKind
    from collector_ext.seal.merkle import concatenated_leaf_hashes
    from collector_ext.seal.payload import log_payloads
    from collector_ext.seal.segment import encode_segment
    from collector_ext.seal.tiles import TileBuilder, extend_by_segments

    body = make_request(batch)
    # The receivers' path (receive.otlp_grpc.decode_message): a request without nested values is
    # decoded as such and checked from its counts and ids; any other is decoded in full and walked.
    scalar = parse_scalar_request(body)
    request = scalar if scalar is not None else parse_protobuf_request(body)
    payloads = log_payloads(request)
    head = ChainHead.new(bytes(16))
    entries = chain(head, EntryKind.LOG_RECORD, payloads, bytes(8), 1).entries
    signatures = [bytes(64)] * len(entries)
    lengths = array.array("I", map(len, entries))
    stages = {
        "admission pricing (wire_cost)": lambda: protobuf_decode_cost(body, 1 << 40),
        "parse (protobuf, re-encoded to compare)": (
            (lambda: parse_scalar_request(body)) if scalar is not None else (lambda: parse_protobuf_request(body))
        ),
        "request checks (validate)": lambda: check_request(request, scalar_only=scalar is not None),
        "payloads (payload.log_payloads)": lambda: log_payloads(request),
        "chain (header, SHA-256)": lambda: chain(head, EntryKind.LOG_RECORD, payloads, bytes(8), 1),
        # The tree's share on the event loop: the entries laid end to end for a signing worker.
        "Merkle tree, hand-off to a worker": lambda: pickle.dumps(
            (b"".join(entries), array.array("I", map(len, entries)))
        ),
        # What the worker does with them: leaf hashes, interior nodes and tiles.
        "Merkle tree, on the worker": lambda: extend_by_segments(
            TileBuilder(), [0], [concatenated_leaf_hashes(b"".join(entries), lengths)]
        ),
        "segment encoding": lambda: encode_segment(
            chain_id=bytes(16), first_sequence=0, created_unix_nano=1, entries=entries, signatures=signatures
        ),
    }
    costs: dict[str, float] = {}
    for name, stage in stages.items():
        best = float("inf")
        for _ in range(rounds):
            started = time.thread_time()
            stage()
            best = min(best, time.thread_time() - started)
        costs[name] = best / batch / signature_cpu
    return costs


def make_request(batch: int, seed: int = 0) -> bytes:
    now = time.time_ns()
    records = [
        LogRecord(
            time_unix_nano=now - 1000 * (batch - i),
            severity_number=9,
            severity_text="INFO",
            event_name="gen_ai.client.inference.operation.details",
            body=AnyValue(string_value=f"model call {seed}-{i} finished in 412 ms with 812 input tokens"),
            attributes=[
                KeyValue(key="user.id", value=AnyValue(string_value=f"user-{i % 97}")),
                KeyValue(key="gen_ai.request.model", value=AnyValue(string_value="gpt-4o")),
                KeyValue(key="gen_ai.usage.output_tokens", value=AnyValue(int_value=64 + i % 50)),
            ],
            trace_id=os.urandom(16),
            span_id=os.urandom(8),
        )
        for i in range(batch)
    ]
    resource = ResourceLogs(scope_logs=[ScopeLogs(log_records=records)])
    resource.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value="ai-workflow")))
    return ExportLogsServiceRequest(resource_logs=[resource]).SerializeToString()


def load_generator(
    target: str,
    batch: int,
    in_flight: int,
    seconds: float,
    rate: float | None,
    queue: mp.Queue,  # type: ignore[type-arg]
) -> None:
    """Runs in its own process: sends for ``seconds``; rate=None means as fast as acks allow."""
    request = make_request(batch)
    channel = grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 64 << 20)])
    export = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)
    grpc.channel_ready_future(channel).result(timeout=30)
    lock = threading.Lock()
    acked = failed = 0
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    interval = (batch / rate) if rate else 0.0
    next_send = [time.monotonic()]

    def worker() -> None:
        nonlocal acked, failed
        while True:
            with lock:
                now = time.monotonic()
                if now >= deadline:
                    return
                send_at = next_send[0]
                next_send[0] = max(send_at, now if not interval else send_at) + interval
            if interval and send_at > time.monotonic():
                time.sleep(send_at - time.monotonic())
            started = time.monotonic()
            try:
                export(request, timeout=30)
                ok = True
            except grpc.RpcError:
                ok = False
            elapsed = time.monotonic() - started
            with lock:
                if ok:
                    acked += batch
                    latencies.append(elapsed)
                else:
                    failed += 1

    started = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(in_flight)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    queue.put({"acked": acked, "failed": failed, "seconds": time.monotonic() - started, "latencies": latencies})
    channel.close()


def drive(target: str, batch: int, in_flight: int, seconds: float, rate: float | None) -> dict[str, object]:
    queue: mp.Queue = mp.get_context("spawn").Queue()  # type: ignore[type-arg]
    process = mp.get_context("spawn").Process(
        target=load_generator, args=(target, batch, in_flight, seconds, rate, queue)
    )
    process.start()
    result: dict[str, object] = queue.get(timeout=seconds + 120)
    process.join()
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def peak_rss_mib(pid: int) -> float:
    """Peak resident memory (VmHWM) of a process plus its children (the signing workers), in MiB."""
    return sum(peak_rss_by_process(pid).values())


def peak_rss_by_process(pid: int) -> dict[str, float]:
    """VmHWM in MiB of the sidecar and of each of its children, by a short name."""
    found: dict[str, float] = {}
    for process in [pid, *_children(pid)]:
        status = Path(f"/proc/{process}/status").read_text()
        command = Path(f"/proc/{process}/cmdline").read_bytes().split(b"\0")
        name = "sidecar" if process == pid else ("worker" if b"spawn_main" in b" ".join(command) else "other")
        if Path(f"/proc/{process}/comm").read_bytes().strip() == b"loki-sender":  # it names itself
            name = "loki"
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                found[f"{name} {process}"] = int(line.split()[1]) / 1024
    return found


def tree_cpu_seconds(pid: int) -> float:
    return cpu_seconds(pid) + sum(cpu_seconds(child) for child in _children(pid))


def loki_pushed(metrics_port: int) -> float:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("collector_ext_loki_entries_pushed_total "):
                return float(line.split()[1])
    return 0.0


def loki_metrics(metrics_port: int) -> list[str]:
    """The sidecar's Loki metric lines (retries, rejections by reason, queue, failing time)."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
        return [
            line
            for line in response.read().decode().splitlines()
            if line.startswith("collector_ext_loki_") and not line.startswith("collector_ext_loki_entries_pushed")
        ]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def full_speed(pid: int, target: str, args: argparse.Namespace) -> tuple[dict[str, object], float, float]:
    """The load as fast as acknowledgements allow for ``args.seconds``: the drive's result, records/s
    acknowledged, and the CPU microseconds per record of the sidecar and its workers."""
    cpu_before = tree_cpu_seconds(pid)
    full = drive(target, args.batch, args.in_flight, args.seconds, None)
    cpu_used = tree_cpu_seconds(pid) - cpu_before
    acked = int(full["acked"])  # type: ignore[call-overload]
    return full, acked / float(full["seconds"]), cpu_used / max(1, acked) * 1e6  # type: ignore[arg-type]


def tree_cost_pairs(
    command: list[str], env: dict[str, str], args: argparse.Namespace, sign1: float, sign2: float
) -> None:
    """The Merkle tree's cost from ``args.tree_pairs`` pairs of full-speed runs, tree on then off, each
    on a fresh archive: alternating, so that a slow stretch of the shared machine falls on both sides.
    Prints each pair and the medians of the ratio's drop and of the CPU per record it adds. Pairs run
    on, off, then off, on, and so on, so that whatever drifts over a run (a filling SeaweedFS) falls
    on both sides."""
    drops, cpu_added = [], []
    for pair in range(args.tree_pairs):
        measured = {}
        for tree in (True, False) if pair % 2 == 0 else (False, True):
            name = f"pair{pair}-{'tree' if tree else 'no-tree'}"
            # A fresh archive and spool for each run: the value after --archive and --spool, renamed.
            run = [
                f"{c}-{name}" if i and command[i - 1] in ("--archive", "--spool") else c for i, c in enumerate(command)
            ]
            port = free_port()
            run += ["--listen", f"127.0.0.1:{port}", "--metrics-listen", f"127.0.0.1:{free_port()}"]
            sidecar = subprocess.Popen(run, env=env | {"COLLECTOR_EXT_CHECKPOINT__MERKLE_TREE": str(tree).lower()})
            try:
                drive(f"127.0.0.1:{port}", args.batch, 2, 2.0, None)  # warm-up
                _, rate, per_record = full_speed(sidecar.pid, f"127.0.0.1:{port}", args)
                measured[tree] = (rate / sign2, per_record * sign1 / 1e6)
                sidecar.send_signal(signal.SIGTERM)
                sidecar.wait(timeout=120)
            finally:
                if sidecar.poll() is None:
                    sidecar.kill()
        (on, on_cpu), (off, off_cpu) = measured[True], measured[False]
        drops.append(100 * (1 - on / off))
        cpu_added.append(on_cpu - off_cpu)
        print(
            f"Merkle tree pair {pair + 1}: ratio {on:.3f} with the tree, {off:.3f} without ({drops[-1]:+.1f}%); "
            f"CPU per record {on_cpu:.3f} and {off_cpu:.3f} signatures"
        )
    print(
        f"Merkle tree cost, median of {args.tree_pairs} pairs: ratio {statistics.median(drops):+.1f}% lower with it "
        f"(target: at most 3%), CPU per record {statistics.median(cpu_added):+.3f} signatures (the tree's own, "
        "measured in-process, is the two 'Merkle tree' stages above)"
    )


def run_mode(
    command: list[str], args: argparse.Namespace, sign1: float, sign2: float, env: dict[str, str], loki: bool
) -> dict[str, float]:
    """One sidecar in one acknowledgement mode: full speed, half-rate latency, overload, peak RSS."""
    port = free_port()
    metrics_port = free_port()
    command = [*command, "--listen", f"127.0.0.1:{port}", "--metrics-listen", f"127.0.0.1:{metrics_port}"]
    sidecar = subprocess.Popen(command, env=env)
    result: dict[str, float] = {}
    try:
        target = f"127.0.0.1:{port}"
        drive(target, args.batch, 2, 2.0, None)  # warm-up
        loki_pid = None
        if loki:
            from tests.benchmark_loki import loki_process

            loki_pid = loki_process(_children(sidecar.pid))
            loki_before = (cpu_seconds(loki_pid), loki_pushed(metrics_port)) if loki_pid else (0.0, 0.0)
        started = time.monotonic()
        full, rate, per_record = full_speed(sidecar.pid, target, args)
        cpu_signatures = per_record * sign1 / 1e6
        result |= {"rate": rate, "ratio": rate / sign2, "cpu_signatures": cpu_signatures, "other": cpu_signatures - 1}
        print(
            f"sidecar CPU per record: {per_record:.1f} us = {cpu_signatures:.2f} x one signature's "
            f"{1e6 / sign1:.1f} us of CPU; beyond the signature {cpu_signatures - 1:.2f} signatures (target <= 0.15: "
            "parse, checks, hash, encode, hand-offs, spool, S3)"
        )
        print(
            f"end to end (sealed, signed, acknowledged on {command[command.index('--ack') + 1]}): "
            f"{rate:,.0f} records/s ({full['failed']} failed requests, batches of {args.batch}, "
            f"{args.in_flight} in flight)"
        )
        print(f"RATIO end-to-end / fastest 2-thread signing rate: {rate / sign2:.2f} (target >= 0.80)")
        if loki:
            # Entries Loki accepted (204), as the sidecar counts them; the test receiver de-duplicates
            # the benchmark's repeated records, so its own store holds fewer.
            pushed = 0.0
            while time.monotonic() - started < args.seconds * 10:
                pushed = loki_pushed(metrics_port)
                if pushed >= int(full["acked"]):  # type: ignore[call-overload]
                    break
                time.sleep(0.2)
            elapsed = time.monotonic() - started
            print("Loki sender: " + ", ".join(loki_metrics(metrics_port)))
            print(
                f"Loki (test receiver): {pushed:,.0f} of {int(full['acked']):,} entries pushed in "  # type: ignore[call-overload]
                f"{elapsed:.1f}s from the start of the load: {pushed / elapsed:,.0f} entries/s"
            )
            if loki_pid:
                loki_us = (cpu_seconds(loki_pid) - loki_before[0]) / max(1.0, pushed - loki_before[1]) * 1e6
                result["loki_cpu_signatures"] = loki_us * sign1 / 1e6
                print(
                    f"Loki process CPU per entry pushed: {loki_us:.1f} us = {loki_us * sign1 / 1e6:.2f} signatures "
                    "(spool or pipe, hash, map, encode, snappy, HTTP)"
                )
        half = drive(target, args.batch, args.in_flight, args.seconds, rate / 2)
        latencies = sorted(half["latencies"])  # type: ignore[call-overload]
        if latencies:
            p50 = statistics.median(latencies) * 1e3
            p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e3
            result["p99_ms"] = p99
            print(f"export latency at half that rate ({rate / 2:,.0f} records/s): p50 {p50:.1f} ms, p99 {p99:.1f} ms")
        over = drive(target, args.batch, args.overload_in_flight, args.seconds, None)
        total = int(over["acked"]) // args.batch + int(over["failed"])  # type: ignore[call-overload]
        result["refused_share"] = int(over["failed"]) / max(1, total)  # type: ignore[call-overload]
        by_process = peak_rss_by_process(sidecar.pid)
        result["peak_rss_mib"] = sum(by_process.values())
        print("peak RSS by process (MiB): " + ", ".join(f"{name} {mib:.0f}" for name, mib in by_process.items()))
        print(
            f"overload ({args.overload_in_flight} in flight): {float(over['acked']) / float(over['seconds']):,.0f} "  # type: ignore[arg-type]
            f"records/s acknowledged, {over['failed']} requests refused"
        )
        print(f"sidecar peak RSS (with its signing workers): {result['peak_rss_mib']:.0f} MiB")
        sidecar.send_signal(signal.SIGTERM)
        sidecar.wait(timeout=120)
    finally:
        if sidecar.poll() is None:
            sidecar.kill()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--archive", choices=["s3", "dir"], default="s3")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--loki", action="store_true", help="also push to the test Loki and report its rate")
    parser.add_argument("--modes", default="spool,archive", help="acknowledgement modes to measure, in order")
    parser.add_argument("--overload-in-flight", type=int, default=96, help="requests in flight when overloading")
    parser.add_argument(
        "--tree-pairs",
        type=int,
        default=3,
        help="pairs of full-speed runs of the first mode, Merkle tree on then off, for the tree's cost (0: skip)",
    )
    parser.add_argument(
        "--verify-scale",
        default="4x10x20000",
        help="CHAINSxSEGMENTSxRECORDS: then verify such an archive from S3 in 1 and 2 processes and in shards, with "
        "merged verdicts on clean and tampered copies (tests/benchmark_verify.py --scale); empty to skip. The "
        "default's segments hold 20,000 records, the sidecar's default segment.max_records",
    )
    args = parser.parse_args()

    from collector_ext.seal.keys import generate_key_pair, load_public_key_pem
    from collector_ext.service import open_archive
    from collector_ext.verify.run import VerifyOptions, check_archive

    work = Path(tempfile.mkdtemp(prefix="collector-ext-bench-"))
    s3_server = None
    loki = None
    try:
        # Best of three for every implementation: the denominator is the most this machine could sign
        # with any of them, so the ratio is not flattered by a slow moment or a slow library.
        from collector_ext.seal.keys import SIGNING_IMPLEMENTATION

        rates, signature_cpu = signing_rates()
        for name, threads in sorted(rates):
            print(
                f"ed25519 signing rate (best of 3), {name:9} {threads} thread(s): {rates[name, threads]:>9,.0f}/s"
                + (f"  ({signature_cpu[name] * 1e6:.1f} us CPU per signature)" if threads == 1 else "")
            )
        fastest = max((name for name, _ in rates), key=lambda name: rates[name, 2])
        sign2 = rates[fastest, 2]
        # CPU per record is counted in the CPU time of one of the sidecar's own signatures.
        sign1 = 1 / signature_cpu[SIGNING_IMPLEMENTATION]
        print(
            f"denominator: {fastest}, the fastest on 2 threads ({sign2:,.0f}/s; 1 thread {rates[fastest, 1]:,.0f}/s, "
            f"{rates[fastest, 2] / rates[fastest, 1]:.2f}x on 2); the sidecar signs with {SIGNING_IMPLEMENTATION}"
        )
        pair = generate_key_pair()
        key = work / "signing.key"
        key.write_bytes(pair.private_pem)
        key.chmod(0o600)  # serve refuses a key others may read
        env = dict(os.environ)
        if args.archive == "s3":
            from collector_ext.embedded_s3 import EmbeddedS3

            s3_server = EmbeddedS3(data_dir=work / "s3")
            s3_server.start()
            s3_server.create_bucket("bench", mode="GOVERNANCE", days=1)
            env |= {
                "AWS_ACCESS_KEY_ID": s3_server.access_key,
                "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
                "AWS_REGION": s3_server.region,
            }
            endpoint = s3_server.endpoint_url
        else:
            endpoint = None
        if args.loki:
            sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
            loki = LokiInItsOwnProcess()
        costs = stage_costs(args.batch, 1 / sign1)
        for name, cost in costs.items():
            print(f"per record, {name}: {cost:.3f} signatures")
        print(f"per record, these stages together: {sum(costs.values()):.3f} signatures")
        if loki is not None:
            from tests.benchmark_loki import encoding_cost

            # Its own signature timings, interleaved with the encoding: CPU time per operation varies
            # with the machine's load, so both sides of the ratio come from the same moments.
            loki_costs = encoding_cost()
            signature_us = loki_costs[f"signature:{SIGNING_IMPLEMENTATION}"]
            print(
                f"Loki mapping and encoding per record (hash, map, encode, snappy): {loki_costs['sender']:.1f} us = "
                f"{loki_costs['sender'] / signature_us:.2f} signatures of {signature_us:.1f} us (target <= 0.30); "
                f"through LokiEntry as the verifier maps: {loki_costs['mapping'] / signature_us:.2f}"
            )
        results: dict[str, dict[str, float]] = {}
        archives: dict[str, str] = {}
        last_command: dict[str, list[str]] = {}
        for mode in args.modes.split(","):
            archive_url = f"s3://bench/{mode}" if args.archive == "s3" else str(work / f"archive-{mode}")
            archives[mode] = archive_url
            print(f"-- ack={mode}")
            command = [
                sys.executable,
                "-m",
                "collector_ext.cli",
                "serve",
                "--archive",
                archive_url,
                "--signing-key",
                str(key),
                "--retention-days",
                "1",
                "--log-level",
                "WARNING",
                "--http-listen",
                f"127.0.0.1:{free_port()}",
                "--ack",
                mode,
                "--writer-id",
                f"bench-{mode}",
            ]
            if mode == "spool":
                command += ["--spool", str(work / "spool")]
            if endpoint:
                command += ["--endpoint-url", endpoint]
            if loki is not None:
                command += ["--loki-url", loki.url]
            last_command[mode] = command
            results[mode] = run_mode(command, args, sign1, sign2, env, loki is not None)
        if args.tree_pairs:
            # The same sidecar and load with the Merkle tree (tiles and checkpoint notes, FORMAT.md 16)
            # on and off, alternating: its cost is the difference.
            mode = args.modes.split(",")[0]
            print(f"-- ack={mode}, Merkle tree on and off (checkpoint.merkle_tree), {args.tree_pairs} pairs")
            tree_cost_pairs(last_command[mode], env, args, sign1, sign2)
        print()
        print(f"{'':44}" + "".join(f"{mode:>14}" for mode in results))
        rows = [
            ("records/s acknowledged (full speed)", "rate", "{:,.0f}"),
            ("RATIO to fastest 2-thread signing (>=0.8)", "ratio", "{:.2f}"),
            ("sidecar CPU per record, in signatures", "cpu_signatures", "{:.2f}"),
            ("  beyond the signature (<=0.15)", "other", "{:.2f}"),
            ("p99 Export latency at half rate (ms)", "p99_ms", "{:.1f}"),
            ("overload: requests refused (share)", "refused_share", "{:.2f}"),
            ("peak RSS incl. workers (MiB)", "peak_rss_mib", "{:.0f}"),
            ("Loki process CPU per entry, in signatures", "loki_cpu_signatures", "{:.2f}"),
        ]
        for label, field, pattern in rows:
            print(
                f"{label:44}" + "".join(f"{pattern.format(results[m].get(field, float('nan'))):>14}" for m in results)
            )

        public = load_public_key_pem(pair.public_pem, "bench")

        async def verify(archive_url: str, all_signatures: bool) -> tuple[int, float]:
            store = open_archive(archive_url, for_writing=False, endpoint_url=endpoint)
            await store.open()
            started = time.monotonic()
            report = await check_archive(
                store, {public.key_id: public}, VerifyOptions(check_all_signatures=all_signatures)
            )
            elapsed = time.monotonic() - started
            await store.close()
            assert report.clean, [f.message for f in report.findings]
            if not all_signatures:
                (chain,) = report.chains
                print(
                    f"archive: {chain.records:,} entries in {chain.segments:,} segments "
                    f"({chain.records / max(1, chain.segments):,.0f} per segment), {chain.checkpoints:,} checkpoints"
                )
            return report.records_checked, elapsed

        if endpoint:
            os.environ.update({k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION")})
        archive_url = archives[next(iter(archives))]
        records, elapsed = asyncio.run(verify(archive_url, False))
        print(f"verify (chain + signed checkpoints): {records / elapsed:,.0f} records/s over {records:,} records")
        records, elapsed = asyncio.run(verify(archive_url, True))
        print(f"verify --all-signatures: {records / elapsed:,.0f} records/s")
        if args.verify_scale:
            sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
            from tests.benchmark_verify import run_scale

            chains, segments, per_segment = (int(part) for part in args.verify_scale.split("x"))
            print(f"-- verify at scale: {chains} chains x {segments} segments x {per_segment} records, from S3")
            run_scale(chains, segments, per_segment, [1, 2])
    finally:
        if s3_server is not None:
            s3_server.stop()
        if loki is not None:
            loki.stop()
        shutil.rmtree(work, ignore_errors=True)


def _serve_loki(connection: Connection) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.loki_receiver import LokiReceiver

    loki = LokiReceiver(
        auth_enabled=False,
        ingestion_rate_mb=1e6,
        ingestion_burst_size_mb=1e6,
        per_stream_rate_limit=1 << 40,
        per_stream_rate_limit_burst=1 << 40,
    ).start()
    connection.send(loki.url)
    try:
        connection.recv()  # until the benchmark closes its end
    except EOFError:
        pass
    loki.stop()


class LokiInItsOwnProcess:
    """The test Loki in a process of its own, so that it does not share the load generator's GIL: in
    the benchmark's process it took only 2,000 to 3,000 entries/s, and the sidecar's Loki process
    then spilled most records to its overflow file."""

    def __init__(self) -> None:
        self._connection, child = mp.get_context("spawn").Pipe()
        self._process = mp.get_context("spawn").Process(target=_serve_loki, args=(child,), daemon=True)
        self._process.start()
        child.close()
        self.url: str = self._connection.recv()

    def stop(self) -> None:
        self._connection.close()
        self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.kill()


if __name__ == "__main__":
    main()
