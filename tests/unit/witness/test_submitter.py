"""The sidecar's witness and TSA submissions against in-memory witnesses (the real protocol.decide) and
an in-memory archive: never blocking, retried through outages, newest note first, checked before stored."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from collector_ext.retry import RetryPolicy
from collector_ext.seal.keys import Ed25519Signer
from collector_ext.seal.layout import checkpoint_note_key, cosignature_key, timestamp_key
from collector_ext.seal.merkle import consistency_proof, leaf_hash, list_reader, tree_root
from collector_ext.seal.note import check_cosignature, checkpoint_text, parse_note, sign_note
from collector_ext.witness.client import WitnessConflict, WitnessUnavailableError
from collector_ext.witness.protocol import AddCheckpoint, OriginState, TrustedLog, decide
from collector_ext.witness.submitter import PinnedWitness, StoredCheckpoint, WitnessSubmitter
from collector_ext.witness.tsa_client import TsaUnavailableError
from tests.fakes import InMemoryArchive

CHAIN = bytes(range(16))
ORIGIN = f"bucket/prod/{CHAIN.hex()}"
LOG = Ed25519Signer(Ed25519PrivateKey.generate())
LEAVES = [leaf_hash(f"entry {i}".encode()) for i in range(64)]
FAST = RetryPolicy(initial_delay=0.01, max_delay=0.05, jitter=0.0)


class MemoryWitness:
    """A witness in memory: the real verdicts, a dict for its state, and an outage switch."""

    def __init__(self, name: str, signer: Ed25519Signer | None = None) -> None:
        self.name = name
        self.signer = signer or Ed25519Signer(Ed25519PrivateKey.generate())
        self.states: dict[str, OriginState] = {}
        self.down = False
        self.requests: list[AddCheckpoint] = []

    async def add_checkpoint(self, request: AddCheckpoint) -> bytes | WitnessConflict:
        self.requests.append(request)
        if self.down:
            raise WitnessUnavailableError(f"{self.name} is down")
        verdict = decide(
            request,
            [TrustedLog("bucket/", LOG.public_key)],
            self.states,
            witness_name=self.name,
            signer=self.signer,
            now=1_800_000_000,
        )
        if verdict.status == 409:
            return WitnessConflict(int(verdict.body))
        assert verdict.status == 200, verdict.reason
        assert verdict.new_state is not None and verdict.origin is not None
        self.states[verdict.origin] = verdict.new_state
        return verdict.body

    async def close(self) -> None:
        pass


class MemoryTsa:
    def __init__(self) -> None:
        self.down = False

    async def timestamp(self, data: bytes) -> bytes:
        if self.down:
            raise TsaUnavailableError("checkpoint.tsa_url: down")
        return b"token for " + data[:8]

    async def close(self) -> None:
        pass


async def proofs(chain_id: bytes, old: int, new: int) -> Sequence[bytes]:
    assert chain_id == CHAIN
    return consistency_proof(old, new, list_reader(LEAVES))


def store_note(store: InMemoryArchive, number: int, size: int) -> StoredCheckpoint:
    note = sign_note(checkpoint_text(ORIGIN, size, tree_root(LEAVES[:size])), ORIGIN, LOG)
    store.objects[checkpoint_note_key("", CHAIN, number, size - 1)] = note
    return StoredCheckpoint(CHAIN, note, size)


async def until(condition, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def submitter(store, witnesses, keys=None, tsa=None) -> WitnessSubmitter:
    pinned = [PinnedWitness(w, (keys or {}).get(w.name, w.signer.public_key)) for w in witnesses]
    return WitnessSubmitter(store, pinned, tsa, proofs, retry=FAST)


async def test_cosignatures_and_tokens_are_stored_beside_the_newest_note_of_their_size():
    store, witness, tsa = InMemoryArchive(), MemoryWitness("w.example/a"), MemoryTsa()
    sub = submitter(store, [witness], tsa=tsa)
    await sub.start()
    first = store_note(store, 0, 3)
    sub.offer(first)
    await until(lambda: sub.witness_stats["w.example/a"].stored == 1 and sub.tsa_stats.stored == 1)
    idle = store_note(store, 1, 3)  # an idle checkpoint: same size, same text, a newer number
    sub.offer(idle)
    await until(lambda: sub.witness_stats["w.example/a"].stored == 2)
    newer = store_note(store, 2, 10)
    sub.offer(newer)
    await until(lambda: sub.witness_stats["w.example/a"].stored == 3 and sub.tsa_stats.stored == 3)
    await sub.close()
    for number, size in [(0, 3), (1, 3), (2, 10)]:
        note_key = checkpoint_note_key("", CHAIN, number, size - 1)
        line = store.objects[cosignature_key(note_key, "w.example/a")]
        cosigned = parse_note(store.objects[note_key] + line)
        assert not isinstance(check_cosignature(cosigned, "w.example/a", witness.signer.public_key), str)
        assert store.objects[timestamp_key(note_key)].startswith(b"token for ")
    # The extension to 10 came with a proof from 3, the size the witness held.
    assert (witness.requests[-1].old_size, len(witness.requests[-1].proof) > 0) == (3, True)


async def test_an_outage_is_retried_and_the_newest_note_replaces_the_waiting_one():
    store, witness = InMemoryArchive(), MemoryWitness("w.example/a")
    witness.down = True
    sub = submitter(store, [witness])
    await sub.start()
    for number, size in enumerate([4, 9, 17]):
        sub.offer(store_note(store, number, size))  # returns at once although the witness is down
    await until(lambda: sub.witness_stats["w.example/a"].failures >= 3)
    assert sub.witness_stats["w.example/a"].failing_since is not None
    witness.down = False
    await until(lambda: sub.witness_stats["w.example/a"].stored == 1)
    await sub.close()
    stats = sub.witness_stats["w.example/a"]
    assert stats.failing_since is None and stats.last_size == 17
    cosigned = [key for key in store.objects if ".cosig." in key]
    assert cosigned == [cosignature_key(checkpoint_note_key("", CHAIN, 2, 16), "w.example/a")]


async def test_a_witness_holding_a_tree_gets_a_proof_from_its_size():
    store, witness = InMemoryArchive(), MemoryWitness("w.example/a")
    witness.states[ORIGIN] = OriginState(20, tree_root(LEAVES[:20]))  # cosigned in an earlier run
    sub = submitter(store, [witness])
    await sub.start()
    sub.offer(store_note(store, 5, 33))
    await until(lambda: sub.witness_stats["w.example/a"].stored == 1)
    await sub.close()
    assert [r.old_size for r in witness.requests] == [0, 20]
    assert witness.states[ORIGIN].size == 33


async def test_a_cosignature_by_another_key_is_not_stored_and_counts_as_a_failure():
    store, witness = InMemoryArchive(), MemoryWitness("w.example/a")
    pinned = Ed25519Signer(Ed25519PrivateKey.generate()).public_key
    sub = submitter(store, [witness], keys={"w.example/a": pinned})
    await sub.start()
    sub.offer(store_note(store, 0, 5))
    await until(lambda: sub.witness_stats["w.example/a"].failures == 1)
    await sub.close()
    assert not [key for key in store.objects if ".cosig." in key]
    assert sub.witness_stats["w.example/a"].stored == 0


async def test_one_witness_down_does_not_hold_up_another_or_the_tsa():
    store, down, up, tsa = (
        InMemoryArchive(),
        MemoryWitness("w.example/down"),
        MemoryWitness("w.example/up"),
        MemoryTsa(),
    )
    down.down = True
    sub = submitter(store, [down, up], tsa=tsa)
    await sub.start()
    sub.offer(store_note(store, 0, 8))
    await until(lambda: sub.witness_stats["w.example/up"].stored == 1 and sub.tsa_stats.stored == 1)
    assert sub.witness_stats["w.example/down"].stored == 0
    started = asyncio.get_running_loop().time()
    await sub.close(drain_timeout=0.2)  # the down witness's note is given up at shutdown, boundedly
    assert asyncio.get_running_loop().time() - started < 2


@pytest.mark.parametrize("fail_puts", [1, 3])
async def test_an_archive_outage_when_storing_is_retried(fail_puts: int):
    store, witness, tsa = InMemoryArchive(), MemoryWitness("w.example/a"), MemoryTsa()
    sub = submitter(store, [witness], tsa=tsa)
    checkpoint = store_note(store, 0, 6)
    store.fail_puts = fail_puts
    await sub.start()
    sub.offer(checkpoint)
    await until(lambda: sub.witness_stats["w.example/a"].stored == 1 and sub.tsa_stats.stored == 1)
    await sub.close()
