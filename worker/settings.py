"""All settings in one frozen object, built from an injectable environment mapping."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from worker.core.errors import ComplianceError

T = TypeVar("T")

TOPIC_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,249}")
GUARANTEES = ("at_least_once", "exactly_once")
LOG_FORMATS = ("auto", "json", "text")
LOG_LEVELS = ("debug", "info", "warning", "error")


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


def _optional_path(value: str) -> Path | None:
    return Path(value) if value.strip() else None


# env var, field name, parser, default (as the string a user would write)
_SPEC: tuple[tuple[str, str, Callable[[str], Any], str], ...] = (
    ("KAFKA_BOOTSTRAP_SERVERS", "kafka_bootstrap_servers", _text, "localhost:9092"),
    ("INPUT_TOPIC", "input_topic", _topic, "catalog.product-upserts"),
    ("DECISIONS_TOPIC", "decisions_topic", _topic, "compliance.decisions"),
    ("DEAD_LETTER_TOPIC", "dead_letter_topic", _topic, "compliance.dead-letter"),
    ("POLICY_FILE", "policy_file", _optional_path, ""),
    ("POLICY_TOPIC", "policy_topic", _topic, "compliance.policies"),
    ("PROCESSING_GUARANTEE", "processing_guarantee", _choice(*GUARANTEES), "at_least_once"),
    ("WORKER_WEB_PORT", "worker_web_port", _port, "6066"),
    ("WORKER_WEB_HOST", "worker_web_host", _text, "0.0.0.0"),
    ("APP_ID", "app_id", _topic, "compliance-worker"),
    ("TOPIC_PARTITIONS", "topic_partitions", _positive, "4"),
    ("TOPIC_REPLICATION_FACTOR", "topic_replication_factor", _positive, "1"),
    ("LOG_LEVEL", "log_level", _choice(*LOG_LEVELS), "info"),
    ("LOG_FORMAT", "log_format", _choice(*LOG_FORMATS), "auto"),
)


@dataclass(frozen=True)
class Settings:
    """The worker's configuration; see the settings table in the README."""

    kafka_bootstrap_servers: str
    input_topic: str
    decisions_topic: str
    dead_letter_topic: str
    policy_file: Path | None
    policy_topic: str
    processing_guarantee: str
    worker_web_port: int
    worker_web_host: str
    app_id: str
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
                raise SettingsError(f"{variable}={raw!r} {reason}") from None
        known = {f.name for f in fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise SettingsError(f"unknown setting {sorted(unknown)[0]!r}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @property
    def bootstrap_servers(self) -> list[str]:
        return [server.strip() for server in self.kafka_bootstrap_servers.split(",") if server.strip()]

    def describe(self) -> dict[str, Any]:
        """Settings safe to log and show (no secrets live here yet)."""
        return {f.name: (str(v) if isinstance(v, Path) else v) for f in fields(self) for v in [getattr(self, f.name)]}


def settings_table() -> list[tuple[str, str]]:
    """(variable, default) pairs, for docs and `--help`."""
    return [(variable, default) for variable, _, _, default in _SPEC]
