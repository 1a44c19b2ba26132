"""Settings for both node types.

Every setting is an ``AUTOPUSH_*`` environment variable (docs/operations.md#settings), optionally
mirrored in an ini file named by ``AUTOPUSH_CONFIG_FILE`` (the environment
wins). One marshmallow schema, generated from the ``Settings`` dataclass,
validates them, so the names, defaults, validation and the README reference
can never disagree. A bad value stops start-up with one line naming the
variable and the problem.
"""

from __future__ import annotations

import configparser
import dataclasses
import difflib
import hmac
import json
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.fernet import Fernet
from marshmallow import Schema, ValidationError, fields, validate

from autopush_flask.proxies import AWS_DYNAMODB_URL, ProxyRefused, proxy_for

PREFIX = "AUTOPUSH_"
CONFIG_FILE_VARIABLE = "AUTOPUSH_CONFIG_FILE"
INI_SECTION = "autopush"
# Prefixed variables that are not settings but that the service reads: the
# ini file's name, and the slot gunicorn's master hands each connection worker.
WORKER_SLOT_VARIABLE = "AUTOPUSH_WORKER_SLOT"
# The master's worker count, for the admin view's tour of the router ports.
WORKER_COUNT_VARIABLE = "AUTOPUSH_WORKER_COUNT"
INTERNAL_VARIABLES = frozenset({CONFIG_FILE_VARIABLE, WORKER_SLOT_VARIABLE, WORKER_COUNT_VARIABLE})
# Without crypto keys, only an explicitly named development environment may
# start (each worker then invents its own key).
ENV_VARIABLE = "AUTOPUSH_ENV"
DEVELOPMENT = "development"
KEY_COMMAND = "`flask generate-keys` (or scripts/autokey)"
# Auth keys are HMAC-SHA256 keys, used as text: anything shorter than the
# hash's 32-byte output is weaker than the secrets it signs.
MIN_AUTH_KEY_BYTES = 32
# A random 32-byte token has dozens of distinct characters; a placeholder
# ("xxxx…", "abababab…", "changeme" repeated) has a handful.
MIN_ADMIN_TOKEN_DISTINCT = 10

CONNECTION = "connection"
ENDPOINT = "endpoint"
NODE_TYPES = (CONNECTION, ENDPOINT)

# Defaults that differ by node type (docs/operations.md#settings).
NODE_DEFAULTS: dict[str, dict[str, str]] = {
    CONNECTION: {"AUTOPUSH_PORT": "8080", "AUTOPUSH_STATSD_PREFIX": "autoconnect", "AUTOPUSH_METRICS_PORT": "9103"},
    ENDPOINT: {"AUTOPUSH_PORT": "8082", "AUTOPUSH_STATSD_PREFIX": "autoendpoint", "AUTOPUSH_METRICS_PORT": "9102"},
}
# Where metrics go (docs/operations.md#metrics).
METRICS_MODES = ("statsd", "prometheus", "both")

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
TRUTHY = {"true", "1", "yes"}
FALSY = {"false", "0", "no"}


class SettingsError(Exception):
    """A setting is invalid; the message is one line fit for an operator."""


# --------------------------------------------------------------------------
# Field types for the spellings operators use
# --------------------------------------------------------------------------


class CommaList(fields.Field):
    """A list given as ``k1,k2``, ``[k1,k2]`` or ``"k1","k2"`` (docs/operations.md#settings)."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> tuple[str, ...]:
        if isinstance(value, (list, tuple)):
            items = [str(item) for item in value]
        elif isinstance(value, str):
            items = value.strip().strip("[]").split(",")
        else:
            raise ValidationError("Not a valid list.")
        cleaned = (item.strip().strip("'\"").strip() for item in items)
        return tuple(item for item in cleaned if item)


class Flag(fields.Boolean):
    """A boolean spelled ``true/false``, ``1/0`` or ``yes/no``."""

    # marshmallow declares these as set[object]
    truthy: set[object] = set(TRUTHY)
    falsy: set[object] = set(FALSY)

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> bool:
        if isinstance(value, str):
            value = value.strip().lower()
        return super()._deserialize(value, attr, data, **kwargs)


class JsonObject(fields.Field):
    """A JSON object given as text (credentials maps for the bridges)."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> dict:
        if isinstance(value, Mapping):
            return dict(value)
        try:
            parsed = json.loads(value)
        except (TypeError, ValueError) as error:
            raise ValidationError(f"Not valid JSON ({error}).") from error
        if not isinstance(parsed, dict):
            raise ValidationError("Must be a JSON object.")
        return parsed


class OptionalText(fields.String):
    """Text where an empty value means "not set"."""

    # The override ignore below: the point of this field is that empty text
    # loads as None, which marshmallow's String does not declare.
    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> str | None:  # type: ignore[override]
        text = super()._deserialize(value, attr, data, **kwargs)
        return text.strip() or None


