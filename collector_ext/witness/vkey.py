"""Witness verifier keys (C2SP signed-note "vkey" strings of Ed25519 cosigners, type 0x04).

A vkey is ``<name>+<key hint as 8 lowercase hex digits>+<base64(0x04 || 32-byte key)>``. The base64
part may itself contain '+', so the string is split at the first two only. Pure: no files read.
"""

from __future__ import annotations

import base64
import binascii

from collector_ext.errors import DataError
from collector_ext.seal.keys import PublicKey
from collector_ext.seal.note import COSIGNATURE_ED25519_TYPE, key_hint


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
        WitnessKeyError: not three '+'-separated parts, not an Ed25519 cosignature key (type 0x04),
            or a hint that does not match the name and key.
    """
    parts = vkey.strip().split("+", 2)
    if len(parts) != 3 or not parts[0]:
        raise WitnessKeyError("expected <name>+<key hint hex>+<base64 of 0x04 and the key>")
    name, hint_hex, key_b64 = parts
    try:
        hint = bytes.fromhex(hint_hex)
        blob = base64.b64decode(key_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise WitnessKeyError("the key hint is not hex or the key is not base64") from exc
    if len(hint) != 4 or len(blob) != 33:
        raise WitnessKeyError("expected a 4-byte hint and a 33-byte key (type byte and Ed25519 key)")
    if blob[0] != COSIGNATURE_ED25519_TYPE:
        raise WitnessKeyError(
            f"key type 0x{blob[0]:02x} is not 0x04 (Ed25519 cosignature); `collector-ext witness vkey` prints one"
        )
    try:
        key = PublicKey.from_raw(blob[1:])
        expected = key_hint(name, COSIGNATURE_ED25519_TYPE, key.raw)
    except ValueError as exc:
        raise WitnessKeyError(str(exc)) from exc
    if expected != hint:
        raise WitnessKeyError("the key hint does not match the name and key")
    return name, key
