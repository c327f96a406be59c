"""The S3 archive's short read path (SigV4-signed GETs sent with aiohttp, for verify) against a real
SeaweedFS: the same bytes as the botocore client, the same errors, the same size limit, and keys that
need quoting."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import pytest

from collector_ext.deliver.archive import S3Location
from collector_ext.deliver.s3_archive import S3Archive
from collector_ext.errors import ObjectTooLargeError, UnreadableObjectError
from tests.integration.conftest import S3Server

KEYS = {
    "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf/segments/2026/09/21/00000000000000000000-00000000000000000003.cxseg": b"x" * 3000,
    "odd keys/with space+plus%percent~tilde/é.note": b"note bytes",
    "empty": b"",
}


def _reader(seaweedfs: S3Server, bucket: str) -> S3Archive:
    return S3Archive(S3Location(bucket, "prod"), endpoint_url=seaweedfs.endpoint_url, for_writing=False)


async def _reads(store: S3Archive, calls: list[Any]) -> dict[str, Any]:
    await store.open()
    try:
        results: dict[str, Any] = {}
        for key in KEYS:
            results[key] = await store.get(key, 1 << 20)
        for key, limit in (("missing/key", 1 << 20), (next(iter(KEYS)), 100)):
            try:
                results[key + f"@{limit}"] = await store.get(key, limit)
            except (UnreadableObjectError, ObjectTooLargeError) as exc:
                results[key + f"@{limit}"] = type(exc).__name__
        calls.append(store._short_reads)
        return results
    finally:
        await store.close()


def test_short_reads_give_what_botocore_gives(seaweedfs: S3Server) -> None:
    bucket = seaweedfs.create_bucket("short-reads")
    for key, data in KEYS.items():
        seaweedfs.client.put_object(Bucket=bucket, Key=f"prod/{key}", Body=data)
    short: list[Any] = []
    through_botocore: list[Any] = []
    fast = asyncio.run(_reads(_reader(seaweedfs, bucket), short))
    slow_store = _reader(seaweedfs, bucket)
    slow_store._short_reads = False  # before open: the short path is never set up
    slow = asyncio.run(_reads(slow_store, through_botocore))
    assert short == [True], "the short path stays on for a 404 and an object over the limit"
    assert through_botocore == [False]
    assert fast == slow
    assert {key: hashlib.sha256(fast[key]).hexdigest() for key in KEYS} == {
        key: hashlib.sha256(data).hexdigest() for key, data in KEYS.items()
    }
    assert fast["missing/key@1048576"] == "UnreadableObjectError"
    assert fast[next(iter(KEYS)) + "@100"] == "ObjectTooLargeError"


def test_the_short_path_stays_off_with_a_proxy_setting(seaweedfs: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = seaweedfs.create_bucket("short-reads-proxy")
    seaweedfs.client.put_object(Bucket=bucket, Key="prod/empty", Body=b"")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")

    async def run() -> bool:
        store = _reader(seaweedfs, bucket)
        await store.open()
        try:
            assert await store.get("empty", 10) == b""
            return store._short_reads
        finally:
            await store.close()

    assert asyncio.run(run()) is False


def test_a_writer_never_takes_the_short_path(seaweedfs: S3Server) -> None:
    bucket = seaweedfs.create_bucket("short-reads-writer")

    async def run() -> bool:
        store = S3Archive(S3Location(bucket, "prod"), endpoint_url=seaweedfs.endpoint_url, retention_days=1)
        await store.open()
        try:
            return store._short_reads
        finally:
            await store.close()

    assert asyncio.run(run()) is False