def _validate_db_url(url: str | None) -> None:
    if url is not None and not url.startswith(("postgresql://", "postgres://")):
        raise ValidationError("Must be a postgresql:// URL (DynamoDB is the default: leave it unset).")


def _validate_fernet_keys(keys: tuple[str, ...]) -> None:
    for key in keys:
        try:
            Fernet(key.encode())
        except (ValueError, TypeError) as error:
            raise ValidationError(
                "Each key must be a 44-character URL-safe base64 Fernet key (32 bytes); "
                f"generate one with {KEY_COMMAND}."
            ) from error


def _validate_auth_keys(keys: tuple[str, ...]) -> None:
    if any(len(key.encode("utf-8")) < MIN_AUTH_KEY_BYTES for key in keys):
        raise ValidationError(
            f"Each key must be at least {MIN_AUTH_KEY_BYTES} bytes (an HMAC-SHA256 key); "
            f"generate one with {KEY_COMMAND}."
        )


def _validate_admin_token(token: str | None) -> None:
    """Long enough to be unguessable, and not an obvious placeholder (the value is never echoed)."""
    if token is None:
        return
    if len(token.encode("utf-8")) < MIN_AUTH_KEY_BYTES:
        raise ValidationError(
            f"Must be at least {MIN_AUTH_KEY_BYTES} bytes; generate one with `openssl rand -base64 32`."
        )
    if len(set(token)) < MIN_ADMIN_TOKEN_DISTINCT:
        raise ValidationError(
            "Must be a random token, not a repeated pattern; generate one with `openssl rand -base64 32`."
        )


def _validate_vapid_keys(keys: tuple[str, ...]) -> None:
    """Each entry must be a P-256 point, so a typo cannot silently lock every publisher out."""
    # Imported here: the gunicorn master loads this module before its workers
    # monkey-patch, and the VAPID module pulls in PyJWT (and its ssl users).
    from autopush_flask.crypto.vapid import decode_vapid_public_key

    for key in keys:
        try:
            decode_vapid_public_key(key)
        except ValueError as error:
            raise ValidationError(
                f"{key[:16]}… is not a VAPID public key: base64url of an uncompressed P-256 point ({error})."
            ) from error


def _validate_object_of_objects(value: dict) -> None:
    for name, entry in value.items():
        if not isinstance(entry, dict):
            raise ValidationError(f"Entry {name!r} must be a JSON object.")


def _validate_fcm_credentials(value: dict) -> None:
    _validate_object_of_objects(value)
    for app_id, entry in value.items():
        missing = [key for key in ("project_id", "credential") if not entry.get(key)]
        if missing:
            raise ValidationError(f"Entry {app_id!r} lacks {', '.join(missing)}.")


PORT = validate.Range(min=1, max=65535)
NON_NEGATIVE = validate.Range(min=0)
POSITIVE = validate.Range(min=1)
POSITIVE_SECONDS = validate.Range(min=0, min_inclusive=False)
# Each tag value is a time series per milestone in the metrics store.
MAX_SENDER_TAGS = 1000


# --------------------------------------------------------------------------
# The settings
# --------------------------------------------------------------------------


def setting(field: fields.Field, doc: str, scope: str = "both", default_doc: str | None = None) -> Any:
    """Declare one setting: its marshmallow field, README text and node scope."""
    return dataclasses.field(metadata={"field": field, "doc": doc, "scope": scope, "default_doc": default_doc})


def _text(default: str | None = None, **kwargs: Any) -> fields.Field:
    if default is None:
        return OptionalText(load_default=None, **kwargs)
    return fields.String(load_default=default, **kwargs)


