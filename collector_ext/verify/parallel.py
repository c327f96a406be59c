"""``verify --processes N``: the shards of one archive checked by N local worker processes, merged.

Each worker opens the archive itself, checks shard I of N (``verify.shard``), and hands back its shard
report as the same JSON ``verify --shard`` writes; the parent merges them (``verify.merge``). Worker
processes rather than threads because checking a segment (hashing, decoding, walking its records) is
Python work that holds the GIL. Workers are forked when the parent runs a single thread (the command
line: nothing to inherit but imported modules, so a worker starts at once) and spawned otherwise, so
none inherits a lock another thread held; no worker inherits an event loop or an open connection, as
the parent opens none before they start.

How the store is opened and the keys are loaded is passed in as picklable callables (module-level
functions with their arguments), so this module reads no configuration of its own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import multiprocessing
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from collector_ext.deliver.archive import ArchiveStore
from collector_ext.errors import CollectorExtError
from collector_ext.verify.findings import VerificationReport
from collector_ext.verify.merge import merge_shard_reports
from collector_ext.verify.run import VerifyOptions, check_archive_with_state
from collector_ext.verify.shard import ShardSpec, decode_shard_report, encode_shard_report

StoreOpener = Callable[[], ArchiveStore]
KeyLoader = Callable[[], Any]  # a Keyring or a key id -> PublicKey mapping


class WorkerError(CollectorExtError):
    """A worker process could not check its shard; carries the worker's own diagnostics text (the
    project's errors are not all picklable, so the text crosses the process boundary, not the error)."""


async def _check_shard(open_store: StoreOpener, load_keys: KeyLoader, options: VerifyOptions) -> bytes:
    store = open_store()
    await store.open()
    try:
        checked = await check_archive_with_state(store, load_keys(), None, options)
    finally:
        await store.close()
    assert checked.shard is not None
    return encode_shard_report(checked.shard)


def check_shard(open_store: StoreOpener, load_keys: KeyLoader, options: VerifyOptions) -> bytes | str:
    """One worker's job: the shard report (JSON) of ``options.shard``, or the text of what stopped it."""
    try:
        return asyncio.run(_check_shard(open_store, load_keys, options))
    except CollectorExtError as exc:
        return exc.diagnostics()


def check_in_processes(
    open_store: StoreOpener, load_keys: KeyLoader, options: VerifyOptions, processes: int, by: str = "chain"
) -> tuple[VerificationReport, str]:
    """The archive checked as ``processes`` shards in as many worker processes, split ``by`` chain or
    range as ``verify --shard-by`` (so one long chain uses every process by range); the merged report
    and the archive's description.

    Raises:
        CollectorExtError: a worker could not run (the archive cannot be read, a key cannot be loaded).
    """
    options_of = [_with_shard(options, ShardSpec(index, processes, by)) for index in range(processes)]
    context = multiprocessing.get_context("fork" if threading.active_count() == 1 else "spawn")
    with ProcessPoolExecutor(max_workers=processes, mp_context=context) as pool:
        futures = [pool.submit(check_shard, open_store, load_keys, shard_options) for shard_options in options_of]
        documents = [future.result() for future in futures]
    reports = []
    for index, document in enumerate(documents):
        if isinstance(document, str):
            raise WorkerError(f"worker process {index} of {processes}: {document}")
        reports.append((f"worker {index}", decode_shard_report(document, f"worker {index}")))
    return merge_shard_reports(reports), reports[0][1].archive


def _with_shard(options: VerifyOptions, shard: ShardSpec) -> VerifyOptions:
    return dataclasses.replace(options, shard=shard)
