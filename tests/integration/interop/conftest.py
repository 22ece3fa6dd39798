"""Every interop test runs once per supported broker version: the project's default and the newest Kafka 3.9.x."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.conftest import DEFAULT_KAFKA_VERSION, Broker, started_broker

# The last 3.x line (KRaft; ZooKeeper was removed in 4.0), fetched from Maven as the default is (scripts/kafka.sh).
KAFKA_3_9 = "3.9.2"
BROKER_VERSIONS = (DEFAULT_KAFKA_VERSION, KAFKA_3_9)


@pytest.fixture(scope="session", params=BROKER_VERSIONS, ids=lambda version: f"kafka-{version}")
def broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    """The default version is the session's own broker; another version gets one of its own, started once (pytest
    runs the tests of one version together)."""
    if request.param == DEFAULT_KAFKA_VERSION:
        yield request.getfixturevalue("default_broker")
    else:
        with started_broker(request.param) as other:
            yield other


@pytest.fixture(scope="session")
def kafka(broker: Broker) -> str:
    """The broker of the version under test: ``topics`` and ``worker`` (tests/integration/conftest.py) use it too."""
    return broker.bootstrap
