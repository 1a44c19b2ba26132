"""Item operations on DynamoDB's wire: the same signature as botocore, the same typed errors."""

from __future__ import annotations

import datetime as dt
import json
import zlib
from collections.abc import Iterator

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from autopush_flask.db.dynamodb.client import DynamoDB
from autopush_flask.db.errors import ConditionFailed, StorageError, StorageThrottled, StorageUnavailable
from autopush_flask.db.dynamodb.wire import CONTENT_TYPE, ItemClient, SigV4Signer
from autopush_flask.http_client import ConnectionPool
from autopush_flask.metrics import RecordingMetrics
from tests.support.scripted_http import Answer, ScriptedServer, ipv6_loopback

NOW = dt.datetime(2026, 11, 21, 9, 30, 15, tzinfo=dt.timezone.utc)
BODY = b'{"TableName":"router","Key":{"uaid":{"S":"abc"}}}'


UNICODE_BODY = json.dumps(
    {"TableName": "message", "Item": {"data": {"S": "ünïcödé ✓ 推送"}}}, ensure_ascii=False
).encode()

# (host header as sent, target, body, security token, time): what a call may vary.
SIGNED_REQUESTS = {
    "aws": ("dynamodb.eu-west-1.amazonaws.com", "DynamoDB_20120810.GetItem", BODY, None, NOW),
    "aws-session": ("dynamodb.eu-west-1.amazonaws.com", "DynamoDB_20120810.PutItem", BODY,
                    "session-token/with+chars=", NOW),
    "local-port": ("127.0.0.1:8000", "DynamoDB_20120810.Query", b"{}", None, NOW),
    "ipv6-port": ("[::1]:8000", "DynamoDB_20120810.UpdateItem", BODY, None, NOW),
    "ipv6-default-port": ("[2001:db8::1]", "DynamoDB_20120810.DeleteItem", BODY, "tok", NOW),
    "idna-host": ("dynamodb.xn--bcher-kva.example", "DynamoDB_20120810.BatchGetItem", BODY, None, NOW),
    "non-ascii-body": ("dynamodb.eu-west-1.amazonaws.com", "DynamoDB_20120810.PutItem", UNICODE_BODY, None,
                       NOW),
    "empty-body-midnight": ("localhost:4567", "DynamoDB_20120810.BatchWriteItem", b"", None,
                            dt.datetime(2027, 1, 1, 0, 0, 0, tzinfo=dt.timezone.utc)),
}


def botocore_headers(
    monkeypatch: pytest.MonkeyPatch, scheme: str, host: str, target: str, body: bytes, token: str | None,
    now: dt.datetime, region: str = "eu-west-1",
) -> dict[str, str]:
    """botocore's SigV4 headers for the request as it goes on the wire."""
    credentials = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    request = AWSRequest(
        method="POST",
        url=f"{scheme}://{host}/",
        data=body,
        headers={"Content-Type": CONTENT_TYPE, "X-Amz-Target": target},
    )
    monkeypatch.setattr("botocore.auth.get_current_datetime", lambda: now.replace(tzinfo=None))
    SigV4Auth(credentials, "dynamodb", region).add_auth(request)
    return dict(request.headers.items())


@pytest.mark.parametrize("case", SIGNED_REQUESTS.values(), ids=SIGNED_REQUESTS.keys())
def test_signature_matches_botocore_bit_for_bit(monkeypatch: pytest.MonkeyPatch, case: tuple) -> None:
    host, target, body, token, now = case
    scheme = "https" if ":" not in host.rpartition("]")[2] else "http"
    theirs = botocore_headers(monkeypatch, scheme, host, target, body, token, now)
    ours = dict(
        SigV4Signer("eu-west-1", host).headers(
            target, body, "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token, now
        )
    )
    assert ours["authorization"].encode() == theirs["Authorization"].encode()
    assert ours["x-amz-date"] == theirs["X-Amz-Date"] == now.strftime("%Y%m%dT%H%M%SZ")
    assert ours.get("x-amz-security-token") == theirs.get("X-Amz-Security-Token")


def test_the_signing_key_follows_the_date() -> None:
    signer = SigV4Signer("us-east-1", "localhost")
    today = dict(signer.headers("T", BODY, "AK", "SK", None, NOW))["authorization"]
    tomorrow = dict(signer.headers("T", BODY, "AK", "SK", None, NOW + dt.timedelta(days=1)))["authorization"]
    again = dict(signer.headers("T", BODY, "AK", "SK", None, NOW))["authorization"]
    assert today == again != tomorrow
    assert "/20261122/us-east-1/dynamodb/aws4_request" in tomorrow


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    running = ScriptedServer()
    yield running
    running.stop()


