"""Reading the dead-letter topic's max.message.bytes when the broker asked does not know the new topic yet."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from worker.kafka.topics import BrokerUnavailable, max_message_bytes

UNKNOWN_TOPIC_OR_PARTITION = 3


def answer(error_code: int, entries: list[tuple[Any, ...]]) -> list[SimpleNamespace]:
    # DescribeConfigsResponse: per resource (error code, error message, type, name, config entries)
    message = "This server does not host this topic-partition." if error_code else None
    return [SimpleNamespace(resources=[(error_code, message, 2, "dlq", entries)])]


class Admin:
    """Answers describe_configs from a script, as brokers of a cluster do right after a topic was created."""

    def __init__(self, *answers: list[SimpleNamespace]) -> None:
        self.answers = list(answers)
        self.calls = 0

    async def describe_configs(self, resources: list[Any]) -> list[SimpleNamespace]:
        self.calls += 1
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


def test_waits_until_a_broker_knows_the_new_topic() -> None:
    known = answer(0, [("max.message.bytes", "8388608", False, 1, False, [])])
    admin = Admin(answer(UNKNOWN_TOPIC_OR_PARTITION, []), known)
    assert asyncio.run(max_message_bytes(admin, "dlq", timeout=5)) == 8_388_608  # type: ignore[arg-type]
    assert admin.calls == 2


def test_says_why_when_no_broker_ever_answers() -> None:
    admin = Admin(answer(UNKNOWN_TOPIC_OR_PARTITION, []))
    with pytest.raises(BrokerUnavailable, match="max.message.bytes of topic dlq after 0s: 3 This server does not host"):
        asyncio.run(max_message_bytes(admin, "dlq", timeout=0.3))  # type: ignore[arg-type]
