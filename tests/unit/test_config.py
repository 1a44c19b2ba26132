"""Settings parsing (SPEC §8): names, defaults, spellings and one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from autopush_flask.config import (
    CONNECTION,
    ENDPOINT,
    SettingsError,
    base_url,
    load_settings,
    settings_reference,
)

ROOT = Path(__file__).resolve().parents[2]
KEY1, KEY2 = Fernet.generate_key().decode(), Fernet.generate_key().decode()


def test_defaults_of_a_connection_node() -> None:
    settings = load_settings(CONNECTION, {"AUTOPUSH_HOSTNAME": "node1"})
    assert settings.port == 8080
    assert settings.router_port == 8081
    assert settings.statsd_prefix == "autoconnect"
    assert settings.hello_timeout == 5
    assert settings.auto_ping_interval == 300
    assert settings.auto_ping_timeout == 4
    assert settings.msg_limit == 150
    assert settings.client_queue_size == 128
    assert settings.max_connections == 0
    assert settings.router_hostname == "node1"
    assert settings.node_id(8083) == "http://node1:8083"
    assert settings.endpoint_url == "http://node1:8082"
    assert settings.table_rotation is False and settings.create_tables is True


def test_defaults_of_an_endpoint_node() -> None:
    settings = load_settings(ENDPOINT, {"AUTOPUSH_HOSTNAME": "e"})
    assert (settings.port, settings.statsd_prefix) == (8082, "autoendpoint")
    assert settings.max_data == 4096
    assert settings.max_notification_ttl == 2_592_000
    assert settings.sts_max_age == 31_536_000
    assert settings.cors is True
    assert settings.node_connect_timeout == 1.0 and settings.node_request_timeout == 3.0
    assert (settings.fcm_min_ttl, settings.fcm_max_ttl) == (60, 2_419_200)
    assert settings.fcm_base_url == "https://fcm.googleapis.com"
    assert settings.apns_timeout == 20
    assert settings.router_table == "router" and settings.message_table == "message"


def test_missing_crypto_key_is_generated_and_flagged() -> None:
    settings = load_settings(ENDPOINT, {})
    assert settings.crypto_keys_generated is True
    Fernet(settings.crypto_keys[0].encode())


@pytest.mark.parametrize(
    "spelling",
    [f"{KEY1},{KEY2}", f"[{KEY1},{KEY2}]", f'"{KEY1}","{KEY2}"', f' [ "{KEY1}" , "{KEY2}" ] ',
     f"['{KEY1}', '{KEY2}']"],
)
def test_lists_in_every_spelling(spelling: str) -> None:
    settings = load_settings(ENDPOINT, {"AUTOPUSH_CRYPTO_KEYS": spelling, "AUTOPUSH_AUTH_KEYS": spelling})
    assert settings.crypto_keys == (KEY1, KEY2)
    assert settings.auth_keys == (KEY1, KEY2)
    assert settings.crypto_keys_generated is False


@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", True), ("1", True), ("yes", True), ("YES", True), (" True ", True),
     ("false", False), ("0", False), ("no", False), ("No", False)],
)
def test_boolean_spellings(text: str, expected: bool) -> None:
    assert load_settings(ENDPOINT, {"AUTOPUSH_CORS": text}).cors is expected


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"AUTOPUSH_MAX_DATA": "lots"}, "invalid setting AUTOPUSH_MAX_DATA: Not a valid integer."),
        ({"AUTOPUSH_MAX_DATA": "1.5"}, "invalid setting AUTOPUSH_MAX_DATA: Not a valid integer."),
        ({"AUTOPUSH_CORS": "maybe"}, "invalid setting AUTOPUSH_CORS: Not a valid boolean."),
        ({"AUTOPUSH_PORT": "70000"}, "invalid setting AUTOPUSH_PORT: Must be greater than or equal to 1"),
        ({"AUTOPUSH_CRYPTO_KEYS": "short"}, "invalid setting AUTOPUSH_CRYPTO_KEYS: Each key must be"),
        ({"AUTOPUSH_LOG_LEVEL": "loud"}, "invalid setting AUTOPUSH_LOG_LEVEL: Must be one of"),
        ({"AUTOPUSH_ENDPOINT_SCHEME": "ftp"}, "invalid setting AUTOPUSH_ENDPOINT_SCHEME: Must be one of"),
        ({"AUTOPUSH_MEGAPHONE_POLL_INTERVAL": "0"}, "invalid setting AUTOPUSH_MEGAPHONE_POLL_INTERVAL"),
        ({"AUTOPUSH_HELLO_TIMEOUT": "-1"}, "invalid setting AUTOPUSH_HELLO_TIMEOUT"),
        ({"AUTOPUSH_FCM_CREDENTIALS": "{not json"}, "invalid setting AUTOPUSH_FCM_CREDENTIALS: Not valid JSON"),
        ({"AUTOPUSH_FCM_CREDENTIALS": "[1]"}, "invalid setting AUTOPUSH_FCM_CREDENTIALS: Must be a JSON object."),
        ({"AUTOPUSH_FCM_CREDENTIALS": '{"app": {"project_id": "p"}}'},
         "invalid setting AUTOPUSH_FCM_CREDENTIALS: Entry 'app' lacks credential."),
        ({"AUTOPUSH_APNS_CHANNELS": '{"firefox": 3}'},
         "invalid setting AUTOPUSH_APNS_CHANNELS: Entry 'firefox' must be a JSON object."),
        ({"AUTOPUSH_FCM_MIN_TTL": "100", "AUTOPUSH_FCM_MAX_TTL": "50"},
         "invalid setting AUTOPUSH_FCM_MIN_TTL: greater than AUTOPUSH_FCM_MAX_TTL"),
        ({"AUTOPUSH_APNS_CHANNELS": '{"firefox": {}}'},
         "invalid setting AUTOPUSH_AUTH_KEYS: required when a bridge is enabled"),
    ],
)
def test_bad_values_give_one_line_naming_the_variable(variables: dict, message: str) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings(ENDPOINT, variables)
    text = str(raised.value)
    assert text.startswith(message)
    assert "\n" not in text


def test_unknown_variables_are_ignored() -> None:
    assert load_settings(ENDPOINT, {"AUTOPUSH_NO_SUCH_THING": "x", "HOME": "/"}).port == 8082


def test_endpoint_url_derivation_and_override() -> None:
    settings = load_settings(
        ENDPOINT,
        {"AUTOPUSH_ENDPOINT_SCHEME": "https", "AUTOPUSH_ENDPOINT_HOSTNAME": "push.example.com",
         "AUTOPUSH_ENDPOINT_PORT": "443"},
    )
    assert settings.endpoint_url == "https://push.example.com"
    override = load_settings(ENDPOINT, {"AUTOPUSH_ENDPOINT_URL": "https://updates.example.com/"})
    assert override.endpoint_url == "https://updates.example.com"


def test_base_url_omits_default_ports() -> None:
    assert base_url("http", "h", 80) == "http://h"
    assert base_url("https", "h", 443) == "https://h"
    assert base_url("http", "h", 443) == "http://h:443"


def test_router_tls_makes_node_id_https() -> None:
    settings = load_settings(
        CONNECTION, {"AUTOPUSH_ROUTER_HOSTNAME": "r", "AUTOPUSH_ROUTER_SSL_KEY": "/k.pem"}
    )
    assert settings.node_id(8081) == "https://r:8081"


def test_resolve_hostname_uses_an_ipv4_address() -> None:
    settings = load_settings(
        CONNECTION, {"AUTOPUSH_HOSTNAME": "localhost", "AUTOPUSH_RESOLVE_HOSTNAME": "yes"}
    )
    assert settings.hostname == "127.0.0.1"
    assert settings.router_hostname == "127.0.0.1"


def test_empty_statsd_host_disables_metrics() -> None:
    assert load_settings(ENDPOINT, {"AUTOPUSH_STATSD_HOST": ""}).statsd_host is None


def test_ini_file_is_read_and_environment_wins(tmp_path: Path) -> None:
    ini = tmp_path / "autopush.ini"
    ini.write_text("[autopush]\nmax_data = 2048\nAUTOPUSH_ENV = staging\nmsg_limit = 10\n")
    settings = load_settings(
        CONNECTION, {"AUTOPUSH_CONFIG_FILE": str(ini), "AUTOPUSH_MSG_LIMIT": "20"}
    )
    assert (settings.max_data, settings.env, settings.msg_limit) == (2048, "staging", 20)


def test_unreadable_ini_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="AUTOPUSH_CONFIG_FILE"):
        load_settings(ENDPOINT, {"AUTOPUSH_CONFIG_FILE": str(tmp_path / "missing.ini")})


def test_settings_are_frozen() -> None:
    settings = load_settings(ENDPOINT, {})
    with pytest.raises(AttributeError):
        settings.port = 1  # type: ignore[misc]


def test_readme_settings_reference_is_current() -> None:
    """The README table is generated from the schema; regenerate with `make docs`."""
    readme = (ROOT / "README.md").read_text()
    assert settings_reference() in readme


def test_settings_reference_lists_every_spec_variable() -> None:
    reference = settings_reference()
    spec_names = [
        "CRYPTO_KEYS", "ENV", "HOSTNAME", "RESOLVE_HOSTNAME", "ENDPOINT_SCHEME", "ENDPOINT_HOSTNAME",
        "ENDPOINT_PORT", "ENDPOINT_URL", "ROUTER_TABLE", "MESSAGE_TABLE", "ROUTER_READ_THROUGHPUT",
        "ROUTER_WRITE_THROUGHPUT", "MESSAGE_READ_THROUGHPUT", "MESSAGE_WRITE_THROUGHPUT",
        "CREATE_TABLES", "TABLE_ROTATION", "DDB_ENDPOINT", "STATSD_HOST", "STATSD_PORT",
        "STATSD_PREFIX", "LOG_LEVEL", "HUMAN_LOGS", "MAX_DATA", "SSL_KEY", "SSL_CERT", "SSL_DH_PARAM",
        "PORT", "ROUTER_HOSTNAME", "ROUTER_PORT", "ROUTER_SSL_KEY", "ROUTER_SSL_CERT", "HELLO_TIMEOUT",
        "AUTO_PING_INTERVAL", "AUTO_PING_TIMEOUT", "MAX_CONNECTIONS", "CLOSE_HANDSHAKE_TIMEOUT",
        "MSG_LIMIT", "CLIENT_QUEUE_SIZE", "NODE_CONNECT_TIMEOUT", "MEGAPHONE_API_URL",
        "MEGAPHONE_API_TOKEN", "MEGAPHONE_POLL_INTERVAL", "AUTH_KEYS", "CORS", "STS_MAX_AGE",
        "MAX_NOTIFICATION_TTL", "NODE_REQUEST_TIMEOUT", "FCM_CREDENTIALS", "FCM_MIN_TTL",
        "FCM_MAX_TTL", "FCM_MAX_DATA", "FCM_TIMEOUT", "FCM_BASE_URL", "APNS_CHANNELS",
        "APNS_MAX_DATA", "APNS_TIMEOUT", "CLIENT_CERTS",
    ]
    for name in spec_names:
        assert f"| `AUTOPUSH_{name}` |" in reference, name


def test_settings_reference_script_checks_the_readme() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "settings-reference"), "--check", str(ROOT / "README.md")],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
