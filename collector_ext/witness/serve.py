"""Builds and runs ``collector-ext witness serve`` from its command-line settings.

The composition root of the witness: reads its cosigning key and the trusted logs' public keys from
files, opens (and locks) its state file, and serves until SIGTERM or SIGINT. Errors name the option
and the file.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from collector_ext.errors import ConfigurationError, KeyFileError
from collector_ext.seal.keys import Ed25519Signer, load_private_key_pem, load_public_key_pem
from collector_ext.witness.protocol import TrustedLog
from collector_ext.witness.server import WitnessServer
from collector_ext.witness.state import WitnessStateFile
from collector_ext.witness.vkey import witness_vkey

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WitnessSettings:
    name: str
    signing_key: Path
    state: Path
    listen: str
    logs: tuple[str, ...]  # ORIGIN_PREFIX=PUBLIC_KEY_FILE
    prefix: str = ""


def _read(path: Path, option: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise KeyFileError(option, f"cannot read {path}: {exc.strerror}") from exc


def trusted_logs(specs: Sequence[str]) -> list[TrustedLog]:
    """``--log ORIGIN_PREFIX=PUBLIC_KEY_FILE`` values as trusted logs (the key: a .pub from keygen).

    Raises:
        ConfigurationError: a value without '=' or an empty prefix; KeyFileError for an unreadable key.
    """
    logs = []
    for spec in specs:
        prefix, sep, key_file = spec.partition("=")
        if not sep or not prefix or not key_file:
            raise ConfigurationError("--log", f"{spec!r} is not ORIGIN_PREFIX=PUBLIC_KEY_FILE")
        key = load_public_key_pem(_read(Path(key_file), "--log"), f"--log {key_file}")
        logs.append(TrustedLog(prefix, key))
    if not logs:
        raise ConfigurationError("--log", "name at least one log: ORIGIN_PREFIX=PUBLIC_KEY_FILE")
    return logs


def build_witness(settings: WitnessSettings) -> tuple[WitnessServer, WitnessStateFile, Ed25519Signer]:
    """The server, its opened (locked) state file, and its key; the caller starts and closes them."""
    if not settings.name or "+" in settings.name or any(c.isspace() for c in settings.name):
        raise ConfigurationError("--name", "must be non-empty, without spaces or '+' (e.g. witness.example.com/a)")
    signer = load_private_key_pem(_read(settings.signing_key, "--signing-key"), f"--signing-key {settings.signing_key}")
    logs = trusted_logs(settings.logs)
    state = WitnessStateFile(settings.state)
    state.open()
    server = WitnessServer(
        name=settings.name, signer=signer, logs=logs, state=state, listen=settings.listen, prefix=settings.prefix
    )
    return server, state, signer


async def serve_witness(settings: WitnessSettings) -> None:
    """Serve until SIGTERM or SIGINT."""
    server, state, signer = build_witness(settings)
    try:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        try:
            port = await server.start()
        except OSError as exc:
            raise ConfigurationError("--listen", f"cannot listen on {settings.listen}: {exc}") from exc
        log.info(
            "witness serving",
            extra={
                "listen": settings.listen,
                "port": port,
                "vkey": witness_vkey(settings.name, signer.public_key),
                "origins_held": len(state.origins),
            },
        )
        await stop.wait()
        await server.stop()
    finally:
        state.close()
