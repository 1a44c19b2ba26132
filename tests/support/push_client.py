"""A WebSocket push client for tests, speaking the protocol like Firefox does."""

from __future__ import annotations

import json
import struct
from typing import Any

import websocket


class PushClient:
    def __init__(self, url: str, timeout: float = 5.0, **options: Any) -> None:
        self.ws = websocket.create_connection(
            url, timeout=timeout, subprotocols=["push-notification"], **options
        )
        self.uaid: str | None = None
        self.timeout = timeout

    @property
    def subprotocol(self) -> str | None:
        return self.ws.getsubprotocol()

    def send(self, message: dict | str) -> None:
        self.ws.send(message if isinstance(message, str) else json.dumps(message))

    def receive(self) -> Any:
        text = self.ws.recv()
        return text if text == "{}" else json.loads(text)

    def hello(self, uaid: str | None = None, **extra: Any) -> dict:
        message = {"messageType": "hello", "use_webpush": True, "broadcasts": {}, **extra}
        if uaid:
            message["uaid"] = uaid
        self.send(message)
        reply = self.receive()
        self.uaid = reply.get("uaid")
        return reply

    def register(self, channel_id: str, key: str | None = None) -> dict:
        message = {"messageType": "register", "channelID": channel_id}
        if key:
            message["key"] = key
        self.send(message)
        return self.receive()

    def ack(self, *notifications: dict) -> None:
        self.send({
            "messageType": "ack",
            "updates": [{"channelID": n["channelID"], "version": n["version"], "code": 100}
                        for n in notifications],
        })

    def close_code(self) -> int | None:
        """Read until the server's close frame; its status code (``None`` if the TCP died)."""
        try:
            while True:
                opcode, data = self.ws.recv_data(control_frame=True)
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    return struct.unpack("!H", data[:2])[0] if len(data) >= 2 else 1005
        except (websocket.WebSocketConnectionClosedException, ConnectionError, OSError):
            return None

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:  # noqa: BLE001 - closing a dead socket in cleanup
            pass
