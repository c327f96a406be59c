"""The S3 archive: objects written with Object Lock retention and a SHA-256 checksum on every PUT.

Uses aiobotocore, so S3 settings follow the AWS SDK's conventions: the default credential chain,
AWS_REGION, and AWS_ENDPOINT_URL for S3-compatible stores (SeaweedFS, MinIO). botocore's own retries
are switched off for writes: ``retry.retry_async`` is the one owner of retries in the sidecar.
Every botocore error is translated here into the project's errors.

What this does not do: create buckets or change bucket settings (see deploy/ for that), or delete
anything.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from typing import Any

from aiobotocore.session import get_session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from collector_ext.deliver.archive import RetentionMode, S3Location
from collector_ext.errors import (
    ArchiveUnavailableError,
    ConfigurationError,
    PermanentArchiveError,
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

    @property
    def description(self) -> str:
        prefix = f"/{self._location.prefix}" if self._location.prefix else ""
        return f"s3://{self._location.bucket}{prefix}"

    def _full_key(self, key: str) -> str:
        return f"{self._location.prefix}/{key}" if self._location.prefix else key

    async def open(self) -> None:
        session = get_session()
        self._client = await self._stack.enter_async_context(
            session.create_client("s3", endpoint_url=self._endpoint_url, region_name=self._region, config=self._config)
        )
        await self._check_bucket()

    async def _check_bucket(self) -> None:
        bucket = self._location.bucket
        try:
            await self._client.head_bucket(Bucket=bucket)
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
        arguments: dict[str, Any] = {
            "Bucket": self._location.bucket,
            "Key": self._full_key(key),
            "Body": data,
            "ChecksumSHA256": base64.b64encode(sha256).decode(),
            "ContentType": "application/octet-stream",
        }
        if self._retention_mode != "NONE":
            arguments["ObjectLockMode"] = self._retention_mode
            arguments["ObjectLockRetainUntilDate"] = dt.datetime.now(dt.UTC) + dt.timedelta(days=self._retention_days)
        try:
            await self._client.put_object(**arguments)
        except ClientError as exc:
            code = _error_code(exc)
            message = f"PUT {self._full_key(key)} to {self.description}: {code}: {exc}"
            if code in _PERMANENT_CODES:
                raise PermanentArchiveError(message) from exc
            raise ArchiveUnavailableError(message) from exc
        except BotoCoreError as exc:
            raise ArchiveUnavailableError(f"PUT {self._full_key(key)} to {self.description}: {exc}") from exc

    async def list_keys(self, under: str = "", start_after: str = "") -> AsyncIterator[str]:
        prefix = f"{self._location.prefix}/" if self._location.prefix else ""
        paginator = self._client.get_paginator("list_objects_v2")
        arguments: dict[str, Any] = {"Bucket": self._location.bucket, "Prefix": prefix + under}
        if start_after:
            arguments["StartAfter"] = prefix + start_after
        with self._listing_errors():
            async for page in paginator.paginate(**arguments):
                for item in page.get("Contents", []):
                    yield item["Key"][len(prefix) :]

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

    async def get(self, key: str) -> bytes:
        try:
            response = await self._client.get_object(Bucket=self._location.bucket, Key=self._full_key(key))
            async with response["Body"] as body:
                data: bytes = await body.read()
                return data
        except ClientError as exc:
            raise ArchiveUnavailableError(f"GET {self._full_key(key)}: {_error_code(exc)}: {exc}") from exc
        except BotoCoreError as exc:
            raise ArchiveUnavailableError(f"GET {self._full_key(key)}: {exc}") from exc

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = None
