"""The S3 archive's short write path (SigV4-signed PUTs sent with aiohttp) against a real SeaweedFS:
an object stored the short way is the object botocore stores (bytes, checksum, content type, Object
Lock mode and retain-until date); a refusal or a connection the server closes mid-PUT goes to the
botocore client, which stores the object or raises the error it raises without the short path."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import os
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiobotocore.credentials import AioCredentials

from collector_ext.deliver.archive import RetentionMode, S3Location
from collector_ext.deliver.s3_archive import S3Archive
from collector_ext.errors import ArchiveUnavailableError, PermanentArchiveError
from tests.integration.conftest import S3Server

SEGMENT = os.urandom(300 * 1024)
KEYS = ("chain/segments/2026/09/21/00000000000000000000-00000000000000000003.cxseg", "odd key/é+~%.note")


def _writer(endpoint_url: str, bucket: str, mode: RetentionMode = "GOVERNANCE", *, short: bool) -> S3Archive:
    store = S3Archive(S3Location(bucket, "prod"), endpoint_url=endpoint_url, retention_mode=mode, retention_days=2)
    store._short_puts = short  # before open: False keeps the short path from being set up
    return store


def _count_botocore_puts(store: S3Archive) -> list[str]:
    sent: list[str] = []
    store._client.meta.events.register("before-send.s3.PutObject", lambda request, **_: sent.append(request.url))
    return sent


async def _put_all(store: S3Archive, keys: tuple[str, ...], data: bytes) -> tuple[list[str], bool]:
    await store.open()
    try:
        through_botocore = _count_botocore_puts(store)
        for key in keys:
            await store.put(key, data, hashlib.sha256(data).digest())
        return through_botocore, store._short_puts
    finally:
        await store.close()


def _stored(seaweedfs: S3Server, bucket: str, key: str) -> dict[str, Any]:
    client = seaweedfs.client
    head = client.head_object(Bucket=bucket, Key=f"prod/{key}", ChecksumMode="ENABLED")
    body = client.get_object(Bucket=bucket, Key=f"prod/{key}")["Body"].read()
    described = {
        "sha256": hashlib.sha256(body).hexdigest(),
        "length": head["ContentLength"],
        "checksum": head.get("ChecksumSHA256"),
        "content_type": head["ContentType"],
        "mode": head.get("ObjectLockMode"),
        "retain_until": head.get("ObjectLockRetainUntilDate"),
    }
    if head.get("ObjectLockMode"):
        retention = client.get_object_retention(Bucket=bucket, Key=f"prod/{key}")["Retention"]
        described["retention"] = (retention["Mode"], retention["RetainUntilDate"])
    return described


@pytest.mark.parametrize("mode", ["GOVERNANCE", "COMPLIANCE", "NONE"])
def test_a_short_put_stores_what_botocore_stores(seaweedfs: S3Server, mode: RetentionMode) -> None:
    bucket = seaweedfs.create_bucket(f"short-puts-{mode.lower()}", mode="GOVERNANCE", days=1)
    short_keys = tuple(f"short/{key}" for key in KEYS)
    slow_keys = tuple(f"slow/{key}" for key in KEYS)
    sent_short, still_on = asyncio.run(
        _put_all(_writer(seaweedfs.endpoint_url, bucket, mode, short=True), short_keys, SEGMENT)
    )
    sent_slow, _ = asyncio.run(_put_all(_writer(seaweedfs.endpoint_url, bucket, mode, short=False), slow_keys, SEGMENT))
    assert sent_short == [] and still_on, "every PUT went the short way"
    assert len(sent_slow) == len(KEYS)
    now = dt.datetime.now(dt.UTC)
    for short_key, slow_key in zip(short_keys, slow_keys, strict=True):
        short, slow = _stored(seaweedfs, bucket, short_key), _stored(seaweedfs, bucket, slow_key)
        assert short["sha256"] == hashlib.sha256(SEGMENT).hexdigest()
        assert short["checksum"] is not None
        if mode == "NONE":  # the bucket's default rule applies to both
            assert short["mode"] == slow["mode"] == "GOVERNANCE"
            assert abs(short["retain_until"] - now - dt.timedelta(days=1)) < dt.timedelta(minutes=2)
        else:
            assert short["mode"] == mode
            assert abs(short["retain_until"] - now - dt.timedelta(days=2)) < dt.timedelta(minutes=2)
            assert short["retain_until"].microsecond == 0
        # Both were written within the same minute: the dates differ by the seconds between the PUTs.
        assert abs(short.pop("retain_until") - slow.pop("retain_until")) < dt.timedelta(minutes=1)
        short_retention, slow_retention = short.pop("retention"), slow.pop("retention")
        assert short_retention[0] == slow_retention[0]
        assert short == slow


def test_wrong_credentials_on_the_short_path_go_to_botocore(seaweedfs: S3Server) -> None:
    bucket = seaweedfs.create_bucket("short-puts-refused")

    async def run() -> tuple[list[str], bool]:
        store = _writer(seaweedfs.endpoint_url, bucket, short=True)
        await store.open()
        try:
            assert store._short is not None
            store._short._credentials = AioCredentials(seaweedfs.server.access_key, "not-the-secret")
            through_botocore = _count_botocore_puts(store)
            for number in range(4):
                await store.put(f"refused/{number}", SEGMENT, hashlib.sha256(SEGMENT).digest())
            return through_botocore, store._short_puts
        finally:
            await store.close()

    through_botocore, still_on = asyncio.run(run())
    assert len(through_botocore) == 4, "each refused PUT was sent again through botocore"
    assert not still_on, "three PUTs in a row that only botocore could store turn the short path off"
    for number in range(4):
        assert _stored(seaweedfs, bucket, f"refused/{number}")["sha256"] == hashlib.sha256(SEGMENT).hexdigest()


def test_a_refusal_gives_the_error_botocore_gives(seaweedfs: S3Server) -> None:
    seaweedfs.client.create_bucket(Bucket="short-puts-unlocked")

    async def put_refused(short: bool) -> tuple[BaseException, list[str]]:
        # Opened without retention (the start-up check would refuse the bucket), then asked for it.
        store = _writer(seaweedfs.endpoint_url, "short-puts-unlocked", "NONE", short=short)
        await store.open()
        try:
            assert (store._short is not None) == short
            store._retention_mode = "GOVERNANCE"
            through_botocore = _count_botocore_puts(store)
            with pytest.raises((PermanentArchiveError, ArchiveUnavailableError)) as refused:
                await store.put("locked", SEGMENT, hashlib.sha256(SEGMENT).digest())
            assert store._short_puts == short, "a PUT botocore cannot store either leaves the short path on"
            return refused.value, through_botocore
        finally:
            await store.close()

    short_error, short_sent = asyncio.run(put_refused(True))
    slow_error, slow_sent = asyncio.run(put_refused(False))
    assert len(short_sent) == len(slow_sent) == 1
    assert type(short_error) is type(slow_error)
    assert str(short_error) == str(slow_error)
    assert "PUT prod/locked to s3://short-puts-unlocked/prod" in str(short_error)


class _CuttingProxy:
    """A TCP relay on 127.0.0.1 in front of SeaweedFS that closes, mid-PUT, every connection of the
    kinds in ``cut`` ("short": aiohttp's, "botocore": the client's, told apart by the User-Agent of
    the connection's first request): either after relaying ``cut_after`` bytes of requests (the
    store never sees the whole PUT) or, with ``drop_answer``, when the answer to a request that went
    past ``cut_after`` bytes arrives (the store has the object, the client never hears so)."""

    def __init__(self, target_port: int, cut: set[str], *, drop_answer: bool, cut_after: int = 100 * 1024) -> None:
        self._target_port = target_port
        self._cut = cut
        self._drop_answer = drop_answer
        self._cut_after = cut_after
        self.cuts: list[str] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> _CuttingProxy:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self._target_port)
        sent = 0
        kind = ""
        cut = asyncio.Event()

        async def upstream() -> None:
            nonlocal sent, kind
            while data := await client_reader.read(65536):
                kind = kind or ("botocore" if b"aiobotocore" in data else "short")
                if kind in self._cut and not self._drop_answer and sent + len(data) > self._cut_after:
                    server_writer.write(data[: self._cut_after - sent])
                    self.cuts.append(kind)
                    cut.set()
                    return
                server_writer.write(data)
                sent += len(data)
                await server_writer.drain()

        async def downstream() -> None:
            while data := await server_reader.read(65536):
                if kind in self._cut and self._drop_answer and sent > self._cut_after:
                    self.cuts.append(kind)
                    cut.set()
                    return
                client_writer.write(data)
                await client_writer.drain()

        tasks = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]
        waiter = asyncio.ensure_future(cut.wait())
        await asyncio.wait([*tasks, waiter], return_when=asyncio.FIRST_COMPLETED)
        for task in (*tasks, waiter):
            task.cancel()
        client_writer.close()
        server_writer.close()


async def _through_proxy(
    seaweedfs: S3Server, bucket: str, proxy: _CuttingProxy, put: Callable[[S3Archive], Awaitable[None]]
) -> tuple[list[str], bool]:
    async with proxy:
        store = _writer(f"http://127.0.0.1:{proxy.port}", bucket, short=True)
        await store.open()
        try:
            through_botocore = _count_botocore_puts(store)
            await put(store)
            return through_botocore, store._short_puts
        finally:
            await store.close()


@pytest.mark.parametrize("drop_answer", [False, True], ids=["request-cut", "answer-dropped"])
def test_a_connection_closed_mid_put_ends_stored(seaweedfs: S3Server, drop_answer: bool) -> None:
    bucket = seaweedfs.create_bucket(f"short-puts-cut-{int(drop_answer)}")
    target_port = int(seaweedfs.endpoint_url.rsplit(":", 1)[1])
    proxy = _CuttingProxy(target_port, {"short"}, drop_answer=drop_answer)

    async def put(store: S3Archive) -> None:
        await store.put("cut", SEGMENT, hashlib.sha256(SEGMENT).digest())

    through_botocore, still_on = asyncio.run(_through_proxy(seaweedfs, bucket, proxy, put))
    assert proxy.cuts and set(proxy.cuts) == {"short"}, "the proxy cut the short PUT's connections"
    assert len(through_botocore) == 1, "the PUT was sent again through botocore"
    assert still_on, "one miss does not turn the short path off"
    assert _stored(seaweedfs, bucket, "cut")["sha256"] == hashlib.sha256(SEGMENT).hexdigest()
    versions = seaweedfs.client.list_object_versions(Bucket=bucket, Prefix="prod/cut")["Versions"]
    # When only the answer was lost the store kept the short PUT (aiohttp's one resend on a closed
    # connection too) and then botocore's: more versions, every one the same bytes.
    assert len(versions) == (1 + len(proxy.cuts) if drop_answer else 1)
    assert {version["ETag"] for version in versions} == {versions[0]["ETag"]}


def test_a_connection_closed_on_every_put_gives_the_error_botocore_gives(seaweedfs: S3Server) -> None:
    bucket = seaweedfs.create_bucket("short-puts-cut-always")
    target_port = int(seaweedfs.endpoint_url.rsplit(":", 1)[1])
    proxy = _CuttingProxy(target_port, {"short", "botocore"}, drop_answer=False)

    async def put(store: S3Archive) -> None:
        with pytest.raises(ArchiveUnavailableError) as failed:
            await store.put("cut", SEGMENT, hashlib.sha256(SEGMENT).digest())
        assert str(failed.value).startswith(f"PUT prod/cut to s3://{bucket}/prod: ")

    through_botocore, still_on = asyncio.run(_through_proxy(seaweedfs, bucket, proxy, put))
    assert len(through_botocore) == 1
    assert proxy.cuts[-1] == "botocore" and "short" in proxy.cuts
    assert still_on
    assert "Versions" not in seaweedfs.client.list_object_versions(Bucket=bucket, Prefix="prod/cut")