@dataclass(frozen=True)
class Settings:
    """Validated settings; attribute names are the variables without ``AUTOPUSH_``."""

    node_type: str
    # ---- shared (docs/operations.md#settings)
    crypto_keys: tuple[str, ...] = setting(
        CommaList(load_default=(), validate=_validate_fernet_keys),
        "Fernet keys, newest first. The first encrypts; all decrypt. Must be identical on all nodes.",
        default_doc="none: required, unless `AUTOPUSH_ENV=development` is set (then one key per worker)",
    )
    env: str = setting(_text("development"), "Environment name, echoed as `env` in the hello reply.")
    hostname: str = setting(_text(), "Name this node announces.", default_doc="system hostname")
    resolve_hostname: bool = setting(Flag(load_default=False), "Replace the hostname by its first IPv4 address.")
    endpoint_scheme: str = setting(
        _text("http", validate=validate.OneOf(["http", "https"])),
        "Scheme of generated endpoint URLs.",
    )
    endpoint_hostname: str = setting(_text(), "Host of generated endpoint URLs.", default_doc="`AUTOPUSH_HOSTNAME`")
    endpoint_port: int = setting(
        fields.Integer(load_default=8082, validate=PORT),
        "Port of generated endpoint URLs (omitted when default for the scheme).",
    )
    endpoint_url: str = setting(
        _text(),
        "Full override of the endpoint scheme, host and port; also the expected VAPID `aud`.",
        default_doc="derived",
    )
    router_table: str = setting(_text("router"), "Router table name.")
    message_table: str = setting(_text("message"), "Message table name (rotation mode: prefix).")
    router_read_throughput: int = setting(
        fields.Integer(load_default=5, validate=POSITIVE), "Read capacity of a new router table."
    )
    router_write_throughput: int = setting(
        fields.Integer(load_default=5, validate=POSITIVE), "Write capacity of a new router table."
    )
    message_read_throughput: int = setting(
        fields.Integer(load_default=5, validate=POSITIVE), "Read capacity of new message tables."
    )
    message_write_throughput: int = setting(
        fields.Integer(load_default=5, validate=POSITIVE), "Write capacity of new message tables."
    )
    create_tables: bool = setting(Flag(load_default=True), "Create missing tables at start-up.")
    table_rotation: bool = setting(
        Flag(load_default=False),
        "Monthly message-table rotation (legacy layout, docs/architecture.md#monthly-rotation).",
    )
    ddb_endpoint: str | None = setting(_text(), "DynamoDB endpoint override (local DynamoDB).", default_doc="AWS")
    db_url: str | None = setting(
        _text(validate=_validate_db_url),
        "Use PostgreSQL at this `postgresql://user:password@host/dbname` URL instead of DynamoDB "
        "(the table and throughput settings then do not apply).",
        default_doc="DynamoDB",
    )
    db_pool_size: int = setting(
        fields.Integer(load_default=10, validate=POSITIVE),
        "PostgreSQL: connections per worker (each gevent worker shares its pool among its greenlets).",
    )
    db_purge_interval: float = setting(
        fields.Float(load_default=3600.0, validate=NON_NEGATIVE),
        "PostgreSQL: seconds between purges of expired rows by each node (one node at a time "
        "runs it); 0 leaves purging to `flask maintain-tables --purge-expired`.",
    )
    router_ttl_days: int = setting(
        fields.Integer(load_default=60, validate=POSITIVE),
        "Days a router record lives without a hello, register or bridge update; then it reads "
        "as gone (404/410) and the store deletes it.",
    )
    statsd_host: str | None = setting(fields.String(load_default="localhost"), "statsd host; empty disables metrics.")
    statsd_port: int = setting(fields.Integer(load_default=8125, validate=PORT), "statsd UDP port.")
    statsd_prefix: str = setting(_text(), "Metric name prefix.", default_doc="`autoconnect` / `autoendpoint`")
    statsd_tags: bool = setting(Flag(load_default=False), "Add tags to metrics in DogStatsD syntax (`\\|#k:v`).")
    metrics: str = setting(
        fields.String(load_default="statsd", validate=validate.OneOf(METRICS_MODES)),
        "`statsd`, `prometheus` or `both`: where metrics go (docs/operations.md#metrics). With Prometheus, "
        "the same metrics and tags are served over HTTP on `AUTOPUSH_METRICS_PORT`.",
    )
    metrics_port: int = setting(
        fields.Integer(validate=PORT),
        "Prometheus port: an endpoint node's master serves all its workers' metrics there; connection "
        "worker slot N serves its own on this + N. Nothing listens unless `AUTOPUSH_METRICS` includes Prometheus.",
        default_doc="9103 / 9102",
    )
    metrics_bind: str = setting(
        _text("127.0.0.1"),
        "Address the Prometheus ports listen on; keep them private (scrapers only).",
    )
    sender_tags: int = setting(
        fields.Integer(load_default=0, validate=validate.Range(min=0, max=MAX_SENDER_TAGS)),
        "Tag delivery milestones with the domain of the sender's VAPID `sub` for at most this many "
        "domains per process (the first to send 20 messages; others are `other`); 0 leaves the tag out "
        "(docs/operations.md#delivery-tracking).",
    )
    log_level: str = setting(
        fields.String(load_default="info", validate=validate.OneOf(LOG_LEVELS)),
        "`debug`, `info`, `warning`, `error` or `critical`.",
    )
    human_logs: bool = setting(Flag(load_default=False), "Plain-text logs instead of JSON lines.")
    sentry_dsn: str | None = setting(
        _text(), "Report errors to Sentry (sentry-sdk's Flask integration) when set.", default_doc="none"
    )
    # 5630, not RFC 8030's minimum of 4096: Mozilla's server accepts that much, and
    # senders that base64 a 4 KiB payload (4096 → 5462 bytes, plus headers) rely on it.
    max_data: int = setting(fields.Integer(load_default=5630, validate=POSITIVE), "Maximum raw push body in bytes.")
    ssl_key: str | None = setting(
        _text(),
        "PEM private key: the public listener serves TLS (with `AUTOPUSH_SSL_CERT`).",
        default_doc="none",
    )
    ssl_cert: str | None = setting(
        _text(),
        "PEM certificate chain of the public listener (with `AUTOPUSH_SSL_KEY`).",
        default_doc="none",
    )
    ssl_dh_param: str | None = setting(
        _text(),
        "PEM DH parameters: enable DHE for TLS 1.2 clients without ECDHE (TLS 1.3 never uses them).",
        default_doc="none",
    )
    # ---- both, but with node-specific defaults
    port: int = setting(
        fields.Integer(validate=PORT),
        "Public listening port (WebSocket on a connection node, HTTP on an endpoint node).",
        default_doc="8080 / 8082",
    )
    node_connect_timeout: float = setting(
        fields.Float(load_default=1.0, validate=NON_NEGATIVE),
        "Seconds to connect to another node's router port.",
    )
    # ---- connection node (docs/operations.md#settings)
    router_hostname: str = setting(
        _text(),
        "Host used in `node_id`; must be reachable by every node.",
        CONNECTION,
        "`AUTOPUSH_HOSTNAME`",
    )
    router_port: int = setting(
        fields.Integer(load_default=8081, validate=PORT),
        "First private router port; worker slot N listens on this + N.",
        CONNECTION,
    )
    router_bind: str = setting(
        _text("0.0.0.0"),
        "Address the router ports listen on; never expose them to the internet.",
        CONNECTION,
    )
    router_ssl_key: str | None = setting(
        _text(), "TLS key for the router port: it serves https and `node_id` is https.", CONNECTION, "none"
    )
    router_ssl_cert: str | None = setting(_text(), "TLS certificate for the router port.", CONNECTION, "none")
    router_ca: str | None = setting(
        _text(),
        "CA bundle that verifies router certificates (when `node_id`s are https).",
        "both",
        "system trust store",
    )
    router_auth: bool = setting(
        Flag(load_default=True),
        "Refuse router requests not signed with the shared crypto keys (401); "
        "`false` only for tools that call the router directly.",
        CONNECTION,
    )
    router_max_requests: int = setting(
        fields.Integer(load_default=500, validate=POSITIVE),
        "Router requests one worker serves at once; more get 503 (the endpoint stores them).",
        CONNECTION,
    )
    hello_timeout: float = setting(
        fields.Float(load_default=5.0, validate=NON_NEGATIVE),
        "Seconds to wait for hello; 0 disables.",
        CONNECTION,
    )
    auto_ping_interval: float = setting(
        fields.Float(load_default=300.0, validate=NON_NEGATIVE),
        "Seconds between WebSocket ping frames; 0 disables.",
        CONNECTION,
    )
    auto_ping_timeout: float = setting(
        fields.Float(load_default=4.0, validate=NON_NEGATIVE),
        "Seconds to wait for the pong.",
        CONNECTION,
    )
    max_connections: int = setting(
        fields.Integer(load_default=0, validate=NON_NEGATIVE),
        "Maximum WebSocket clients per worker; 0 means unlimited.",
        CONNECTION,
    )
    close_handshake_timeout: float = setting(
        fields.Float(load_default=0.0, validate=NON_NEGATIVE),
        "Seconds to wait for the client's close frame after sending ours, then drop TCP (0 = built-in 5 s).",
        CONNECTION,
    )
    send_timeout: float = setting(
        fields.Float(load_default=10.0, validate=POSITIVE_SECONDS),
        "Seconds one write to a client may block; a client that stops reading is dropped "
        "(its unacknowledged direct notifications are stored).",
        CONNECTION,
    )
    upgrade_timeout: float = setting(
        fields.Float(load_default=10.0, validate=POSITIVE_SECONDS),
        "Seconds a new connection has to send its whole HTTP request (the WebSocket upgrade); slower ones are closed.",
        CONNECTION,
    )
    msg_limit: int = setting(
        fields.Integer(load_default=150, validate=POSITIVE),
        "Stored messages one drain may deliver before the UAID is reset.",
        CONNECTION,
    )
    bookmark_margin: float = setting(
        fields.Float(load_default=60.0, validate=POSITIVE_SECONDS),
        "Seconds the stored bookmark of a UAID stays behind the start of the drain that wrote it, so "
        "that a message written late under an earlier stamp is still read: must exceed the longest "
        "delay from an endpoint stamping a message to its write landing (~40 s with the built-in "
        "DynamoDB timeouts and retries) plus the clock skew between hosts.",
        CONNECTION,
    )
    retry_queue_size: int = setting(
        fields.Integer(load_default=10000, validate=POSITIVE),
        "Notifications (and other failed writes: ack deletes, bookmarks) one worker keeps retrying in "
        "the background after a storage failure; beyond it they are given up (`storage.retry.given_up`).",
        CONNECTION,
    )
    client_queue_size: int = setting(
        fields.Integer(load_default=128, validate=POSITIVE),
        "Per-session queue of pending direct notifications.",
        CONNECTION,
    )
    max_unacked_direct: int = setting(
        fields.Integer(load_default=32, validate=POSITIVE),
        "Direct notifications a client may leave unacknowledged; beyond it `PUT /push` answers 503 "
        "and the endpoint stores the message.",
        CONNECTION,
    )
    max_channels: int = setting(
        fields.Integer(load_default=500, validate=POSITIVE),
        "Channels per UAID; a register beyond it is answered with status 413.",
        CONNECTION,
    )
    register_rate: int = setting(
        fields.Integer(load_default=100, validate=NON_NEGATIVE),
        "Registers per minute one connection may make, in bursts of as many; beyond it status 429. 0 disables.",
        CONNECTION,
    )
    megaphone_api_url: str | None = setting(_text(), "Megaphone URL; enables broadcasts.", CONNECTION, "none")
    megaphone_api_token: str | None = setting(_text(), "Bearer token sent to Megaphone.", CONNECTION, "none")
    megaphone_poll_interval: float = setting(
        fields.Float(load_default=30.0, validate=validate.Range(min=0, min_inclusive=False)),
        "Seconds between Megaphone polls; must be > 0.",
        CONNECTION,
    )
    admin_token: str | None = setting(
        _text(validate=_validate_admin_token),
        "Bearer token of the admin view (docs/operations.md#admin-view), 32 bytes or more and no other "
        "setting's secret; unset, nothing listens on the admin port.",
        CONNECTION,
        "none: no admin view",
    )
    admin_port: int = setting(
        fields.Integer(load_default=8090, validate=PORT),
        "Port of the admin view, served by one worker of the node at a time.",
        CONNECTION,
    )
    admin_bind: str = setting(
        _text("127.0.0.1"),
        "Address the admin view listens on (plain HTTP): keep it on loopback and reach it over an SSH tunnel.",
        CONNECTION,
    )
    # ---- endpoint node (docs/operations.md#settings)
    auth_keys: tuple[str, ...] = setting(
        CommaList(load_default=(), validate=_validate_auth_keys),
        "HMAC keys for bridge secrets (32 bytes or more each), newest first; required with a bridge.",
        ENDPOINT,
        "none",
    )
    cors: bool = setting(Flag(load_default=True), "Send CORS headers.", ENDPOINT)
    sts_max_age: int = setting(
        fields.Integer(load_default=31536000, validate=NON_NEGATIVE),
        "`Strict-Transport-Security` max-age; 0 disables the header.",
        ENDPOINT,
    )
    max_notification_ttl: int = setting(
        fields.Integer(load_default=2592000, validate=NON_NEGATIVE),
        "TTL cap in seconds.",
        ENDPOINT,
    )
    body_min_rate: int = setting(
        fields.Integer(load_default=500, validate=NON_NEGATIVE),
        "Request bodies slower than this many bytes/s (after the grace period) get 408; 0 disables.",
        ENDPOINT,
    )
    body_grace: float = setting(
        fields.Float(load_default=5.0, validate=NON_NEGATIVE),
        "Seconds a request body may take before `AUTOPUSH_BODY_MIN_RATE` applies.",
        ENDPOINT,
    )
    vapid_cache_bytes: int = setting(
        fields.Integer(load_default=4 * 1024 * 1024, validate=NON_NEGATIVE),
        "Memory per worker for remembering fully verified VAPID tokens; 0 disables.",
        ENDPOINT,
    )
    allowed_vapid_keys: tuple[str, ...] = setting(
        CommaList(load_default=(), validate=_validate_vapid_keys),
        "VAPID public keys (base64url, as in `k=`) allowed to push; any other push gets 403 errno 120 "
        "(docs/protocol.md#publisher-controls).",
        ENDPOINT,
        "none: any application server",
    )
    push_rate: int = setting(
        fields.Integer(load_default=0, validate=NON_NEGATIVE),
        "Pushes per minute per subscription, per endpoint worker; more get 429 errno 121 with `Retry-After`. "
        "0 disables.",
        ENDPOINT,
    )
    node_request_timeout: float = setting(
        fields.Float(load_default=3.0, validate=NON_NEGATIVE),
        "Total seconds for `PUT /push` and `PUT /notif`.",
        ENDPOINT,
    )
    durable_direct: bool = setting(
        Flag(load_default=False),
        "Store each message (TTL > 0) before handing it to a connection node, which deletes it on ack: "
        "no single process or host failure loses an accepted message. Costs a write and a delete per "
        "direct notification.",
        ENDPOINT,
    )
    fcm_credentials: dict | None = setting(
        JsonObject(load_default=None, validate=_validate_fcm_credentials),
        'JSON `{"<app_id>": {"project_id": …, "credential": <service-account JSON or path>}}`.',
        ENDPOINT,
        "none (FCM disabled)",
    )
    fcm_min_ttl: int = setting(
        fields.Integer(load_default=60, validate=NON_NEGATIVE), "Lower bound of the Android TTL.", ENDPOINT
    )
    fcm_max_ttl: int = setting(
        fields.Integer(load_default=2419200, validate=NON_NEGATIVE), "Upper bound of the Android TTL.", ENDPOINT
    )
    fcm_max_data: int = setting(
        fields.Integer(load_default=4096, validate=POSITIVE), "Maximum serialised FCM data map.", ENDPOINT
    )
    fcm_timeout: float = setting(
        fields.Float(load_default=3.0, validate=NON_NEGATIVE), "Seconds per FCM request.", ENDPOINT
    )
    fcm_base_url: str = setting(
        _text("https://fcm.googleapis.com"), "FCM API base URL (tests point it at a fake).", ENDPOINT
    )
    apns_channels: dict | None = setting(
        JsonObject(load_default=None, validate=_validate_object_of_objects),
        'JSON `{"<channel>": {"cert", "key", "key_id", "team_id", "topic", "sandbox"}}`.',
        ENDPOINT,
        "none (APNs disabled)",
    )
    apns_max_data: int = setting(
        fields.Integer(load_default=4096, validate=POSITIVE), "Maximum serialised APNs payload.", ENDPOINT
    )
    apns_timeout: float = setting(
        fields.Float(load_default=20.0, validate=NON_NEGATIVE), "Seconds per APNs request.", ENDPOINT
    )
    stub_router: bool = setting(
        Flag(load_default=False),
        "Enable the `stub` bridge, whose pushes succeed or fail as its app id says (docs/protocol.md#stub-bridge): "
        "for app developers and staging only, never in production.",
        ENDPOINT,
    )
    proxy_fix: bool = setting(
        Flag(load_default=False),
        "Trust one proxy's X-Forwarded-For/-Proto/-Host (behind nginx).",
        ENDPOINT,
    )
    crypto_keys_generated: bool = False

    @property
    def router_scheme(self) -> str:
        return "https" if self.router_ssl_key else "http"

    def node_id(self, router_port: int) -> str:
        """The ``node_id`` of the worker whose private router listens on ``router_port``."""
        return base_url(self.router_scheme, self.router_hostname, router_port)


