"""The witness's persisted state: per origin, the largest tree it cosigned and that checkpoint.

One JSON file, replaced atomically (temporary file, fsync, rename, directory fsync) before any
cosignature leaves the witness, so a crash never lets it cosign something inconsistent with what
it already vouched for. The file is locked (``flock``) while a witness runs: two witness processes
on one state file could each accept a different extension of the same tree.

This module reads and writes the file; the verdicts are ``protocol``'s.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from collector_ext.errors import ConfigurationError
from collector_ext.files import write_atomically
from collector_ext.witness.protocol import OriginState

STATE_FORMAT = "collector-ext witness state 1"


@dataclass(frozen=True, slots=True)
class CosignedCheckpoint:
    """What the witness holds for one origin: the tree and the checkpoint note it cosigned, with its
    own cosignature line appended (served on the monitoring endpoint)."""

    state: OriginState
    note: bytes
    cosigned_at: int


class WitnessStateFile:
    """The state file at ``path``, held locked from ``open`` to ``close``.

    Raises ConfigurationError naming ``--state`` when the file cannot be read, parsed, locked or written.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_handle: int | None = None
        self.origins: dict[str, CosignedCheckpoint] = {}

    def open(self) -> None:
        lock_path = self.path.with_name(f".{self.path.name}.lock")
        try:
            handle = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise ConfigurationError("--state", f"cannot create the lock file {lock_path}: {exc.strerror}") from exc
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(handle)
            raise ConfigurationError(
                "--state", f"{self.path} is in use by another witness process (lock {lock_path})"
            ) from exc
        self._lock_handle = handle
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            self.origins = {}
            return
        except OSError as exc:
            self.close()
            raise ConfigurationError("--state", f"cannot read {self.path}: {exc.strerror}") from exc
        try:
            self.origins = _parse(data)
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            self.close()
            raise ConfigurationError(
                "--state", f"{self.path} is not a witness state file ({exc}); restore it from a backup"
            ) from exc

    def states(self) -> dict[str, OriginState]:
        return {origin: held.state for origin, held in self.origins.items()}

    def store(self, origin: str, held: CosignedCheckpoint) -> None:
        """Persist the new state of ``origin`` (durably, before the caller answers).

        Raises:
            OSError: the file could not be written; the state in memory is unchanged.
        """
        origins = dict(self.origins)
        origins[origin] = held
        write_atomically(self.path, _dump(origins))
        self.origins = origins

    def close(self) -> None:
        if self._lock_handle is not None:
            os.close(self._lock_handle)
            self._lock_handle = None


def _dump(origins: dict[str, CosignedCheckpoint]) -> bytes:
    document: dict[str, Any] = {
        "format": STATE_FORMAT,
        "origins": {
            origin: {
                "size": held.state.size,
                "root": base64.b64encode(held.state.root).decode(),
                "note": base64.b64encode(held.note).decode(),
                "cosigned_at": held.cosigned_at,
            }
            for origin, held in sorted(origins.items())
        },
    }
    return json.dumps(document, indent=1).encode() + b"\n"


def _parse(data: bytes) -> dict[str, CosignedCheckpoint]:
    document = json.loads(data)
    if document.get("format") != STATE_FORMAT:
        raise ValueError(f"format is not {STATE_FORMAT!r}")
    origins: dict[str, CosignedCheckpoint] = {}
    for origin, held in document["origins"].items():
        size, root = held["size"], base64.b64decode(held["root"], validate=True)
        if not isinstance(size, int) or size < 0 or len(root) != 32:
            raise ValueError(f"origin {origin!r} has a bad size or root")
        origins[origin] = CosignedCheckpoint(
            OriginState(size, root), base64.b64decode(held["note"], validate=True), int(held["cosigned_at"])
        )
    return origins
