"""Witness verifier keys (C2SP signed-note "vkey" strings of Ed25519 cosigners, type 0x04).

A vkey is ``<name>+<key hint as 8 lowercase hex digits>+<base64(0x04 || 32-byte key)>``; it is parsed
by ``collector_ext.seal.note.parse_verifier_key`` and must name a cosignature key. Pure: no files read.
"""

from __future__ import annotations

import base64

from collector_ext.errors import DataError
from collector_ext.seal.keys import PublicKey
from collector_ext.seal.note import COSIGNATURE_ED25519_TYPE, NoteError, key_hint, parse_verifier_key


class WitnessKeyError(DataError):
    """A string that is not a witness's cosigning verifier key."""


def witness_vkey(name: str, public_key: PublicKey) -> str:
    """The vkey an auditor or a sidecar pins for a witness named ``name`` with ``public_key``."""
    hint = key_hint(name, COSIGNATURE_ED25519_TYPE, public_key.raw)
    blob = base64.b64encode(bytes([COSIGNATURE_ED25519_TYPE]) + public_key.raw).decode()
    return f"{name}+{hint.hex()}+{blob}"


def parse_witness_vkey(vkey: str) -> tuple[str, PublicKey]:
    """The witness's name and key.

    Raises:
        WitnessKeyError: not a signed-note vkey (see ``parse_verifier_key``), or a key of another type
            than 0x04 (Ed25519 cosignature).
    """
    try:
        name, signature_type, key = parse_verifier_key(vkey)
    except NoteError as exc:
        raise WitnessKeyError(exc.problem) from exc
    if signature_type != COSIGNATURE_ED25519_TYPE:
        raise WitnessKeyError(
            f"key type 0x{signature_type:02x} is not 0x04 (Ed25519 cosignature); "
            "`collector-ext witness vkey` prints one"
        )
    return name, key