SETTING_FIELDS = tuple(f for f in dataclasses.fields(Settings) if "field" in f.metadata)


def variable_name(attribute: str) -> str:
    return PREFIX + attribute.upper()


def _build_schema() -> type[Schema]:
    declared = {}
    for spec in SETTING_FIELDS:
        field = spec.metadata["field"]
        field.data_key = variable_name(spec.name)
        declared[spec.name] = field
    return Schema.from_dict(declared, name="SettingsSchema")


SettingsSchema = _build_schema()


# --------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------


def base_url(scheme: str, host: str, port: int) -> str:
    """``scheme://host[:port]``, the port omitted when it is the scheme's default."""
    default = {"http": 80, "https": 443}.get(scheme)
    return f"{scheme}://{host}" if port == default else f"{scheme}://{host}:{port}"


def setting_variables() -> frozenset[str]:
    """Every declared setting's variable name (settings added later included)."""
    return frozenset(variable_name(spec.name) for spec in SETTING_FIELDS)


def _as_variable(name: str) -> str:
    """An ini key (``max_data`` or ``AUTOPUSH_MAX_DATA``) as its variable name."""
    upper = name.upper()
    return upper if upper.startswith(PREFIX) else PREFIX + upper


def _unknown_message(name: str, known: frozenset[str], where: str = "") -> str:
    """One problem: the unknown name as given, and the closest setting when one is near.

    A typo'd variable would otherwise be ignored and its setting keep its
    default (``AUTOPUSH_CRYPTO_KEY``: every worker would invent its own key).
    """
    message = f"unknown setting {name}{where}"
    # Compared without the prefix every name shares, which would make any
    # two names look alike.
    suffixes = sorted(known_name[len(PREFIX) :] for known_name in known)
    close = difflib.get_close_matches(_as_variable(name)[len(PREFIX) :], suffixes, n=1)
    return f"{message} (did you mean {PREFIX}{close[0]}?)" if close else message


