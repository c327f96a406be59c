"""C2SP signed notes and tlog-checkpoint bodies (proto/FORMAT.md 16.3, 16.4).

A signed note is UTF-8 text ending in a newline, an empty line, and one signature line per signer:
``— <key name> <base64(4-byte key hint || signature)>``. A checkpoint note's text is the origin line,
the tree size in decimal and the base64 tree root. The writer signs with Ed25519 (signature type
0x01; the hint is ``SHA-256(name || 0x0A || 0x01 || public key)[:4]``); witnesses append timestamped
Ed25519 cosignatures (type 0x04, signed message ``cosignature/v1\\ntime <t>\\n`` + text).

This module builds, parses, signs and checks notes as bytes. It does not decide which keys or
origins to trust (callers pass them in) and reads nothing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from collector_ext.errors import DataError
from collector_ext.seal.keys import PublicKey, Signer

SIGNATURE_PREFIX = "\u2014 "
ED25519_TYPE = 0x01
COSIGNATURE_ED25519_TYPE = 0x04
COSIGNATURE_LABEL = b"cosignature/v1\n"
# Verifiers must accept at least 16 signatures (C2SP signed-note); more than this is refused outright
# so a hostile note cannot make a verifier try thousands.
MAX_SIGNATURES = 100
MAX_NOTE_BYTES = 1 << 20


class NoteError(DataError):
    """A note that does not parse, or whose signature does not verify; ``check`` names the step."""

    def __init__(self, check: str, problem: str) -> None:
        super().__init__(f"{check}: {problem}")
        self.check = check
        self.problem = problem


@dataclass(frozen=True, slots=True)
class NoteSignature:
    """One signature line: key name, 4-byte key hint and the signature bytes after the hint."""

    name: str
    key_hint: bytes
    signature: bytes

    def line(self) -> bytes:
        blob = base64.b64encode(self.key_hint + self.signature).decode("ascii")
        return f"{SIGNATURE_PREFIX}{self.name} {blob}\n".encode()


@dataclass(frozen=True, slots=True)
class Note:
    """A parsed signed note: the signed text (with its final newline) and its signature lines."""

    text: bytes
    signatures: tuple[NoteSignature, ...]

    def encode(self) -> bytes:
        return self.text + b"\n" + b"".join(s.line() for s in self.signatures)


@dataclass(frozen=True, slots=True)
class TreeHead:
    """A tlog-checkpoint body: origin, tree size and root hash (extension lines kept opaque)."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Cosignature:
    """A verified witness cosignature: who, and the time it states (POSIX seconds)."""

    name: str
    timestamp: int


def _check_key_name(name: str) -> None:
    if not name or "+" in name or any(c.isspace() for c in name):
        raise ValueError(f"a note key name must be non-empty, without spaces or '+': {name!r}")


def key_hint(name: str, signature_type: int, public_key_raw: bytes) -> bytes:
    """The 4-byte key id C2SP recommends: SHA-256(name || 0x0A || type || key)[:4]."""
    _check_key_name(name)
    return hashlib.sha256(name.encode() + b"\n" + bytes([signature_type]) + public_key_raw).digest()[:4]


def verifier_key(name: str, public_key: PublicKey, signature_type: int = ED25519_TYPE) -> str:
    """The vkey string ``<name>+<hint hex>+<base64(type || key)>`` other tlog tools take."""
    hint = key_hint(name, signature_type, public_key.raw)
    return f"{name}+{hint.hex()}+{base64.b64encode(bytes([signature_type]) + public_key.raw).decode()}"


def parse_verifier_key(vkey: str) -> tuple[str, int, PublicKey]:
    """Name, signature type and key of a vkey string.

    Raises:
        NoteError: not a vkey of an Ed25519 (0x01) or Ed25519 cosignature (0x04) key, or its hint
            does not match.
    """
    # Key names never contain '+' but standard base64 may, so only the first two separate fields.
    parts = vkey.strip().split("+", 2)
    if len(parts) != 3 or not parts[0]:
        raise NoteError("verifier key", "expected <name>+<hint hex>+<base64 key>")
    name, hint_hex, key_b64 = parts
    try:
        blob = base64.b64decode(key_b64, validate=True)
        hint = bytes.fromhex(hint_hex)
    except (binascii.Error, ValueError) as exc:
        raise NoteError("verifier key", "the hint is not hex or the key is not base64") from exc
    if len(blob) != 33 or blob[0] not in (ED25519_TYPE, COSIGNATURE_ED25519_TYPE) or len(hint) != 4:
        raise NoteError("verifier key", "not an Ed25519 key (type 0x01 or 0x04, 32 bytes)")
    try:
        key = PublicKey.from_raw(blob[1:])
        expected = key_hint(name, blob[0], key.raw)
    except ValueError as exc:
        raise NoteError("verifier key", str(exc)) from exc
    if expected != hint:
        raise NoteError("verifier key", "the key hint does not match the name and key")
    return name, blob[0], key


