"""Secure-connection settings: parsing, validation that names the variable (never the secret), redaction, client options."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import logging
import pickle
import ssl
from collections.abc import Iterator
from pathlib import Path

import faust
import pytest
from aiokafka.protocol.admin import SaslAuthenticateRequest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from tests.certs import Issued, issue, make_ca
from worker.kafka import security
from worker.settings import REDACTED, Secret, Settings, SettingsError

PASSWORD = "s3cr3t-Pässword with spaces "  # non-ASCII and a trailing space: both part of the secret
KEY_PASSWORD = "key-pass-7781"
THIS_FILE = __file__  # a file that is always there to read


def sasl_env(**extra: str) -> dict[str, str]:
    return {
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_USERNAME": "worker", "KAFKA_SASL_PASSWORD": PASSWORD, **extra,
    }


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Issued]:
    directory = tmp_path_factory.mktemp("pki")
    ca = make_ca(directory, "unit-ca")
    return {
        "ca": ca,
        "client": issue(ca, directory, "client", key_password=KEY_PASSWORD),
        "plain": issue(ca, directory, "plain-key-client"),
    }


# --- parsing ---------------------------------------------------------------------------------


def test_defaults_are_plaintext_and_nothing_secret() -> None:
    settings = Settings.from_env({})
    assert (settings.kafka_security_protocol, settings.kafka_sasl_mechanism, settings.kafka_ssl_check_hostname) == (
        "PLAINTEXT", "SCRAM-SHA-512", True,
    )
    assert settings.secrets() == []
    assert security.client_options(settings) == {"security_protocol": "PLAINTEXT"}
    assert security.faust_credentials(settings) is None


@pytest.mark.parametrize(
    ("env", "field", "expected"),
    [
        pytest.param({"KAFKA_SECURITY_PROTOCOL": "ssl"}, "kafka_security_protocol", "SSL", id="protocol-case"),
        pytest.param(sasl_env(KAFKA_SASL_MECHANISM="scram-sha-256"), "kafka_sasl_mechanism", "SCRAM-SHA-256", id="mechanism"),
        pytest.param(sasl_env(KAFKA_SASL_MECHANISM="PLAIN"), "kafka_sasl_mechanism", "PLAIN", id="plain"),
        pytest.param({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CHECK_HOSTNAME": "false"}, "kafka_ssl_check_hostname",
                     False, id="hostname-off"),
        pytest.param({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CHECK_HOSTNAME": " Yes "}, "kafka_ssl_check_hostname",
                     True, id="hostname-yes"),
        pytest.param(sasl_env(), "kafka_sasl_password", Secret(PASSWORD), id="password-verbatim"),
        pytest.param(sasl_env(KAFKA_SASL_USERNAME=" svc "), "kafka_sasl_username", "svc", id="username-stripped"),
    ],
)
def test_security_variables_are_read(env: dict[str, str], field: str, expected: object) -> None:
    assert getattr(Settings.from_env(env), field) == expected


def test_password_file_is_read_without_its_trailing_newline(tmp_path: Path) -> None:
    path = tmp_path / "password"
    path.write_text(PASSWORD + "\n", encoding="utf-8")
    settings = Settings.from_env(sasl_env(KAFKA_SASL_PASSWORD="", KAFKA_SASL_PASSWORD_FILE=str(path)))
    assert settings.kafka_sasl_password == Secret(PASSWORD)
    assert settings.kafka_sasl_password_file == path
    assert security.client_options(settings)["sasl_plain_password"] == PASSWORD


def test_key_password_file_is_read(tmp_path: Path, pki: dict[str, Issued]) -> None:
    path = tmp_path / "key-password"
    path.write_text(KEY_PASSWORD + "\r\n")
    settings = Settings.from_env({
        "KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CERT_FILE": str(pki["client"].cert),
        "KAFKA_SSL_KEY_FILE": str(pki["client"].key), "KAFKA_SSL_KEY_PASSWORD_FILE": str(path),
    })
    assert settings.kafka_ssl_key_password == Secret(KEY_PASSWORD)


# --- validation: one line, naming the variable, never the secret ------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        pytest.param({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL='TLS' is not one of PLAINTEXT, SSL, "
                     "SASL_PLAINTEXT, SASL_SSL", id="unknown-protocol"),
        pytest.param(sasl_env(KAFKA_SASL_MECHANISM="GSSAPI"), "KAFKA_SASL_MECHANISM='GSSAPI' is not one of", id="mechanism"),
        pytest.param({"KAFKA_SSL_CHECK_HOSTNAME": "maybe"}, "KAFKA_SSL_CHECK_HOSTNAME='maybe' is not true or false",
                     id="hostname-flag"),
        pytest.param({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_PASSWORD": PASSWORD},
                     "KAFKA_SASL_USERNAME must be set with KAFKA_SECURITY_PROTOCOL=SASL_SSL", id="sasl-no-username"),
        pytest.param({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_USERNAME": "worker"},
                     "KAFKA_SASL_PASSWORD or KAFKA_SASL_PASSWORD_FILE must be set with "
                     "KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT", id="sasl-no-password"),
        pytest.param({"KAFKA_SASL_USERNAME": "worker", "KAFKA_SASL_PASSWORD": PASSWORD},
                     "KAFKA_SASL_USERNAME is set but KAFKA_SECURITY_PROTOCOL=PLAINTEXT does not use it "
                     "(use SASL_PLAINTEXT or SASL_SSL)", id="sasl-settings-with-plaintext"),
        pytest.param({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SASL_PASSWORD": PASSWORD},
                     "KAFKA_SASL_PASSWORD is set but KAFKA_SECURITY_PROTOCOL=SSL does not use it", id="password-with-ssl"),
        pytest.param({"KAFKA_SSL_CHECK_HOSTNAME": "false", "KAFKA_SSL_CA_FILE": THIS_FILE},
                     "KAFKA_SSL_CA_FILE is set but KAFKA_SECURITY_PROTOCOL=PLAINTEXT does not use it (use SSL or SASL_SSL)",
                     id="tls-file-with-plaintext"),
        pytest.param({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CA_FILE": "/nonexistent/ca.pem"},
                     "KAFKA_SSL_CA_FILE='/nonexistent/ca.pem' cannot be read (No such file or directory)", id="ca-missing"),
        pytest.param({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CERT_FILE": THIS_FILE},
                     "KAFKA_SSL_CERT_FILE is set without KAFKA_SSL_KEY_FILE: a client certificate needs both",
                     id="cert-without-key"),
        pytest.param({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_KEY_FILE": THIS_FILE},
                     "KAFKA_SSL_KEY_FILE is set without KAFKA_SSL_CERT_FILE", id="key-without-cert"),
        pytest.param({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_KEY_PASSWORD": KEY_PASSWORD},
                     "KAFKA_SSL_KEY_PASSWORD is set without KAFKA_SSL_KEY_FILE", id="key-password-without-key"),
        pytest.param(sasl_env(KAFKA_SASL_PASSWORD_FILE=THIS_FILE),
                     "KAFKA_SASL_PASSWORD and KAFKA_SASL_PASSWORD_FILE are both set; set only one", id="both-passwords"),
        pytest.param(sasl_env(KAFKA_SASL_PASSWORD="", KAFKA_SASL_PASSWORD_FILE="/nonexistent/pw"),
                     "KAFKA_SASL_PASSWORD_FILE='/nonexistent/pw' cannot be read (No such file or directory)",
                     id="password-file-missing"),
        pytest.param(sasl_env(KAFKA_SASL_PASSWORD="", KAFKA_SASL_PASSWORD_FILE="/"),
                     "KAFKA_SASL_PASSWORD_FILE='/' cannot be read (Is a directory)", id="password-file-directory"),
    ],
)
def test_invalid_combinations_raise_one_line_naming_the_variable(env: dict[str, str], expected: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    message = caught.value.message
    assert message.startswith(expected), message
    assert "\n" not in message
    assert PASSWORD not in message and KEY_PASSWORD not in message


def test_an_empty_password_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_text("\n")
    with pytest.raises(SettingsError, match=r"^KAFKA_SASL_PASSWORD_FILE='.*empty' is empty$"):
        Settings.from_env(sasl_env(KAFKA_SASL_PASSWORD="", KAFKA_SASL_PASSWORD_FILE=str(path)))


def test_an_unreadable_password_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "password"
    path.write_bytes(b"\xff\xfe not UTF-8")
    with pytest.raises(SettingsError, match=r"^KAFKA_SASL_PASSWORD_FILE='.*password' cannot be read \(UnicodeDecodeError\)$"):
        Settings.from_env(sasl_env(KAFKA_SASL_PASSWORD="", KAFKA_SASL_PASSWORD_FILE=str(path)))


# --- redaction --------------------------------------------------------------------------------


def test_secrets_never_show_in_repr_str_format_describe_or_copies(pki: dict[str, Issued]) -> None:
    settings = Settings.from_env(sasl_env(
        KAFKA_SSL_CERT_FILE=str(pki["client"].cert), KAFKA_SSL_KEY_FILE=str(pki["client"].key),
        KAFKA_SSL_KEY_PASSWORD=KEY_PASSWORD,
    ))
    described = settings.describe()
    assert described["kafka_sasl_password"] == described["kafka_ssl_key_password"] == REDACTED
    assert described["kafka_sasl_username"] == "worker"
    assert described["kafka_ssl_key_file"] == str(pki["client"].key)
    shown = [
        repr(settings), str(settings), f"{settings}", f"{settings.kafka_sasl_password}", str(described),
        repr(dataclasses.asdict(settings)), repr(copy.deepcopy(settings)), repr(security.faust_credentials(settings)),
    ]
    for text in shown:
        assert PASSWORD not in text and KEY_PASSWORD not in text, text
    assert settings.secrets() == [KEY_PASSWORD, PASSWORD]
    assert pickle.loads(pickle.dumps(settings)) == settings  # still a value: equal, hashable
    assert hash(settings) == hash(Settings.from_env(sasl_env(
        KAFKA_SSL_CERT_FILE=str(pki["client"].cert), KAFKA_SSL_KEY_FILE=str(pki["client"].key),
        KAFKA_SSL_KEY_PASSWORD=KEY_PASSWORD,
    )))
    assert Secret("a") != Secret("b") and Secret("a") != "a"


@pytest.fixture
def restore_record_factory() -> Iterator[None]:
    factory = logging.getLogRecordFactory()
    yield
    logging.setLogRecordFactory(factory)


@pytest.mark.usefixtures("restore_record_factory")
def test_scrub_logs_replaces_secrets_in_every_record(caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings.from_env(sasl_env(KAFKA_SASL_MECHANISM="PLAIN"))
    security.scrub_logs(settings)
    log = logging.getLogger("aiokafka.conn")
    with caplog.at_level(logging.DEBUG):
        # What aiokafka's connection logs at debug level for each request, a SASL PLAIN one included:
        request = SaslAuthenticateRequest(b"\0worker\0" + PASSWORD.encode()).prepare({36: (0, 2)})
        log.debug("Request to %s:%d %d: %s", "127.0.0.1", 9093, 3, request)
        log.info("as text %s and %r", PASSWORD, {"pw": PASSWORD})
        log.info("nothing secret here %d", 7)
    messages = [record.getMessage() for record in caplog.records]
    assert all(PASSWORD not in m and repr(PASSWORD.encode())[2:-1] not in m for m in messages), messages
    assert messages[0] == "Request to 127.0.0.1:9093 3: SaslAuthenticateRequest_v1(sasl_auth_bytes=b'\\x00worker\\x00<redacted>')"
    assert messages[1] == "as text <redacted> and {'pw': '<redacted>'}"
    assert messages[2] == "nothing secret here 7"


@pytest.mark.usefixtures("restore_record_factory")
def test_scrub_logs_does_nothing_without_secrets() -> None:
    factory = logging.getLogRecordFactory()
    security.scrub_logs(Settings.from_env({}))
    assert logging.getLogRecordFactory() is factory


# --- client options and Faust credentials -----------------------------------------------------


def test_sasl_ssl_options_for_aiokafka_and_faust_agree(pki: dict[str, Issued]) -> None:
    settings = Settings.from_env(sasl_env(KAFKA_SSL_CA_FILE=str(pki["ca"].cert)))
    options = security.client_options(settings)
    context = options.pop("ssl_context")
    assert options == {
        "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "worker",
        "sasl_plain_password": PASSWORD,
    }
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    credentials = security.faust_credentials(settings)
    assert isinstance(credentials, faust.SASLCredentials)
    # What Faust's aiokafka driver hands its consumer, producer and admin calls:
    assert credentials_to_aiokafka_auth(credentials) == {**options, "ssl_context": context}


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "PLAIN"])
def test_sasl_plaintext_has_no_tls(mechanism: str) -> None:
    settings = Settings.from_env(sasl_env(KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT", KAFKA_SASL_MECHANISM=mechanism))
    options = security.client_options(settings)
    assert "ssl_context" not in options and options["sasl_mechanism"] == mechanism
    assert credentials_to_aiokafka_auth(security.faust_credentials(settings)) == {**options, "ssl_context": None}


def test_ssl_with_a_client_certificate_and_encrypted_key(pki: dict[str, Issued]) -> None:
    settings = Settings.from_env({
        "KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CA_FILE": str(pki["ca"].cert),
        "KAFKA_SSL_CERT_FILE": str(pki["client"].cert), "KAFKA_SSL_KEY_FILE": str(pki["client"].key),
        "KAFKA_SSL_KEY_PASSWORD": KEY_PASSWORD, "KAFKA_SSL_CHECK_HOSTNAME": "false",
    })
    options = security.client_options(settings)
    assert set(options) == {"security_protocol", "ssl_context"} and options["security_protocol"] == "SSL"
    context = options["ssl_context"]
    assert context.verify_mode == ssl.CERT_REQUIRED and not context.check_hostname  # the chain is still verified
    assert [ca["subject"] for ca in context.get_ca_certs()] == [((("commonName", "unit-ca"),),)]  # only the given CA
    credentials = security.faust_credentials(settings)
    assert isinstance(credentials, faust.SSLCredentials) and credentials.context is context
    assert credentials_to_aiokafka_auth(credentials) == options


def test_without_a_ca_file_the_system_cas_are_trusted() -> None:
    context = security.ssl_context(Settings.from_env({"KAFKA_SECURITY_PROTOCOL": "SSL"}))
    assert context is not None and context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_a_file_that_is_no_ca_certificate_is_a_settings_error(tmp_path: Path) -> None:
    junk = tmp_path / "ca.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(SettingsError, match=r"^KAFKA_SSL_CA_FILE='.*ca.pem' holds no usable PEM CA certificate \(.+\)$"):
        security.client_options(Settings.from_env({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CA_FILE": str(junk)}))


@pytest.mark.parametrize(
    ("password", "expected"),
    [
        pytest.param(None, r"^KAFKA_SSL_KEY_FILE='.*client.key' is encrypted: set KAFKA_SSL_KEY_PASSWORD or "
                     r"KAFKA_SSL_KEY_PASSWORD_FILE$", id="no-password"),
        pytest.param("wrong-key-pass", r"^KAFKA_SSL_KEY_FILE='.*client.key' cannot be decrypted with the key password "
                     r"given \(.+\)$", id="wrong-password"),
    ],
)
def test_an_encrypted_key_needs_its_password(pki: dict[str, Issued], password: str | None, expected: str) -> None:
    env = {
        "KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CERT_FILE": str(pki["client"].cert),
        "KAFKA_SSL_KEY_FILE": str(pki["client"].key),
    }
    if password is not None:
        env["KAFKA_SSL_KEY_PASSWORD"] = password
    with pytest.raises(SettingsError, match=expected) as caught:
        security.client_options(Settings.from_env(env))  # never a prompt on the terminal
    assert "wrong-key-pass" not in caught.value.message and KEY_PASSWORD not in caught.value.message


def test_a_key_that_does_not_match_the_certificate_is_a_settings_error(pki: dict[str, Issued]) -> None:
    env = {
        "KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CERT_FILE": str(pki["client"].cert),
        "KAFKA_SSL_KEY_FILE": str(pki["plain"].key),
    }
    with pytest.raises(SettingsError, match=r"^KAFKA_SSL_CERT_FILE=.* and KAFKA_SSL_KEY_FILE=.* are not a PEM certificate "
                       r"and its private key \(.+\)$"):
        security.client_options(Settings.from_env(env))


def test_plaintext_has_no_security_problem_to_explain() -> None:
    # Nothing listens on port 1; PLAINTEXT returns before connecting anywhere.
    settings = Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    assert asyncio.run(security.security_problem(settings)) is None
