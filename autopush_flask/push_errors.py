"""Every error a push, a registration or a delivery can end in, by name
(docs/protocol.md#error-responses, docs/architecture.md#storage-errors).

One catalogue for the endpoint's handlers and for the routers below them:
a router must be able to refuse a message with the protocol's status and errno
without importing the HTTP layer that renders the answer
(``endpoint/errors.py``). Each kind is written once here, so the errno table
in the README has a single place to be checked against.
"""

from __future__ import annotations

from dataclasses import dataclass

from autopush_flask.db import StorageError, StorageThrottled

ERRNO_TOO_LARGE = 104
ERRNO_UNKNOWN = 999
WWW_AUTHENTICATE = "webpush"


@dataclass(frozen=True)
class ErrorKind:
    """Status, errno and message of one protocol error.

    ``message`` may hold ``{name}`` fields, filled from the details the
    error is raised with (e.g. how many bytes too long a payload is).
    """

    status: int
    errno: int | None
    message: str
    headers: tuple[tuple[str, str], ...] = ()


class PushError(Exception):
    """A request the protocol answers with an error status and errno."""

    def __init__(self, kind: ErrorKind, **details: object) -> None:
        message = kind.message.format(**details) if details else kind.message
        super().__init__(message)
        self.kind = kind
        self.status = kind.status
        self.errno = kind.errno
        self.message = message
        self.headers = dict(kind.headers)


def _unauthorized(message: str) -> ErrorKind:
    """401 errno 109 with ``WWW-Authenticate: webpush`` (VAPID and bridge secrets)."""
    return ErrorKind(401, 109, message, (("WWW-Authenticate", WWW_AUTHENTICATE),))


def _bad_encoding(message: str) -> ErrorKind:
    return ErrorKind(400, 110, message)


# ---- the push URL and its subscription (docs/protocol.md#push-endpoint-urls, docs/protocol.md#push) ----------------
INVALID_ENDPOINT = ErrorKind(404, 102, "Invalid URL endpoint")
EXPIRED_ENDPOINT = ErrorKind(410, 103, "Expired URL endpoint")
ENDPOINT_UNAVAILABLE = ErrorKind(410, 105, "Endpoint became unavailable")
GONE_DURING_REQUEST = ErrorKind(410, 105, "Endpoint became unavailable during request")
NO_SUCH_SUBSCRIPTION = ErrorKind(410, 106, "No such subscription")

# ---- authentication (docs/protocol.md#vapid, docs/protocol.md#bridge-registration) ---------------------------------
INVALID_AUTHENTICATION = _unauthorized("Invalid authentication")
INVALID_VAPID = _unauthorized("Invalid authentication: {reason}")
MISSING_AUTHORIZATION = _unauthorized("Missing Authorization header")
AUTHORIZATION_TOO_LONG = _unauthorized("Authorization header too long")
VAPID_KEY_MISMATCH = _unauthorized("Key mismatch")

# ---- publisher controls (docs/protocol.md#publisher-controls) -------------------------------------------------
VAPID_REQUIRED = ErrorKind(403, 120, "VAPID required: this server accepts only its allowed application server keys")
VAPID_KEY_NOT_ALLOWED = ErrorKind(403, 120, "VAPID key not allowed on this server")
# Retry-After is added per push: the seconds until the subscription may push again.
TOO_MANY_PUSHES = ErrorKind(429, 121, "Too many pushes to this subscription")

