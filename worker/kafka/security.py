"""Kafka connection security from settings: the one TLS context, SASL credentials and log scrubbing every client uses."""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
from typing import Any

import faust
from aiokafka.conn import create_conn
from aiokafka.errors import (
    AuthenticationFailedError,
    IllegalSaslStateError,
    KafkaConnectionError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from faust.types.auth import CredentialsT

from worker.core.errors import ComplianceError
from worker.settings import REDACTED, Settings, SettingsError

PROBE_TIMEOUT_SECONDS = 10.0


class KafkaSecurityError(ComplianceError):
    """The broker refused our TLS handshake or SASL credentials: a setting is wrong, retrying will not help."""


@functools.lru_cache(maxsize=8)
def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context for SSL and SASL_SSL (None otherwise); bad files raise SettingsError naming the variable.

    The broker's certificate is always verified, against KAFKA_SSL_CA_FILE or the
    system's CAs; KAFKA_SSL_CHECK_HOSTNAME only decides whether its name must match.
    """
    if not settings.uses_tls:
        return None
    ca = settings.kafka_ssl_ca_file
    try:
        # With a CA file only that CA is trusted (a private CA does not widen to every public one), else the system's.
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca) if ca is not None else None)
    except (ssl.SSLError, OSError) as exc:
        raise SettingsError(f"KAFKA_SSL_CA_FILE={str(ca)!r} holds no usable PEM CA certificate ({_reason(exc)})") from None
    context.check_hostname = settings.kafka_ssl_check_hostname
    if settings.kafka_ssl_cert_file is not None and settings.kafka_ssl_key_file is not None:
        _load_client_certificate(context, settings)
    return context


def _load_client_certificate(context: ssl.SSLContext, settings: Settings) -> None:
    cert, key = str(settings.kafka_ssl_cert_file), str(settings.kafka_ssl_key_file)
    asked = False

    def password() -> str:
        # A callback, never None: without one OpenSSL would prompt on the terminal for an encrypted key.
        nonlocal asked
        asked = True
        if settings.kafka_ssl_key_password is None:
            raise SettingsError(
                f"KAFKA_SSL_KEY_FILE={key!r} is encrypted: set KAFKA_SSL_KEY_PASSWORD or KAFKA_SSL_KEY_PASSWORD_FILE"
            )
        return settings.kafka_ssl_key_password.reveal()

    try:
        context.load_cert_chain(cert, key, password=password)
    except (ssl.SSLError, OSError) as exc:
        if asked:
            raise SettingsError(
                f"KAFKA_SSL_KEY_FILE={key!r} cannot be decrypted with the key password given ({_reason(exc)})"
            ) from None
        raise SettingsError(
            f"KAFKA_SSL_CERT_FILE={cert!r} and KAFKA_SSL_KEY_FILE={key!r} are not a PEM certificate and its "
            f"private key ({_reason(exc)})"
        ) from None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return f"{exc.library}: {exc.reason}" if exc.library else exc.reason
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or exc.__class__.__name__  # e.g. ConnectionResetError


def client_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for every aiokafka client (consumer, producer, admin) besides bootstrap_servers.

    The result holds the SASL password in clear: pass it on, never log it.
    """
    options: dict[str, Any] = {"security_protocol": settings.kafka_security_protocol}
    if settings.uses_tls:
        options["ssl_context"] = ssl_context(settings)
    if settings.uses_sasl:
        assert settings.kafka_sasl_password is not None  # Settings.from_env guarantees it
        options.update(
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_plain_username=settings.kafka_sasl_username,
            sasl_plain_password=settings.kafka_sasl_password.reveal(),
        )
    return options


def faust_credentials(settings: Settings) -> CredentialsT | None:
    """The same security as ``client_options``, as Faust's ``broker_credentials`` (it maps them onto aiokafka)."""
    if settings.uses_sasl:
        assert settings.kafka_sasl_password is not None
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=settings.kafka_sasl_password.reveal(),
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=ssl_context(settings),  # None: SASL_PLAINTEXT; a context: SASL_SSL
        )
    context = ssl_context(settings)
    return faust.SSLCredentials(context) if context is not None else None


async def security_problem(settings: Settings, timeout: float = PROBE_TIMEOUT_SECONDS) -> str | None:
    """Why connecting to the bootstrap servers fails for a security reason, or None if it does not (or fails otherwise).

    aiokafka logs the cause of a failed bootstrap and raises a generic
    connection error; one direct connection per server recovers the cause.
    """
    if not (settings.uses_tls or settings.uses_sasl):
        return None  # PLAINTEXT: nothing a handshake could refuse
    options = client_options(settings)
    for server in settings.bootstrap_servers:
        host, _, port = server.rpartition(":")
        try:
            conn = await asyncio.wait_for(
                create_conn(host or server, int(port or 9092), request_timeout_ms=int(timeout * 1000), **options), timeout
            )
        except ssl.SSLCertVerificationError as exc:
            return f"the TLS certificate of {server} is not trusted ({exc.verify_message or _reason(exc)})"
        except (ssl.SSLError, ConnectionResetError) as exc:
            if not settings.uses_tls:
                continue
            return (
                f"the TLS handshake with {server} failed ({_reason(exc)}): does that listener speak "
                f"{settings.kafka_security_protocol}?"
            )
        except (SaslAuthenticationFailed, AuthenticationFailedError) as exc:
            return (
                f"{settings.kafka_sasl_mechanism} authentication as {settings.kafka_sasl_username!r} at {server} failed: "
                f"{_broker_message(exc)} (check KAFKA_SASL_USERNAME and the password)"
            )
        except (UnsupportedSaslMechanismError, IllegalSaslStateError):
            return f"{server} does not accept SASL mechanism {settings.kafka_sasl_mechanism} (KAFKA_SASL_MECHANISM)"
        except KafkaConnectionError:
            # TCP (and TLS) got through, then the broker hung up: it wants something else from us.
            wanted = "" if not settings.uses_tls else (
                "a client certificate (KAFKA_SSL_CERT_FILE) or " if settings.kafka_ssl_cert_file is None
                else "a client certificate from another CA or "
            )
            return f"{server} closed the connection during the handshake: does it want {wanted}another protocol than " \
                f"{settings.kafka_security_protocol}?"
        except Exception:  # noqa: BLE001 - unreachable and the like: not ours to explain
            continue
        conn.close()
    return None


def _broker_message(exc: BaseException) -> str:
    # aiokafka's str() prefixes "[Error 58] SaslAuthenticationFailed: " to what the broker said
    said = exc.args[0] if exc.args and isinstance(exc.args[0], str) else ""
    return said or str(exc) or exc.__class__.__name__


def _scrubbed(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        text = text.replace(secret, REDACTED)
        # bytes reprs, e.g. aiokafka's debug log of a SASL PLAIN request, escape what is not printable ASCII
        escaped = repr(secret.encode())[2:-1]
        if escaped != secret:
            text = text.replace(escaped, REDACTED)
    return text


def scrub_logs(settings: Settings) -> None:
    """Make every log record created from now on carry the configured secrets as a placeholder.

    A record factory, not a handler filter: Faust reconfigures handlers when the
    worker starts, and records from every library (aiokafka's debug output of
    SASL requests included) go through the factory.
    """
    secrets = tuple(sorted(set(settings.secrets()), key=len, reverse=True))
    if not secrets:
        return
    make_record = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken format is logging's to report, unchanged
            return record
        if any(secret in message or repr(secret.encode())[2:-1] in message for secret in secrets):
            record.msg, record.args = _scrubbed(message, secrets), None
        return record

    logging.setLogRecordFactory(factory)
