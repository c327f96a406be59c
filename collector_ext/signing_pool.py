"""Where record signatures are made: a pool of worker processes, or of threads.

Signing is the one cost of sealing that cannot be hidden, so it gets whole CPUs. libsodium (the
signing function of ``seal.keys``) releases the GIL while it signs, but every signature still takes
and gives back the GIL once; with the event loop busy on the same GIL those hand-overs cost several
microseconds each. Worker processes sign without contending with the event loop at all, at the
price of one pipe round trip per chunk of hashes (some hundreds of microseconds of the event loop
process's CPU through the executor's threads, so the pipeline hands over few, large chunks).
Threads remain available (``signing_workers: threads``) for hosts with one CPU or where extra
processes are unwelcome.

The private key reaches worker processes once, as raw bytes through the pool's initializer pipe,
and is never logged; workers are started with ``spawn`` (forking a process that runs grpc threads
is unsafe).
"""

from __future__ import annotations

import asyncio
import logging
import math
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import BrokenExecutor, Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Literal, TypeVar

from collector_ext import signing_worker
from collector_ext.seal.keys import Ed25519Signer, Signer, private_key_seed
from collector_ext.token_signer import TokenSigner

SigningWorkers = Literal["processes", "threads"]
T = TypeVar("T")

log = logging.getLogger(__name__)


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota (a container's
    CPU limit), so a pod limited to 2 CPUs on a 64-CPU node starts 2 workers, not 64."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        with open("/sys/fs/cgroup/cpu.max", encoding="ascii") as handle:
            quota, period = handle.read().split()[:2]
        if quota != "max":
            count = min(count, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, count)


class SigningPool:
    """Signs chunks of entry hashes on worker processes or threads."""

    def __init__(self, signer: Signer, *, workers: SigningWorkers = "processes", count: int = 0) -> None:
        self._count = count or available_cpus()
        self._signer = signer
        self._use_processes = workers == "processes" and isinstance(signer, Ed25519Signer | TokenSigner)
        self._executor = self._new_executor()

    def _new_executor(self) -> Executor:
        signer = self._signer
        if self._use_processes and isinstance(signer, TokenSigner):
            # Each worker opens its own session on the token; the key never leaves it.
            self._in_process = False
            return ProcessPoolExecutor(
                max_workers=self._count,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=signing_worker.initialise_token,
                initargs=(signer.settings, os.getpid()),
            )
        if self._use_processes and isinstance(signer, Ed25519Signer):
            raw = private_key_seed(signer.private_key)
            self._in_process = False
            return ProcessPoolExecutor(
                max_workers=self._count,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=signing_worker.initialise,
                initargs=(raw, os.getpid()),
            )
        self._in_process = True
        return ThreadPoolExecutor(max_workers=self._count, thread_name_prefix="sign")

    def restart(self) -> None:
        """Replace a broken pool (a worker process died) with a fresh one."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._executor = self._new_executor()

    @property
    def workers(self) -> int:
        return self._count

    def sign(self, hashes: Sequence[bytes]) -> asyncio.Future[bytes]:
        """The 64-byte signatures of RECORD_SIGNATURE_PREFIX || hash for each hash, concatenated in
        order, made off the event loop."""
        blob = b"".join(hashes)
        try:
            return self._submit(blob)
        except BrokenExecutor:
            log.error("signing pool broken (a worker died); starting a new one")
            self.restart()
            return self._submit(blob)

    async def run(self, function: Callable[..., T], *args: object) -> T:
        """``function(*args)`` on a worker, off the event loop and, with worker processes, off its GIL
        (pure work on the sealing path that is not signing: the Merkle tree's hashes). ``function``
        must be importable by a worker and its arguments and result picklable. If a worker died, it
        runs in a thread instead: restarting the pool is the signing path's job, which resigns what
        the dead worker held."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)
        except BrokenExecutor:
            return await asyncio.to_thread(function, *args)

    def _submit(self, blob: bytes) -> asyncio.Future[bytes]:
        loop = asyncio.get_running_loop()
        if self._in_process:
            return loop.run_in_executor(self._executor, signing_worker.sign_hashes, self._signer.sign, blob)
        return loop.run_in_executor(self._executor, signing_worker.sign_concatenated, blob)

    def close(self) -> None:
        """Stop the workers and wait for them: at shutdown nothing is left to sign, and not waiting
        let the pool's pipe feeder write into pipes the exiting interpreter had closed."""
        self._executor.shutdown(wait=True, cancel_futures=True)
