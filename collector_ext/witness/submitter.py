"""Sends each new checkpoint note to the configured witnesses and the TSA, off the acknowledgement path.

The pipeline calls ``offer`` once a checkpoint's signed note is stored; ``offer`` only records it and
returns. One task per witness (and one for the TSA) then works on the newest note it was offered: a
witness gets ``old <size it holds>``, the consistency proof from that size (``proofs``: read from
the archive's tree) and the note; its cosignature lines are checked against the witness's pinned key
and stored beside the note (``layout.cosignature_key``). The TSA's reply, checked to answer the
request, is stored as ``layout.timestamp_key``. Sealing never waits for any of this.

Outages are retried with backoff (``retry.retry_async``), interrupted at shutdown. While a witness
is down, newer notes replace the one waiting: a witness only needs the newest tree, so intermediate
checkpoints stay without its cosignature. Refusals (403, 404, 422, a cosignature that does not
verify) are logged and not retried for that note. Everything is counted in ``stats`` for metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from collector_ext.deliver.archive import ArchiveStore
from collector_ext.errors import ArchiveUnavailableError, CollectorExtError, DeliveryError
from collector_ext.retry import RetryPolicy, retry_async
from collector_ext.seal.keys import PublicKey
from collector_ext.seal.layout import NoteKey, cosignature_key, parse_note_key, timestamp_key
from collector_ext.seal.note import add_signatures, check_cosignature, parse_note, parse_tree_head
from collector_ext.witness.client import WitnessClient, WitnessConflict, WitnessRefusedError, WitnessUnavailableError
from collector_ext.witness.protocol import AddCheckpoint
from collector_ext.witness.tsa_client import TsaClient

log = logging.getLogger(__name__)

ProofSource = Callable[[bytes, int, int], Awaitable[Sequence[bytes]]]
"""``proofs(chain_id, old_size, new_size)``: the RFC 6962 consistency proof between two tree sizes."""


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    """A checkpoint note just stored: its chain, its bytes and its tree size."""

    chain_id: bytes
    note: bytes
    size: int


@dataclass
class OutsideStats:
    """What one witness (or the TSA) did for this sidecar."""

    stored: int = 0  # cosignatures (or time-stamp replies) stored in the archive
    failures: int = 0  # attempts that failed: unreachable, refused, or a wrong answer
    failing_since: float | None = None  # monotonic time of the first failure since the last success
    last_stored_unix: float = 0.0
    last_size: int = 0  # tree size of the newest note it vouched for

    def failed(self) -> None:
        self.failures += 1
        if self.failing_since is None:
            self.failing_since = time.monotonic()

    def succeeded(self, size: int) -> None:
        self.stored += 1
        self.failing_since = None
        self.last_stored_unix = time.time()
        self.last_size = size


@dataclass(eq=False)
class _Lane:
    name: str
    stats: OutsideStats = field(default_factory=OutsideStats)
    pending: StoredCheckpoint | None = None
    current: StoredCheckpoint | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def take(self) -> StoredCheckpoint | None:
        """The newest note offered: a newer one replaces the one being retried."""
        if self.pending is not None:
            self.current, self.pending = self.pending, None
        return self.current


@dataclass(frozen=True, slots=True)
class PinnedWitness:
    """A witness the sidecar submits to: its client and the key its cosignatures must verify under."""

    client: WitnessClient
    public_key: PublicKey


class WitnessSubmitter:
    """Witness and TSA submissions for one sidecar; see the module docstring."""

    def __init__(
        self,
        store: ArchiveStore,
        witnesses: Sequence[PinnedWitness],
        tsa: TsaClient | None,
        proofs: ProofSource,
        *,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._store = store
        self._witnesses = {w.client.name: w for w in witnesses}
        self._tsa = tsa
        self._proofs = proofs
        self._retry = retry or RetryPolicy(initial_delay=0.5, max_delay=60.0)
        self._lanes = {name: _Lane(name) for name in self._witnesses}
        self._tsa_lane = _Lane("tsa") if tsa is not None else None
        # Per witness and origin, the tree size the witness is known to hold.
        self._held: dict[tuple[str, str], int] = {}
        # Per chain, the note keys listed so far (notes sort by checkpoint number) and the last key listed.
        self._note_keys: dict[bytes, list[NoteKey]] = {}
        self._notes_listed_until: dict[bytes, str] = {}
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def witness_stats(self) -> dict[str, OutsideStats]:
        return {name: lane.stats for name, lane in self._lanes.items()}

    @property
    def tsa_stats(self) -> OutsideStats | None:
        return self._tsa_lane.stats if self._tsa_lane is not None else None

    def offer(self, checkpoint: StoredCheckpoint) -> None:
        """Queue a stored note for every witness and the TSA; returns at once (never blocks sealing)."""
        for lane in self._all_lanes():
            lane.pending = checkpoint
            lane.idle.clear()
            lane.ready.set()

    def _all_lanes(self) -> list[_Lane]:
        return [*self._lanes.values(), *([self._tsa_lane] if self._tsa_lane is not None else [])]

    async def start(self) -> None:
        for name, lane in self._lanes.items():
            self._tasks.append(asyncio.create_task(self._run(lane, self._witness_once), name=f"witness {name}"))
        if self._tsa_lane is not None:
            self._tasks.append(asyncio.create_task(self._run(self._tsa_lane, self._timestamp_once), name="tsa"))

    async def close(self, drain_timeout: float = 5.0) -> None:
        """Give queued notes up to ``drain_timeout`` seconds (the final checkpoint's, at shutdown), then stop.

        Only lanes that are not failing are waited for: a witness that is down would only use up the
        time (the next run submits a newer note anyway)."""
        lanes = [lane.idle.wait() for lane in self._all_lanes() if lane.stats.failing_since is None]
        if lanes:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*lanes), timeout=drain_timeout)
        self._stopping.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for witness in self._witnesses.values():
            await witness.client.close()
        if self._tsa is not None:
            await self._tsa.close()

    async def _run(self, lane: _Lane, once: Callable[[_Lane, StoredCheckpoint], Awaitable[None]]) -> None:
        def on_retry(error: DeliveryError, attempt: int, delay: float) -> None:
            lane.stats.failed()
            log.warning(
                "witness or TSA unavailable; retrying",
                extra={"to": lane.name, "attempt": attempt + 1, "delay_seconds": round(delay, 2), "error": str(error)},
            )

        async def attempt() -> None:
            checkpoint = lane.take()
            if checkpoint is not None:
                await once(lane, checkpoint)
                lane.current = None

        while not self._stopping.is_set():
            if lane.pending is None and lane.current is None:
                lane.idle.set()
            await lane.ready.wait()
            lane.ready.clear()
            try:
                await retry_async(attempt, policy=self._retry, stop=self._stopping, on_retry=on_retry)
            except DeliveryError:
                return  # only when stopping: the last error was logged by on_retry
            except CollectorExtError as exc:
                lane.stats.failed()
                lane.current = None
                log.error("checkpoint not vouched for", extra={"to": lane.name, "error": exc.diagnostics()})

    async def _note_key(self, checkpoint: StoredCheckpoint) -> str:
        """The key of the newest stored note of ``checkpoint``'s size (idle checkpoints repeat a size,
        and sign the same text). Listed after the last key seen, so each listing is short.

        Raises:
            ArchiveUnavailableError: the archive cannot be listed, or does not show the note yet.
        """
        known = self._note_keys.setdefault(checkpoint.chain_id, [])
        under = f"{checkpoint.chain_id.hex()}/notes/"
        async for key in self._store.list_keys(under, self._notes_listed_until.get(checkpoint.chain_id, "")):
            parsed = parse_note_key(key)
            if parsed is not None:
                known.append(parsed)
            self._notes_listed_until[checkpoint.chain_id] = key
        for parsed in reversed(known):
            if parsed.last_sequence == checkpoint.size - 1:
                return parsed.key
        raise ArchiveUnavailableError(f"the note of tree size {checkpoint.size} is not listed under {under} yet")

    async def _witness_once(self, lane: _Lane, checkpoint: StoredCheckpoint) -> None:
        witness = self._witnesses[lane.name]
        chain_id = checkpoint.chain_id
        note = parse_note(checkpoint.note)
        head = parse_tree_head(note.text)
        old = self._held.get((lane.name, head.origin), 0)
        if old > head.size:
            old = 0  # ask again: the witness says what it holds
        for _ in range(3):
            proof = await self._proofs(chain_id, old, head.size) if 0 < old < head.size else ()
            answer = await witness.client.add_checkpoint(AddCheckpoint(old, tuple(proof), checkpoint.note))
            if isinstance(answer, WitnessConflict):
                if answer.size > head.size:
                    raise WitnessRefusedError(
                        f"witness {lane.name} holds a tree of size {answer.size} for {head.origin!r}, larger than "
                        f"this checkpoint's {head.size}: another writer uses this origin, or the log was rolled back",
                        409,
                    )
                old = answer.size
                self._held[(lane.name, head.origin)] = old
                continue
            lines = [line for line in answer.split(b"\n") if line]
            cosigned = parse_note(add_signatures(checkpoint.note, lines))
            found = check_cosignature(cosigned, lane.name, witness.public_key)
            if isinstance(found, str):
                raise WitnessRefusedError(f"witness {lane.name} answered without a valid cosignature: {found}", 200)
            self._held[(lane.name, head.origin)] = head.size
            body = b"".join(line + b"\n" for line in lines)
            note_key = await self._note_key(checkpoint)
            await self._store.put(cosignature_key(note_key, lane.name), body, hashlib.sha256(body).digest())
            lane.stats.succeeded(head.size)
            return
        raise WitnessUnavailableError(f"witness {lane.name} kept answering 409 for {head.origin!r}")

    async def _timestamp_once(self, lane: _Lane, checkpoint: StoredCheckpoint) -> None:
        assert self._tsa is not None
        reply = await self._tsa.timestamp(checkpoint.note)
        note_key = await self._note_key(checkpoint)
        await self._store.put(timestamp_key(note_key), reply, hashlib.sha256(reply).digest())
        lane.stats.succeeded(checkpoint.size)