# ---- request headers and body (docs/protocol.md#push-headers, docs/protocol.md#push) -----------------------------
MISSING_TTL = ErrorKind(400, 111, "Missing TTL Header")
INVALID_TTL = ErrorKind(400, 112, "Invalid TTL header value")
NEGATIVE_TTL = ErrorKind(400, 114, "TTL must be greater than 0")
INVALID_TOPIC = ErrorKind(400, 113, "Topic must be no greater than 32 characters of the base64url alphabet")
INVALID_URGENCY = ErrorKind(400, 110, "Urgency must be very-low, low, normal or high")
UNPARSEABLE_ENCODING = _bad_encoding("Unparseable header: {error}")
AES128GCM_WITH_KEYS = _bad_encoding("aes128gcm carries its keys in the payload: no salt or dh headers")
AESGCM_WITHOUT_SALT = _bad_encoding("aesgcm requires Encryption with a base64url salt")
AESGCM_WITHOUT_DH = _bad_encoding("aesgcm requires Crypto-Key with a base64url dh")
UNKNOWN_ENCODING = _bad_encoding("Content-Encoding must be aes128gcm or aesgcm")
PAYLOAD_TOO_LARGE = ErrorKind(413, ERRNO_TOO_LARGE, "Data payload must be smaller than {limit} bytes")
REQUEST_BODY_TOO_LARGE = ErrorKind(413, ERRNO_TOO_LARGE, "Request body must be smaller than {limit} bytes")
BODY_TOO_SLOW = ErrorKind(408, None, "Request body arrived too slowly")

# ---- messages and diagnostics (docs/protocol.md#message-cancel, docs/protocol.md#health) ---------------------------
INVALID_MESSAGE_ID = ErrorKind(400, None, "Invalid message ID")
UNKNOWN_DIAGNOSTIC = ErrorKind(404, 0, "Not Found")

# ---- bridge registration (docs/protocol.md#bridge-registration) ------------------------------------------
INVALID_ROUTER_TYPE = ErrorKind(400, 108, "Invalid router type")
BODY_NOT_AN_OBJECT = ErrorKind(400, None, "Body must be a JSON object")
INVALID_SUBSCRIPTION = ErrorKind(400, None, "Invalid request: {messages}")
INVALID_KEY = ErrorKind(400, None, "Invalid key")
UAID_COLLISION = ErrorKind(500, ERRNO_UNKNOWN, "UAID collision")
INVALID_DEVICE_TOKEN = ErrorKind(400, None, "Missing or invalid token")
INVALID_APS = ErrorKind(400, None, "Invalid aps: must be a JSON object")

# ---- bridge delivery (docs/protocol.md#bridges) ---------------------------------------
UNKNOWN_FCM_APP = ErrorKind(400, 106, "Unknown FCM app id")
UNKNOWN_RELEASE_CHANNEL = ErrorKind(400, None, "Unknown release channel")
UNSENDABLE_RECORD = ErrorKind(400, None, "The bridge record cannot be sent")
BRIDGE_DATA_TOO_LARGE = ErrorKind(413, ERRNO_TOO_LARGE, "Data too large: too long by {excess} bytes")
FCM_CREDENTIALS_UNUSABLE = ErrorKind(500, None, "FCM credentials are not usable")
BRIDGE_AUTHENTICATION = ErrorKind(502, 901, "Bridge authentication failed")
BRIDGE_CONNECTION = ErrorKind(502, 902, "Bridge connection failed")
BRIDGE_TIMEOUT = ErrorKind(502, 903, "Bridge request timed out")
BRIDGE_INVALID_RESPONSE = ErrorKind(502, None, "Invalid response from bridge")
BRIDGE_REPORTED_ERROR = ErrorKind(502, None, "Bridge reported an error")
APNS_UNREACHABLE = ErrorKind(502, 902, "Could not connect to APNs")
APNS_TIMEOUT = ErrorKind(502, 903, "APNs did not answer in time")
APNS_REFUSED = ErrorKind(502, None, "APNs error, {answer}")
UNKNOWN_STUB_APP = ErrorKind(400, None, "Unknown stub app id: use one of {app_ids}")

# ---- storage (docs/architecture.md#storage-errors) ----------------------------------------------------
STORAGE_THROTTLED = ErrorKind(503, 201, "Please slow message send rate")
STORAGE_UNAVAILABLE = ErrorKind(503, 202, "Retry Request")
# A message that could not be stored is always "back off", whatever the cause.
STORE_FAILED = STORAGE_THROTTLED


def storage_error(error: StorageError) -> PushError:
    """503 with the retry errno: 201 when throttled, else 202."""
    return PushError(STORAGE_THROTTLED if isinstance(error, StorageThrottled) else STORAGE_UNAVAILABLE)
