"""Benchmark: the signing rate of a key in a PKCS#11 token (SoftHSM2) beside a key file's, and records/s
through the sidecar with the key in the token, per record and in run_key mode, beside the key file.

    python tests/benchmark_token.py [--seconds 5] [--batch 500] [--in-flight 8]

In one run, on one machine:
  1. Ed25519 signatures/s over the record signature's 66-byte message: the key file (pyca/cryptography)
     on 1 and 2 threads; the token on 1 thread, on 2 threads (one session, calls serialised, as
     ``TokenSigner`` does) and on 2 processes (a session each, as per_record signing workers do);
  2. `collector-ext serve` (own process, spool ack, directory archive) at full speed with the key file,
     with the token signing every record (signing_token.mode per_record), and with the token certifying a
     run key (run_key): records/s acknowledged, and each archive verified with the public key.
SoftHSM2 signs in software, so its rate is an upper bound for a token: a network HSM adds a round trip
per signature. This is a benchmark, not a test: it asserts only that the archives verify.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.benchmark import MESSAGE, drive, free_port, signing_rate

SOFTHSM_MODULES = ("/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so")
TOKEN_LABEL = "bench"
KEY_LABEL = "bench-key"
PIN = "bench-pin-1234"


def _settings(module: str) -> object:
    from collector_ext.token_signer import TokenSettings

    return TokenSettings(module, TOKEN_LABEL, KEY_LABEL, PIN)


def _token_worker(module: str, seconds: float, start: object, counts: object, index: int) -> None:
    from collector_ext.token_signer import TokenSession, TokenSettings

    session = TokenSession(TokenSettings(module, TOKEN_LABEL, KEY_LABEL, PIN))
    start.wait()  # type: ignore[attr-defined]
    stop = time.monotonic() + seconds
    n = 0
    while time.monotonic() < stop:
        for _ in range(50):
            session.sign(MESSAGE)
        n += 50
    counts[index] = n  # type: ignore[index]
    session.close()


def token_rate_processes(module: str, processes: int, seconds: float = 2.0) -> float:
    context = mp.get_context("spawn")
    start = context.Event()
    counts = context.Array("q", processes)
    workers = [
        context.Process(target=_token_worker, args=(module, seconds, start, counts, i)) for i in range(processes)
    ]
    for worker in workers:
        worker.start()
    time.sleep(1.5)  # sessions open and logged in
    started = time.monotonic()
    start.set()
    for worker in workers:
        worker.join(timeout=seconds + 30)
    return sum(counts) / (time.monotonic() - started)


def token_rate_threads(signer: object, threads: int, seconds: float = 2.0) -> float:
    counts = [0] * threads
    stop = time.monotonic() + seconds

    def work(index: int) -> None:
        sign = signer.sign  # type: ignore[attr-defined]
        n = 0
        while time.monotonic() < stop:
            for _ in range(50):
                sign(MESSAGE)
            n += 50
        counts[index] = n

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    started = time.monotonic()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(counts) / (time.monotonic() - started)


def serve_rate(config: Path, env: dict[str, str], args: argparse.Namespace, label: str) -> float:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "collector_ext.cli",
        "serve",
        "--config",
        str(config),
        "--listen",
        f"127.0.0.1:{port}",
        "--metrics-listen",
        f"127.0.0.1:{free_port()}",
        "--http-listen",
        f"127.0.0.1:{free_port()}",
        "--log-level",
        "WARNING",
    ]
    sidecar = subprocess.Popen(command, env=env)
    try:
        target = f"127.0.0.1:{port}"
        drive(target, args.batch, 2, 2.0, None)  # warm-up (waits for the sidecar to listen)
        full = drive(target, args.batch, args.in_flight, args.seconds, None)
        rate = float(full["acked"]) / float(full["seconds"])  # type: ignore[arg-type]
        print(f"{label:44}{rate:>12,.0f} records/s  ({full['failed']} failed requests)")
        return rate
    finally:
        sidecar.terminate()
        try:
            sidecar.wait(timeout=60)
        except subprocess.TimeoutExpired:
            sidecar.kill()
            sidecar.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--in-flight", type=int, default=8)
    args = parser.parse_args()

    from collector_ext.seal.keys import generate_key_pair, load_public_key_pem
    from collector_ext.service import open_archive
    from collector_ext.token_signer import TokenSigner, generate_in_token
    from collector_ext.verify.run import VerifyOptions, check_archive

    module = next((m for m in SOFTHSM_MODULES if Path(m).is_file()), None)
    util = shutil.which("softhsm2-util")
    if module is None or util is None:
        sys.exit("SoftHSM2 is missing: apt-get install softhsm2")
    work = Path(tempfile.mkdtemp(prefix="collector-ext-token-bench-"))
    try:
        (work / "tokens").mkdir()
        conf = work / "softhsm2.conf"
        conf.write_text(f"directories.tokendir = {work / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
        os.environ["SOFTHSM2_CONF"] = str(conf)
        subprocess.run(
            [util, "--init-token", "--free", "--label", TOKEN_LABEL, "--so-pin", "so-bench-1234", "--pin", PIN],
            check=True,
            capture_output=True,
            timeout=30,
        )
        token_public = generate_in_token(_settings(module))  # type: ignore[arg-type]
        signer = TokenSigner(_settings(module))  # type: ignore[arg-type]
        file1 = max(signing_rate(1, 1.0) for _ in range(3))
        file2 = max(signing_rate(2, 1.0) for _ in range(3))
        token1 = max(token_rate_threads(signer, 1, 1.0) for _ in range(3))
        token2t = max(token_rate_threads(signer, 2, 1.0) for _ in range(3))
        signer.close()
        token1p = token_rate_processes(module, 1)
        token2p = token_rate_processes(module, 2)
        print("Ed25519 signatures/s (best of 3 for threads):")
        print(f"  key file:  1 thread {file1:>10,.0f}   2 threads {file2:>10,.0f}")
        print(f"  token:     1 thread {token1:>10,.0f}   2 threads {token2t:>10,.0f} (one session, serialised)")
        print(f"  token:     1 process {token1p:>9,.0f}   2 processes {token2p:>8,.0f} (a session each)")
        print(f"  token / key file: {token1 / file1:.2f} (1 thread), {token2p / file2:.2f} (2 processes vs 2 threads)")

        pin_file = work / "pin"
        pin_file.write_text(PIN + "\n")
        pin_file.chmod(0o600)
        pair = generate_key_pair()
        key = work / "signing.key"
        key.write_bytes(pair.private_pem)
        key.chmod(0o600)
        file_public = load_public_key_pem(pair.public_pem, "bench")
        env = dict(os.environ)
        runs = [
            ("key file", f"signing_key: {key}\n", file_public),
            ("token, per_record (2 worker processes)", _token_yaml(module, pin_file, "per_record"), token_public),
            ("token, run_key", _token_yaml(module, pin_file, "run_key"), token_public),
        ]
        print(f"end to end, ack=spool, directory archive, batches of {args.batch}, {args.in_flight} in flight:")
        for index, (label, signing, public) in enumerate(runs):
            archive = work / f"archive-{index}"
            config = work / f"config-{index}.yaml"
            config.write_text(
                signing + f"archive:\n  url: {archive}\nspool:\n  directory: {work / f'spool-{index}'}\n"
                "ack: spool\nsigning_worker_count: 2\nwriter_id: bench\n"
            )
            serve_rate(config, env, args, label)

            async def verify(url: str, public: object = public) -> tuple[bool, int]:
                store = open_archive(url, for_writing=False)
                await store.open()
                try:
                    keys = {public.key_id: public}  # type: ignore[attr-defined]
                    report = await check_archive(store, keys, VerifyOptions())
                finally:
                    await store.close()
                return report.clean, report.records_checked

            clean, records = asyncio.run(verify(str(archive)))
            print(f"{'':44}verify: {'clean' if clean else 'NOT CLEAN'} over {records:,} records")
            assert clean
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _token_yaml(module: str, pin_file: Path, mode: str) -> str:
    return (
        f"signing_token:\n  module: {module}\n  token_label: {TOKEN_LABEL}\n  key_label: {KEY_LABEL}\n"
        f"  pin_file: {pin_file}\n  mode: {mode}\n"
    )


if __name__ == "__main__":
    main()
