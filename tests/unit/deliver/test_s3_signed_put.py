"""The S3 archive's short PUT is the request botocore's put_object sends: the same headers (those
botocore alone adds, its SDK bookkeeping and Expect, aside) and a SigV4 signature equal to the one
botocore's signer computes when it hashes the body itself. No network: botocore's request is caught
before it is sent."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from typing import Any

import botocore.auth
import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSResponse
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.session import get_session

from collector_ext.deliver.s3_archive import _quote_key, _signed_put

NOW = dt.datetime(2026, 9, 21, 12, 30, 45)
CREDENTIALS = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
KEY = "prod/chain/segments/odd key+é~%.cxseg"
BODY = bytes(range(256)) * 1200
SHA256 = hashlib.sha256(BODY).digest()
BOTOCORE_ONLY = {"user-agent", "expect", "amz-sdk-invocation-id", "amz-sdk-request"}


class _NoBody:
    def stream(self, **_: Any) -> Any:
        return iter([b""])


def _botocore_put(lock: tuple[str, dt.datetime] | None) -> dict[str, str]:
    client = get_session().create_client(
        "s3",
        endpoint_url="http://127.0.0.1:9",
        region_name="eu-central-1",
        aws_access_key_id=CREDENTIALS.access_key,
        aws_secret_access_key=CREDENTIALS.secret_key,
        config=Config(s3={"addressing_style": "path"}, request_checksum_calculation="when_required"),
    )
    sent: dict[str, str] = {}

    def catch(request: Any, **_: Any) -> AWSResponse:
        sent.update({name.lower(): _text(value) for name, value in request.headers.items()})
        sent["url"] = request.url
        return AWSResponse(request.url, 200, {}, _NoBody())

    client.meta.events.register("before-send.s3.PutObject", catch)
    arguments: dict[str, Any] = {
        "Bucket": "archive",
        "Key": KEY,
        "Body": BODY,
        "ChecksumSHA256": base64.b64encode(SHA256).decode(),
        "ContentType": "application/octet-stream",
    }
    if lock is not None:
        arguments["ObjectLockMode"], arguments["ObjectLockRetainUntilDate"] = lock
    client.put_object(**arguments)
    return sent


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@pytest.mark.parametrize(
    "lock",
    [
        ("GOVERNANCE", dt.datetime(2027, 9, 21, 12, 30, 45, 999_999, tzinfo=dt.UTC)),
        ("COMPLIANCE", NOW.replace(tzinfo=dt.UTC)),
        None,
    ],
    ids=["governance", "compliance", "no-retention"],
)
def test_the_short_put_is_the_request_put_object_sends(monkeypatch: pytest.MonkeyPatch, lock: Any) -> None:
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: NOW)
    botocore_sent = _botocore_put(lock)
    url = "http://127.0.0.1:9/archive/" + _quote_key(KEY)
    request = _signed_put(
        CREDENTIALS, "eu-central-1", url, "127.0.0.1:9", BODY, SHA256, base64.b64encode(SHA256).decode(), lock
    )
    short_sent = {name.lower(): _text(value) for name, value in request.headers.items()}
    assert short_sent.pop("host") == "127.0.0.1:9"  # botocore's HTTP client adds it when it sends
    assert url == botocore_sent.pop("url")
    botocore_authorization = botocore_sent.pop("authorization")
    short_authorization = short_sent.pop("authorization")
    # aiohttp adds Content-Length when it sends the body, as botocore does after signing.
    assert botocore_sent.pop("content-length") == str(len(BODY))
    assert {k: v for k, v in botocore_sent.items() if k not in BOTOCORE_ONLY} == short_sent
    assert ("x-amz-object-lock-retain-until-date" in short_sent) == (lock is not None)
    # botocore also signs its SDK bookkeeping headers; otherwise both sign the same headers and scope.
    assert botocore_authorization.split(", ")[0] == short_authorization.split(", ")[0]
    botocore_signed = set(botocore_authorization.split("SignedHeaders=")[1].split(",")[0].split(";"))
    short_signed = set(short_authorization.split("SignedHeaders=")[1].split(",")[0].split(";"))
    assert short_signed <= botocore_signed and botocore_signed - short_signed <= BOTOCORE_ONLY
    assert {"host", "x-amz-date", "x-amz-content-sha256", "x-amz-checksum-sha256", "content-type"} <= short_signed


def test_the_known_payload_hash_signs_as_botocore_hashing_the_body(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: NOW)
    lock = ("GOVERNANCE", dt.datetime(2027, 1, 2, 3, 4, 5, tzinfo=dt.UTC))
    url = "http://127.0.0.1:9/archive/" + _quote_key(KEY)
    checksum = base64.b64encode(SHA256).decode()
    short = _signed_put(CREDENTIALS, "eu-central-1", url, "127.0.0.1:9", BODY, SHA256, checksum, lock)
    hashed = _signed_put(CREDENTIALS, "eu-central-1", url, "127.0.0.1:9", BODY, SHA256, checksum, lock)
    del hashed.headers["Authorization"]
    del hashed.headers["host"]
    # botocore's signer hashing the body itself and deriving the host from the URL.
    S3SigV4Auth(CREDENTIALS, "s3", "eu-central-1").add_auth(hashed)
    assert hashed.headers["X-Amz-Content-SHA256"] == SHA256.hex()
    assert short.headers["Authorization"] == hashed.headers["Authorization"]
    # A different payload hash gives a different signature: the hash is signed, not just sent.
    other = _signed_put(
        CREDENTIALS, "eu-central-1", url, "127.0.0.1:9", BODY, hashlib.sha256(b"other").digest(), checksum, lock
    )
    assert other.headers["Authorization"] != short.headers["Authorization"]
