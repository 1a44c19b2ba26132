"""One APNs release channel's settings (``AUTOPUSH_APNS_CHANNELS``, docs/protocol.md#bridges).

One object per channel::

    {"firefox": {"cert": "<path or PEM>", "key": "<path or PEM>",
                 "key_id": null, "team_id": null,
                 "topic": "org.mozilla.ios.Firefox", "sandbox": false}}

* ``key_id`` + ``team_id`` set: token auth. ``key`` is the ``.p8`` P-256
  signing key (PEM text or file path); ``cert`` is ignored. Each request
  carries ``authorization: bearer <ES256 JWT>`` (header ``kid`` = key_id,
  claims ``iss`` = team_id and ``iat``). The JWT is cached and replaced once
  it is 50 minutes old: Apple rejects tokens older than an hour and
  refreshes more frequent than every 20 minutes.
* otherwise: certificate auth. ``cert`` and ``key`` (PEM text or file paths;
  ``key`` may be omitted when ``cert`` holds both) are presented as the TLS
  client certificate.
* ``topic``: the ``apns-topic`` header, default ``com.mozilla.org.<channel>``.
* ``sandbox``: true sends to ``api.development.push.apple.com``.
* ``url`` (optional, for tests and mocks): base URL replacing Apple's host,
  e.g. ``https://127.0.0.1:8443``.
* ``ca`` (optional, for tests and mocks): path of a CA bundle that verifies
  the server instead of the public roots (certifi).
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import certifi

from autopush_flask.routers.apns.credentials import ProviderToken, load_client_certificate, provider_token

PRODUCTION_URL = "https://api.push.apple.com"
SANDBOX_URL = "https://api.development.push.apple.com"
DEFAULT_TOPIC = "com.mozilla.org.{channel}"


@dataclass(frozen=True)
class ApnsChannel:
    """One release channel's validated configuration."""

    name: str
    base_url: str
    topic: str
    ssl_context: ssl.SSLContext
    token: ProviderToken | None  # None: certificate auth

    @classmethod
    def from_config(cls, name: str, config: dict[str, Any], clock: Callable[[], float] = time.time) -> ApnsChannel:
        sandbox = _flag(config.get("sandbox"))
        base_url = (config.get("url") or (SANDBOX_URL if sandbox else PRODUCTION_URL)).rstrip("/")
        topic = config.get("topic") or DEFAULT_TOPIC.format(channel=name)
        context = ssl.create_default_context(cafile=config.get("ca") or certifi.where())
        if config.get("key_id") and config.get("team_id"):
            token: ProviderToken | None = provider_token(name, config, clock)
        else:
            load_client_certificate(context, name, config)
            token = None
        return cls(name, base_url, topic, context, token)


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)