def _refuse_unknown(names: list[str], known: frozenset[str], where: str = "") -> None:
    if names:
        raise SettingsError("; ".join(_unknown_message(name, known, where) for name in sorted(names)))


def _read_ini(path: str) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None)
    # keep the operator's spelling (configparser's documented hook; typeshed types it as a method)
    parser.optionxform = str  # type: ignore[assignment, method-assign]
    if not parser.read(path):
        raise SettingsError(f"{CONFIG_FILE_VARIABLE}: cannot read {path}")
    if not parser.has_section(INI_SECTION):
        return {}
    items = parser.items(INI_SECTION)
    known = setting_variables()
    unknown = [key for key, _ in items if _as_variable(key) not in known]
    _refuse_unknown(unknown, known, f" in [{INI_SECTION}] of {path}")
    return {_as_variable(key): value for key, value in items}


def _raw_values(node_type: str, environ: Mapping[str, str]) -> dict[str, str]:
    known = setting_variables()
    _refuse_unknown(
        [key for key in environ if key.startswith(PREFIX) and key not in known | INTERNAL_VARIABLES],
        known,
    )
    raw = dict(NODE_DEFAULTS[node_type])
    config_file = environ.get(CONFIG_FILE_VARIABLE)
    if config_file:
        raw.update(_read_ini(config_file))
    raw.update({key: value for key, value in environ.items() if key in known})
    return raw


