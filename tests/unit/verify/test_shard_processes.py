"""verify --processes: shards checked by local worker processes merge into the single run's report;
what stops a worker reaches the caller as an error with the worker's own text."""

from __future__ import annotations

import functools

import pytest

from collector_ext.deliver.archive import ArchiveStore
from collector_ext.errors import ArchiveUnavailableError
from collector_ext.seal.keys import Ed25519Signer, PublicKey
from collector_ext.verify.parallel import WorkerError, check_in_processes
from tests.fakes import InMemoryArchive
from tests.unit.verify.test_shard import TAMPERINGS, _options, several_chains, single

SEED = bytes(range(32))


def _memory_store(objects: dict[str, bytes]) -> ArchiveStore:
    store = InMemoryArchive()
    store.objects = dict(objects)
    return store


def _keys() -> dict[bytes, PublicKey]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    signer = Ed25519Signer(Ed25519PrivateKey.from_private_bytes(SEED))
    return {signer.key_id: signer.public_key}


class _Unreachable(InMemoryArchive):
    async def open(self) -> None:
        raise ArchiveUnavailableError("s3://nowhere: connection refused")


@pytest.mark.parametrize("tampering", ["clean", "modified-record", "superseded-chain-cut"])
def test_worker_processes_give_the_single_runs_report(signer: Ed25519Signer, tampering: str) -> None:
    assert signer.key_id in _keys()
    objects, built = several_chains(signer)
    TAMPERINGS[tampering](objects, built)
    report, description = check_in_processes(functools.partial(_memory_store, objects), _keys, _options(), 3)
    assert report == single(objects, signer)
    assert description == InMemoryArchive().description


def test_a_worker_that_cannot_run_is_an_error_with_its_text() -> None:
    with pytest.raises(WorkerError, match=r"worker process 0 of 2: s3://nowhere: connection refused"):
        check_in_processes(_Unreachable, _keys, _options(), 2)
