"""Settings parsing (docs/operations.md#settings): names, defaults, spellings and one-line errors.

Also the start-up refusals: unknown ``AUTOPUSH_*`` names, missing crypto
keys outside an explicit development environment, short auth keys, and a
public TLS key without its certificate (or the other way round).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.fernet import Fernet

from autopush_flask.cli import generate_keys
from autopush_flask.config import (
    CONNECTION,
    ENDPOINT,
    SETTING_FIELDS,
    Settings,
    SettingsError,
    base_url,
    load_settings,
    settings_reference,
    variable_name,
)
from tests.support.tls import make_tls_files

ROOT = Path(__file__).resolve().parents[2]
KEY1, KEY2 = Fernet.generate_key().decode(), Fernet.generate_key().decode()


def load(node_type: str, variables: dict[str, str]) -> Settings:
    """``load_settings`` for a node configured with a crypto key, as nodes must be."""
    return load_settings(node_type, {"AUTOPUSH_CRYPTO_KEYS": KEY1, **variables})


def refusal(node_type: str, variables: dict[str, str]) -> str:
    with pytest.raises(SettingsError) as raised:
        load_settings(node_type, variables)
    text = str(raised.value)
    assert "\n" not in text
    return text


def test_defaults_of_a_connection_node() -> None:
    settings = load(CONNECTION, {"AUTOPUSH_HOSTNAME": "node1"})
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
    settings = load(ENDPOINT, {"AUTOPUSH_HOSTNAME": "e"})
    assert (settings.port, settings.statsd_prefix) == (8082, "autoendpoint")
    assert settings.max_data == 5630
    assert settings.max_notification_ttl == 2_592_000
    assert settings.sts_max_age == 31_536_000
    assert settings.cors is True
    assert settings.node_connect_timeout == 1.0 and settings.node_request_timeout == 3.0
    assert (settings.fcm_min_ttl, settings.fcm_max_ttl) == (60, 2_419_200)
    assert settings.fcm_base_url == "https://fcm.googleapis.com"
    assert settings.apns_timeout == 20
    assert settings.router_table == "router" and settings.message_table == "message"


# ---- crypto keys: required, except in an explicitly named development setup


@pytest.mark.parametrize("node_type", [CONNECTION, ENDPOINT])
@pytest.mark.parametrize("variables", [{}, {"AUTOPUSH_ENV": "production"}, {"AUTOPUSH_CRYPTO_KEYS": ""}])
def test_missing_crypto_key_is_refused(node_type: str, variables: dict) -> None:
    text = refusal(node_type, variables)
    assert text.startswith("missing setting AUTOPUSH_CRYPTO_KEYS: ")
    assert "flask generate-keys" in text and "scripts/autokey" in text
    assert "AUTOPUSH_ENV=development" in text


def test_explicit_development_gets_a_generated_key_and_flag() -> None:
    settings = load_settings(ENDPOINT, {"AUTOPUSH_ENV": "development"})
    assert settings.crypto_keys_generated is True
    Fernet(settings.crypto_keys[0].encode())


def test_development_named_in_the_ini_file_counts(tmp_path: Path) -> None:
    ini = tmp_path / "autopush.ini"
    ini.write_text("[autopush]\nenv = development\n")
    assert load_settings(CONNECTION, {"AUTOPUSH_CONFIG_FILE": str(ini)}).crypto_keys_generated is True


def test_the_default_env_does_not_count_as_development() -> None:
    """``AUTOPUSH_ENV`` defaults to development; only an explicit value allows a missing key."""
    assert load(ENDPOINT, {}).env == "development"
    assert refusal(ENDPOINT, {}).startswith("missing setting AUTOPUSH_CRYPTO_KEYS")


def test_operations_commands_may_go_without_crypto_keys() -> None:
    settings = load_settings(ENDPOINT, {}, require_crypto_keys=False)
    assert settings.crypto_keys_generated is True


def test_a_bad_crypto_key_names_the_variable_and_the_command() -> None:
    text = refusal(ENDPOINT, {"AUTOPUSH_CRYPTO_KEYS": "short"})
    assert text == (
        "invalid setting AUTOPUSH_CRYPTO_KEYS: Each key must be a 44-character URL-safe base64 "
        "Fernet key (32 bytes); generate one with `flask generate-keys` (or scripts/autokey)."
    )


# ---- auth keys: HMAC-SHA256 keys of at least 32 bytes


def test_short_auth_key_is_refused() -> None:
    text = refusal(ENDPOINT, {"AUTOPUSH_CRYPTO_KEYS": KEY1, "AUTOPUSH_AUTH_KEYS": f"{KEY1},{'k' * 31}"})
    assert text.startswith("invalid setting AUTOPUSH_AUTH_KEYS: Each key must be at least 32 bytes")
    assert "flask generate-keys" in text


def test_auth_key_of_32_bytes_is_accepted() -> None:
    assert load(ENDPOINT, {"AUTOPUSH_AUTH_KEYS": "k" * 32}).auth_keys == ("k" * 32,)


def test_generated_keys_pass_validation() -> None:
    """What ``flask generate-keys`` prints starts a node as it is."""
    output = CliRunner().invoke(generate_keys).output
    variables = dict(line.split("=", 1) for line in output.splitlines())
    assert set(variables) == {"AUTOPUSH_CRYPTO_KEYS", "AUTOPUSH_AUTH_KEYS"}
    settings = load_settings(ENDPOINT, variables)
    assert len(settings.auth_keys[0].encode()) >= 32
    assert settings.crypto_keys_generated is False


@pytest.mark.parametrize(
    "spelling",
    [f"{KEY1},{KEY2}", f"[{KEY1},{KEY2}]", f'"{KEY1}","{KEY2}"', f' [ "{KEY1}" , "{KEY2}" ] ',
     f"['{KEY1}', '{KEY2}']"],
)
def test_lists_in_every_spelling(spelling: str) -> None:
    settings = load(ENDPOINT, {"AUTOPUSH_CRYPTO_KEYS": spelling, "AUTOPUSH_AUTH_KEYS": spelling})
    assert settings.crypto_keys == (KEY1, KEY2)
    assert settings.auth_keys == (KEY1, KEY2)
    assert settings.crypto_keys_generated is False


@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", True), ("1", True), ("yes", True), ("YES", True), (" True ", True),
     ("false", False), ("0", False), ("no", False), ("No", False)],
)
def test_boolean_spellings(text: str, expected: bool) -> None:
    assert load(ENDPOINT, {"AUTOPUSH_CORS": text}).cors is expected


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"AUTOPUSH_MAX_DATA": "lots"}, "invalid setting AUTOPUSH_MAX_DATA: Not a valid integer."),
        ({"AUTOPUSH_MAX_DATA": "1.5"}, "invalid setting AUTOPUSH_MAX_DATA: Not a valid integer."),
        ({"AUTOPUSH_CORS": "maybe"}, "invalid setting AUTOPUSH_CORS: Not a valid boolean."),
        ({"AUTOPUSH_PORT": "70000"}, "invalid setting AUTOPUSH_PORT: Must be greater than or equal to 1"),
        ({"AUTOPUSH_CRYPTO_KEYS": "short"}, "invalid setting AUTOPUSH_CRYPTO_KEYS: Each key must be"),
        ({"AUTOPUSH_AUTH_KEYS": "short"}, "invalid setting AUTOPUSH_AUTH_KEYS: Each key must be"),
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
    assert refusal(ENDPOINT, {"AUTOPUSH_CRYPTO_KEYS": KEY1, **variables}).startswith(message)


# ---- unknown names stop start-up


@pytest.mark.parametrize("node_type", [CONNECTION, ENDPOINT])
def test_a_typo_is_refused_with_the_closest_setting(node_type: str) -> None:
    text = refusal(node_type, {"AUTOPUSH_CRYPTO_KEY": KEY1})
    assert text == "unknown setting AUTOPUSH_CRYPTO_KEY (did you mean AUTOPUSH_CRYPTO_KEYS?)"


def test_an_unknown_variable_far_from_any_setting_is_named_alone() -> None:
    text = refusal(ENDPOINT, {"AUTOPUSH_CRYPTO_KEYS": KEY1, "AUTOPUSH_NO_SUCH_THING": "x"})
    assert text == "unknown setting AUTOPUSH_NO_SUCH_THING"


def test_every_unknown_variable_is_named() -> None:
    text = refusal(ENDPOINT, {"AUTOPUSH_MAX_DATUM": "1", "AUTOPUSH_CORZ": "no", "AUTOPUSH_CRYPTO_KEYS": KEY1})
    assert text == (
        "unknown setting AUTOPUSH_CORZ (did you mean AUTOPUSH_CORS?); "
        "unknown setting AUTOPUSH_MAX_DATUM (did you mean AUTOPUSH_MAX_DATA?)"
    )


def test_other_variables_and_internal_autopush_names_are_allowed(tmp_path: Path) -> None:
    ini = tmp_path / "autopush.ini"
    ini.write_text("[autopush]\n")
    variables = {"HOME": "/", "autopush_lowercase": "x", "FUZZ_SCALE": "full",
                 "AUTOPUSH_CONFIG_FILE": str(ini), "AUTOPUSH_WORKER_SLOT": "1"}
    assert load(CONNECTION, variables).port == 8080


@pytest.mark.parametrize("spec", SETTING_FIELDS, ids=lambda spec: spec.name)
def test_every_declared_setting_is_known(spec) -> None:
    """The check reads the declared settings, so settings added later are never "unknown"."""
    try:
        load(ENDPOINT, {variable_name(spec.name): ""})
    except SettingsError as error:
        assert "unknown setting" not in str(error)


def test_an_unknown_ini_key_is_refused_with_its_file(tmp_path: Path) -> None:
    ini = tmp_path / "autopush.ini"
    ini.write_text("[autopush]\nmax_data = 2048\ncrypto_key = x\n")
    text = refusal(ENDPOINT, {"AUTOPUSH_CONFIG_FILE": str(ini)})
    assert text == f"unknown setting crypto_key in [autopush] of {ini} (did you mean AUTOPUSH_CRYPTO_KEYS?)"


def test_the_ini_file_cannot_name_internal_variables(tmp_path: Path) -> None:
    ini = tmp_path / "autopush.ini"
    ini.write_text("[autopush]\nworker_slot = 3\n")
    assert refusal(ENDPOINT, {"AUTOPUSH_CONFIG_FILE": str(ini), "AUTOPUSH_CRYPTO_KEYS": KEY1}).startswith(
        f"unknown setting worker_slot in [autopush] of {ini}"
    )


def test_client_certs_setting_is_gone() -> None:
    """It was parsed but enforced nothing (any sender could push): now a refused name."""
    text = refusal(ENDPOINT, {"AUTOPUSH_CRYPTO_KEYS": KEY1, "AUTOPUSH_CLIENT_CERTS": "{}"})
    assert text.startswith("unknown setting AUTOPUSH_CLIENT_CERTS")
    assert "AUTOPUSH_CLIENT_CERTS" not in settings_reference()


# ---- TLS of the public listener


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory):
    return make_tls_files(tmp_path_factory.mktemp("tls"))


def test_tls_key_and_certificate_load(tls) -> None:
    settings = load(ENDPOINT, {"AUTOPUSH_SSL_KEY": str(tls.key), "AUTOPUSH_SSL_CERT": str(tls.cert),
                               "AUTOPUSH_SSL_DH_PARAM": str(tls.dh_param)})
    assert (settings.ssl_key, settings.ssl_cert) == (str(tls.key), str(tls.cert))


@pytest.mark.parametrize(("given", "missing"), [("AUTOPUSH_SSL_KEY", "AUTOPUSH_SSL_CERT"),
                                                 ("AUTOPUSH_SSL_CERT", "AUTOPUSH_SSL_KEY")])
def test_tls_key_or_certificate_alone_is_refused(tls, given: str, missing: str) -> None:
    path = str(tls.key if given == "AUTOPUSH_SSL_KEY" else tls.cert)
    text = refusal(CONNECTION, {"AUTOPUSH_CRYPTO_KEYS": KEY1, given: path})
    assert text == f"invalid setting {missing}: required when {given} is set"


@pytest.mark.parametrize("variable", ["AUTOPUSH_SSL_KEY", "AUTOPUSH_SSL_CERT", "AUTOPUSH_SSL_DH_PARAM"])
def test_unreadable_tls_file_is_refused(tls, tmp_path: Path, variable: str) -> None:
    missing = tmp_path / "missing.pem"
    variables = {"AUTOPUSH_CRYPTO_KEYS": KEY1, "AUTOPUSH_SSL_KEY": str(tls.key),
                 "AUTOPUSH_SSL_CERT": str(tls.cert), variable: str(missing)}
    text = refusal(ENDPOINT, variables)
    assert text == f"invalid setting {variable}: cannot read {missing} (No such file or directory)"


def test_certificate_and_key_that_do_not_match_are_refused(tls, tmp_path: Path) -> None:
    other = make_tls_files(tmp_path / "other")
    text = refusal(ENDPOINT, {"AUTOPUSH_CRYPTO_KEYS": KEY1, "AUTOPUSH_SSL_KEY": str(other.key),
                              "AUTOPUSH_SSL_CERT": str(tls.cert)})
    assert text.startswith("invalid setting AUTOPUSH_SSL_CERT/AUTOPUSH_SSL_KEY: not a PEM certificate")


def test_bad_or_orphan_dh_parameters_are_refused(tls) -> None:
    bad = refusal(ENDPOINT, {"AUTOPUSH_CRYPTO_KEYS": KEY1, "AUTOPUSH_SSL_KEY": str(tls.key),
                             "AUTOPUSH_SSL_CERT": str(tls.cert), "AUTOPUSH_SSL_DH_PARAM": str(tls.cert)})
    assert bad.startswith("invalid setting AUTOPUSH_SSL_DH_PARAM: not PEM DH parameters")
    orphan = refusal(ENDPOINT, {"AUTOPUSH_CRYPTO_KEYS": KEY1, "AUTOPUSH_SSL_DH_PARAM": str(tls.dh_param)})
    assert orphan == "invalid setting AUTOPUSH_SSL_DH_PARAM: needs AUTOPUSH_SSL_KEY and AUTOPUSH_SSL_CERT"


def test_endpoint_url_derivation_and_override() -> None:
    settings = load(
        ENDPOINT,
        {"AUTOPUSH_ENDPOINT_SCHEME": "https", "AUTOPUSH_ENDPOINT_HOSTNAME": "push.example.com",
         "AUTOPUSH_ENDPOINT_PORT": "443"},
    )
    assert settings.endpoint_url == "https://push.example.com"
    override = load(ENDPOINT, {"AUTOPUSH_ENDPOINT_URL": "https://updates.example.com/"})
    assert override.endpoint_url == "https://updates.example.com"


def test_base_url_omits_default_ports() -> None:
    assert base_url("http", "h", 80) == "http://h"
    assert base_url("https", "h", 443) == "https://h"
    assert base_url("http", "h", 443) == "http://h:443"


def test_router_tls_makes_node_id_https() -> None:
    settings = load(
        CONNECTION,
        {"AUTOPUSH_ROUTER_HOSTNAME": "r", "AUTOPUSH_ROUTER_SSL_KEY": "/k.pem", "AUTOPUSH_ROUTER_SSL_CERT": "/c.pem"},
    )
    assert settings.node_id(8081) == "https://r:8081"


@pytest.mark.parametrize("only", ["AUTOPUSH_ROUTER_SSL_KEY", "AUTOPUSH_ROUTER_SSL_CERT"])
def test_router_tls_needs_both_key_and_certificate(only: str) -> None:
    with pytest.raises(SettingsError, match="AUTOPUSH_ROUTER_SSL_KEY/AUTOPUSH_ROUTER_SSL_CERT"):
        load(CONNECTION, {only: "/x.pem"})


def test_resolve_hostname_uses_an_ipv4_address() -> None:
    settings = load(
        CONNECTION, {"AUTOPUSH_HOSTNAME": "localhost", "AUTOPUSH_RESOLVE_HOSTNAME": "yes"}
    )
    assert settings.hostname == "127.0.0.1"
    assert settings.router_hostname == "127.0.0.1"


def test_empty_statsd_host_disables_metrics() -> None:
    assert load(ENDPOINT, {"AUTOPUSH_STATSD_HOST": ""}).statsd_host is None


def test_ini_file_is_read_and_environment_wins(tmp_path: Path) -> None:
    ini = tmp_path / "autopush.ini"
    ini.write_text("[autopush]\nmax_data = 2048\nAUTOPUSH_ENV = staging\nmsg_limit = 10\n")
    settings = load(
        CONNECTION, {"AUTOPUSH_CONFIG_FILE": str(ini), "AUTOPUSH_MSG_LIMIT": "20"}
    )
    assert (settings.max_data, settings.env, settings.msg_limit) == (2048, "staging", 20)


def test_unreadable_ini_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="AUTOPUSH_CONFIG_FILE"):
        load(ENDPOINT, {"AUTOPUSH_CONFIG_FILE": str(tmp_path / "missing.ini")})


def test_settings_are_frozen() -> None:
    settings = load(ENDPOINT, {})
    with pytest.raises(AttributeError):
        settings.port = 1  # type: ignore[misc]


def test_readme_settings_reference_is_current() -> None:
    """The settings table of docs/operations.md is generated from the schema (`make docs`);
    the README points at it rather than holding a copy."""
    operations = (ROOT / "docs" / "operations.md").read_text()
    assert settings_reference() in operations
    assert "<!-- settings-reference: docs/operations.md -->" in (ROOT / "README.md").read_text()


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
        "APNS_MAX_DATA", "APNS_TIMEOUT",
    ]
    for name in spec_names:
        assert f"| `AUTOPUSH_{name}` |" in reference, name


def test_settings_reference_script_checks_the_readme() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "settings-reference"), "--check", str(ROOT / "README.md")],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
