"""The pipeline's settings, its counters, and the hook told of new checkpoints.

Plain data shared by every stage; no behaviour beyond defaults.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from collector_ext.retry import RetryPolicy
from collector_ext.signing_pool import SigningWorkers

AckMode = Literal["spool", "archive"]


@dataclass(frozen=True, slots=True)
class PipelineSettings:
    segment_max_records: int = 20_000
    segment_max_bytes: int = 16 * 1024 * 1024
    max_linger: float = 0.015
    upload_concurrency: int = 2
    checkpoint_interval: float = 60.0
    checkpoint_min_spacing: float = 1.0
    ack_timeout: float = 10.0
    ack: AckMode = "spool"  # "spool" needs a Spool; without one the pipeline acks on "archive"
    max_pending_records: int = 200_000  # sealed, in memory, not yet durable
    max_pending_bytes: int = 32 * 1024 * 1024
    spool_max_bytes: int = 1024 * 1024 * 1024
    signing_workers: SigningWorkers = "processes"
    signing_worker_count: int = 0  # 0: one per CPU
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    # The chain's Merkle tree (hash tiles and a signed note per checkpoint, FORMAT.md 16). Off only to
    # measure what it costs (tests/benchmark.py); an archive written without it has no proofs.
    merkle_tree: bool = True


@dataclass
class PipelineStats:
    records_sealed: int = 0
    records_spooled: int = 0
    records_archived: int = 0
    segments_archived: int = 0
    checkpoints_written: int = 0
    upload_retries: int = 0
    spool_write_retries: int = 0
    requests_refused: int = 0
    restarts: int = 0
    last_checkpoint_unix: float = 0.0


CheckpointHook = Callable[[bytes, int, int], None]
"""Called with each new checkpoint note after it is stored: ``(note bytes, tree size, previous size)``."""
