"""`compliance-worker dead-letters replay` without a broker: what is selected, skipped and published, and the summary
(the real broker and worker: tests/integration/interop/test_replay.py)."""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import AsyncIterator, Iterable
from typing import Any

import orjson
import pytest

from worker.commands import dead_letters
from worker.commands.cli import main
from worker.commands.dead_letters import (
    FAILED,
    INTERRUPTED,
    LIMIT,
    NOT_SELECTED,
    PAYLOAD_OMITTED,
    REPLAY_HEADER,
    SELECTED,
    SKIPPED,
    TOMBSTONE_WITHOUT_KEY,
    UNREADABLE,
    DeadLetterRecord,
    Filters,
    Replay,
    ReplayUsageError,
    Summary,
    judge,
    replay,
)
from worker.core.policy import parse_instant
from worker.stream.processing import dead_letter_record

DLT = "compliance.dead-letter"
INPUT = "catalog.product-upserts"
PARTITIONS = frozenset(range(4))
EVENT = b'{"event_id": "e-1",  "product": {"id": "P-1"}}'  # the spacing is part of the bytes a replay keeps
FAILED_AT = "2026-11-29T10:00:00.124Z"
TRACE = ("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")


def letter(
    code: str = "NO_EXCHANGE_RATE", *, raw: bytes | None = EVENT, key: bytes | None = b"P-1", topic: str = INPUT,
    partition: int = 2, offset: int = 41, failed_at: str | None = FAILED_AT, **changes: Any,
) -> bytes:
    """A dead letter as the worker writes it (worker/stream/processing.py), with ``changes`` applied to its JSON."""
    body = dead_letter_record(raw, key, topic, partition, offset, code, "why", failed_at or FAILED_AT)
    if failed_at is None:
        del body["failed_at"]
    for name, value in changes.items():
        if value is ...:
            body.pop(name, None)
        else:
            body[name] = value
    return orjson.dumps(body)


def record(
    value: bytes | None = None, *, key: bytes | None = b"P-1", partition: int = 0, offset: int = 7,
    headers: tuple[tuple[str, bytes | None], ...] = (TRACE, ("x-source", b"catalog-7")), timestamp_ms: int = 0,
) -> DeadLetterRecord:
    return DeadLetterRecord(partition, offset, timestamp_ms, key, letter() if value is None else value, headers)


def judged(item: DeadLetterRecord, filters: Filters = Filters(), target: str = INPUT) -> dead_letters.Verdict:
    return judge(item, filters, dead_letter_topic=DLT, target_topic=target, target_partitions=PARTITIONS)


# --- what one dead letter becomes ------------------------------------------------------------------------------


def test_a_selected_dead_letter_replays_key_bytes_and_headers_exactly_then_names_itself() -> None:
    headers = (TRACE, ("x-source", b"catalog-7"), ("x-null", None), ("x-source", b"again"))
    verdict = judged(record(key=b"P-1", partition=3, offset=17, headers=headers))
    assert verdict == (SELECTED, "NO_EXCHANGE_RATE", Replay(
        b"P-1", EVENT, (*headers, (REPLAY_HEADER, f"{DLT}/3/17".encode())), 2,
    ), None, None)


@pytest.mark.parametrize(
    ("record_key", "source_key", "replayed_key"),
    [
        pytest.param(b"P-\xff-1", b"P-\xff-1", b"P-\xff-1", id="record-key-bytes-not-the-replaced-json-copy"),
        pytest.param("P-Ü-1".encode(), "P-Ü-1".encode(), "P-Ü-1".encode(), id="utf8-key"),
        pytest.param(None, b"P-1", b"P-1", id="no-record-key-falls-back-to-source-key"),
        pytest.param(None, None, None, id="null-key-stays-null"),
        pytest.param(b"", b"", b"", id="empty-key-is-not-null"),
    ],
)
def test_the_key_is_the_record_key_bytes(record_key: bytes | None, source_key: bytes | None, replayed_key: bytes | None) -> None:
    value = letter("KEY_MISMATCH", key=source_key)
    verdict = judged(record(value, key=record_key))
    assert verdict.replay is not None and verdict.replay.key == replayed_key


