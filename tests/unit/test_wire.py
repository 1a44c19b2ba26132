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
from autopush_flask.keepalive import ConnectionPool
from autopush_flask.metrics import RecordingMetrics
from tests.support.scripted_http import Answer, ScriptedServer

NOW = dt.datetime(2026, 11, 21, 9, 30, 15, tzinfo=dt.timezone.utc)
BODY = b'{"TableName":"router","Key":{"uaid":{"S":"abc"}}}'


@pytest.mark.parametrize("token", [None, "session-token/with+chars="])
@pytest.mark.parametrize("host", ["dynamodb.eu-west-1.amazonaws.com", "127.0.0.1:8000"])
def test_signature_matches_botocore(monkeypatch: pytest.MonkeyPatch, token: str | None, host: str) -> None:
    credentials = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    target = "DynamoDB_20120810.GetItem"
    request = AWSRequest(
        method="POST",
        url=f"https://{host}/",
        data=BODY,
        headers={"Content-Type": CONTENT_TYPE, "X-Amz-Target": target},
    )
    monkeypatch.setattr("botocore.auth.get_current_datetime", lambda: NOW.replace(tzinfo=None))
    SigV4Auth(credentials, "dynamodb", "eu-west-1").add_auth(request)

    ours = dict(
        SigV4Signer("eu-west-1", host).headers(
            target, BODY, credentials.access_key, credentials.secret_key, token, NOW
        )
    )
    assert ours["authorization"] == request.headers["Authorization"]
    assert ours["x-amz-date"] == request.headers["X-Amz-Date"] == "20261121T093015Z"
    assert ours.get("x-amz-security-token") == request.headers.get("X-Amz-Security-Token")


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