def checkpoint_text(origin: str, size: int, root: bytes) -> bytes:
    """The tlog-checkpoint note text: origin, decimal size, base64 root, each ending in a newline."""
    _check_text_line(origin, "origin")
    if size < 0:
        raise ValueError("a tree size is never negative")
    if len(root) != 32:
        raise ValueError("a tree root is 32 bytes")
    return f"{origin}\n{size}\n{base64.b64encode(root).decode()}\n".encode()


def _check_text_line(line: str, what: str) -> None:
    if not line or any(ord(c) < 0x20 or c == "\x7f" for c in line):
        raise ValueError(f"the {what} line must be non-empty without control characters")


def sign_note(text: bytes, name: str, signer: Signer) -> bytes:
    """A note of ``text`` signed by ``signer`` under key name ``name`` (Ed25519, type 0x01)."""
    _check_note_text(text)
    hint = key_hint(name, ED25519_TYPE, signer.public_key.raw)
    return Note(text, (NoteSignature(name, hint, signer.sign(text)),)).encode()


def _check_note_text(text: bytes) -> None:
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NoteError("note text", "not UTF-8") from exc
    if not decoded.endswith("\n"):
        raise NoteError("note text", "does not end with a newline")
    if any((ord(c) < 0x20 and c != "\n") or c == "\x7f" for c in decoded):
        raise NoteError("note text", "contains a control character")