@pytest.mark.parametrize(
    ("target", "source_partition", "partition"),
    [
        pytest.param(INPUT, 2, 2, id="back-to-its-partition"),
        pytest.param("other.topic", 2, None, id="another-topic-partitions-by-key"),
        pytest.param(INPUT, 9, None, id="partition-the-topic-lacks-partitions-by-key"),
    ],
)
def test_the_partition_is_the_original_one_on_the_original_topic(target: str, source_partition: int, partition: int | None) -> None:
    verdict = judged(record(letter(partition=source_partition)), target=target)
    assert verdict.replay is not None and verdict.replay.partition == partition


@pytest.mark.parametrize(
    ("value", "kind", "code", "reason"),
    [
        pytest.param(letter(), SELECTED, "NO_EXCHANGE_RATE", None, id="policy-code"),
        pytest.param(letter("INVALID_JSON", raw=b"{not json"), SELECTED, "INVALID_JSON", None, id="message-code"),
        pytest.param(letter("INVALID_JSON", raw=b""), SELECTED, "INVALID_JSON", None, id="empty-value"),
        pytest.param(letter("TOMBSTONE_WITHOUT_KEY", raw=None, key=None), SKIPPED, "TOMBSTONE_WITHOUT_KEY",
                     TOMBSTONE_WITHOUT_KEY, id="tombstone-without-key"),
        pytest.param(letter("PAYLOAD_TOO_LARGE", payload_base64="", payload_omitted_bytes=9_000_000), SKIPPED,
                     "PAYLOAD_TOO_LARGE", PAYLOAD_OMITTED, id="payload-omitted"),
        pytest.param(letter(payload_base64="", payload_omitted_bytes=0), SKIPPED, "NO_EXCHANGE_RATE", PAYLOAD_OMITTED,
                     id="payload-omitted-zero-bytes"),
        pytest.param(None, SKIPPED, "", UNREADABLE, id="null-value"),
        pytest.param(b"{nope", SKIPPED, "", UNREADABLE, id="not-json"),
        pytest.param(b"[1]", SKIPPED, "", UNREADABLE, id="not-an-object"),
        pytest.param(letter(error={"message": "x"}), SKIPPED, "", UNREADABLE, id="no-code"),
        pytest.param(letter(source={"topic": INPUT, "partition": "2", "offset": 1, "key": None}), SKIPPED, "",
                     UNREADABLE, id="source-partition-not-a-number"),
        pytest.param(letter(payload_base64=...), SKIPPED, "", UNREADABLE, id="no-payload"),
        pytest.param(letter(payload_base64="not base64!"), SKIPPED, "", UNREADABLE, id="payload-not-base64"),
        pytest.param(letter(payload_base64="aGVs*bG8="), SKIPPED, "", UNREADABLE, id="payload-base64-with-a-stray-character"),
    ],
)
def test_what_each_dead_letter_becomes(value: bytes | None, kind: str, code: str, reason: str | None) -> None:
    item = DeadLetterRecord(0, 7, 0, b"P-1", value, ())
    verdict = judged(item)
    assert (verdict.kind, verdict.code, verdict.reason) == (kind, code, reason)
    assert (verdict.replay is not None) == (kind == SELECTED)


def test_a_replayed_value_is_the_decoded_payload() -> None:
    raw = bytes(range(256))
    verdict = judged(record(letter("INVALID_UTF8", raw=raw)))
    assert verdict.replay is not None and verdict.replay.value == raw


def test_an_omitted_payload_points_at_the_original() -> None:
    value = letter("PAYLOAD_TOO_LARGE", partition=1, offset=991, payload_base64="", payload_omitted_bytes=9_437_184)
    assert judged(record(value, partition=0, offset=17)).detail == (
        f"skipped {DLT} partition 0 offset 17 (PAYLOAD_TOO_LARGE): its 9,437,184 bytes were left out of the dead "
        f"letter; the original is at {INPUT} partition 1 offset 991"
    )


def test_an_unreadable_record_says_where_and_why() -> None:
    assert judged(record(b"[1]", partition=3, offset=5)).detail == (
        f"skipped {DLT} partition 3 offset 5: not a dead-letter record (not a JSON object)"
    )


# --- filters ---------------------------------------------------------------------------------------------------

AT = parse_instant(FAILED_AT)


