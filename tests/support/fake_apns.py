"""A scripted stand-in for Apple's push service, over real HTTP/2 and TLS.

The server only speaks HTTP/2: TLS offers ALPN ``h2`` alone and every byte
after the handshake goes through the ``h2`` protocol state machine, so a
client that fell back to HTTP/1.1 could not produce a recorded request.
Tests point a channel's ``url`` at it and its ``ca`` at ``FakeApns.ca_file``.

``TestPki`` makes a throwaway CA, a server certificate for 127.0.0.1 and a
client certificate (for certificate-auth channels); the server asks for a
client certificate and records its common name when the CA vouches for it.

Answers are scripted per request with ``script(...)``; when the script is
empty every request gets 200. ``Reply`` answers a status (and ``reason``),
``Delay`` answers late (to outlast the client's timeout), ``CLOSE`` drops
the connection without answering.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import socket
import ssl
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.sockets import close_quietly

CLIENT_CN = "apns-test-client"


@dataclass(frozen=True)
class Reply:
    status: int = 200
    reason: str | None = None


@dataclass(frozen=True)
class Delay:
    seconds: float
    then: Reply = Reply(200)


class Close:
    """Close the TCP connection after reading the request, without answering."""


CLOSE = Close()
Answer = Reply | Delay | Close


@dataclass
class ApnsRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any  # parsed JSON when it parses, else the raw bytes
    raw_body: bytes
    http_version: str  # "HTTP/2": the request came through the h2 state machine
    alpn: str | None  # what TLS negotiated
    client_cert_cn: str | None  # verified client certificate's CN, if one was presented
    connection: int  # serial number of the TCP connection it arrived on


# --------------------------------------------------------------------------
# Certificates
# --------------------------------------------------------------------------


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


class TestPki:
    """A CA, a server certificate (127.0.0.1, localhost) and a client certificate, as PEM files."""

    __test__ = False  # not a pytest class

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.timezone.utc)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(_name("autopush test CA"))
            .issuer_name(_name("autopush test CA"))
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                    key_encipherment=False, data_encipherment=False, key_agreement=False,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        self.ca_file = directory / "ca.pem"
        self.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))

        server_key, server_cert = self._issue(ca_key, ca_cert, "127.0.0.1", ExtendedKeyUsageOID.SERVER_AUTH, now)
        self.server_key_file = directory / "server.key"
        self.server_cert_file = directory / "server.pem"
        self.server_key_file.write_bytes(_pem_key(server_key))
        self.server_cert_file.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))

        client_key, client_cert = self._issue(ca_key, ca_cert, CLIENT_CN, ExtendedKeyUsageOID.CLIENT_AUTH, now)
        self.client_key_pem = _pem_key(client_key).decode()
        self.client_cert_pem = client_cert.public_bytes(serialization.Encoding.PEM).decode()

    @staticmethod
    def _issue(
        ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, common_name: str,
        usage: x509.ObjectIdentifier, now: datetime.datetime,
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
            )
        )
        if usage == ExtendedKeyUsageOID.SERVER_AUTH:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
                ),
                critical=False,
            )
        return key, builder.sign(ca_key, hashes.SHA256())


# --------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------


class FakeApns:
    def __init__(self, pki: TestPki) -> None:
        self.pki = pki
        self.requests: list[ApnsRequest] = []
        self.connections = 0  # TCP connections accepted (TLS handshake done)
        self._script: deque[Answer] = deque()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._stopped = False

        self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._tls.load_cert_chain(pki.server_cert_file, pki.server_key_file)
        self._tls.load_verify_locations(pki.ca_file)
        self._tls.verify_mode = ssl.CERT_OPTIONAL
        self._tls.set_alpn_protocols(["h2"])

        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept_loop, daemon=True).start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> str:
        return str(self.pki.ca_file)

    def script(self, *answers: Answer) -> None:
        """Answers for the next requests, in order; later requests get 200."""
        with self._lock:
            self._script.extend(answers)

    def stop(self) -> None:
        self._stopped = True
        self._listener.close()
        for sock in list(self._open):
            close_quietly(sock)

    # ---- internals

    def _next_answer(self) -> Answer:
        with self._lock:
            return self._script.popleft() if self._script else Reply(200)

    def _accept_loop(self) -> None:
        while not self._stopped:
            try:
                raw, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            sock = self._tls.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            close_quietly(raw)
            return
        with self._lock:
            self.connections += 1
            serial = self.connections
        self._open.add(sock)
        _Connection(self, sock, serial).run()
        self._open.discard(sock)


def _client_cn(sock: ssl.SSLSocket) -> str | None:
    peer = sock.getpeercert()
    if not peer:
        return None
    for rdn in peer.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return None


@dataclass
class _Stream:
    headers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)


class _Connection:
    """One HTTP/2 connection: a reader loop plus timers for delayed answers."""

    def __init__(self, server: FakeApns, sock: ssl.SSLSocket, serial: int) -> None:
        self.server = server
        self.sock = sock
        self.serial = serial
        self.alpn = sock.selected_alpn_protocol()
        self.client_cn = _client_cn(sock)
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        )
        self.send_lock = threading.Lock()
        self.streams: dict[int, _Stream] = {}
        self.closed = False

    def run(self) -> None:
        with self.send_lock:
            self.h2.initiate_connection()
            self._flush()
        while not self.closed:
            try:
                data = self.sock.recv(65536)
            except OSError:
                break
            if not data:
                break
            with self.send_lock:
                try:
                    events = self.h2.receive_data(data)
                except h2.exceptions.ProtocolError:
                    break
                for event in events:
                    self._handle(event)
                self._flush()
        self._close()

    def _handle(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self.streams[event.stream_id] = _Stream(headers=dict(event.headers))
        elif isinstance(event, h2.events.DataReceived):
            self.streams[event.stream_id].body += event.data
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            self._request_complete(event.stream_id, self.streams.pop(event.stream_id))
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.closed = True

    def _request_complete(self, stream_id: int, stream: _Stream) -> None:
        raw = bytes(stream.body)
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = raw
        headers = {k: v for k, v in stream.headers.items() if not k.startswith(":")}
        self.server.requests.append(ApnsRequest(
            method=stream.headers.get(":method", ""),
            path=stream.headers.get(":path", ""),
            headers=headers,
            body=body,
            raw_body=raw,
            http_version="HTTP/2",
            alpn=self.alpn,
            client_cert_cn=self.client_cn,
            connection=self.serial,
        ))
        answer = self.server._next_answer()
        if isinstance(answer, Close):
            self.closed = True
        elif isinstance(answer, Delay):
            timer = threading.Timer(answer.seconds, self._answer_later, (stream_id, answer.then, headers))
            timer.daemon = True
            timer.start()
        else:
            self._answer(stream_id, answer, headers)

    def _answer_later(self, stream_id: int, reply: Reply, headers: dict[str, str]) -> None:
        with self.send_lock:
            if self.closed:
                return
            try:
                self._answer(stream_id, reply, headers)
                self._flush()
            except Exception:  # the client gave up on the stream or the connection
                pass

    def _answer(self, stream_id: int, reply: Reply, request_headers: dict[str, str]) -> None:
        response_headers = [(":status", str(reply.status))]
        if "apns-id" in request_headers:
            response_headers.append(("apns-id", request_headers["apns-id"]))
        if reply.status == 200:
            self.h2.send_headers(stream_id, response_headers, end_stream=True)
            return
        body: dict[str, Any] = {"reason": reply.reason} if reply.reason else {}
        if reply.status == 410:
            body["timestamp"] = 1_700_000_000_000
        payload = json.dumps(body).encode()
        response_headers += [("content-type", "application/json"), ("content-length", str(len(payload)))]
        self.h2.send_headers(stream_id, response_headers)
        self.h2.send_data(stream_id, payload, end_stream=True)

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            try:
                self.sock.sendall(data)
            except OSError:
                self.closed = True

    def _close(self) -> None:
        self.closed = True
        close_quietly(self.sock)
