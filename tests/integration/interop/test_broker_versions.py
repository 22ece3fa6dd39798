"""Each interop test's broker is the version its id names, as the broker itself reports it (its metadata.version)."""

from __future__ import annotations

import re

from tests.integration.conftest import Broker
from tests.integration.interop.clients import java_tool


def metadata_versions(broker: Broker) -> tuple[str, str]:
    """metadata.version's newest level the broker's software supports and the level its cluster was formatted at,
    as the broker answers Kafka's FeatureCommand (DescribeFeatures)."""
    out = java_tool(broker, "org.apache.kafka.tools.FeatureCommand", "--bootstrap-server", broker.bootstrap, "describe")
    [levels] = re.findall(
        r"Feature: metadata\.version\s.*?SupportedMaxVersion: (\S+)\s.*?FinalizedVersionLevel: (\S+)", out
    )
    return levels


def test_the_broker_runs_the_version_its_tests_are_named_after(broker: Broker) -> None:
    # Each release adds metadata.version levels named after it (3.9-IV0, 4.4-IV2), and a fresh KRaft cluster is
    # formatted at its format tool's newest: both name the release that runs.
    major, minor, _patch = broker.version.split(".")
    supported, finalized = metadata_versions(broker)
    assert (supported.split("-")[0], finalized.split("-")[0]) == (f"{major}.{minor}", f"{major}.{minor}")