def item_client(server: ScriptedServer) -> ItemClient:
    pool = ConnectionPool(server.origin(), connect_timeout=1.0, timeout=2.0)
    return ItemClient(pool, "us-east-1", Credentials("AK", "SK"), "autopush-flask/test", clock=lambda: NOW)


def dynamodb_answer(status: str, body: bytes, crc: int | None = None) -> Answer:
    checksum = zlib.crc32(body) if crc is None else crc
    return Answer(
        f"HTTP/1.1 {status}\r\nContent-Type: {CONTENT_TYPE}\r\nx-amz-crc32: {checksum}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode() + body
    )


def error_body(code: str) -> bytes:
    return json.dumps({"__type": f"com.amazonaws.dynamodb.v20120810#{code}", "message": "why"}).encode()


def test_a_call_sends_the_operation_signed_and_returns_the_answer(server: ScriptedServer) -> None:
    answer = {"Item": {"uaid": {"S": "abc"}, "connected_at": {"N": "12"}}}
    server.script(dynamodb_answer("200 OK", json.dumps(answer).encode()))
    params = {"TableName": "router", "Key": {"uaid": {"S": "abc"}}, "ConsistentRead": True}
    assert item_client(server).call("get_item", params) == answer
    head = server.received[0].head.decode().lower()
    assert head.startswith("post / http/1.1\r\n")
    assert "x-amz-target: dynamodb_20120810.getitem" in head
    assert f"content-type: {CONTENT_TYPE}" in head
    assert "authorization: aws4-hmac-sha256 credential=ak/20261121/us-east-1/dynamodb/aws4_request" in head
    assert json.loads(server.received[0].body) == params


@pytest.mark.parametrize(
    ("answer", "error_type", "code"),
    [
        (dynamodb_answer("400 Bad Request", error_body("ConditionalCheckFailedException")), ConditionFailed,
         "ConditionalCheckFailedException"),
        (dynamodb_answer("400 Bad Request", error_body("ProvisionedThroughputExceededException")),
         StorageThrottled, "ProvisionedThroughputExceededException"),
        (dynamodb_answer("400 Bad Request", error_body("ValidationException")), StorageError,
         "ValidationException"),
        (dynamodb_answer("500 Internal Server Error", b"<html>oops</html>"), StorageUnavailable, "HTTP500"),
        (dynamodb_answer("200 OK", b'{"Item":{}}', crc=12345), StorageUnavailable, "CRC32Mismatch"),
        (Answer(close=True), StorageUnavailable, "HTTPFailure"),
    ],
    ids=["condition", "throttled", "validation", "html-500", "bad-crc", "closed"],
)
def test_failures_arrive_as_typed_storage_errors(
    server: ScriptedServer, answer: Answer, error_type: type, code: str
) -> None:
    server.script(answer)
    with pytest.raises(StorageError) as raised:
        item_client(server).call("put_item", {"TableName": "t", "Item": {}})
    assert type(raised.value) is error_type
    assert (raised.value.code, raised.value.operation) == (code, "put_item")


def test_a_corrupted_answer_is_retried_and_the_good_one_used(server: ScriptedServer) -> None:
    server.script(
        dynamodb_answer("200 OK", b'{"Count":1}', crc=1),
        dynamodb_answer("200 OK", b'{"Count":2}'),
    )
    metrics = RecordingMetrics()
    db = DynamoDB(None, item_client(server), metrics, sleep=lambda seconds: None)
    assert db.call("query", TableName="t") == {"Count": 2}
    assert [c.tags for c in metrics.find("database.retry")] == [{"operation": "query"}]


def received_headers(head: bytes) -> dict[str, str]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    return {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"], ids=["ipv4", "ipv6"])
def test_the_request_on_the_wire_carries_the_host_and_signature_botocore_computes(
    monkeypatch: pytest.MonkeyPatch, host: str
) -> None:
    if host == "::1" and not ipv6_loopback():
        pytest.skip("no IPv6 loopback on this machine")
    running = ScriptedServer(host=host)
    try:
        running.script(dynamodb_answer("200 OK", b"{}"))
        pool = ConnectionPool(running.origin(), connect_timeout=1.0, timeout=2.0)
        credentials = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "tok")
        client = ItemClient(pool, "eu-west-1", credentials, "autopush-flask/test", clock=lambda: NOW)
        params = {"TableName": "message", "Item": {"data": {"S": "ünïcödé"}}}
        assert client.call("put_item", params) == {}
        sent = running.received[0]
        headers = received_headers(sent.head)
        authority = running.origin().partition("://")[2]
        assert headers["host"] == authority  # "[::1]:port" for IPv6
        theirs = botocore_headers(
            monkeypatch, "http", authority, "DynamoDB_20120810.PutItem", sent.body, "tok", NOW
        )
        assert headers["authorization"] == theirs["Authorization"]
    finally:
        running.stop()
