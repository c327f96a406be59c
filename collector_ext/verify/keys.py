"""Which keys may sign what (proto/FORMAT.md 8 and 10.2): the auditor's keyring, and the key a chain
is bound to.

The auditor pins keys, each optionally with a validity window and the writer ids it may sign for
(a keyring file, the way CloudTrail publishes one public key per period). Pinning is not enough
for a signature to count: every chain is bound to the key its genesis names, and only a signed key
rotation entry moves it to another key. So a pinned key that leaked after it was retired cannot
write into a chain bound to its successor, and a key cannot sign outside its window.

Parsing a keyring takes bytes; the files a keyring names are read through a callable the caller
passes. No other I/O here.
"""

from __future__ import annotations

import bisect
import datetime as dt
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from collector_ext.errors import KeyFileError
from collector_ext.seal.keys import PublicKey, load_public_key_pem


@dataclass(frozen=True)
class PinnedKey:
    """A key the auditor trusts, when (sealing times in ns since the epoch) and for which writers."""

    key: PublicKey
    not_before: int | None = None
    not_after: int | None = None
    writer_ids: frozenset[str] | None = None  # None: any writer
    source: str = ""

    def time_problem(self, unix_nano: int) -> str:
        """Why a signature made at ``unix_nano`` falls outside this key's window, or ''."""
        if self.not_before is not None and unix_nano < self.not_before:
            return f"before the key's not_before {_iso(self.not_before)}"
        if self.not_after is not None and unix_nano > self.not_after:
            return f"after the key's not_after {_iso(self.not_after)}"
        return ""

    def writer_problem(self, writer_id: str) -> str:
        if self.writer_ids is None or writer_id in self.writer_ids:
            return ""
        allowed = ", ".join(sorted(self.writer_ids)) or "none"
        return f"writer id {writer_id or '(none)'} is not among the key's writer ids ({allowed})"


class Keyring:
    """The pinned keys by key id."""

    def __init__(self, keys: Iterable[PinnedKey]) -> None:
        self._keys: dict[bytes, PinnedKey] = {}
        for pinned in keys:
            self._keys[pinned.key.key_id] = pinned

    @classmethod
    def of(cls, keys: Keyring | Mapping[bytes, PublicKey]) -> Keyring:
        """A keyring from plain pinned keys (no windows), or the keyring itself."""
        if isinstance(keys, Keyring):
            return keys
        return cls(PinnedKey(key) for key in keys.values())

    def get(self, key_id: bytes) -> PublicKey | None:
        pinned = self._keys.get(key_id)
        return pinned.key if pinned is not None else None

    def pinned(self, key_id: bytes) -> PinnedKey | None:
        return self._keys.get(key_id)

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys

    def __iter__(self) -> Iterator[PinnedKey]:
        return iter(self._keys.values())

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def key_ids(self) -> list[str]:
        return sorted(k.hex() for k in self._keys)

    @property
    def windowed(self) -> bool:
        """True when any key has a validity window (the checker then reads each sealing time)."""
        return any(k.not_before is not None or k.not_after is not None for k in self._keys.values())


class ChainKeys:
    """The key a chain is bound to at each sequence number: its genesis key, then each rotation's."""

    def __init__(self) -> None:
        self._starts: list[int] = []  # first sequence number signed by each key, ascending
        self._key_ids: list[bytes] = []

    @property
    def bound(self) -> bool:
        return bool(self._key_ids)

    def bind(self, first_sequence: int, key_id: bytes) -> None:
        """From ``first_sequence`` on the chain is signed by ``key_id`` (genesis or rotation)."""
        if self._starts and first_sequence <= self._starts[-1]:
            return  # never rewrite history: a rotation applies from after it
        self._starts.append(first_sequence)
        self._key_ids.append(key_id)

    def key_at(self, sequence: int) -> bytes | None:
        """The key that must sign entry ``sequence`` (None before anything bound the chain)."""
        index = bisect.bisect_right(self._starts, sequence) - 1
        return self._key_ids[index] if index >= 0 else None

    @property
    def current(self) -> bytes | None:
        return self._key_ids[-1] if self._key_ids else None

    @property
    def rotations(self) -> int:
        return max(0, len(self._key_ids) - 1)


def _iso(unix_nano: int) -> str:
    return dt.datetime.fromtimestamp(unix_nano / 1e9, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _time(value: Any, where: str, source: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        moment = value
    elif isinstance(value, dt.date):
        moment = dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    elif isinstance(value, str):
        try:
            moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as exc:
            raise KeyFileError(source, f"{where}: {value!r} is not an RFC 3339 time") from exc
    else:
        raise KeyFileError(source, f"{where}: expected an RFC 3339 time such as 2026-01-01T00:00:00Z")
    if moment.tzinfo is None:
        raise KeyFileError(source, f"{where}: give a time zone (Z or an offset)")
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000


def parse_keyring(data: bytes, source: str, read_file: Callable[[str], bytes]) -> Keyring:
    """Parse a keyring file: YAML (or JSON) with a list ``keys`` of entries, each with
    ``public_key`` (PEM text, or a file path ``read_file`` resolves), optional ``not_before`` and
    ``not_after`` (RFC 3339) and optional ``writer_ids`` (a list of strings).

    Raises:
        KeyFileError: the file does not parse or an entry is invalid; names the file and entry.
    """
    try:
        document = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise KeyFileError(source, f"does not parse as YAML: {exc}") from exc
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise KeyFileError(source, "expected a mapping with a non-empty list `keys`")
    keys: list[PinnedKey] = []
    for index, entry in enumerate(entries):
        where = f"keys[{index}]"
        if not isinstance(entry, dict):
            raise KeyFileError(source, f"{where}: expected a mapping with public_key")
        unknown = set(entry) - {"public_key", "not_before", "not_after", "writer_ids", "comment"}
        if unknown:
            raise KeyFileError(source, f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
        text = entry.get("public_key")
        if not isinstance(text, str) or not text.strip():
            raise KeyFileError(source, f"{where}.public_key: a PEM public key or the path of one")
        if text.lstrip().startswith("-----BEGIN"):
            pem, origin = text.encode(), f"{source} {where}"
        else:
            try:
                pem = read_file(text)
            except OSError as exc:
                raise KeyFileError(source, f"{where}.public_key: cannot read {text}: {exc.strerror}") from exc
            origin = f"{source} {where} ({text})"
        key = load_public_key_pem(pem, origin)
        not_before = _time(entry.get("not_before"), f"{where}.not_before", source)
        not_after = _time(entry.get("not_after"), f"{where}.not_after", source)
        if not_before is not None and not_after is not None and not_after < not_before:
            raise KeyFileError(source, f"{where}: not_after is before not_before")
        writers = entry.get("writer_ids")
        if writers is not None and (not isinstance(writers, list) or not all(isinstance(w, str) for w in writers)):
            raise KeyFileError(source, f"{where}.writer_ids: expected a list of writer ids")
        if any(k.key.key_id == key.key_id for k in keys):
            raise KeyFileError(source, f"{where}: key id {key.key_id.hex()} is listed twice")
        keys.append(
            PinnedKey(
                key, not_before, not_after, frozenset(writers) if writers is not None else None, f"{source} {where}"
            )
        )
    return Keyring(keys)