@pytest.mark.parametrize(
    ("filters", "value", "kind"),
    [
        pytest.param(Filters(), letter(), SELECTED, id="no-filters"),
        pytest.param(Filters(codes=frozenset({"NO_EXCHANGE_RATE"})), letter(), SELECTED, id="code-matches"),
        pytest.param(Filters(codes=frozenset({"INVALID_JSON", "PRICE_REQUIRED"})), letter(), NOT_SELECTED, id="code-differs"),
        pytest.param(Filters(codes=frozenset({"INVALID_JSON"})), letter("TOMBSTONE_WITHOUT_KEY", raw=None, key=None),
                     NOT_SELECTED, id="unselected-tombstone-is-not-a-skip"),
        pytest.param(Filters(codes=frozenset({"INVALID_JSON"})), b"[1]", SKIPPED, id="unreadable-is-reported-whatever-the-code"),
        pytest.param(Filters(since=AT), letter(), SELECTED, id="since-is-inclusive"),
        pytest.param(Filters(since=AT + 0.001), letter(), NOT_SELECTED, id="failed-before-since"),
        pytest.param(Filters(until=AT), letter(), NOT_SELECTED, id="until-is-exclusive"),
        pytest.param(Filters(until=AT + 0.001), letter(), SELECTED, id="failed-before-until"),
        pytest.param(Filters(since=AT - 60, until=AT + 60, codes=frozenset({"NO_EXCHANGE_RATE"})), letter(), SELECTED,
                     id="all-filters-match"),
    ],
)
def test_filters(filters: Filters, value: bytes, kind: str) -> None:
    assert judged(record(value), filters).kind == kind


@pytest.mark.parametrize(
    ("failed_at", "timestamp_ms", "kind"),
    [
        pytest.param(FAILED_AT, 0, SELECTED, id="failed-at-decides-not-the-record-timestamp"),
        pytest.param(None, int(AT * 1000), SELECTED, id="no-failed-at-record-timestamp-inside"),
        pytest.param(None, int(AT * 1000) - 1, NOT_SELECTED, id="no-failed-at-record-timestamp-before"),
        pytest.param("yesterday", int(AT * 1000), SELECTED, id="unparseable-failed-at-record-timestamp-inside"),
    ],
)
def test_time_is_failed_at_else_the_record_timestamp(failed_at: str | None, timestamp_ms: int, kind: str) -> None:
    value = letter(failed_at=failed_at)
    assert judged(record(value, timestamp_ms=timestamp_ms), Filters(since=AT)).kind == kind


@pytest.mark.parametrize(
    ("filters", "partition", "beginning", "end", "expected"),
    [
        pytest.param(Filters(), 0, 0, 10, (0, 10), id="everything"),
        pytest.param(Filters(), 0, 4, 10, (4, 10), id="from-the-log-start"),
        pytest.param(Filters(), 0, 10, 10, (10, 10), id="empty-partition"),
        pytest.param(Filters(partition=1), 0, 0, 10, (10, 10), id="other-partition-read-nothing"),
        pytest.param(Filters(partition=1, from_offset=3, to_offset=5), 1, 0, 10, (3, 6), id="to-offset-inclusive"),
        pytest.param(Filters(partition=1, from_offset=3), 1, 5, 10, (5, 10), id="from-before-log-start"),
        pytest.param(Filters(partition=1, to_offset=30), 1, 0, 10, (0, 10), id="to-past-the-end"),
        pytest.param(Filters(partition=1, from_offset=12), 1, 0, 10, (12, 12), id="from-past-the-end"),
    ],
)
def test_offset_range(filters: Filters, partition: int, beginning: int, end: int, expected: tuple[int, int]) -> None:
    assert filters.offset_range(partition, beginning, end) == expected


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        pytest.param(Filters(from_offset=3), "--from-offset and --to-offset need --partition: offsets count within one partition",
                     id="offset-without-partition"),
        pytest.param(Filters(to_offset=3), "--from-offset and --to-offset need --partition: offsets count within one partition",
                     id="to-offset-without-partition"),
        pytest.param(Filters(partition=0, from_offset=5, to_offset=4), "--to-offset 4 is before --from-offset 5",
                     id="backwards-offsets"),
        pytest.param(Filters(since=AT, until=AT), f"--until {FAILED_AT} is not after --since {FAILED_AT}", id="empty-time-range"),
    ],
)
def test_filters_that_cannot_work(filters: Filters, message: str) -> None:
    with pytest.raises(ReplayUsageError) as caught:
        filters.check()
    assert caught.value.message == message


