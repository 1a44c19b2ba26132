"""Crypto primitives of the push service, one module per concern.

Everything in this package is pure: no I/O, no clients, no module-level
mutable state. Callers map the exceptions to HTTP/WebSocket errors.

- ``base64url``: the lenient base64 reader and unpadded base64url writer (docs/protocol.md#identifiers)
- ``keys``: the shared Fernet key set, ``CryptoKeys``
  (docs/protocol.md#push-endpoint-urls, docs/protocol.md#push-response)
- ``endpoints``: push endpoint tokens and their app server key binding (docs/protocol.md#push-endpoint-urls)
- ``message_ids``: the ids of stored messages, ``MessageId``
  (docs/protocol.md#push-response, docs/protocol.md#message-cancel)
- ``crypto_key_header``: Crypto-Key / Encryption header parameters (docs/protocol.md#push-headers)
- ``vapid``: VAPID authorization checks (docs/protocol.md#vapid)
- ``bridge_secrets``: the secrets of bridged (native) registrations (docs/protocol.md#bridge-registration)

Import names from the module that defines them; nothing is re-exported here,
so the dependency of each caller on one concern stays visible. The modules
form no cycle: ``base64url``, ``keys``, ``crypto_key_header`` and
``bridge_secrets`` import none of the others; ``endpoints`` and
``message_ids`` import ``keys`` (and ``endpoints`` ``base64url``); ``vapid``
imports ``base64url`` and ``crypto_key_header``.
"""
