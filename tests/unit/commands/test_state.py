"""`compliance-worker state migrate` without a broker: when it refuses, what it resumes, the summary, exit codes (the
real broker and worker: tests/integration/test_grow_partitions.py)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from worker.commands import state
from worker.commands.cli import main
from worker.commands.state import (
    Layout,
    Marker,
    MigrateBrokerError,
    MigrateRefused,
    Scope,
    Summary,
    Undecided,
    choose_partitioner,
    scope,
)
from worker.core.partitioning import Detection, detect, partition_for, plan

INPUT = "catalog.product-upserts"
CHANGELOG = "compliance-worker-decision-state-changelog"
APP = "compliance-worker"
MARKER = Marker(INPUT, 4, 8, "crc32", "2026-12-04T10:00:00.000Z")


def layout(inputs: int = 8, states: int | None = 4, *, marker: Marker | None = None, exists: bool | None = None,
           members: int = 0) -> Layout:
    return Layout(INPUT, CHANGELOG, inputs, states, marker, marker is not None if exists is None else exists, members)


@pytest.mark.parametrize(
    ("given", "requested", "expected"),
    [
        pytest.param(layout(8, 4), "auto", Scope(4, 8, None, False), id="grown-detect"),
        pytest.param(layout(12, 4), "fnv1a", Scope(4, 12, "fnv1a", False), id="grown-named"),
        pytest.param(layout(8, None), "auto", f"{CHANGELOG} does not exist", id="no-state-yet"),
        pytest.param(layout(8, 8), "auto", "as many partitions as", id="equal-nothing-to-do"),
        pytest.param(layout(8, 4, marker=MARKER), "auto", Scope(4, 8, "crc32", True), id="resume-before-growing"),
        pytest.param(layout(8, 8, marker=MARKER), "crc32", Scope(4, 8, "crc32", True), id="resume-after-growing"),
    ],
)
def test_what_a_run_migrates(given: Layout, requested: str, expected: Scope | str) -> None:
    chosen = scope(given, requested, APP)
    if isinstance(expected, str):
        assert isinstance(chosen, str) and expected in chosen
    else:
        assert chosen == expected


@pytest.mark.parametrize(
    ("given", "requested", "message"),
    [
        pytest.param(layout(members=2), "auto", "has 2 active members: stop every worker", id="workers-running"),
        pytest.param(layout(4, 8), "auto", "cannot shrink", id="input-fewer-than-changelog"),
        pytest.param(layout(12, 8, marker=MARKER), "auto", "run it with the settings it was started with",
                     id="resume-other-input-count"),
        pytest.param(layout(8, 8, marker=MARKER), "murmur2", "--partitioner crc32", id="resume-other-partitioner"),
        pytest.param(layout(8, 6, marker=MARKER), "auto", "it was changed meanwhile", id="resume-changelog-changed"),
        pytest.param(layout(8, 4, exists=True), "auto", "no readable migration record", id="marker-not-ours"),
        pytest.param(layout(8, 8, members=1, marker=MARKER), "auto", "1 active member:", id="running-beats-resume"),
    ],
)
def test_refusals(given: Layout, requested: str, message: str) -> None:
    with pytest.raises(MigrateRefused, match=message) as refused:
        scope(given, requested, APP)
    assert "\n" not in refused.value.message


def test_the_marker_round_trips_and_garbage_is_no_marker() -> None:
    assert Marker.decode(MARKER.encode()) == MARKER
    for garbage in (None, b"", b"{}", b"[1]", orjson.dumps({**orjson.loads(MARKER.encode()), "partitioner": "x"})):
        assert Marker.decode(garbage) is None


KEYS = [f"PRD-{n:05d}".encode() for n in range(300)]


def live_by(partitioner: str, partitions: int) -> dict[int, dict[bytes, tuple[int, int]]]:
    live: dict[int, dict[bytes, tuple[int, int]]] = {p: {} for p in range(partitions)}
    for offset, key in enumerate(KEYS):
        live[partition_for(partitioner, key, partitions)][key] = (offset, offset)
    return live


def test_auto_takes_the_one_that_explains_every_key_and_says_what_the_others_explain() -> None:
    summary = Summary(CHANGELOG, INPUT, dry_run=True, old=4, new=8)
    chosen = choose_partitioner(summary, detect(live_by("crc32", 4), 4, 8), None, False)
    assert chosen == "crc32"
    assert summary.how.startswith("auto: it puts all 300 keys where they are; murmur2 ")


def test_auto_refuses_when_no_partitioner_explains_every_key() -> None:
    summary = Summary(CHANGELOG, INPUT, dry_run=True, old=1, new=4)
    with pytest.raises(MigrateRefused, match="cannot tell which partitioner placed the keys: .* --partitioner"):
        choose_partitioner(summary, detect(live_by("crc32", 1), 1, 4), None, False)


def test_a_named_partitioner_that_misplaces_keys_is_refused_with_the_counts() -> None:
    summary = Summary(CHANGELOG, INPUT, dry_run=True, old=4, new=8)
    with pytest.raises(MigrateRefused, match=r"murmur2 puts only \d+ of the 300 keys where they are on 4 partitions"):
        choose_partitioner(summary, detect(live_by("crc32", 4), 4, 8), "murmur2", False)
    assert choose_partitioner(summary, detect(live_by("crc32", 4), 4, 8, ("crc32",)), "crc32", False) == "crc32"


def summary_of(*, dry_run: bool, **changes: Any) -> Summary:
    live = live_by("murmur2", 4)
    summary = Summary(CHANGELOG, INPUT, dry_run=dry_run, old=4, new=8, records=310, partitioner="murmur2",
                      how="auto: it puts all 300 keys where they are; crc32 80, fnv1a 70")
    summary.detection = Detection(300, {"murmur2": 300, "crc32": 80, "fnv1a": 70}, ["murmur2"], "murmur2", "")
    summary.plan = plan(live, "murmur2", 4, 8)
    for name, value in changes.items():
        setattr(summary, name, value)
    return summary


def test_dry_run_summary() -> None:
    summary = summary_of(dry_run=True)
    moved = len(summary.plan.moves) if summary.plan else 0
    text = summary.render()
    assert text.splitlines()[0] == (
        f"dry run: would migrate {CHANGELOG} from 4 to 8 partitions (the partitions of {INPUT}); nothing was written "
        f"(--execute does it)"
    )
    assert f"would move:   {moved:,} products (from partition 0 " in text and "  written:" not in text
    body = summary.as_dict()
    assert (body["dry_run"], body["moved"], body["stayed"], body["tombstones"]) == (True, moved, 300 - moved, moved)
    assert body["explained"] == {"murmur2": 300, "crc32": 80, "fnv1a": 70}


def test_executed_summary_counts_what_was_written() -> None:
    summary = summary_of(dry_run=False, grown=True, copied=140, tombstoned=140, seconds=1.5)
    text = summary.render()
    assert text.startswith(f"migrated {CHANGELOG} from 4 to 8 partitions (the partitions of {INPUT}) in 1.50s")
    assert "  written:      changelog grown to 8 partitions, 140 copies, 140 tombstones" in text


def test_a_stopped_migration_says_to_run_it_again() -> None:
    summary = summary_of(dry_run=False, copied=12, stopped_by=state.FAILED, stopped="the broker did not acknowledge")
    lines = summary.render().splitlines()
    assert "run the same command again to finish it" in lines[0]
    assert lines[-1] == "  stopped:      the broker did not acknowledge"


def test_undecided_events_of_moved_products_are_a_warning() -> None:
    assert "warning" not in summary_of(dry_run=True, undecided=Undecided(5, 0, 0)).render()
    text = summary_of(dry_run=True, undecided=Undecided(5, 3, 2)).render()
    assert "warning:      3 undecided events of 2 moved products wait on their old partition" in text


def test_nothing_to_do_is_one_line() -> None:
    summary = Summary(CHANGELOG, INPUT, dry_run=True, nothing="nothing here")
    assert summary.render() == "nothing to do: nothing here"


@pytest.mark.parametrize(
    ("raised", "code"),
    [
        (MigrateRefused("the consumer group compliance-worker has 1 active member: stop every worker"), 2),
        (MigrateBrokerError("cannot reach Kafka at localhost:9092: timed out"), 1),
    ],
)
def test_refusals_exit_2_and_broker_failures_1_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], raised: Exception, code: int,
) -> None:
    async def migrate(*args: Any, **kwargs: Any) -> Summary:
        raise raised

    monkeypatch.setattr(state, "migrate", migrate)
    assert main(["state", "migrate", "--execute"], env={}) == code
    out, err = capsys.readouterr()
    assert out == "" and err == f"compliance-worker state migrate: {raised}\n"


@pytest.mark.parametrize(
    ("summary", "code"),
    [
        (Summary(CHANGELOG, INPUT, dry_run=False, nothing="x"), 0),
        (Summary(CHANGELOG, INPUT, dry_run=False, stopped_by=state.FAILED, stopped="x"), 1),
        (Summary(CHANGELOG, INPUT, dry_run=False, stopped_by=state.INTERRUPTED, stopped="x"), 130),
    ],
)
def test_exit_codes_and_json(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], summary: Summary, code: int,
) -> None:
    async def migrate(*args: Any, **kwargs: Any) -> Summary:
        return summary

    monkeypatch.setattr(state, "migrate", migrate)
    assert main(["state", "migrate", "--json"], env={}) == code
    assert orjson.loads(capsys.readouterr().out)["stopped_by"] == summary.stopped_by


def test_an_unknown_partitioner_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["state", "migrate", "--partitioner", "consistent_random"], env={})
    assert exited.value.code == 2
    assert "invalid choice: 'consistent_random'" in capsys.readouterr().err