def test_filters_that_work() -> None:
    Filters(partition=0, from_offset=4, to_offset=4, since=AT, until=AT + 1).check()


# --- the replay loop -------------------------------------------------------------------------------------------


class Source:
    """Dead-letter records in read order; optionally cancels the running task when it reaches ``cancel_at``."""

    def __init__(self, records: Iterable[DeadLetterRecord], ranges: dict[int, tuple[int, int]], cancel_at: int | None = None):
        self.records, self.ranges, self.cancel_at = list(records), ranges, cancel_at

    async def __aiter__(self) -> AsyncIterator[DeadLetterRecord]:
        for index, item in enumerate(self.records):
            if index == self.cancel_at:
                task = asyncio.current_task()
                assert task is not None
                task.cancel()
                await asyncio.sleep(0)  # where the cancellation is delivered, as at the consumer's next fetch
            yield item


class Broker:
    """Acknowledges every send at once, except the ones at the indexes in ``refuse``; ``refuse_later`` maps the index
    of a send to the one whose sending makes the broker refuse it (acknowledgements come back after later sends)."""

    def __init__(self, refuse: Iterable[int] = (), refuse_later: dict[int, int] | None = None) -> None:
        self.sent: list[Replay] = []
        self.refuse = set(refuse)
        self.refuse_later = refuse_later or {}
        self.pending: dict[int, asyncio.Future[Any]] = {}

    async def send(self, item: Replay) -> asyncio.Future[Any]:
        index = len(self.sent)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if index in self.refuse:
            future.set_exception(RuntimeError("MessageSizeTooLargeError"))
        elif index in self.refuse_later:
            self.pending[self.refuse_later[index]] = future
        else:
            future.set_result(None)
        self.sent.append(item)
        if index in self.pending:
            self.pending.pop(index).set_exception(RuntimeError("NotEnoughReplicasError"))
        return future


def mixed() -> list[DeadLetterRecord]:
    """Two partitions: policy dead letters, an INVALID_JSON one, a tombstone, an omitted payload, a stranger."""
    return [
        record(letter(raw=b"a"), partition=0, offset=0),
        record(letter("INVALID_JSON", raw=b"{"), partition=1, offset=0),
        record(letter(raw=b"b"), partition=0, offset=1),
        record(letter("TOMBSTONE_WITHOUT_KEY", raw=None, key=None), partition=1, offset=1),
        record(letter(raw=b"c", payload_base64="", payload_omitted_bytes=10), partition=0, offset=2),
        record(b"hello", partition=1, offset=2),
        record(letter("PRICE_REQUIRED", raw=b"d"), partition=0, offset=3),
    ]


RANGES = {0: (0, 4), 1: (0, 3)}


def run_replay(
    records: list[DeadLetterRecord], broker: Broker | None, filters: Filters = Filters(), limit: int | None = None,
    cancel_at: int | None = None, ranges: dict[int, tuple[int, int]] = RANGES,
) -> tuple[Summary, list[str]]:
    reported: list[str] = []
    summary = Summary(DLT, INPUT, dry_run=broker is None, started_at=AT)
    asyncio.run(replay(
        Source(records, ranges, cancel_at), lambda item: judged(item, filters), summary,
        send=broker.send if broker is not None else None, limit=limit, report=reported.append,
    ))
    return summary, reported


def test_a_dry_run_publishes_nothing_and_counts_what_it_would() -> None:
    summary, reported = run_replay(mixed(), None, Filters(codes=frozenset({"NO_EXCHANGE_RATE", "PRICE_REQUIRED", "TOMBSTONE_WITHOUT_KEY"})))
    assert summary.as_dict() == {
        "dry_run": True, "dead_letter_topic": DLT, "target_topic": INPUT, "started_at": FAILED_AT,
        "read": 7, "selected": 3, "replayed": 0,
        "by_code": {"NO_EXCHANGE_RATE": 2, "PRICE_REQUIRED": 1},
        "partitions": {"0": {"first_offset": 0, "last_offset": 3, "count": 3}},
        "skipped": {PAYLOAD_OMITTED: 1, TOMBSTONE_WITHOUT_KEY: 1, UNREADABLE: 1},
        "not_selected": {"INVALID_JSON": 1},
        "stopped_by": None, "stopped": None, "resume_from": {},
    }
    assert reported == [
        f"skipped {DLT} partition 0 offset 2 (NO_EXCHANGE_RATE): its 10 bytes were left out of the dead letter; "
        f"the original is at {INPUT} partition 2 offset 41",
        f"skipped {DLT} partition 1 offset 2: not a dead-letter record (not JSON)",
    ]