def _one_line(error: ValidationError) -> str:
    problems = []
    for variable, messages in sorted(error.normalized_messages().items()):
        text = " ".join(messages) if isinstance(messages, list) else str(messages)
        problems.append(f"{variable}: {text}")
    return "invalid setting " + "; ".join(problems)


def _resolve(hostname: str) -> str:
    try:
        return socket.gethostbyname(hostname)
    except OSError as error:
        raise SettingsError(f"AUTOPUSH_RESOLVE_HOSTNAME: cannot resolve {hostname!r} ({error})") from error


def _derive(values: dict[str, Any]) -> dict[str, Any]:
    hostname = values["hostname"] or socket.gethostname()
    if values["resolve_hostname"]:
        hostname = _resolve(hostname)
    values["hostname"] = hostname
    values["endpoint_hostname"] = values["endpoint_hostname"] or hostname
    values["router_hostname"] = values["router_hostname"] or hostname
    values["statsd_host"] = (values["statsd_host"] or "").strip() or None
    if values["endpoint_url"]:
        values["endpoint_url"] = values["endpoint_url"].rstrip("/")
    else:
        values["endpoint_url"] = base_url(
            values["endpoint_scheme"], values["endpoint_hostname"], values["endpoint_port"]
        )
    return values


MISSING_CRYPTO_KEYS = (
    f"missing setting AUTOPUSH_CRYPTO_KEYS: every node needs the same key; generate one with "
    f"{KEY_COMMAND}, or set {ENV_VARIABLE}={DEVELOPMENT} to run with a throw-away key per worker"
)


