"""The S3 archive: objects written with Object Lock retention and a SHA-256 checksum on every PUT.

Uses aiobotocore, so S3 settings follow the AWS SDK's conventions: the default credential chain,
AWS_REGION, and AWS_ENDPOINT_URL for S3-compatible stores (SeaweedFS, MinIO). botocore's own retries
are switched off for writes: ``retry.retry_async`` is the one owner of retries in the sidecar.
Every botocore error is translated here into the project's errors.

Reading is bounded: ``get`` refuses an object larger than the caller's limit from the response's
Content-Length, before reading its body, and reads the body in chunks, stopping at the limit should the
store send more than it announced.

A reader (``for_writing=False``: verify, prove, reports) sends each GET on a short path: the request is
signed with botocore's SigV4 signer and sent with aiohttp directly, at about a third of the CPU of a
GET through the botocore client (its event hooks, endpoint rules, retry bookkeeping and response
parsing, measured with py-spy on ``verify``). Only a 200 answer is taken from it; any other status, and
any error on the way, hands the GET to the botocore client, which retries and names the error as
before (an error also turns the short path off for the rest of the run). The bytes are the object's
either way; nothing the verifier checks depends on how they were fetched.

A writer sends each PUT the same short way, automatically where the short path can be set up (the
conditions of ``_SignedRequests.start``: botocore addresses the bucket in a layout the class
recognises, credentials and a region are known, and no proxy setting is present); otherwise every
PUT goes through the botocore client. The request is the one ``put_object`` sends (the caller's
x-amz-checksum-sha256, Content-Type, the Object Lock mode and retain-until date, and SigV4's
x-amz-content-sha256, x-amz-date and host signed with the session's current credentials, and the
Content-Length), at about 0.3-0.45 of the client's CPU per PUT (a 300 KB segment to SeaweedFS on
loopback). Only a 200 means stored; any other answer, a connection error or a timeout hands the PUT
to the botocore client, so errors and their messages are the client's as before. (aiohttp itself
sends a PUT once more when the server closed the connection under it, as HTTP allows for an
idempotent request; the botocore client comes after that.) After three PUTs in a row that the
short path failed and the client stored, the short path is turned off for the rest of the run (the
store wants something only botocore sends).

What this does not do: create buckets or change bucket settings (see deploy/ for that), or delete
anything.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import os
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
import yarl
from aiobotocore.session import get_session
from botocore.auth import S3SigV4Auth, _host_from_url
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from collector_ext.deliver.archive import ListedObject, RetentionMode, S3Location
from collector_ext.errors import (
    ArchiveUnavailableError,
    ConfigurationError,
    ObjectTooLargeError,
    PermanentArchiveError,
    UnreadableObjectError,
)

_PERMANENT_CODES = {
    "AccessDenied",
    "NoSuchBucket",
    "InvalidBucketName",
    "InvalidRequest",
    "InvalidArgument",
    "AllAccessDisabled",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "MethodNotAllowed",
}

# GET errors that belong to the object, not to the store: retrying cannot help. The verifier GETs only
# keys it has just listed, so a missing key was deleted (or overwritten with a delete marker) meanwhile.
_OBJECT_CODES = {
    "NoSuchKey": "no longer exists (it was deleted after it was listed)",
    "404": "no longer exists (it was deleted after it was listed)",
    "NotFound": "no longer exists (it was deleted after it was listed)",
    "InvalidObjectState": "is in an archive storage class and must be restored before it can be read",
    "MethodNotAllowed": "is a delete marker",
}
_READ_CHUNK = 1 << 20
_SHORT_PUT_MISSES = 3
_ISO8601 = "%Y-%m-%dT%H:%M:%SZ"  # botocore's header timestamps: whole seconds, UTC
_PAYLOAD_SHA256 = "collector_ext_payload_sha256"


def _raw_timestamp(value: str) -> str:
    return value


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "Unknown"))


class S3Archive:
    """ArchiveStore on S3 (or any S3-compatible store with Object Lock)."""

    def __init__(
        self,
        location: S3Location,
        *,
        retention_mode: RetentionMode = "GOVERNANCE",
        retention_days: int = 365,
        endpoint_url: str | None = None,
        region: str | None = None,
        for_writing: bool = True,
        max_connections: int = 32,
    ) -> None:
        self._location = location
        self._retention_mode = retention_mode
        self._retention_days = retention_days
        self._endpoint_url = endpoint_url
        self._region = region
        self._for_writing = for_writing
        self._config = Config(
            s3={"addressing_style": "path"} if endpoint_url else {},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"total_max_attempts": 1} if for_writing else {"mode": "standard", "total_max_attempts": 5},
            max_pool_connections=max_connections,
            connect_timeout=5,
            read_timeout=30,
        )
        self._stack = AsyncExitStack()
        self._client: Any = None
        self._max_connections = max_connections
        self._short: _SignedRequests | None = None
        self._short_reads = not for_writing  # the short GET path (see the module docstring) until it fails
        self._short_puts = for_writing  # the short PUT path, until it fails where botocore succeeds
        self._short_put_misses = 0  # PUTs in a row the short path failed and the botocore client stored

    @property
    def description(self) -> str:
        prefix = f"/{self._location.prefix}" if self._location.prefix else ""
        return f"s3://{self._location.bucket}{prefix}"

    def _full_key(self, key: str) -> str:
        return f"{self._location.prefix}/{key}" if self._location.prefix else key

    async def open(self) -> None:
        session = get_session()
        if not self._for_writing:
            # A reader uses no timestamp botocore parses (LastModified of every GET and of every listed
            # key): leaving them as text spares a dateutil parse per object, a large part of a GET's CPU.
            session.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=_raw_timestamp)
        self._client = await self._stack.enter_async_context(
            session.create_client("s3", endpoint_url=self._endpoint_url, region_name=self._region, config=self._config)
        )
        await self._check_bucket()
        if self._short_reads or self._short_puts:
            self._short = await _SignedRequests.start(session, self._client, self._location, self._max_connections)
            if self._short is None:
                self._short_reads = self._short_puts = False
            else:
                self._stack.push_async_callback(self._short.close)

    async def _check_bucket(self) -> None:
        bucket = self._location.bucket
        try:
            # A listing under the prefix rather than HeadBucket: both need s3:ListBucket, but only a
            # listing carries the s3:prefix that deploy/iam/policy.json's condition requires.
            prefix = f"{self._location.prefix}/" if self._location.prefix else ""
            await self._client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
            if self._for_writing and self._retention_mode != "NONE":
                lock = await self._client.get_object_lock_configuration(Bucket=bucket)
                enabled = lock.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled")
                if enabled != "Enabled":
                    raise ConfigurationError(
                        "archive.retention_mode",
                        f"bucket {bucket!r} does not have Object Lock enabled; create it with Object Lock "
                        "(see deploy/README) or set retention_mode to NONE",
                    )
        except ClientError as exc:
            code = _error_code(exc)
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise ConfigurationError("archive.url", f"bucket {bucket!r} does not exist") from exc
            if code in ("403", "AccessDenied"):
                raise ConfigurationError("archive.url", f"access to bucket {bucket!r} is denied") from exc
            if code == "ObjectLockConfigurationNotFoundError":
                raise ConfigurationError(
                    "archive.retention_mode",
                    f"bucket {bucket!r} has no Object Lock configuration; create it with Object Lock "
                    "enabled or set retention_mode to NONE",
                ) from exc
            raise ArchiveUnavailableError(f"{self.description}: {code}: {exc}") from exc
        except BotoCoreError as exc:
            raise ArchiveUnavailableError(f"{self.description}: {exc}") from exc

    async def put(self, key: str, data: bytes, sha256: bytes) -> None:
        full_key = self._full_key(key)
        checksum = base64.b64encode(sha256).decode()
        retain_until = dt.datetime.now(dt.UTC) + dt.timedelta(days=self._retention_days)
        stored_short = False
        if self._short_puts and self._short is not None:
            try:
                stored_short = await self._short.put(
                    full_key,
                    data,
                    sha256,
                    checksum,
                    None if self._retention_mode == "NONE" else (self._retention_mode, retain_until),
                )
            except (BotoCoreError, aiohttp.ClientError, TimeoutError, OSError, ValueError):
                stored_short = False
            if stored_short:
                self._short_put_misses = 0
                return
        # Sending a PUT again after the short path failed is safe even if that PUT was in fact stored
        # (the answer lost on the way back): it is the same key with the same bytes, so the object is
        # the same; under Object Lock the store keeps a second version of identical bytes, and
        # verify reads the latest.
        await self._put_with_botocore(full_key, data, checksum, retain_until)
        if self._short_puts and self._short is not None:
            self._short_put_misses += 1
            if self._short_put_misses >= _SHORT_PUT_MISSES:
                self._short_puts = False

    async def _put_with_botocore(self, full_key: str, data: bytes, checksum: str, retain_until: dt.datetime) -> None:
        arguments: dict[str, Any] = {
            "Bucket": self._location.bucket,
            "Key": full_key,
            "Body": data,
            "ChecksumSHA256": checksum,
            "ContentType": "application/octet-stream",
        }
        if self._retention_mode != "NONE":
            arguments["ObjectLockMode"] = self._retention_mode
            arguments["ObjectLockRetainUntilDate"] = retain_until
        try:
            await self._client.put_object(**arguments)
        except ClientError as exc:
            code = _error_code(exc)
            message = f"PUT {full_key} to {self.description}: {code}: {exc}"
            if code in _PERMANENT_CODES:
                raise PermanentArchiveError(message) from exc
            raise ArchiveUnavailableError(message) from exc
        except BotoCoreError as exc:
            raise ArchiveUnavailableError(f"PUT {full_key} to {self.description}: {exc}") from exc

    async def list_keys(
        self, under: str = "", start_after: str = "", *, page_size: int | None = None
    ) -> AsyncIterator[str]:
        async for listed in self.list_objects(under, start_after, page_size=page_size):
            yield listed.key

    async def list_children(self, under: str = "") -> list[str]:
        prefix = f"{self._location.prefix}/" if self._location.prefix else ""
        paginator = self._client.get_paginator("list_objects_v2")
        children: list[str] = []
        with self._listing_errors():
            async for page in paginator.paginate(Bucket=self._location.bucket, Prefix=prefix + under, Delimiter="/"):
                for item in page.get("CommonPrefixes", []):
                    children.append(item["Prefix"][len(prefix + under) :].rstrip("/"))
        return children

    @contextlib.contextmanager
    def _listing_errors(self) -> Iterator[None]:
        try:
            yield
        except ClientError as exc:
            raise ArchiveUnavailableError(f"listing {self.description}: {_error_code(exc)}: {exc}") from exc
        except BotoCoreError as exc:
            raise ArchiveUnavailableError(f"listing {self.description}: {exc}") from exc

    async def list_objects(
        self, under: str = "", start_after: str = "", *, page_size: int | None = None
    ) -> AsyncIterator[ListedObject]:
        prefix = f"{self._location.prefix}/" if self._location.prefix else ""
        paginator = self._client.get_paginator("list_objects_v2")
        arguments: dict[str, Any] = {"Bucket": self._location.bucket, "Prefix": prefix + under}
        if start_after:
            arguments["StartAfter"] = prefix + start_after
        if page_size is not None:
            arguments["PaginationConfig"] = {"PageSize": max(1, min(page_size, 1000))}
        with self._listing_errors():
            async for page in paginator.paginate(**arguments):
                for item in page.get("Contents", []):
                    yield ListedObject(item["Key"][len(prefix) :], int(item.get("Size", 0)))

    async def get(self, key: str, max_bytes: int | None = None) -> bytes:
        full_key = self._full_key(key)
        if self._short_reads and self._short is not None:
            try:
                response = await self._short.get(full_key)
            except (BotoCoreError, aiohttp.ClientError, TimeoutError, OSError, ValueError):
                self._short_reads = False  # e.g. a proxy or TLS setting only botocore knows: use botocore
            else:
                if response is not None:
                    async with response:
                        announced = response.content_length
                        if max_bytes is not None and announced is not None and announced > max_bytes:
                            raise ObjectTooLargeError(key, int(announced), max_bytes)
                        try:
                            return await self._read_body(key, response.content, max_bytes)
                        except (aiohttp.ClientError, TimeoutError, OSError):
                            self._short_reads = False
        try:
            response = await self._client.get_object(Bucket=self._location.bucket, Key=full_key)
            async with response["Body"] as body:
                announced = response.get("ContentLength")
                if max_bytes is not None and announced is not None and announced > max_bytes:
                    raise ObjectTooLargeError(key, int(announced), max_bytes)
                return await self._read_body(key, body, max_bytes)
        except ClientError as exc:
            code = _error_code(exc)
            if code in _OBJECT_CODES:
                raise UnreadableObjectError(key, _OBJECT_CODES[code]) from exc
            raise ArchiveUnavailableError(f"GET {full_key!r}: {code}: {exc}") from exc
        except BotoCoreError as exc:
            raise ArchiveUnavailableError(f"GET {full_key!r}: {exc}") from exc
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            # The body is read after botocore has handed the response over; its transport errors
            # arrive raw.
            raise ArchiveUnavailableError(f"GET {full_key!r}: reading the body: {exc!r}") from exc

    @staticmethod
    async def _read_body(key: str, body: Any, max_bytes: int | None) -> bytes:
        if max_bytes is None:
            data: bytes = await body.read()
            return data
        # A store that sends more than it announced (or announces nothing) is cut off at the limit.
        pieces: list[bytes] = []
        received = 0
        while piece := await body.read(min(_READ_CHUNK, max_bytes + 1 - received)):
            pieces.append(piece)
            received += len(piece)
            if received > max_bytes:
                raise ObjectTooLargeError(key, received, max_bytes, size_known=False)
        return b"".join(pieces)

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = None
        self._short = None


class _SignedRequests:
    """GETs and PUTs signed with SigV4 by botocore's signer and sent with aiohttp (the short path).

    The URL of an object is learnt from botocore itself: one presigned URL shows how the client
    addresses the bucket (path or virtual-hosted style, the endpoint, the key's quoting); a layout
    this class does not recognise leaves the short path off. Credentials come from the session's
    provider chain, refreshed as botocore refreshes them."""

    def __init__(self, base_url: str, credentials: Any, region: str, http: aiohttp.ClientSession) -> None:
        self._base_url = base_url
        self._credentials = credentials
        self._region = region
        self._http = http
        # The Host header as botocore's signer derives it from the URL, worked out once: deriving it
        # on every request (twice per signature) is a noticeable part of a short PUT's CPU.
        self._host = str(_host_from_url(base_url))

    @classmethod
    async def start(
        cls, session: Any, client: Any, location: S3Location, max_connections: int
    ) -> _SignedRequests | None:
        probe = f"{location.prefix}/probe" if location.prefix else "probe"
        try:
            credentials = await session.get_credentials()
            url = await client.generate_presigned_url("get_object", Params={"Bucket": location.bucket, "Key": probe})
        except BotoCoreError:
            return None
        region = client.meta.region_name
        parts = urllib.parse.urlsplit(url)
        quoted = _quote_key(probe)
        if (
            credentials is None
            or not region
            or parts.scheme not in ("http", "https")
            or not parts.path.endswith(quoted)
        ):
            return None
        if any(name.lower().endswith("_proxy") for name in os.environ):
            return None  # proxies as botocore applies them (and NO_PROXY) are botocore's to follow
        base_url = f"{parts.scheme}://{parts.netloc}{parts.path[: -len(quoted)]}"
        http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max_connections),
            timeout=aiohttp.ClientTimeout(sock_connect=5, sock_read=30),
            auto_decompress=False,
        )
        return cls(base_url, credentials, region, http)

    async def get(self, full_key: str) -> aiohttp.ClientResponse | None:
        """The response to a signed GET when it is a 200, else None (the caller asks botocore)."""
        frozen = await self._credentials.get_frozen_credentials()
        request = AWSRequest(
            method="GET",
            url=self._base_url + _quote_key(full_key),
            headers={"x-amz-content-sha256": "UNSIGNED-PAYLOAD"},
        )
        S3SigV4Auth(frozen, "s3", self._region).add_auth(request)
        # encoded=True: the URL goes out exactly as signed (yarl would otherwise normalise its escapes).
        url = yarl.URL(request.url, encoded=True)
        response = await self._http.get(url, headers=dict(request.headers.items()), allow_redirects=False)
        if response.status != 200:
            response.release()
            return None
        return response

    async def put(
        self, full_key: str, data: bytes, sha256: bytes, checksum: str, lock: tuple[str, dt.datetime] | None
    ) -> bool:
        """Whether a signed PUT of the object was answered 200 (stored); False for any other answer."""
        frozen = await self._credentials.get_frozen_credentials()
        url = self._base_url + _quote_key(full_key)
        request = _signed_put(frozen, self._region, url, self._host, data, sha256, checksum, lock)
        async with self._http.put(
            yarl.URL(request.url, encoded=True), data=data, headers=dict(request.headers.items()), allow_redirects=False
        ) as response:
            return response.status == 200

    async def close(self) -> None:
        await self._http.close()


def _signed_put(
    credentials: Any,
    region: str,
    url: str,
    host: str,
    data: bytes,
    sha256: bytes,
    checksum: str,
    lock: tuple[str, dt.datetime] | None,
) -> AWSRequest:
    """A PUT of ``data`` to ``url`` with the headers ``put_object`` sends, signed with SigV4.

    The body's SHA-256 goes in base64 as x-amz-checksum-sha256 and in hex as x-amz-content-sha256
    (the signed payload hash); the Object Lock mode and retain-until date (whole seconds, UTC, as
    botocore writes it) when ``lock`` is given; Content-Type; ``host``, the Host header botocore's
    signer would derive from ``url``. The signer adds x-amz-date (and x-amz-security-token with
    temporary credentials); Content-Length is added when the request is sent and not signed, as
    botocore does."""
    headers = {
        "host": host,
        "Content-Type": "application/octet-stream",
        "x-amz-checksum-sha256": checksum,
        "X-Amz-Content-SHA256": sha256.hex(),
    }
    if lock is not None:
        mode, retain_until = lock
        headers["x-amz-object-lock-mode"] = mode
        headers["x-amz-object-lock-retain-until-date"] = retain_until.astimezone(dt.UTC).strftime(_ISO8601)
    request = AWSRequest(method="PUT", url=url, headers=headers, data=data)
    request.context[_PAYLOAD_SHA256] = headers["X-Amz-Content-SHA256"]
    _KnownPayloadSigner(credentials, "s3", region).add_auth(request)
    return request


class _KnownPayloadSigner(S3SigV4Auth):  # type: ignore[misc]  # botocore has no type hints
    """botocore's S3 SigV4 signer, taking the payload hash (the caller's SHA-256 of the body) from the
    request's context instead of hashing the body again. The signer replaces the x-amz-content-sha256
    header with this value before it signs."""

    def payload(self, request: Any) -> str:
        return str(request.context[_PAYLOAD_SHA256])


def _quote_key(key: str) -> str:
    """A key in a URL path, quoted as botocore quotes it."""
    return urllib.parse.quote(key, safe="/~")
