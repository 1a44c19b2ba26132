"""A scripted stand-in for FCM's HTTP v1 API and Google's OAuth2 token endpoint, over real HTTP.

Tests point ``AUTOPUSH_FCM_BASE_URL`` at ``FakeFcm.url`` and configure
service-account keys made by ``service_account()``/``write_service_account()``:
real RSA keys whose ``token_uri`` is this server's ``/token``, so google-auth
signs a real JWT assertion and the fake verifies it before issuing a token.

* ``POST /token`` (JWT-bearer grant) answers
  ``{"access_token": "fake-access-token-<n>", "expires_in": 3600, "token_type": "Bearer"}``
  unless ``script_token(...)`` says otherwise; a bad grant gets 400
  ``invalid_grant`` as Google would answer.
* ``POST /v1/projects/{project_id}/messages:send`` records every request
  (``messages``) and answers from ``script(...)``, else 200
  ``{"name": "projects/<p>/messages/<n>"}``. A bearer token the fake never
  issued gets 401 ``UNAUTHENTICATED``; one revoked by ``expire_tokens()`` gets
  401 with reason ``ACCESS_TOKEN_EXPIRED`` — both before the script is read.

Answers: ``Reply(status, body, headers)`` (``body`` a dict/list is sent as
JSON, ``str``/``bytes`` as is, ``None`` = the default success body for 200,
empty otherwise), ``Delay(seconds, then)`` answers late, ``CLOSE`` drops the
connection after reading the request.
"""

from __future__ import annotations

import functools
import itertools
import json
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"  # google-auth's fixed assertion "aud"
MESSAGES_PREFIX = "/v1/projects/"
MESSAGES_SUFFIX = "/messages:send"


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Delay:
    seconds: float
    then: Reply = Reply()


class Close:
    """Close the TCP connection after reading the request, without answering."""


CLOSE = Close()
Answer = Reply | Delay | Close


@dataclass(frozen=True)
class MessageRequest:
    path: str
    project_id: str
    headers: dict[str, str]
    body: Any  # parsed JSON, or the raw text when not JSON
    client_port: int


@dataclass(frozen=True)
class TokenRequest:
    grant_type: str | None
    claims: dict[str, Any] | None  # the verified assertion's claims; None when it did not verify
    client_port: int


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # bursts of concurrent first connections must not overflow the backlog


