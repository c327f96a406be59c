"""Reads what a witness holds, for ``verify --witness-url``: its origins, and each one's newest
cosigned checkpoint note (``GET <url>/origins``, ``GET <url>/<hex SHA-256 of origin>/checkpoint``).

Nothing read here is trusted: verify checks the log's signature and the witness's cosignature on each
note against pinned keys (``verify.witnesses.authenticate_witnessed``). Failures become
``WitnessUnavailableError`` naming the option; verify then stops with exit 2, as for an archive it
cannot read.
"""

from __future__ import annotations

import aiohttp

from collector_ext.seal.note import MAX_NOTE_BYTES
from collector_ext.witness.client import WitnessUnavailableError
from collector_ext.witness.protocol import origin_digest

MAX_ORIGINS_BYTES = 4 * 1024 * 1024


async def witnessed_notes(url: str, origin_prefix: str, *, timeout_seconds: float = 30.0) -> list[bytes]:
    """The newest checkpoint note the witness at ``url`` cosigned for each origin starting with
    ``origin_prefix`` (with its signature lines, as served).

    Raises:
        WitnessUnavailableError: the witness cannot be reached or answers with an error.
    """
    base = url.rstrip("/")
    notes: list[bytes] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_seconds)) as session:
        try:
            async with session.get(f"{base}/origins") as response:
                if response.status != 200:
                    raise WitnessUnavailableError(f"--witness-url {base}/origins answered HTTP {response.status}")
                listing = await response.content.read(MAX_ORIGINS_BYTES)
            origins = [line for line in listing.decode("utf-8", errors="replace").split("\n") if line]
            for origin in origins:
                if not origin.startswith(origin_prefix):
                    continue
                async with session.get(f"{base}/{origin_digest(origin)}/checkpoint") as response:
                    if response.status != 200:
                        raise WitnessUnavailableError(
                            f"--witness-url {base}: the checkpoint of {origin!r} answered HTTP {response.status}"
                        )
                    notes.append(await response.content.read(MAX_NOTE_BYTES))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise WitnessUnavailableError(
                f"--witness-url {base} cannot be reached ({type(exc).__name__}: {exc})"
            ) from exc
    return notes