def test_execute_publishes_the_selected_in_dead_letter_order() -> None:
    broker = Broker()
    summary, _ = run_replay(mixed(), broker)
    assert [(item.value, item.headers[-1]) for item in broker.sent] == [
        (b"a", (REPLAY_HEADER, f"{DLT}/0/0".encode())), (b"{", (REPLAY_HEADER, f"{DLT}/1/0".encode())),
        (b"b", (REPLAY_HEADER, f"{DLT}/0/1".encode())), (b"d", (REPLAY_HEADER, f"{DLT}/0/3".encode())),
    ]
    assert (summary.replayed, summary.selected.total(), summary.stopped_by, summary.resume) == (4, 4, None, {})


def test_limit_stops_after_that_many_and_says_where_to_go_on() -> None:
    broker = Broker()
    summary, _ = run_replay(mixed(), broker, limit=2)
    assert [item.value for item in broker.sent] == [b"a", b"{"]
    assert (summary.replayed, summary.read, summary.stopped_by, summary.resume) == (2, 2, LIMIT, {0: 1, 1: 1})


def test_a_refused_record_stops_the_replay_and_it_goes_on_from_there() -> None:
    broker = Broker(refuse={2})  # b"b", partition 0 offset 1
    summary, _ = run_replay(mixed(), broker)
    assert summary.stopped_by == FAILED
    assert summary.stopped == "the broker did not acknowledge a record: RuntimeError: MessageSizeTooLargeError"
    assert summary.replayed == 2  # a (0/0) and { (1/0); b was refused and nothing was sent after it
    assert summary.resume == {0: 1, 1: 1}


def test_a_record_refused_after_later_ones_were_sent_is_where_its_partition_goes_on() -> None:
    broker = Broker(refuse_later={0: 2})  # a (0/0) is refused once b (0/1) is sent; { (1/0) went through
    summary, _ = run_replay(mixed(), broker)
    assert [item.value for item in broker.sent] == [b"a", b"{", b"b"]
    assert summary.stopped == "the broker did not acknowledge a record: RuntimeError: NotEnoughReplicasError"
    assert (summary.replayed, summary.resume) == (2, {0: 0, 1: 1})  # { and b acknowledged; partition 0 again from a


def test_an_interrupted_replay_counts_what_was_acknowledged_and_where_to_go_on() -> None:
    broker = Broker()
    summary, _ = run_replay(mixed(), broker, cancel_at=3)
    assert [item.value for item in broker.sent] == [b"a", b"{", b"b"]
    assert (summary.replayed, summary.stopped_by, summary.resume) == (3, INTERRUPTED, {0: 2, 1: 1})


def test_a_finished_partition_needs_no_resuming() -> None:
    records = [record(letter(raw=b"a"), partition=0, offset=0), record(letter(raw=b"b"), partition=1, offset=5)]
    summary, _ = run_replay(records, Broker(), limit=1, ranges={0: (0, 1), 1: (5, 6)})
    assert (summary.stopped_by, summary.resume) == (LIMIT, {1: 5})


# --- what the operator reads -----------------------------------------------------------------------------------


def test_dry_run_summary() -> None:
    summary, _ = run_replay(mixed(), None, Filters(codes=frozenset({"NO_EXCHANGE_RATE", "INVALID_JSON"})))
    assert summary.render() == "\n".join([
        f"dry run: 3 of 7 dead letters read on {DLT} would be replayed to {INPUT}; nothing was published (--execute publishes)",
        "  by code:      INVALID_JSON 1, NO_EXCHANGE_RATE 2",
        "  from:         partition 0 offsets 0-1 (2), partition 1 offset 0 (1)",
        "  skipped:      1 payload omitted (read the original at its source), 1 not a dead-letter record",
        "  not selected: 2 (PRICE_REQUIRED 1, TOMBSTONE_WITHOUT_KEY 1)",
        "  note:         INVALID_JSON 1: a message's own bytes or key caused these; replayed unchanged they come back "
        "as dead letters unless the worker now accepts them",
    ])