def _crypto_keys_or_refuse(values: dict[str, Any], raw: Mapping[str, str], required: bool) -> None:
    """Refuse to run without crypto keys, except in an explicitly named development setup.

    A key invented at start-up is each worker's own: endpoints minted by one
    worker are 404 on every other and after every restart. ``AUTOPUSH_ENV``
    defaults to ``development`` (it is only echoed to clients), so only an
    explicit value in the environment or ini file counts.
    """
    if values["crypto_keys"]:
        return
    development = ENV_VARIABLE in raw and values["env"].strip() == DEVELOPMENT
    if required and not development:
        raise SettingsError(MISSING_CRYPTO_KEYS)
    values["crypto_keys"] = (Fernet.generate_key().decode(),)
    values["crypto_keys_generated"] = True


def _readable(variable: str, path: str) -> None:
    try:
        with open(path, "rb") as file:
            file.read(1)
    except OSError as error:
        raise SettingsError(f"invalid setting {variable}: cannot read {path} ({error.strerror})") from error


def _check_public_tls(settings: Settings) -> None:
    """Key and certificate come together, and load, before anything listens.

    gunicorn would only find a missing or mismatched file in each worker,
    after the master bound the port; here the message names the setting.
    """
    files = {"AUTOPUSH_SSL_KEY": settings.ssl_key, "AUTOPUSH_SSL_CERT": settings.ssl_cert}
    if not any(files.values()):
        if settings.ssl_dh_param:
            raise SettingsError("invalid setting AUTOPUSH_SSL_DH_PARAM: needs AUTOPUSH_SSL_KEY and AUTOPUSH_SSL_CERT")
        return
    for variable, path in files.items():
        if not path:
            given = next(name for name, value in files.items() if value)
            raise SettingsError(f"invalid setting {variable}: required when {given} is set")
    files["AUTOPUSH_SSL_DH_PARAM"] = settings.ssl_dh_param
    for variable, path in files.items():
        if path:
            _readable(variable, path)
    _load_public_tls(settings)


