"""Where record signatures are made: a pool of worker processes, or of threads.

Signing is the one cost of sealing that cannot be hidden, so it gets whole CPUs. pyca/cryptography
releases the GIL while it signs, but every signature still takes and gives back the GIL once; with
the event loop busy on the same GIL those hand-overs cost several microseconds each. Worker
processes sign without contending with the event loop at all, at the price of one pipe round trip
per chunk of hashes. Threads remain available (``signing_workers: threads``) for hosts with one CPU
or where extra processes are unwelcome.

The private key reaches worker processes once, as raw bytes through the pool's initializer pipe,
and is never logged; workers are started with ``spawn`` (forking a process that runs grpc threads
is unsafe).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from collector_ext.seal.chain import sign_entry_hashes
from collector_ext.seal.entry import HASH_SIZE
from collector_ext.seal.keys import Ed25519Signer, Signer

SigningWorkers = Literal["processes", "threads"]

_worker_signer: Ed25519Signer | None = None


def _initialise_worker(raw_private_key: bytes) -> None:
    global _worker_signer
    _worker_signer = Ed25519Signer(Ed25519PrivateKey.from_private_bytes(raw_private_key))


def _sign_concatenated(signer: Signer, hashes: bytes) -> bytes:
    # One bytes object each way keeps the pipe round trip to a single cheap pickle.
    size = HASH_SIZE
    return b"".join(sign_entry_hashes(signer, [hashes[i : i + size] for i in range(0, len(hashes), size)]))


def _sign_in_worker(hashes: bytes) -> bytes:
    assert _worker_signer is not None, "worker not initialised"
    return _sign_concatenated(_worker_signer, hashes)


class SigningPool:
    """Signs chunks of entry hashes on worker processes or threads."""

    def __init__(self, signer: Signer, *, workers: SigningWorkers = "processes", count: int = 0) -> None:
        count = count or os.cpu_count() or 2
        self._count = count
        self._signer = signer
        self._executor: Executor
        if workers == "processes" and isinstance(signer, Ed25519Signer):
            raw = signer.private_key.private_bytes(
                serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
            )
            self._executor = ProcessPoolExecutor(
                max_workers=count,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_initialise_worker,
                initargs=(raw,),
            )
            self._in_process = False
        else:
            self._executor = ThreadPoolExecutor(max_workers=count, thread_name_prefix="sign")
            self._in_process = True

    @property
    def workers(self) -> int:
        return self._count

    def sign(self, hashes: Sequence[bytes]) -> asyncio.Future[bytes]:
        """The 64-byte signatures of RECORD_SIGNATURE_PREFIX || hash for each hash, concatenated in
        order, made off the event loop."""
        loop = asyncio.get_running_loop()
        blob = b"".join(hashes)
        if self._in_process:
            return loop.run_in_executor(self._executor, _sign_concatenated, self._signer, blob)
        return loop.run_in_executor(self._executor, _sign_in_worker, blob)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