def test_execute_summary_after_a_refusal() -> None:
    summary, _ = run_replay(mixed(), Broker(refuse={1}), Filters(codes=frozenset({"NO_EXCHANGE_RATE"})))
    summary.seconds = 0.25
    assert summary.render() == "\n".join([
        f"replayed 1 of 3 dead letters read on {DLT} to {INPUT} in 0.25s (1 selected but not acknowledged)",
        "  by code:      NO_EXCHANGE_RATE 2",
        "  from:         partition 0 offsets 0-1 (2)",
        "  skipped:      none",
        "  not selected: 1 (INVALID_JSON 1)",
        "  stopped:      the broker did not acknowledge a record: RuntimeError: MessageSizeTooLargeError",
        "  to go on:     --partition 0 --from-offset 1 (with the same other filters)",
        "  to go on:     --partition 1 --from-offset 1 (with the same other filters)",
        f"  next time:    dead letters of records replayed now fail after {FAILED_AT}: --since {FAILED_AT} selects only those",
    ])


def test_execute_summary_names_the_time_to_look_for_new_dead_letters_from() -> None:
    summary, _ = run_replay(mixed(), Broker(), Filters(codes=frozenset({"NO_EXCHANGE_RATE", "PRICE_REQUIRED"})))
    summary.seconds = 0.25
    assert summary.render() == "\n".join([
        f"replayed 3 of 7 dead letters read on {DLT} to {INPUT} in 0.25s",
        "  by code:      NO_EXCHANGE_RATE 2, PRICE_REQUIRED 1",
        "  from:         partition 0 offsets 0-3 (3)",
        "  skipped:      1 payload omitted (read the original at its source), 1 not a dead-letter record",
        "  not selected: 2 (INVALID_JSON 1, TOMBSTONE_WITHOUT_KEY 1)",
        f"  next time:    dead letters of records replayed now fail after {FAILED_AT}: --since {FAILED_AT} selects only those",
    ])


def test_progress_on_a_terminal_is_one_line_rewritten_then_cleared() -> None:
    out = io.StringIO()
    progress = dead_letters.Progress(out, total=7, dry_run=False)
    summary = Summary(DLT, INPUT, dry_run=False)
    summary.read, summary.replayed = 3, 2
    progress.update(summary)
    summary.read = 4
    progress.update(summary)  # within half a second of the last: not shown
    progress.clear()
    assert out.getvalue() == "\rread 3/~7 dead letters, 2 replayed \r\033[K"


def test_no_progress_line_is_cleared_when_none_was_shown() -> None:
    out = io.StringIO()
    dead_letters.Progress(out, total=7, dry_run=True).clear()
    assert out.getvalue() == ""


# --- the command line ------------------------------------------------------------------------------------------


def run(capsys: pytest.CaptureFixture[str], *argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    code = main(["dead-letters", "replay", *argv], env=env or {})
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        pytest.param(["--code", "NOPE"], "argument --code: 'NOPE' is not a dead-letter error code (PAYLOAD_TOO_LARGE, ",
                     id="unknown-code"),
        pytest.param(["--since", "yesterday"], "argument --since: 'yesterday' is not a date", id="bad-since"),
        pytest.param(["--until", "2026-11-29T10:00:00"], "argument --until: '2026-11-29T10:00:00' is not a date",
                     id="until-without-utc-offset"),
        pytest.param(["--partition", "-1"], "argument --partition: '-1' is not an offset or partition", id="negative-partition"),
        pytest.param(["--limit", "0"], "argument --limit: '0' is not a positive whole number", id="zero-limit"),
        pytest.param(["--to-topic", "bad topic"], "argument --to-topic: 'bad topic' is not a valid Kafka topic name",
                     id="bad-topic-name"),
        pytest.param(["--timeout", "0"], "argument --timeout: '0' is not a number of seconds above 0", id="zero-timeout"),
        pytest.param(["--exectue"], "unrecognized arguments: --exectue", id="misspelt-flag"),
    ],
)
def test_bad_arguments_exit_2_with_usage(capsys: pytest.CaptureFixture[str], argv: list[str], error: str) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["dead-letters", "replay", *argv], env={})
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: compliance-worker ") and f"error: {error}" in err, err


