"""Settings: the contract's defaults, one variable at a time from an injected mapping, clear errors, frozen."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from worker.core import ComplianceError
from worker.settings import Settings, SettingsError, settings_table

# The settings table of /work/shared/CONTRACT.md (POLICY_FILE: "the policy bundled with the package").
CONTRACT_DEFAULTS = {
    "KAFKA_BOOTSTRAP_SERVERS": "localhost:9092",
    "INPUT_TOPIC": "catalog.product-upserts",
    "DECISIONS_TOPIC": "compliance.decisions",
    "DEAD_LETTER_TOPIC": "compliance.dead-letter",
    "POLICY_FILE": None,
    "POLICY_TOPIC": "compliance.policies",
    "PROCESSING_GUARANTEE": "at_least_once",
    "WORKER_WEB_PORT": 6066,
}
FIELD_OF = {
    "KAFKA_BOOTSTRAP_SERVERS": "kafka_bootstrap_servers",
    "KAFKA_SECURITY_PROTOCOL": "kafka_security_protocol",
    "KAFKA_SSL_CA_FILE": "kafka_ssl_ca_file",
    "KAFKA_SSL_CERT_FILE": "kafka_ssl_cert_file",
    "KAFKA_SSL_KEY_FILE": "kafka_ssl_key_file",
    "KAFKA_SSL_KEY_PASSWORD": "kafka_ssl_key_password",
    "KAFKA_SSL_KEY_PASSWORD_FILE": "kafka_ssl_key_password_file",
    "KAFKA_SSL_CHECK_HOSTNAME": "kafka_ssl_check_hostname",
    "KAFKA_SASL_MECHANISM": "kafka_sasl_mechanism",
    "KAFKA_SASL_USERNAME": "kafka_sasl_username",
    "KAFKA_SASL_PASSWORD": "kafka_sasl_password",
    "KAFKA_SASL_PASSWORD_FILE": "kafka_sasl_password_file",
    "INPUT_TOPIC": "input_topic",
    "DECISIONS_TOPIC": "decisions_topic",
    "DEAD_LETTER_TOPIC": "dead_letter_topic",
    "POLICY_FILE": "policy_file",
    "POLICY_TOPIC": "policy_topic",
    "OVERRIDES_TOPIC": "overrides_topic",
    "PROCESSING_GUARANTEE": "processing_guarantee",
    "KAFKA_ISOLATION_LEVEL": "kafka_isolation_level",
    "KAFKA_COMPRESSION_TYPE": "kafka_compression_type",
    "FORWARD_HEADERS": "forward_headers",
    "KEY_MISMATCH": "key_mismatch",
    "WORKER_WEB_PORT": "worker_web_port",
    "WORKER_WEB_HOST": "worker_web_host",
    "WORKER_WEB_ADVERTISED_HOST": "worker_web_advertised_host",
    "APP_ID": "app_id",
    "STATE_STORE": "state_store",
    "STATE_DIR": "state_dir",
    "STATE_CACHE_MB": "state_cache_mb",
    "TABLE_STANDBY_REPLICAS": "table_standby_replicas",
    "TOPIC_PARTITIONS": "topic_partitions",
    "TOPIC_REPLICATION_FACTOR": "topic_replication_factor",
    "LOG_LEVEL": "log_level",
    "LOG_FORMAT": "log_format",
}


def test_defaults_are_the_contracts() -> None:
    settings = Settings.from_env({})
    for variable, default in CONTRACT_DEFAULTS.items():
        assert getattr(settings, FIELD_OF[variable]) == default, variable
    assert settings.bootstrap_servers == ["localhost:9092"]


def test_every_setting_has_a_variable_and_the_table_lists_them_all() -> None:
    assert {field.name for field in dataclasses.fields(Settings)} == set(FIELD_OF.values())
    table = dict(settings_table())
    assert set(table) == set(FIELD_OF)
    assert {variable: table[variable] for variable in CONTRACT_DEFAULTS} == {
        variable: "" if default is None else str(default) for variable, default in CONTRACT_DEFAULTS.items()
    }


@pytest.mark.parametrize(
    ("variable", "raw", "expected"),
    [
        pytest.param("KAFKA_BOOTSTRAP_SERVERS", "broker-1:9092, broker-2:9093", "broker-1:9092, broker-2:9093", id="bootstrap-servers"),
        pytest.param("INPUT_TOPIC", "catalog.upserts_v2", "catalog.upserts_v2", id="input-topic"),
        pytest.param("DECISIONS_TOPIC", "decisions-2", "decisions-2", id="decisions-topic"),
        pytest.param("DEAD_LETTER_TOPIC", "dlq", "dlq", id="dead-letter-topic"),
        pytest.param("POLICY_FILE", "/etc/compliance/policy.yaml", Path("/etc/compliance/policy.yaml"), id="policy-file"),
        pytest.param("POLICY_FILE", "  ", None, id="blank-policy-file-means-bundled"),
        pytest.param("POLICY_TOPIC", "policies", "policies", id="policy-topic"),
        pytest.param("PROCESSING_GUARANTEE", "exactly_once", "exactly_once", id="exactly-once"),
        pytest.param("PROCESSING_GUARANTEE", " Exactly_Once ", "exactly_once", id="guarantee-case-and-space"),
        pytest.param("KAFKA_ISOLATION_LEVEL", "read_uncommitted", "read_uncommitted", id="isolation-uncommitted"),
        pytest.param("KAFKA_ISOLATION_LEVEL", " Read_Committed", "read_committed", id="isolation-case-and-space"),
        pytest.param("KAFKA_COMPRESSION_TYPE", "ZSTD", "zstd", id="compression-zstd"),
        pytest.param("KAFKA_COMPRESSION_TYPE", "none", "none", id="compression-none"),
        pytest.param("FORWARD_HEADERS", "x-request-id, baggage,,x-request-id", ("x-request-id", "baggage"), id="headers-list"),
        pytest.param("FORWARD_HEADERS", " ", (), id="headers-blank"),
        pytest.param("KEY_MISMATCH", "Repartition", "repartition", id="key-mismatch-repartition"),
        pytest.param("WORKER_WEB_PORT", "8080", 8080, id="web-port"),
        pytest.param("WORKER_WEB_PORT", "0", 0, id="web-port-zero-picks-free"),
        pytest.param("WORKER_WEB_PORT", "65535", 65535, id="web-port-max"),
        pytest.param("WORKER_WEB_HOST", "127.0.0.1", "127.0.0.1", id="web-host"),
        pytest.param("APP_ID", "compliance-worker-eu", "compliance-worker-eu", id="app-id"),
        pytest.param("STATE_STORE", "Memory", "memory", id="state-store-memory"),
        pytest.param("STATE_DIR", " /data/state ", Path("/data/state"), id="state-dir"),
        pytest.param("STATE_CACHE_MB", "256", 256, id="state-cache"),
        pytest.param("TABLE_STANDBY_REPLICAS", "0", 0, id="standby-replicas-none"),
        pytest.param("TABLE_STANDBY_REPLICAS", "2", 2, id="standby-replicas-two"),
        pytest.param("TOPIC_PARTITIONS", "12", 12, id="partitions"),
        pytest.param("TOPIC_REPLICATION_FACTOR", "3", 3, id="replication-factor"),
        pytest.param("LOG_LEVEL", "DEBUG", "debug", id="log-level"),
        pytest.param("LOG_FORMAT", "json", "json", id="log-format"),
    ],
)
def test_each_variable_is_read_from_the_mapping(variable: str, raw: str, expected: Any) -> None:
    settings = Settings.from_env({variable: raw})
    assert getattr(settings, FIELD_OF[variable]) == expected
    others = dataclasses.asdict(Settings.from_env({}))
    others.pop(FIELD_OF[variable])
    mine = dataclasses.asdict(settings)
    mine.pop(FIELD_OF[variable])
    assert mine == others  # one variable changes one setting


@pytest.mark.parametrize(
    ("variable", "raw", "reason"),
    [
        pytest.param("PROCESSING_GUARANTEE", "once", "is not one of at_least_once, exactly_once", id="guarantee-once"),
        pytest.param("PROCESSING_GUARANTEE", "", "is not one of", id="guarantee-empty"),
        pytest.param("KAFKA_ISOLATION_LEVEL", "committed", "is not one of read_committed, read_uncommitted", id="isolation-unknown"),
        pytest.param("KAFKA_COMPRESSION_TYPE", "brotli", "is not one of none, gzip, snappy, lz4, zstd", id="compression-unknown"),
        pytest.param("FORWARD_HEADERS", "x-request-id,bad name", "has spaces or control characters", id="headers-space"),
        pytest.param("KEY_MISMATCH", "ignore", "is not one of dead_letter, repartition", id="key-mismatch-unknown"),
        pytest.param("WORKER_WEB_PORT", "abc", "is not a whole number", id="port-not-a-number"),
        pytest.param("WORKER_WEB_PORT", "70000", "is not a TCP port", id="port-too-big"),
        pytest.param("WORKER_WEB_PORT", "-1", "is not a TCP port", id="port-negative"),
        pytest.param("WORKER_WEB_PORT", "60.5", "is not a whole number", id="port-fraction"),
        pytest.param("WORKER_WEB_PORT", "", "is not a whole number", id="port-empty"),
        pytest.param("INPUT_TOPIC", "bad topic", "is not a valid Kafka topic name", id="topic-with-space"),
        pytest.param("INPUT_TOPIC", "", "is not a valid Kafka topic name", id="topic-empty"),
        pytest.param("DECISIONS_TOPIC", "..", "is not a valid Kafka topic name", id="topic-dot-dot"),
        pytest.param("DEAD_LETTER_TOPIC", "t" * 250, "is not a valid Kafka topic name", id="topic-too-long"),
        pytest.param("POLICY_TOPIC", "policies/v2", "is not a valid Kafka topic name", id="topic-slash"),
        pytest.param("STATE_STORE", "redis", "is not one of rocksdb, memory", id="state-store-unknown"),
        pytest.param("STATE_DIR", " ", "must not be empty", id="state-dir-blank"),
        pytest.param("STATE_CACHE_MB", "0", "must be a positive whole number", id="state-cache-zero"),
        pytest.param("TABLE_STANDBY_REPLICAS", "-1", "must be 0 or a positive whole number", id="standby-negative"),
        pytest.param("TOPIC_PARTITIONS", "0", "must be a positive whole number", id="partitions-zero"),
        pytest.param("TOPIC_PARTITIONS", "four", "is not a whole number", id="partitions-word"),
        pytest.param("TOPIC_REPLICATION_FACTOR", "-3", "must be a positive whole number", id="replication-negative"),
        pytest.param("KAFKA_BOOTSTRAP_SERVERS", "   ", "must not be empty", id="bootstrap-blank"),
        pytest.param("LOG_LEVEL", "verbose", "is not one of debug, info, warning, error", id="log-level-unknown"),
        pytest.param("LOG_FORMAT", "xml", "is not one of auto, json, text", id="log-format-unknown"),
    ],
)
def test_invalid_values_raise_naming_the_variable(variable: str, raw: str, reason: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({variable: raw})
    assert caught.value.message.startswith(f"{variable}={raw!r} "), caught.value.message
    assert reason in caught.value.message
    assert isinstance(caught.value, ComplianceError) and not caught.value.retriable


def test_overrides_win_over_the_environment_and_none_means_unset() -> None:
    settings = Settings.from_env({"WORKER_WEB_PORT": "7000", "POLICY_FILE": "/a.yaml"}, worker_web_port=7001, policy_file=None)
    assert (settings.worker_web_port, settings.policy_file) == (7001, Path("/a.yaml"))


def test_unknown_override_is_an_error() -> None:
    with pytest.raises(SettingsError, match="unknown setting 'web_port'"):
        Settings.from_env({}, web_port=1)


def test_unrelated_variables_are_ignored() -> None:
    assert Settings.from_env({"PATH": "/bin", "INPUT_TOPC": "typo"}) == Settings.from_env({})


def test_settings_are_frozen() -> None:
    settings = Settings.from_env({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.input_topic = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del settings.worker_web_port  # type: ignore[misc]
    assert hash(settings) == hash(Settings.from_env({}))


def test_from_env_never_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INPUT_TOPIC", "from-os-environ")
    monkeypatch.setenv("WORKER_WEB_PORT", "not-a-port")  # would raise if it were read
    monkeypatch.setenv("PROCESSING_GUARANTEE", "exactly_once")
    settings = Settings.from_env({})
    assert (settings.input_topic, settings.worker_web_port, settings.processing_guarantee) == (
        "catalog.product-upserts", 6066, "at_least_once",
    )
    assert Settings.from_env({"INPUT_TOPIC": "from-mapping"}).input_topic == "from-mapping"


def test_describe_is_plain_data() -> None:
    described = Settings.from_env({"POLICY_FILE": "/p.yaml"}).describe()
    assert described["policy_file"] == "/p.yaml"
    assert described["worker_web_port"] == 6066
    assert set(described) == set(FIELD_OF.values())


def test_the_input_is_read_committed_by_default() -> None:
    assert Settings.from_env({}).kafka_isolation_level == "read_committed"


def test_exactly_once_refuses_read_uncommitted_input() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"PROCESSING_GUARANTEE": "exactly_once", "KAFKA_ISOLATION_LEVEL": "read_uncommitted"})
    assert "KAFKA_ISOLATION_LEVEL" in caught.value.message and "exactly_once" in caught.value.message


def test_the_state_follows_the_repartition_topic_only_when_input_is_repartitioned() -> None:
    plain = Settings.from_env({"APP_ID": "cw", "INPUT_TOPIC": "in"})
    assert (plain.repartition_topic, plain.state_topic) == (None, "in")
    routed = Settings.from_env({"APP_ID": "cw", "INPUT_TOPIC": "in", "KEY_MISMATCH": "repartition"})
    assert (routed.repartition_topic, routed.state_topic) == ("cw-product-id-repartition", "cw-product-id-repartition")
