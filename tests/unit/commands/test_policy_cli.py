"""`compliance-worker policy validate` and the broker-free parts of `policy publish` (the rest: tests/integration)."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from worker.commands import policy_publish
from worker.commands.cli import main
from worker.core import Policy
from worker.core.policy import BUNDLED_POLICY
from worker.commands.policy_publish import Published, PublishError

BUNDLED = "version 2026.11.0, 3 clusters, 29 category rules, 44 HS rules (HS fallback on)"


@cache
def _bundled_bytes() -> bytes:
    return resources.files("worker.policies").joinpath(BUNDLED_POLICY).read_bytes()


def bundled_document() -> dict[str, Any]:
    return copy.deepcopy(yaml.safe_load(_bundled_bytes()))


def write(tmp_path: Path, document: dict[str, Any], name: str = "policy.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    code = main(list(argv), env=env or {})
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --- validate ----------------------------------------------------------------------------------


def test_validate_the_bundled_policy(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "default.yaml"
    path.write_bytes(_bundled_bytes())
    assert run(capsys, "policy", "validate", str(path)) == (0, f"valid: {BUNDLED}; optional rules: none\n", "")


@pytest.mark.parametrize(
    ("changes", "optional"),
    [
        pytest.param({"clusters.crafts.effective_from": "2026-12-01T00:00:00+07:00"},
                     "effective dates (crafts from 2026-12-01T00:00:00+07:00)", id="one-date"),
        pytest.param({"clusters.crafts.effective_from": "2026-12-01", "clusters.food_beverage.effective_from": "2027-01-01"},
                     "effective dates (food_beverage from 2027-01-01, crafts from 2026-12-01)", id="two-dates"),
        pytest.param({"exempt_sellers": ["S-1"]}, "1 exempt seller", id="one-seller"),
        pytest.param({"exempt_sellers": ["S-1", "S-2"]}, "2 exempt sellers", id="two-sellers"),
        pytest.param({"minimum_price": {"enabled": True, "amount": "100.00", "currency": "USD",
                                        "exempt_hs_prefixes": ["4901", "8523"], "exchange_rates": {"IDR": "0.0000625"}}},
                     "minimum price 100.00 USD for cross-border items: 2 exempt HS prefixes, 1 exchange rate", id="minimum-price"),
        pytest.param({"minimum_price": {"enabled": False, "amount": "100", "currency": "USD"}},
                     "minimum price 100 USD for cross-border items (configured, disabled): 0 exempt HS prefixes, 0 exchange rates",
                     id="minimum-price-disabled"),
        pytest.param({"exempt_sellers": ["S-1"], "minimum_price": {"enabled": True, "amount": "100", "currency": "USD",
                                                                    "exempt_hs_prefixes": ["4901"]}},
                     "1 exempt seller; minimum price 100 USD for cross-border items: 1 exempt HS prefix, 0 exchange rates", id="two-rules"),
    ],
)
def test_validate_names_the_optional_rules_in_force(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, changes: dict[str, Any], optional: str
) -> None:
    document = bundled_document()
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        target = document
        for key in parents:
            target = target[key]
        target[leaf] = value
    assert run(capsys, "policy", "validate", str(write(tmp_path, document))) == (0, f"valid: {BUNDLED}; optional rules: {optional}\n", "")


def test_validate_reports_hs_fallback_off(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    document = bundled_document()
    document["hs_fallback"]["enabled"] = False
    code, out, _ = run(capsys, "policy", "validate", str(write(tmp_path, document)))
    assert (code, out) == (0, "valid: version 2026.11.0, 3 clusters, 29 category rules, 44 HS rules (HS fallback off); optional rules: none\n")


def test_validate_accepts_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    path.write_bytes(orjson.dumps(bundled_document()))
    assert run(capsys, "policy", "validate", str(path))[:2] == (0, f"valid: {BUNDLED}; optional rules: none\n")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(_bundled_bytes().replace(b"home_countries: [ID]", b"home_countries: [IDN]"),
                     "cross_border.home_countries[0]: 'IDN' is not an ISO 3166-1 alpha-2 code", id="bad-country"),
        pytest.param(_bundled_bytes() + b'exempt_sellers: ["S-1", "S-1"]\n', "exempt_sellers[1]: duplicate seller id 'S-1'",
                     id="duplicate-exempt-seller"),
        pytest.param(_bundled_bytes() + b"minimum_price: {enabled: true, amount: 100, currency: USD}\n",
                     "minimum_price.amount: expected a decimal string such as '100.00' (quoted), got int", id="unquoted-amount"),
        pytest.param(_bundled_bytes().replace(b'    title: "Crafts"\n', b'    title: "Crafts"\n    effective_from: 2026-02-30\n', 1),
                     "clusters.crafts.effective_from: '2026-02-30' is not a real date", id="impossible-date"),
        pytest.param(b"version: [unclosed\n", "not valid YAML or JSON", id="yaml-syntax"),
    ],
)
def test_validate_rejects_with_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    code, out, err = run(capsys, "policy", "validate", str(path))
    assert (code, out) == (2, "")
    assert err.startswith(f"compliance-worker policy validate: {path}: ") and message in err, err
    assert err.count("\n") == 1 and err.endswith("\n")


def test_validate_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    assert run(capsys, "policy", "validate", str(missing)) == (
        2, "", f"compliance-worker policy validate: {missing}: cannot read policy file: No such file or directory\n"
    )


def test_console_script_validates(tmp_path: Path) -> None:
    script = shutil.which("compliance-worker", path=str(Path(sys.executable).parent))
    assert script is not None, "the console script is not installed next to the interpreter (pip install -e .)"
    path = tmp_path / "default.yaml"
    path.write_bytes(_bundled_bytes())
    env = {key: value for key, value in os.environ.items() if key != "POLICY_FILE"}
    result = subprocess.run([script, "policy", "validate", str(path)], capture_output=True, env=env, timeout=60, check=False)
    assert (result.returncode, result.stdout.decode(), result.stderr) == (0, f"valid: {BUNDLED}; optional rules: none\n", b"")


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["policy"], id="no-action"),
        pytest.param(["policy", "check", "p.yaml"], id="unknown-action"),
        pytest.param(["policy", "validate"], id="validate-without-file"),
        pytest.param(["policy", "publish"], id="publish-without-file"),
        pytest.param(["policy", "publish", "p.yaml", "--timeout", "soon"], id="publish-bad-timeout"),
    ],
)
def test_bad_arguments_exit_2_with_usage(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv, env={})
    assert exited.value.code == 2
    assert "usage: compliance-worker policy" in capsys.readouterr().err


# --- publish without a broker: refusal and argument handling --------------------------------------


class FakePublish:
    """Stands in for policy_publish.publish_policy and records what it was asked to do."""

    def __init__(self, result: Published | Exception | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.result = result

    async def __call__(self, data: bytes, version: str, **kwargs: Any) -> Published:
        self.calls.append({"data": data, "version": version, **kwargs})
        if isinstance(self.result, Exception):
            raise self.result
        return self.result or Published(kwargs["topic"], 0, 41, False, ())


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakePublish:
    stand_in = FakePublish()
    monkeypatch.setattr(policy_publish, "publish_policy", stand_in)
    return stand_in


def test_publish_refuses_an_invalid_policy_without_contacting_kafka(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, fake: FakePublish
) -> None:
    document = bundled_document()
    document["minimum_price"] = {"enabled": True, "amount": "100.00", "currency": "USD", "exchange_rates": {"USD": "1"}}
    path = write(tmp_path, document)
    code, out, err = run(capsys, "policy", "publish", str(path), "--bootstrap", "127.0.0.1:1")
    assert (code, out) == (2, "")
    assert err == (
        f"compliance-worker policy publish: {path}: minimum_price.exchange_rates.USD: a rate from USD to itself; "
        "prices in USD are compared as they are\n"
    )
    assert fake.calls == []


def test_publish_refuses_a_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path, fake: FakePublish) -> None:
    code, _out, err = run(capsys, "policy", "publish", str(tmp_path / "nope.yaml"))
    assert code == 2 and "cannot read policy file" in err
    assert fake.calls == []


def test_publish_sends_the_file_bytes_keyed_by_version_to_the_settings_topic(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, fake: FakePublish, policy: Policy
) -> None:
    path = tmp_path / "default.yaml"
    path.write_bytes(_bundled_bytes())  # comments and all: the bytes go out unchanged
    code, out, err = run(capsys, "policy", "publish", str(path), env={"TOPIC_REPLICATION_FACTOR": "3"})
    assert (code, err) == (0, "")
    assert fake.calls == [{
        "data": _bundled_bytes(), "version": "2026.11.0", "bootstrap": ["localhost:9092"], "topic": "compliance.policies",
        "replication_factor": 3, "timeout": 30.0, "security": {"security_protocol": "PLAINTEXT"},
    }]
    assert out == (
        f"published policy 2026.11.0 ({len(_bundled_bytes()):,} bytes, digest {policy.digest}) to compliance.policies "
        "partition 0 offset 41 at localhost:9092\n"
    )


@pytest.mark.parametrize(
    ("flags", "env", "bootstrap", "topic"),
    [
        pytest.param([], {"KAFKA_BOOTSTRAP_SERVERS": "k1:9092,k2:9092", "POLICY_TOPIC": "ops.policies"},
                     ["k1:9092", "k2:9092"], "ops.policies", id="from-settings"),
        pytest.param(["--bootstrap", "b:19092", "--topic", "p.v2"], {"KAFKA_BOOTSTRAP_SERVERS": "k1:9092", "POLICY_TOPIC": "ops.policies"},
                     ["b:19092"], "p.v2", id="flags-override-settings"),
        pytest.param(["--topic", "p.v2"], {}, ["localhost:9092"], "p.v2", id="topic-flag-only"),
    ],
)
def test_publish_flags_override_settings(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, fake: FakePublish, flags: list[str], env: dict[str, str],
    bootstrap: list[str], topic: str,
) -> None:
    path = write(tmp_path, bundled_document())
    code, out, _err = run(capsys, "policy", "publish", str(path), *flags, "--timeout", "5", env=env)
    assert code == 0
    assert (fake.calls[0]["bootstrap"], fake.calls[0]["topic"], fake.calls[0]["timeout"]) == (bootstrap, topic, 5.0)
    assert f" to {topic} partition 0 offset 41 at {','.join(bootstrap)}\n" in out


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        pytest.param(["--topic", "bad topic"], "POLICY_TOPIC='bad topic' is not a valid Kafka topic name", id="bad-topic"),
        pytest.param(["--bootstrap", " "], "KAFKA_BOOTSTRAP_SERVERS=' ' must not be empty", id="empty-bootstrap"),
    ],
)
def test_publish_rejects_bad_settings_with_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, fake: FakePublish, flags: list[str], message: str
) -> None:
    code, out, err = run(capsys, "policy", "publish", str(write(tmp_path, bundled_document())), *flags)
    assert (code, out) == (2, "")
    assert err.startswith("compliance-worker policy publish: ") and message in err, err
    assert fake.calls == []


def test_publish_reports_a_created_topic_and_warnings(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(policy_publish, "publish_policy", FakePublish(Published("compliance.policies", 0, 0, True, ("it is odd",))))
    code, out, err = run(capsys, "policy", "publish", str(write(tmp_path, bundled_document())))
    assert code == 0
    assert " to compliance.policies (created it: compacted, 1 partition) partition 0 offset 0 at " in out
    assert err == "compliance-worker policy publish: warning: it is odd\n"


def test_publish_broker_failure_exits_1(capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(policy_publish, "publish_policy", FakePublish(PublishError("cannot publish to p at b:1: timed out")))
    code, out, err = run(capsys, "policy", "publish", str(write(tmp_path, bundled_document())))
    assert (code, out, err) == (1, "", "compliance-worker policy publish: cannot publish to p at b:1: timed out\n")


def test_publish_to_nothing_listening_fails_cleanly(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The real publisher against a closed port: one line, exit 1, no traceback."""
    code, out, err = run(capsys, "policy", "publish", str(write(tmp_path, bundled_document())), "--bootstrap", "127.0.0.1:1",
                         "--timeout", "5")
    assert (code, out) == (1, "")
    assert err.startswith("compliance-worker policy publish: cannot prepare topic compliance.policies at 127.0.0.1:1: "), err
    assert err.count("\n") == 1


def test_oversize_document_is_refused_before_contacting_kafka() -> None:
    import asyncio

    with pytest.raises(PublishError) as caught:
        asyncio.run(policy_publish.publish_policy(b"x" * (policy_publish.MAX_DOCUMENT_BYTES + 1), "v1",
                                                  bootstrap=["127.0.0.1:1"], topic="p"))
    assert "the policy topic takes at most" in caught.value.message