def test_codes_are_matched_in_any_case(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Filters] = []
    monkeypatch.setattr(dead_letters, "replay_from_kafka", lambda settings, filters, **_: seen.append(filters) or _never())
    with pytest.raises(RuntimeError, match="stop here"):
        run(capsys, "--code", "no_exchange_rate", "--code", "Price_Required")
    assert seen[0].codes == {"NO_EXCHANGE_RATE", "PRICE_REQUIRED"}


async def _never() -> None:
    raise RuntimeError("stop here")


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        pytest.param(["--from-offset", "3"], {}, "--from-offset and --to-offset need --partition: offsets count within one partition",
                     id="offset-without-partition"),
        pytest.param(["--since", "2026-12-01", "--until", "2026-11-30"], {},
                     "--until 2026-11-30T00:00:00.000Z is not after --since 2026-12-01T00:00:00.000Z", id="until-before-since"),
        pytest.param(["--to-topic", "dl"], {"DEAD_LETTER_TOPIC": "dl"},
                     "refusing to replay dl onto itself: --to-topic is the DEAD_LETTER_TOPIC", id="onto-itself"),
        pytest.param([], {"INPUT_TOPIC": "dl", "DEAD_LETTER_TOPIC": "dl"},
                     "refusing to replay dl onto itself: --to-topic is the DEAD_LETTER_TOPIC", id="input-is-the-dead-letter-topic"),
        pytest.param([], {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"},
                     "KAFKA_SASL_USERNAME must be set with KAFKA_SECURITY_PROTOCOL=SASL_SSL", id="bad-settings"),
    ],
)
def test_arguments_that_cannot_work_exit_2_with_one_line_before_contacting_kafka(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, argv: list[str], env: dict[str, str], message: str,
) -> None:
    monkeypatch.setattr(dead_letters, "replay_from_kafka", lambda *a, **k: pytest.fail("contacted Kafka"))
    assert run(capsys, *argv, env=env) == (2, "", f"compliance-worker dead-letters replay: {message}\n")


def test_nothing_listening_exits_1_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """The real reader against a closed port: one line, exit 1, no traceback."""
    code, out, err = run(capsys, "--bootstrap", "127.0.0.1:1", "--timeout", "5")
    assert (code, out) == (1, "")
    assert err.startswith("compliance-worker dead-letters replay: cannot reach Kafka at 127.0.0.1:1: "), err
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("stopped_by", "exit_code"),
    [
        pytest.param(None, 0, id="done"),
        pytest.param(LIMIT, 0, id="limit"),
        pytest.param(FAILED, 1, id="broker-refused"),
        pytest.param(INTERRUPTED, 130, id="interrupted"),
    ],
)
def test_exit_codes_and_json_summary(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, stopped_by: str | None, exit_code: int,
) -> None:
    async def fake(settings: Any, filters: Filters, *, target_topic: str, execute: bool, **_: Any) -> Summary:
        summary = Summary(settings.dead_letter_topic, target_topic, dry_run=not execute, started_at=AT)
        if stopped_by is not None:
            summary.stop(stopped_by, "why")
        return summary

    monkeypatch.setattr(dead_letters, "replay_from_kafka", fake)
    code, out, err = run(capsys, "--execute", "--json", "--to-topic", "elsewhere", env={"DEAD_LETTER_TOPIC": "dl"})
    assert (code, err) == (exit_code, "")
    assert orjson.loads(out) == {
        "dry_run": False, "dead_letter_topic": "dl", "target_topic": "elsewhere", "started_at": FAILED_AT, "read": 0,
        "selected": 0, "replayed": 0, "by_code": {}, "partitions": {}, "skipped": {}, "not_selected": {},
        "stopped_by": stopped_by, "stopped": None if stopped_by is None else "why", "resume_from": {},
    }


def test_base64_of_the_worker_round_trips() -> None:
    """The dead letter's payload is the worker's own base64 of the input bytes: decoded, the same bytes."""
    raw = "Kemeja batik — ü".encode() + b"\x00\xff"
    assert base64.b64decode(orjson.loads(letter(raw=raw))["payload_base64"]) == raw