@functools.cache
def _rsa_key() -> rsa.RSAPrivateKey:
    """One real key per test process: generating 2048-bit keys is slow, sharing it is harmless."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class FakeFcm:
    def __init__(self) -> None:
        self.messages: list[MessageRequest] = []
        self.token_requests: list[TokenRequest] = []
        self.issued_tokens: list[str] = []
        self._expired: set[str] = set()
        self._script: deque[Answer] = deque()
        self._token_script: deque[Answer] = deque()
        self._accounts: dict[str, Any] = {}  # client_email → public key
        self._token_numbers = itertools.count(1)
        self._message_numbers = itertools.count(1)
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), self._handler_class())
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def token_uri(self) -> str:
        return f"{self.url}/token"

    def script(self, *answers: Answer) -> None:
        """Answers for the next message requests, in order; then the default 200."""
        self._script.extend(answers)

    def script_token(self, *answers: Answer) -> None:
        """Answers for the next token requests, in order; then a fresh access token."""
        self._token_script.extend(answers)

    def expire_tokens(self) -> None:
        """Every token issued so far is answered 401 ``ACCESS_TOKEN_EXPIRED`` from now on."""
        with self._lock:
            self._expired.update(self.issued_tokens)

    def service_account(
        self, client_email: str = "autopush@fake-project.iam.gserviceaccount.com",
        project_id: str = "fake-key-project",
    ) -> dict[str, Any]:
        """A Google service-account key (as parsed JSON) that this fake accepts."""
        key = _rsa_key()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode("ascii")
        with self._lock:
            self._accounts[client_email] = key.public_key()
        return {
            "type": "service_account",
            "project_id": project_id,
            "private_key_id": f"key-{len(self._accounts)}",
            "private_key": pem,
            "client_email": client_email,
            "client_id": "1234567890",
            "auth_uri": f"{self.url}/auth",
            "token_uri": self.token_uri,
        }

    def write_service_account(self, path: Path, **kwargs: Any) -> dict[str, Any]:
        """``service_account()`` written to ``path`` as a JSON key file."""
        info = self.service_account(**kwargs)
        path.write_text(json.dumps(info))
        return info

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # ---- request handling (server threads)

    def _next(self, script: deque[Answer]) -> Answer | None:
        with self._lock:
            return script.popleft() if script else None

    def _token_request(self, raw: bytes, port: int) -> TokenRequest:
        form = urllib.parse.parse_qs(raw.decode())
        request = TokenRequest(form.get("grant_type", [None])[0], self._verify(form.get("assertion", [""])[0]), port)
        self.token_requests.append(request)
        return request

    def _grant(self, request: TokenRequest) -> Reply:
        if request.grant_type != JWT_BEARER or request.claims is None:
            return Reply(400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."})
        token = f"fake-access-token-{next(self._token_numbers)}"
        with self._lock:
            self.issued_tokens.append(token)
        return Reply(200, {"access_token": token, "expires_in": 3600, "token_type": "Bearer"})

    def _verify(self, assertion: str) -> dict[str, Any] | None:
        try:
            issuer = jwt.decode(assertion, options={"verify_signature": False}).get("iss")
            key = self._accounts.get(issuer) if isinstance(issuer, str) else None
            if key is None:
                return None
            return jwt.decode(assertion, key, algorithms=["RS256"], audience=GOOGLE_TOKEN_AUDIENCE)
        except jwt.PyJWTError:
            return None

    def _authorization_failure(self, authorization: str) -> Reply | None:
        token = authorization[len("Bearer "):] if authorization.startswith("Bearer ") else None
        with self._lock:
            if token in self._expired:
                return Reply(401, {"error": {
                    "code": 401, "status": "UNAUTHENTICATED",
                    "message": "Request had invalid authentication credentials.",
                    "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                                 "reason": "ACCESS_TOKEN_EXPIRED"}],
                }})
            if token not in self.issued_tokens:
                return Reply(401, {"error": {"code": 401, "status": "UNAUTHENTICATED",
                                             "message": "Request had invalid authentication credentials."}})
        return None

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                port = self.client_address[1]
                if self.path == "/token":
                    grant = fake._token_request(raw, port)
                    answer = fake._next(fake._token_script)
                    default = lambda: fake._grant(grant)  # noqa: E731
                elif self.path.startswith(MESSAGES_PREFIX) and self.path.endswith(MESSAGES_SUFFIX):
                    project_id = self.path[len(MESSAGES_PREFIX):-len(MESSAGES_SUFFIX)]
                    fake.messages.append(MessageRequest(
                        self.path, project_id, dict(self.headers.items()), _parse(raw), port
                    ))
                    refused = fake._authorization_failure(self.headers.get("Authorization", ""))
                    answer = refused or fake._next(fake._script)
                    default = lambda: Reply(200, {  # noqa: E731
                        "name": f"projects/{project_id}/messages/{next(fake._message_numbers)}"
                    })
                else:
                    answer, default = Reply(404, "Not Found"), None
                self._answer(answer, default)

            def _answer(self, answer: Answer | None, default: Callable[[], Reply] | None) -> None:
                if isinstance(answer, Close):
                    self.close_connection = True
                    self.connection.close()
                    return
                if isinstance(answer, Delay):
                    time.sleep(answer.seconds)
                    answer = answer.then
                if default is not None and (answer is None or (answer.status == 200 and answer.body is None)):
                    answer = default()
                assert answer is not None  # every path without a default scripts its answer
                body = answer.body
                if isinstance(body, (dict, list)):
                    payload, content_type = json.dumps(body).encode(), "application/json; charset=UTF-8"
                else:
                    payload = body.encode() if isinstance(body, str) else (body or b"")
                    content_type = "text/html; charset=UTF-8"
                try:
                    self.send_response(answer.status)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(payload)))
                    for name, value in answer.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    self.close_connection = True  # the client gave up (timeout)

        return Handler


def _parse(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")
