"""All settings in one frozen object, built from an injectable environment mapping."""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from worker.core.errors import ComplianceError

T = TypeVar("T")

TOPIC_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,249}")
GUARANTEES = ("at_least_once", "exactly_once")
ISOLATION_LEVELS = ("read_committed", "read_uncommitted")
COMPRESSION_TYPES = ("none", "gzip", "snappy", "lz4", "zstd")
LOG_FORMATS = ("auto", "json", "text")
STATE_STORES = ("rocksdb", "memory")
KEY_MISMATCH_CHOICES = ("dead_letter", "repartition")
LOG_LEVELS = ("debug", "info", "warning", "error")
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")
REDACTED = "<redacted>"


class Secret:
    """A credential: compared and hashed by value, never shown (repr, str and format print a placeholder)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The value itself, for the one place that hands it to a Kafka client."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret({REDACTED!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((Secret, self._value))


class SettingsError(ComplianceError):
    """A setting with a value the worker cannot run with."""


def _text(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value.strip()


def _topic(value: str) -> str:
    if TOPIC_NAME_RE.fullmatch(value) is None or value in (".", ".."):
        raise ValueError("is not a valid Kafka topic name (letters, digits, . _ -; at most 249)")
    return value


def _port(value: str) -> int:
    port = int(value)
    if not 0 <= port <= 65535:
        raise ValueError("is not a TCP port (0-65535; 0 picks a free one)")
    return port


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError("must be a positive whole number")
    return number


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        normalized = value.strip().lower()
        if normalized not in choices:
            raise ValueError(f"is not one of {', '.join(choices)}")
        return normalized

    return parse


def _upper_choice(*choices: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        normalized = value.strip().upper()
        if normalized not in choices:
            raise ValueError(f"is not one of {', '.join(choices)}")
        return normalized

    return parse


def _flag(value: str) -> bool:
    normalized = value.strip().lower()
    if normalized in ("1", "true", "yes", "on"):
        return True
    if normalized in ("0", "false", "no", "off"):
        return False
    raise ValueError("is not true or false")


def _header_names(value: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(name.strip() for name in value.split(",") if name.strip()))
    for name in names:
        if not name.isprintable() or " " in name:
            raise ValueError(f"header name {name!r} has spaces or control characters")
    return names


def _non_negative(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError("must be 0 or a positive whole number")
    return number


def _directory(value: str) -> Path:
    if not value.strip():
        raise ValueError("must not be empty")
    return Path(value.strip())


def _optional_path(value: str) -> Path | None:
    return Path(value) if value.strip() else None


def _optional_text(value: str) -> str | None:
    return value.strip() or None


def _readable_file(value: str) -> Path | None:
    """A path that can be opened now, so a typo stops the worker before it connects, naming the variable."""
    if not value.strip():
        return None
    path = Path(value)
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ValueError(f"cannot be read ({exc.strerror or exc.__class__.__name__})") from None
    return path


def _optional_secret(value: str) -> Secret | None:
    # Taken as given (no strip): spaces may be part of a password.
    return Secret(value) if value else None


# Variables whose value must never appear in an error message or a log.
_SECRET_VARIABLES = frozenset({"KAFKA_SSL_KEY_PASSWORD", "KAFKA_SASL_PASSWORD"})


# env var, field name, parser, default (as the string a user would write)
_SPEC: tuple[tuple[str, str, Callable[[str], Any], str], ...] = (
    ("KAFKA_BOOTSTRAP_SERVERS", "kafka_bootstrap_servers", _text, "localhost:9092"),
    ("KAFKA_SECURITY_PROTOCOL", "kafka_security_protocol", _upper_choice(*SECURITY_PROTOCOLS), "PLAINTEXT"),
    ("KAFKA_SSL_CA_FILE", "kafka_ssl_ca_file", _readable_file, ""),
    ("KAFKA_SSL_CERT_FILE", "kafka_ssl_cert_file", _readable_file, ""),
    ("KAFKA_SSL_KEY_FILE", "kafka_ssl_key_file", _readable_file, ""),
    ("KAFKA_SSL_KEY_PASSWORD", "kafka_ssl_key_password", _optional_secret, ""),
    ("KAFKA_SSL_KEY_PASSWORD_FILE", "kafka_ssl_key_password_file", _readable_file, ""),
    ("KAFKA_SSL_CHECK_HOSTNAME", "kafka_ssl_check_hostname", _flag, "true"),
    ("KAFKA_SASL_MECHANISM", "kafka_sasl_mechanism", _upper_choice(*SASL_MECHANISMS), "SCRAM-SHA-512"),
    ("KAFKA_SASL_USERNAME", "kafka_sasl_username", _optional_text, ""),
    ("KAFKA_SASL_PASSWORD", "kafka_sasl_password", _optional_secret, ""),
    ("KAFKA_SASL_PASSWORD_FILE", "kafka_sasl_password_file", _readable_file, ""),
    ("INPUT_TOPIC", "input_topic", _topic, "catalog.product-upserts"),
    ("DECISIONS_TOPIC", "decisions_topic", _topic, "compliance.decisions"),
    ("DEAD_LETTER_TOPIC", "dead_letter_topic", _topic, "compliance.dead-letter"),
    ("POLICY_FILE", "policy_file", _optional_path, ""),
    ("POLICY_TOPIC", "policy_topic", _topic, "compliance.policies"),
    ("OVERRIDES_TOPIC", "overrides_topic", _topic, "compliance.overrides"),
    ("PROCESSING_GUARANTEE", "processing_guarantee", _choice(*GUARANTEES), "at_least_once"),
    ("KAFKA_ISOLATION_LEVEL", "kafka_isolation_level", _choice(*ISOLATION_LEVELS), "read_committed"),
    ("KAFKA_COMPRESSION_TYPE", "kafka_compression_type", _choice(*COMPRESSION_TYPES), "zstd"),
    ("FORWARD_HEADERS", "forward_headers", _header_names, ""),
    ("KEY_MISMATCH", "key_mismatch", _choice(*KEY_MISMATCH_CHOICES), "dead_letter"),
    ("WORKER_WEB_PORT", "worker_web_port", _port, "6066"),
    ("WORKER_WEB_HOST", "worker_web_host", _text, "0.0.0.0"),
    ("WORKER_WEB_ADVERTISED_HOST", "worker_web_advertised_host", _optional_text, ""),
    ("APP_ID", "app_id", _topic, "compliance-worker"),
    ("STATE_STORE", "state_store", _choice(*STATE_STORES), "rocksdb"),
    ("STATE_DIR", "state_dir", _directory, "/var/lib/compliance-worker"),
    ("STATE_CACHE_MB", "state_cache_mb", _positive, "64"),
    ("TABLE_STANDBY_REPLICAS", "table_standby_replicas", _non_negative, "1"),
    ("TOPIC_PARTITIONS", "topic_partitions", _positive, "4"),
    ("TOPIC_REPLICATION_FACTOR", "topic_replication_factor", _positive, "1"),
    ("LOG_LEVEL", "log_level", _choice(*LOG_LEVELS), "info"),
    ("LOG_FORMAT", "log_format", _choice(*LOG_FORMATS), "auto"),
)


@dataclass(frozen=True)
class Settings:
    """The worker's configuration; see the settings table in the README."""

    kafka_bootstrap_servers: str
    kafka_security_protocol: str
    kafka_ssl_ca_file: Path | None
    kafka_ssl_cert_file: Path | None
    kafka_ssl_key_file: Path | None
    kafka_ssl_key_password: Secret | None  # from the variable, or read from its _FILE
    kafka_ssl_key_password_file: Path | None
    kafka_ssl_check_hostname: bool
    kafka_sasl_mechanism: str
    kafka_sasl_username: str | None
    kafka_sasl_password: Secret | None  # from the variable, or read from its _FILE
    kafka_sasl_password_file: Path | None
    input_topic: str
    decisions_topic: str
    dead_letter_topic: str
    policy_file: Path | None
    policy_topic: str
    overrides_topic: str
    processing_guarantee: str
    kafka_isolation_level: str
    kafka_compression_type: str
    forward_headers: tuple[str, ...]  # besides traceparent and tracestate, which are always copied
    key_mismatch: str  # dead_letter, or repartition: every event goes through repartition_topic keyed by product id
    worker_web_port: int
    worker_web_host: str
    worker_web_advertised_host: str | None  # how the other workers reach this one's web port (product lookups)
    app_id: str
    state_store: str
    state_dir: Path  # the worker's own state lives in state_dir / app_id
    state_cache_mb: int
    table_standby_replicas: int
    topic_partitions: int
    topic_replication_factor: int
    log_level: str
    log_format: str

    @classmethod
    def from_env(cls, env: Mapping[str, str], **overrides: Any) -> Settings:
        """Build from ``env`` (never read implicitly from os.environ); ``overrides`` win, e.g. from flags."""
        values: dict[str, Any] = {}
        for variable, name, parse, default in _SPEC:
            raw = env.get(variable, default)
            try:
                values[name] = parse(raw)
            except ValueError as exc:
                reason = str(exc) if not str(exc).startswith("invalid literal") else "is not a whole number"
                shown = variable if variable in _SECRET_VARIABLES else f"{variable}={raw!r}"
                raise SettingsError(f"{shown} {reason}") from None
        known = {f.name for f in fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise SettingsError(f"unknown setting {sorted(unknown)[0]!r}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        _resolve_security(values)
        if values["processing_guarantee"] == "exactly_once" and values["kafka_isolation_level"] != "read_committed":
            # Faust's exactly-once recovers its tables and commits on what read_committed shows: anything else breaks it.
            raise SettingsError("KAFKA_ISOLATION_LEVEL='read_uncommitted' cannot be used with PROCESSING_GUARANTEE=exactly_once")
        return cls(**values)

    @property
    def bootstrap_servers(self) -> list[str]:
        return [server.strip() for server in self.kafka_bootstrap_servers.split(",") if server.strip()]

    @property
    def repartition_topic(self) -> str | None:
        """The internal topic the input goes through, keyed by product id (KEY_MISMATCH=repartition), else None."""
        return f"{self.app_id}-product-id-repartition" if self.key_mismatch == "repartition" else None

    @property
    def state_topic(self) -> str:
        """The topic whose partitions the per-product state follows: the repartition topic, or the input."""
        return self.repartition_topic or self.input_topic

    @property
    def uses_tls(self) -> bool:
        return self.kafka_security_protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.kafka_security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    def secrets(self) -> list[str]:
        """The secret values themselves, so log output can be scrubbed of them."""
        return [s.reveal() for s in (self.kafka_ssl_key_password, self.kafka_sasl_password) if s is not None]

    def describe(self) -> dict[str, Any]:
        """Settings safe to log and show: secrets appear as a placeholder, files by their path."""
        def shown(value: Any) -> Any:
            if isinstance(value, Secret):
                return REDACTED
            return str(value) if isinstance(value, Path) else value

        return {f.name: shown(getattr(self, f.name)) for f in fields(self)}


def _read_secret(variable: str, path: Path) -> Secret:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc.__class__.__name__
        raise SettingsError(f"{variable}={str(path)!r} cannot be read ({reason})") from None
    # Files written by `echo` or editors end with a newline that is not part of the secret.
    secret = text.rstrip("\r\n")
    if not secret:
        raise SettingsError(f"{variable}={str(path)!r} is empty")
    return Secret(secret)


def _resolve_secrets(values: dict[str, Any]) -> None:
    for variable, name in (("KAFKA_SSL_KEY_PASSWORD", "kafka_ssl_key_password"), ("KAFKA_SASL_PASSWORD", "kafka_sasl_password")):
        path = values[f"{name}_file"]
        if path is None:
            continue
        if values[name] is not None:
            raise SettingsError(f"{variable} and {variable}_FILE are both set; set only one")
        values[name] = _read_secret(f"{variable}_FILE", path)


def _resolve_security(values: dict[str, Any]) -> None:
    """Read secret files and reject combinations that would fail at connect time or be silently ignored."""
    _resolve_secrets(values)
    protocol = values["kafka_security_protocol"]
    tls = protocol in ("SSL", "SASL_SSL")
    sasl = protocol in ("SASL_PLAINTEXT", "SASL_SSL")
    given = {
        "KAFKA_SSL_CA_FILE": values["kafka_ssl_ca_file"],
        "KAFKA_SSL_CERT_FILE": values["kafka_ssl_cert_file"],
        "KAFKA_SSL_KEY_FILE": values["kafka_ssl_key_file"],
        "KAFKA_SSL_KEY_PASSWORD" + ("_FILE" if values["kafka_ssl_key_password_file"] else ""):
            values["kafka_ssl_key_password"],
        "KAFKA_SASL_USERNAME": values["kafka_sasl_username"],
        "KAFKA_SASL_PASSWORD" + ("_FILE" if values["kafka_sasl_password_file"] else ""): values["kafka_sasl_password"],
    }
    for variable, value in given.items():
        needs_tls = variable.startswith("KAFKA_SSL_")
        if value is not None and not (tls if needs_tls else sasl):
            wanted = "SSL or SASL_SSL" if needs_tls else "SASL_PLAINTEXT or SASL_SSL"
            raise SettingsError(f"{variable} is set but KAFKA_SECURITY_PROTOCOL={protocol} does not use it (use {wanted})")
    if (given["KAFKA_SSL_CERT_FILE"] is None) != (given["KAFKA_SSL_KEY_FILE"] is None):
        present, missing = (
            ("KAFKA_SSL_CERT_FILE", "KAFKA_SSL_KEY_FILE") if given["KAFKA_SSL_KEY_FILE"] is None
            else ("KAFKA_SSL_KEY_FILE", "KAFKA_SSL_CERT_FILE")
        )
        raise SettingsError(f"{present} is set without {missing}: a client certificate needs both")
    if values["kafka_ssl_key_password"] is not None and given["KAFKA_SSL_KEY_FILE"] is None:
        variable = "KAFKA_SSL_KEY_PASSWORD" + ("_FILE" if values["kafka_ssl_key_password_file"] else "")
        raise SettingsError(f"{variable} is set without KAFKA_SSL_KEY_FILE")
    if sasl and given["KAFKA_SASL_USERNAME"] is None:
        raise SettingsError(f"KAFKA_SASL_USERNAME must be set with KAFKA_SECURITY_PROTOCOL={protocol}")
    if sasl and values["kafka_sasl_password"] is None:
        raise SettingsError(
            f"KAFKA_SASL_PASSWORD or KAFKA_SASL_PASSWORD_FILE must be set with KAFKA_SECURITY_PROTOCOL={protocol}"
        )


def settings_table() -> list[tuple[str, str]]:
    """(variable, default) pairs, for docs and `--help`."""
    return [(variable, default) for variable, _, _, default in _SPEC]