def parse_note(data: bytes) -> Note:
    """Split a signed note into its text and signature lines (nothing is verified here).

    Raises:
        NoteError: the note is too large, not UTF-8, has no signature block, or a malformed line.
    """
    if len(data) > MAX_NOTE_BYTES:
        raise NoteError("note", f"larger than {MAX_NOTE_BYTES} bytes")
    split = data.rfind(b"\n\n")
    if split < 0:
        raise NoteError("note", "no empty line before the signatures (truncated?)")
    text = data[: split + 1]
    _check_note_text(text)
    block = data[split + 2 :]
    if not block.endswith(b"\n"):
        raise NoteError("note", "the signature block does not end with a newline (truncated?)")
    lines = block[:-1].split(b"\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError("note", f"more than {MAX_SIGNATURES} signatures")
    signatures = []
    for raw in lines:
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise NoteError("note", "a signature line is not UTF-8") from exc
        if not line.startswith(SIGNATURE_PREFIX):
            raise NoteError("note", "a signature line does not start with an em dash and a space")
        fields = line[len(SIGNATURE_PREFIX) :].split(" ")
        if len(fields) != 2 or not fields[0] or "+" in fields[0]:
            raise NoteError("note", "a signature line is not '<name> <base64>'")
        try:
            blob = base64.b64decode(fields[1], validate=True)
        except binascii.Error as exc:
            raise NoteError("note", f"the signature of {fields[0]!r} is not base64") from exc
        if len(blob) < 5:
            raise NoteError("note", f"the signature of {fields[0]!r} is too short")
        signatures.append(NoteSignature(fields[0], blob[:4], blob[4:]))
    return Note(text, tuple(signatures))


def check_note_signature(note: Note, name: str, public_key: PublicKey) -> str | None:
    """Why ``note`` is not signed by ``public_key`` under ``name`` (None when it is). Never raises.

    Signatures of other (name, hint) pairs are ignored, as C2SP requires; a matching pair whose
    signature fails makes the note fail.
    """
    hint = key_hint(name, ED25519_TYPE, public_key.raw)
    matching = [s for s in note.signatures if s.name == name and s.key_hint == hint]
    if not matching:
        return f"no signature by key {name!r} (hint {hint.hex()}): signed for another key?"
    for signature in matching:
        if not public_key.is_valid_signature(signature.signature, note.text):
            return f"the signature by {name!r} does not verify over the note text"
    return None


def verify_note_signature(note: Note, name: str, public_key: PublicKey) -> None:
    """Raise ``NoteError`` unless ``note`` carries a valid signature by ``public_key`` under ``name``."""
    problem = check_note_signature(note, name, public_key)
    if problem is not None:
        raise NoteError("note signature", problem)


def parse_tree_head(text: bytes) -> TreeHead:
    """Read a tlog-checkpoint note text (call only after its signature verified).

    Raises:
        NoteError: fewer than three lines, a size with leading zeros or not decimal, a root that is
            not base64 of 32 bytes.
    """
    _check_note_text(text)
    lines = text.decode("utf-8")[:-1].split("\n")
    if len(lines) < 3 or any(not line for line in lines):
        raise NoteError("checkpoint", "needs an origin, a size and a root hash line, none empty")
    origin, size_text, root_text = lines[:3]
    if not size_text.isascii() or not size_text.isdigit() or (size_text != "0" and size_text.startswith("0")):
        raise NoteError("checkpoint", f"tree size {size_text!r} is not a decimal number without leading zeros")
    try:
        root = base64.b64decode(root_text, validate=True)
    except binascii.Error as exc:
        raise NoteError("checkpoint", "the root hash line is not base64") from exc
    if len(root) != 32:
        raise NoteError("checkpoint", "the root hash is not 32 bytes")
    return TreeHead(origin, int(size_text), root, tuple(lines[3:]))


def cosignature_message(text: bytes, timestamp: int) -> bytes:
    """What a witness signs (C2SP tlog-cosignature, Ed25519): label, time line, checkpoint text."""
    if not 0 <= timestamp < 1 << 63:
        raise ValueError("a cosignature timestamp is between 0 and 2**63 - 1")
    return COSIGNATURE_LABEL + f"time {timestamp}\n".encode() + text


def cosign(text: bytes, name: str, signer: Signer, timestamp: int) -> NoteSignature:
    """A witness's cosignature line (type 0x04) on a checkpoint text, as of ``timestamp``."""
    hint = key_hint(name, COSIGNATURE_ED25519_TYPE, signer.public_key.raw)
    signature = signer.sign(cosignature_message(text, timestamp))
    return NoteSignature(name, hint, struct.pack(">Q", timestamp) + signature)


def check_cosignature(note: Note, name: str, public_key: PublicKey) -> Cosignature | str:
    """The cosignature of witness ``name`` on ``note``, or why there is no valid one. Never raises."""
    hint = key_hint(name, COSIGNATURE_ED25519_TYPE, public_key.raw)
    matching = [s for s in note.signatures if s.name == name and s.key_hint == hint]
    if not matching:
        return f"no cosignature by witness {name!r}"
    found: Cosignature | None = None
    for signature in matching:
        if len(signature.signature) != 8 + 64:
            return f"the cosignature by {name!r} is not 72 bytes after its hint"
        (timestamp,) = struct.unpack(">Q", signature.signature[:8])
        if timestamp >= 1 << 63:
            return f"the cosignature by {name!r} has a timestamp beyond 2**63 - 1"
        if not public_key.is_valid_signature(signature.signature[8:], cosignature_message(note.text, timestamp)):
            return f"the cosignature by {name!r} does not verify over the checkpoint"
        found = Cosignature(name, timestamp)
    assert found is not None
    return found


def add_signatures(note_bytes: bytes, lines: Iterable[NoteSignature] | Sequence[bytes]) -> bytes:
    """``note_bytes`` with more signature lines appended (lines already present are not repeated).

    ``lines`` are ``NoteSignature`` values or raw signature lines as a witness returns them.

    Raises:
        NoteError: the note or one of the lines does not parse.
    """
    note = parse_note(note_bytes)
    extra: list[NoteSignature] = []
    for item in lines:
        if isinstance(item, NoteSignature):
            extra.append(item)
            continue
        line = item if item.endswith(b"\n") else item + b"\n"
        extra.extend(parse_note(b"x\n\n" + line).signatures)
    known = set(note.signatures)
    merged = list(note.signatures)
    for signature in extra:
        if signature not in known:
            merged.append(signature)
            known.add(signature)
    if len(merged) > MAX_SIGNATURES:
        raise NoteError("note", f"more than {MAX_SIGNATURES} signatures")
    return Note(note.text, tuple(merged)).encode()


def chain_origin(archive_id: str, chain_id: bytes) -> str:
    """The origin line (and note key name) of a chain's checkpoints: the archive id without its URL
    scheme, then the chain id in hex (``bucket/prefix/<chain>``; FORMAT.md 16.4).

    Spaces, control characters, ``+`` and ``%`` in the archive id are percent-encoded, since a key
    name may hold none of the first three.
    """
    name = archive_id.split("://", 1)[1] if "://" in archive_id else archive_id
    name = "".join(c if c.isprintable() and not c.isspace() and c not in "+%" else _percent(c) for c in name)
    name = name.strip("/") or "collector-ext"
    return f"{name}/{chain_id.hex()}"


def _percent(character: str) -> str:
    return "".join(f"%{b:02X}" for b in character.encode("utf-8"))
