"""HTTP client for Loki: POST /loki/api/v1/push and GET /loki/api/v1/query_range.

Translates HTTP outcomes into the project's errors at this edge:

- 204/200: success;
- 429, 5xx, connection errors, timeouts: ``LokiUnavailableError`` (retryable; carries Retry-After);
- 400: ``LokiRejectedError`` with Loki's reasons (not retried: Loki already stored the valid
  entries of the request, and retrying the rest cannot succeed);
- 413: ``LokiRequestTooLargeError`` (the sender splits the batch);
- 401/403/404: ``LokiConfigurationError`` (tenant, credentials or URL are wrong; an operator must act).

Tenant (X-Scope-OrgID), basic auth or bearer token, and TLS with a custom CA are set once here.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp

from collector_ext.deliver.loki.push import JSON_CONTENT_TYPE, PROTOBUF_CONTENT_TYPE
from collector_ext.errors import CollectorExtError, DataError, DeliveryError


class LokiUnavailableError(DeliveryError):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class LokiRejectedError(DataError):
    """Loki refused some or all entries of a push (HTTP 400); ``reasons`` counts them by reason."""

    def __init__(self, message: str, reasons: dict[str, int]) -> None:
        super().__init__(message)
        self.reasons = reasons


class LokiRequestTooLargeError(DataError):
    pass


class LokiConfigurationError(CollectorExtError):
    pass


_REASONS = (
    ("timestamp too old", "too_old"),
    ("timestamp too new", "too_new"),
    ("max entry size", "line_too_long"),
    ("structured metadata too large", "metadata_too_large"),
    ("too many structured metadata", "metadata_too_many"),
    ("structured metadata, but this feature is disallowed", "metadata_disallowed"),
    ("entry too far behind", "out_of_order"),
    ("entry out of order", "out_of_order"),
    ("label", "labels"),
)
_COUNTED = re.compile(r"^(\d+) errors like: ")


def classify_rejection(body: str) -> dict[str, int]:
    """Count the entries of a Loki 400 body by reason (Loki groups identical messages as
    'N errors like: ...' and joins groups with '; '; out-of-order errors come one per line)."""
    reasons: dict[str, int] = {}
    text = body.strip()
    if "total ignored:" in text:
        lines = [line for line in text.splitlines() if line.startswith("entry with timestamp")]
        reasons["out_of_order"] = len(lines) or 1
        return reasons
    for part in filter(None, (p.strip() for p in text.split("; "))):
        count = 1
        match = _COUNTED.match(part)
        if match:
            count = int(match.group(1))
            part = part[match.end() :]
        lowered = part.lower()
        reason = next((key for needle, key in _REASONS if needle in lowered), "other")
        reasons[reason] = reasons.get(reason, 0) + count
    return reasons


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class LokiConnection:
    url: str
    tenant: str | None = None
    username: str | None = None
    password: str | None = None
    bearer_token: str | None = None
    ca_file: str | None = None
    timeout_seconds: float = 10.0


@dataclass(frozen=True, slots=True)
class QueriedEntry:
    timestamp_ns: int
    line: str
    labels: dict[str, str]
    metadata: dict[str, str]


class LokiClient:
    def __init__(self, connection: LokiConnection) -> None:
        self._connection = connection
        self._base = connection.url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    def _headers(self) -> dict[str, str]:
        headers = {"User-Agent": "collector-ext"}
        connection = self._connection
        if connection.tenant:
            headers["X-Scope-OrgID"] = connection.tenant
        if connection.bearer_token:
            headers["Authorization"] = f"Bearer {connection.bearer_token}"
        return headers

    async def open(self) -> None:
        connection = self._connection
        ssl_context: ssl.SSLContext | bool = True
        if connection.ca_file:
            ssl_context = ssl.create_default_context(cafile=connection.ca_file)
        auth = None
        if connection.username is not None:
            auth = aiohttp.BasicAuth(connection.username, connection.password or "")
        self._session = aiohttp.ClientSession(
            headers=self._headers(),
            auth=auth,
            timeout=aiohttp.ClientTimeout(total=connection.timeout_seconds),
            connector=aiohttp.TCPConnector(ssl=ssl_context, limit=8),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise LokiConfigurationError("Loki client used before open()")
        return self._session

    async def push(self, body: bytes, *, json_body: bool = False) -> None:
        """POST one push body. Raises the errors listed in the module docstring."""
        content_type = JSON_CONTENT_TYPE if json_body else PROTOBUF_CONTENT_TYPE
        url = f"{self._base}/loki/api/v1/push"
        try:
            async with self._http.post(url, data=body, headers={"Content-Type": content_type}) as response:
                if response.status in (200, 204):
                    return
                text = (await response.text(errors="replace"))[:4000]
                status = response.status
                retry_after = _retry_after(response.headers)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise LokiUnavailableError(f"POST {url}: {type(exc).__name__}: {exc}") from exc
        if status == 400:
            raise LokiRejectedError(f"Loki refused entries: {text.strip()[:500]}", classify_rejection(text))
        if status == 413:
            raise LokiRequestTooLargeError(f"Loki says the push is too large: {text.strip()[:200]}")
        if status in (401, 403, 404, 405):
            raise LokiConfigurationError(
                f"Loki answered {status} to POST {url}: {text.strip()[:200]} (check loki.url, loki.tenant, credentials)"
            )
        raise LokiUnavailableError(f"Loki answered {status}: {text.strip()[:200]}", retry_after)

    async def query_range(
        self, query: str, start_ns: int, end_ns: int, *, limit: int = 5000
    ) -> AsyncIterator[QueriedEntry]:
        """Every entry matching ``query`` in [start_ns, end_ns), oldest first, paging through
        Loki's per-query limit. Entries at a page boundary's timestamp are fetched again and
        de-duplicated by the caller (by seal), which Loki's inclusive start makes necessary."""
        url = f"{self._base}/loki/api/v1/query_range"
        start = start_ns
        seen_at_start: set[tuple[int, str, tuple[tuple[str, str], ...]]] = set()
        while start < end_ns:
            params = {
                "query": query,
                "start": str(start),
                "end": str(end_ns),
                "limit": str(limit),
                "direction": "forward",
            }
            headers = {"X-Loki-Response-Encoding-Flags": "categorize-labels"}
            try:
                async with self._http.get(url, params=params, headers=headers) as response:
                    if response.status != 200:
                        text = (await response.text(errors="replace"))[:500]
                        raise LokiUnavailableError(f"GET {url} answered {response.status}: {text.strip()}")
                    document = await response.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                raise LokiUnavailableError(f"GET {url}: {type(exc).__name__}: {exc}") from exc
            page = list(_entries_of(document))
            page.sort(key=lambda e: e.timestamp_ns)
            fresh = [e for e in page if _identity(e) not in seen_at_start]
            for entry in fresh:
                yield entry
            if len(page) < limit:
                return
            last = page[-1].timestamp_ns
            if last == start and not fresh:
                start += 1  # more than `limit` entries share one nanosecond: step past it
                seen_at_start = set()
                continue
            start = last
            seen_at_start = {_identity(e) for e in page if e.timestamp_ns == last}


def _identity(entry: QueriedEntry) -> tuple[int, str, tuple[tuple[str, str], ...]]:
    return entry.timestamp_ns, entry.line, tuple(sorted(entry.metadata.items()))


def _entries_of(document: Any) -> Iterator[QueriedEntry]:
    """Entries of a query_range answer. Without categorize-labels (Loki 2.9, or a proxy that drops
    the header) structured metadata arrives merged into the stream labels: then both are the same."""
    data = document.get("data", {}) if isinstance(document, dict) else {}
    categorized = "categorize-labels" in (data.get("encodingFlags") or [])
    for stream in data.get("result", []):
        labels = {str(k): str(v) for k, v in (stream.get("stream") or {}).items()}
        for value in stream.get("values", []):
            metadata = labels
            if categorized:
                extra = value[2] if len(value) > 2 and isinstance(value[2], dict) else {}
                metadata = {str(k): str(v) for k, v in (extra.get("structuredMetadata") or {}).items()}
            yield QueriedEntry(int(value[0]), str(value[1]), labels, metadata)
