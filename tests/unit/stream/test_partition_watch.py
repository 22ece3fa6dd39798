"""The worker stops when the topic its state follows grows under it: at the periodic check and at an assignment."""

from __future__ import annotations

import asyncio

import pytest
from faust.types import TP

from worker.kafka.topics import PartitionsMismatch
from worker.settings import Settings
from worker.stream.app import check_partitions
from worker.stream.partition_watch import PartitionWatch, grown_partitions, refusal_message

INPUT, CHANGELOG = "product-upserts", "cw-decision-state-changelog"


class Broker:
    def __init__(self, counts: dict[str, int] | Exception) -> None:
        self.counts = counts
        self.asked: list[list[str]] = []
        self.closed = 0

    async def close(self) -> None:
        self.closed += 1

    async def describe(self, topics: list[str]) -> dict[str, int]:
        self.asked.append(topics)
        if isinstance(self.counts, Exception):
            raise self.counts
        return dict(self.counts)


class Describer:
    """What the worker hands the watch: a callable that keeps a client, closed when watching ends."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    async def __call__(self, topics: list[str]) -> dict[str, int]:
        return await self.broker.describe(topics)

    async def close(self) -> None:
        await self.broker.close()


def watch(broker: Broker, stops: list[int]) -> PartitionWatch:
    return PartitionWatch(
        INPUT, CHANGELOG, 4, refusal_message(INPUT, INPUT, "cw", CHANGELOG), Describer(broker), lambda: stops.append(1),
    )


def test_grown_partitions_are_those_of_the_state_topic_the_changelog_lacks() -> None:
    assigned = {TP(INPUT, 1), TP(INPUT, 4), TP(INPUT, 6), TP(CHANGELOG, 3), TP("other", 9)}
    assert grown_partitions(assigned, INPUT, 4) == [4, 6]
    assert grown_partitions(assigned, INPUT, 8) == []


def test_an_assignment_of_a_partition_the_changelog_lacks_pauses_it_and_stops_the_worker_once() -> None:
    stops: list[int] = []
    paused: list[set[TP]] = []
    watching = watch(Broker({}), stops)
    assert watching.check_assignment({TP(INPUT, 0), TP(INPUT, 3), TP(CHANGELOG, 0)}, paused.append) is True
    assert (stops, paused, watching.refusal) == ([], [], None)
    grown = {TP(INPUT, 0), TP(INPUT, 7), TP(CHANGELOG, 0)}
    assert watching.check_assignment(grown, paused.append) is False
    assert stops == [1] and paused == [grown], "nothing of the assignment may be read: the worker stops"
    assert watching.refusal is not None and f"the input {INPUT} has 8 partitions" in watching.refusal
    assert watching.check_assignment(grown, paused.append) is False and stops == [1], "stopped once"


def test_the_periodic_check_stops_the_worker_when_the_broker_says_the_input_grew() -> None:
    stops: list[int] = []
    broker = Broker({INPUT: 4, CHANGELOG: 4})
    watching = watch(broker, stops)
    assert asyncio.run(watching.check()) is True and stops == []
    broker.counts = {INPUT: 6, CHANGELOG: 4}
    assert asyncio.run(watching.check()) is False and stops == [1]
    assert broker.asked == [[INPUT, CHANGELOG]] * 2


def test_the_refusal_while_running_is_the_one_at_start() -> None:
    settings = Settings.from_env({"INPUT_TOPIC": INPUT, "APP_ID": "cw"})
    with pytest.raises(PartitionsMismatch) as refused:
        check_partitions(settings, {INPUT: 6, CHANGELOG: 4}, CHANGELOG)
    stops: list[int] = []
    watching = watch(Broker({INPUT: 6, CHANGELOG: 4}), stops)
    asyncio.run(watching.check())
    assert watching.refusal == refused.value.message
    assert "docs/operations.md#growing-the-input" in watching.refusal


def test_watching_goes_on_past_a_broker_error_and_ends_with_the_refusal() -> None:
    stops: list[int] = []
    broker = Broker(OSError("unreachable"))
    watching = watch(broker, stops)

    async def scenario() -> None:
        task = asyncio.ensure_future(watching.watch(interval=0))
        while len(broker.asked) < 3:
            await asyncio.sleep(0)
        assert not task.done(), "an error is not a refusal: it asks again"
        broker.counts = {INPUT: 8, CHANGELOG: 4}
        await asyncio.wait_for(task, 5)

    asyncio.run(scenario())
    assert stops == [1] and watching.refusal is not None
    assert broker.closed == 1, "its client is closed when watching ends"