def _load_public_tls(settings: Settings) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # the caller checked that both files are set
        context.load_cert_chain(certfile=settings.ssl_cert or "", keyfile=settings.ssl_key)
    except (ssl.SSLError, ValueError) as error:
        raise SettingsError(
            f"invalid setting AUTOPUSH_SSL_CERT/AUTOPUSH_SSL_KEY: not a PEM certificate and its private key ({error})"
        ) from error
    if settings.ssl_dh_param:
        try:
            context.load_dh_params(settings.ssl_dh_param)
        except (ssl.SSLError, ValueError) as error:
            raise SettingsError(f"invalid setting AUTOPUSH_SSL_DH_PARAM: not PEM DH parameters ({error})") from error


def _check_consistency(settings: Settings) -> None:
    if bool(settings.router_ssl_key) != bool(settings.router_ssl_cert):
        raise SettingsError("invalid setting AUTOPUSH_ROUTER_SSL_KEY/AUTOPUSH_ROUTER_SSL_CERT: set both or neither")
    _check_admin(settings)
    if settings.fcm_min_ttl > settings.fcm_max_ttl:
        raise SettingsError("invalid setting AUTOPUSH_FCM_MIN_TTL: greater than AUTOPUSH_FCM_MAX_TTL")
    bridges = settings.fcm_credentials or settings.apns_channels or settings.stub_router
    if settings.node_type == ENDPOINT and bridges and not settings.auth_keys:
        raise SettingsError("invalid setting AUTOPUSH_AUTH_KEYS: required when a bridge is enabled")


def _check_admin(settings: Settings) -> None:
    """The admin token is its own secret, and the admin port no other listener's."""
    token = settings.admin_token
    if token is None:
        return
    others = (*settings.crypto_keys, *settings.auth_keys, settings.megaphone_api_token)
    if any(other is not None and hmac.compare_digest(token.encode(), other.encode()) for other in others):
        raise SettingsError(
            "invalid setting AUTOPUSH_ADMIN_TOKEN: must not be a crypto key, auth key or the Megaphone token"
        )
    if settings.admin_port in (settings.port, settings.router_port):
        raise SettingsError("invalid setting AUTOPUSH_ADMIN_PORT: already the public or the first router port")


def load_settings(node_type: str, environ: Mapping[str, str], require_crypto_keys: bool = True) -> Settings:
    """Validate the environment (and optional ini file) into ``Settings``.

    Raises ``SettingsError`` with a one-line message naming the variable.
    ``require_crypto_keys=False`` is for operations commands that never
    touch a token (``flask maintain-tables``): without keys they get a
    throw-away one, flagged by ``crypto_keys_generated``.
    """
    if node_type not in NODE_TYPES:
        raise ValueError(f"unknown node type {node_type!r}")
    raw = _raw_values(node_type, environ)
    try:
        values = SettingsSchema().load(raw)
    except ValidationError as error:
        raise SettingsError(_one_line(error)) from error
    _crypto_keys_or_refuse(values, raw, require_crypto_keys)
    settings = Settings(node_type=node_type, **_derive(values))
    _check_consistency(settings)
    _check_public_tls(settings)
    _check_proxy(settings, environ)
    return settings


def _check_proxy(settings: Settings, environ: Mapping[str, str]) -> None:
    """A proxy DynamoDB's item path could not use stops the start (docs/operations.md#http-proxies)."""
    if settings.db_url:
        return
    try:
        proxy_for(settings.ddb_endpoint or AWS_DYNAMODB_URL, environ)
    except ProxyRefused as error:
        raise SettingsError(str(error)) from error


# --------------------------------------------------------------------------
# Reference documentation
# --------------------------------------------------------------------------

SCOPE_TITLES = {"both": "both", CONNECTION: "connection", ENDPOINT: "endpoint"}


def _default_text(spec: dataclasses.Field) -> str:
    if spec.metadata["default_doc"]:
        return spec.metadata["default_doc"]
    default = spec.metadata["field"].load_default
    if isinstance(default, bool):
        return "true" if default else "false"
    if isinstance(default, float) and default.is_integer():
        return str(int(default)) if default == 0 else str(default)
    return f"`{default}`" if isinstance(default, str) else str(default)


def settings_reference() -> str:
    """The README's settings table, generated from the schema."""
    lines = ["| Variable | Default | Node | Meaning |", "|---|---|---|---|"]
    for spec in SETTING_FIELDS:
        lines.append(
            f"| `{variable_name(spec.name)}` | {_default_text(spec)} | "
            f"{SCOPE_TITLES[spec.metadata['scope']]} | {spec.metadata['doc']} |"
        )
    lines.append(
        f"| `{CONFIG_FILE_VARIABLE}` | none | both | Ini file with an `[{INI_SECTION}]` section "
        "holding any of these (environment wins). |"
    )
    return "\n".join(lines)
