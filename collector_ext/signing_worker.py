"""What runs inside a signing worker process, and nothing more.

A worker is a fresh interpreter (``spawn``) that imports this module to find its functions, so this
module imports only what signing needs: every module imported here costs memory in each worker.
"""

from __future__ import annotations

from collections.abc import Callable

from collector_ext.child_process import exit_with_parent
from collector_ext.memory import pin_mmap_threshold
from collector_ext.seal import tiles  # noqa: F401  (the tree work sent to workers: imported at start, not on first use)
from collector_ext.seal.entry import HASH_SIZE, RECORD_SIGNATURE_PREFIX
from collector_ext.seal.keys import fastest_sign_function
from collector_ext.token_signer import TokenSession, TokenSettings

_sign: Callable[[bytes], bytes] | None = None


def _start(parent_pid: int) -> None:
    exit_with_parent(parent_pid)
    # The tree work brings segment-sized buffers: with glibc's threshold pinned they are returned to
    # the system when freed, instead of raising it and staying in a fragmented heap (as in serve).
    pin_mmap_threshold()


def initialise(raw_private_key: bytes, parent_pid: int) -> None:
    global _sign
    _start(parent_pid)
    _sign = fastest_sign_function(raw_private_key)


def initialise_token(settings: TokenSettings, parent_pid: int) -> None:
    """A worker that signs through its own logged-in session on a PKCS#11 token (the key stays in
    the token; the PIN came through the initializer pipe and is kept only by the session)."""
    global _sign
    _start(parent_pid)
    _sign = TokenSession(settings).sign


def sign_hashes(sign: Callable[[bytes], bytes], hashes: bytes) -> bytes:
    """Record signatures (over RECORD_SIGNATURE_PREFIX || hash) for concatenated 32-byte entry
    hashes, concatenated: one bytes object each way keeps the pipe round trip to one cheap pickle.
    ``sign`` is an Ed25519 signing function (the worker's key, or a Signer's on the thread path)."""
    prefix = RECORD_SIGNATURE_PREFIX
    return b"".join(sign(prefix + hashes[i : i + HASH_SIZE]) for i in range(0, len(hashes), HASH_SIZE))


def sign_concatenated(hashes: bytes) -> bytes:
    """``sign_hashes`` with this worker's key (see ``initialise``)."""
    assert _sign is not None, "worker not initialised"
    return sign_hashes(_sign, hashes)
