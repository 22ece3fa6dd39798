"""Fault tests (crashes, broker failover and outage, exactly-once, hostile input, secure connections): `make test-reliability`."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.reliability.cluster import ClusterError, KafkaCluster
from tests.tools import IN_CI

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.reliability)


@pytest.fixture(scope="module")
def cluster() -> Iterator[KafkaCluster]:
    """Three KRaft nodes (broker+controller each) on free loopback ports, RF 3 / min ISR 2 by default; one per module."""
    kafka = KafkaCluster()
    try:
        seconds = kafka.up()
    except ClusterError as error:
        kafka.down()
        if IN_CI:
            pytest.fail(f"the 3-node test cluster did not start:\n{error}", pytrace=False)
        pytest.skip(f"the 3-node test cluster did not start:\n{error}")
    sys.stderr.write(f"\n3-node Kafka cluster ready in {seconds:.1f}s at {kafka.bootstrap}\n")
    try:
        yield kafka
    finally:
        kafka.down()
