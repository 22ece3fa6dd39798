"""`compliance-worker override set|clear|list` without a broker: arguments, the document, folding and the table
(the real broker: tests/integration/test_overrides_cli.py)."""

from __future__ import annotations

import getpass
from typing import Any

import orjson
import pytest

from worker.commands.cli import main
from worker.commands.overrides import (
    EXPIRED,
    IN_FORCE,
    INVALID,
    Entry,
    OverrideRecord,
    OverrideUsageError,
    build_override,
    default_author,
    describe_previous,
    fold,
    listed,
    render_table,
    rfc3339_millis,
    summary_line,
)
from worker.core.clock import format_timestamp
from worker.core.overrides import parse_override
from worker.core.policy import parse_instant

NOW = parse_instant("2026-11-29T10:00:00.250Z")
# Nothing listens there: an argument that wrongly passed validation fails with exit 1, not 2, and quickly.
NO_BROKER = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv), env=NO_BROKER)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def built(product_id: str = "P-1", **changes: Any) -> tuple[bytes, bytes, Any]:
    arguments: dict[str, Any] = {
        "decision": "block", "reason": "counterfeit batik", "reference": None, "author": "dewi", "expires": None,
        "now": NOW,
    }
    arguments.update(changes)
    return build_override(product_id, **arguments)


# --- override set: arguments --------------------------------------------------------------------------------------

SET = ("override", "set", "--timeout", "1")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        pytest.param(["P-1", "--decision", "block", "--author", "a"], "--reason: required", id="missing-reason"),
        pytest.param(["P-1", "--decision", "block", "--reason", "", "--author", "a"],
                     "--reason: expected a non-empty string", id="empty-reason"),
        pytest.param(["P-1", "--decision", "block", "--reason", " \t\n", "--author", "a"],
                     "--reason: expected a non-empty string", id="blank-reason"),
        pytest.param(["P-1", "--reason", "r", "--author", "a"], "--decision: must be allow or block, got 'None'",
                     id="missing-decision"),
        pytest.param(["P-1", "--decision", "deny", "--reason", "r", "--author", "a"],
                     "--decision: must be allow or block, got 'deny'", id="bad-decision"),
        pytest.param(["P-1", "--decision", "BLOCK", "--reason", "r", "--author", "a"],
                     "--decision: must be allow or block, got 'BLOCK'", id="decision-upper-case"),
        pytest.param(["P-1", "--decision", "block", "--reason", "r" * 2001, "--author", "a"],
                     "--reason: longer than 2000 characters", id="oversize-reason"),
        pytest.param(["P-1", "--decision", "block", "--reason", "r", "--reference", "T" * 129, "--author", "a"],
                     "--reference: longer than 128 characters", id="oversize-reference"),
        pytest.param(["P-1", "--decision", "block", "--reason", "r", "--reference", "", "--author", "a"],
                     "--reference: expected a non-empty string", id="empty-reference"),
        pytest.param(["P-1", "--decision", "block", "--reason", "r", "--author", "a" * 129],
                     "--author: longer than 128 characters", id="oversize-author"),
        pytest.param(["P-1", "--decision", "block", "--reason", "r", "--author", ""],
                     "--author: expected a non-empty string", id="empty-author"),
        pytest.param(["", "--decision", "block", "--reason", "r", "--author", "a"], "PRODUCT_ID: must not be empty",
                     id="empty-product-id"),
        pytest.param(["P" * 129, "--decision", "block", "--reason", "r", "--author", "a"],
                     "PRODUCT_ID: longer than 128 characters (no product id is)", id="oversize-product-id"),
        pytest.param(["P-\udcff", "--decision", "block", "--reason", "r", "--author", "a"],
                     "PRODUCT_ID: not valid UTF-8", id="product-id-not-utf8"),
        pytest.param(["P-1", "--decision", "block", "--reason", "r", "--author", "a", "--expires", "next week"],
                     "--expires: 'next week' is not a date (2026-12-01) or an RFC 3339 timestamp (2026-12-01T00:00:00Z)",
                     id="expiry-not-a-time"),
        pytest.param(["P-1", "--decision", "block", "--reason", "r", "--author", "a", "--expires", "2026-02-30"],
                     "--expires: '2026-02-30' is not a real date and time (day is out of range for month)",
                     id="expiry-impossible-date"),
        pytest.param(["P-1", "--decision", "block", "--reason", "r", "--author", "a", "--expires", "2026-12-01T00:00:00"],
                     "--expires: '2026-12-01T00:00:00' is not a date (2026-12-01) or an RFC 3339 timestamp "
                     "(2026-12-01T00:00:00Z)", id="expiry-without-offset"),
    ],
)
def test_set_refuses_bad_arguments_in_one_line_with_exit_2(
    capsys: pytest.CaptureFixture[str], arguments: list[str], message: str,
) -> None:
    assert run(capsys, *SET, *arguments) == (2, "", f"compliance-worker override set: {message}\n")


def test_set_refuses_an_expiry_in_the_past(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, *SET, "P-1", "--decision", "allow", "--reason", "r", "--author", "a",
                         "--expires", "2020-01-01T00:00:00+07:00")
    assert (code, out) == (2, "")
    assert err.startswith(
        "compliance-worker override set: --expires 2020-01-01T00:00:00+07:00 is not in the future (now: 20"
    ) and err.endswith("): the override would never be in force\n") and err.count("\n") == 1, err


@pytest.mark.parametrize(
    "expires",
    [pytest.param(format_timestamp(NOW), id="now"), pytest.param("2026-11-29T10:00:00.249Z", id="a-millisecond-ago")],
)
def test_an_expiry_at_or_before_now_is_refused(expires: str) -> None:
    with pytest.raises(OverrideUsageError, match="is not in the future"):
        built(expires=expires)


def test_an_expiry_a_millisecond_ahead_is_taken() -> None:
    _, _, override = built(expires="2026-11-29T10:00:00.251Z")
    assert override.expires_at == "2026-11-29T10:00:00.251Z" and override.in_force(NOW)


# --- override set: the document -----------------------------------------------------------------------------------


def test_the_document_is_what_parse_override_reads_back() -> None:
    key, value, override = built("P-Ü/1", decision="allow", reason="Appeal accepted", reference="APPEAL-7",
                                 expires="2027-01-01")
    assert key == "P-Ü/1".encode()
    assert orjson.loads(value) == {
        "decision": "allow", "reason": "Appeal accepted", "reference": "APPEAL-7", "author": "dewi",
        "created_at": "2026-11-29T10:00:00.250Z", "expires_at": "2027-01-01T00:00:00.000Z",
    }
    assert list(orjson.loads(value)) == list(override.document())  # the field order of Override.document()
    assert parse_override(key, value) == override
    assert (override.product_id, override.decision, override.expires_at_s) == ("P-Ü/1", "allow", parse_instant("2027-01-01"))


def test_without_reference_or_expiry_the_document_says_null_and_leaves_out_expires_at() -> None:
    _, value, override = built()
    assert orjson.loads(value) == {
        "decision": "block", "reason": "counterfeit batik", "reference": None, "author": "dewi",
        "created_at": "2026-11-29T10:00:00.250Z",
    }
    assert override.expires_at is None and override.in_force(NOW + 10 * 365 * 86400)


@pytest.mark.parametrize(
    ("written", "stored"),
    [
        pytest.param("2027-01-01", "2027-01-01T00:00:00.000Z", id="date-is-midnight-utc"),
        pytest.param("2027-01-01T07:00:00+07:00", "2027-01-01T00:00:00.000Z", id="offset-to-utc"),
        pytest.param("2026-12-31T20:30:00-03:30", "2027-01-01T00:00:00.000Z", id="negative-offset-to-utc"),
        pytest.param("2027-01-01T00:00:00.123Z", "2027-01-01T00:00:00.123Z", id="millis-kept-exactly"),
        pytest.param("2027-01-01T00:00:00.999Z", "2027-01-01T00:00:00.999Z", id="millis-999"),
        pytest.param("2027-01-01T00:00:00.1Z", "2027-01-01T00:00:00.100Z", id="tenths"),
        pytest.param("2027-01-01T00:00:00.123456789Z", "2027-01-01T00:00:00.123Z", id="nanos-to-millis"),
        pytest.param("2027-01-01T00:00:00.123999999Z", "2027-01-01T00:00:00.124Z", id="nanos-rounded-to-the-nearest"),
        pytest.param("2027-01-01T23:59:59.9999Z", "2027-01-02T00:00:00.000Z", id="rounded-into-the-next-day"),
    ],
)
def test_the_expiry_is_written_in_utc_with_millis(written: str, stored: str) -> None:
    _, value, override = built(expires=written)
    assert orjson.loads(value)["expires_at"] == override.expires_at == stored


def test_millis_are_rounded_not_truncated_by_floating_point() -> None:
    """clock.format_timestamp truncates, which turns .123 into .122 for this instant; the override's expiry must not."""
    epoch = parse_instant("2026-11-29T10:00:00.123Z")
    assert format_timestamp(epoch).endswith(".122Z")  # why rfc3339_millis exists
    assert rfc3339_millis(epoch) == "2026-11-29T10:00:00.123Z"


def test_the_default_author_is_the_os_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(getpass, "getuser", lambda: "dewi.lestari")
    assert default_author() == "dewi.lestari"


def test_no_os_user_asks_for_author(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def nobody() -> str:
        raise OSError("No username set in the environment")

    monkeypatch.setattr(getpass, "getuser", nobody)
    assert run(capsys, *SET, "P-1", "--decision", "block", "--reason", "r") == (
        2, "", "compliance-worker override set: cannot tell who you are (no login name for this user): pass --author NAME\n",
    )


def test_a_valid_set_goes_on_to_the_broker(capsys: pytest.CaptureFixture[str]) -> None:
    """The validation tests above stop at exit 2; the same command with valid arguments reaches for the broker."""
    code, out, err = run(capsys, *SET, "P-1", "--decision", "block", "--reason", "r", "--author", "a")
    assert (code, out) == (1, "")
    assert err.startswith("compliance-worker override set: cannot reach Kafka at 127.0.0.1:1: "), err


@pytest.mark.parametrize("action", [["clear", "P-1"], ["list"]])
def test_clear_and_list_say_when_the_broker_cannot_be_reached(capsys: pytest.CaptureFixture[str], action: list[str]) -> None:
    code, out, err = run(capsys, "override", action[0], "--timeout", "1", *action[1:])
    assert (code, out) == (1, "")
    assert err.startswith(f"compliance-worker override {action[0]}: cannot reach Kafka at 127.0.0.1:1: ")
    assert err.count("\n") == 1


def test_clear_refuses_an_empty_product_id(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "override", "clear", "") == (2, "", "compliance-worker override clear: PRODUCT_ID: must not be empty\n")


# --- override list: folding ---------------------------------------------------------------------------------------


def document(decision: str = "block", expires_at: str | None = None, **changes: Any) -> bytes:
    body: dict[str, Any] = {
        "decision": decision, "reason": "why", "reference": None, "author": "dewi",
        "created_at": "2026-11-01T00:00:00.000Z", **changes,
    }
    if expires_at is not None:
        body["expires_at"] = expires_at
    return orjson.dumps(body)


def records(*items: tuple[bytes | None, bytes | None], partition: int = 0, first_offset: int = 0,
            timestamp_ms: int = 0) -> list[OverrideRecord]:
    return [
        OverrideRecord(partition, first_offset + index, timestamp_ms + index, key, value)
        for index, (key, value) in enumerate(items)
    ]


def summary(latest: dict[Any, Entry], now: float = NOW) -> dict[str, tuple[str, str | None, int]]:
    """product -> (status, decision, offset)"""
    return {
        str(entry.product_id): (entry.status(now), entry.override.decision if entry.override else None, entry.offset)
        for entry in latest.values()
    }


def test_the_latest_record_per_product_wins() -> None:
    latest = fold(records((b"P-1", document("block")), (b"P-2", document("allow")), (b"P-1", document("allow"))))
    assert summary(latest) == {"P-1": (IN_FORCE, "allow", 2), "P-2": (IN_FORCE, "allow", 1)}


def test_a_tombstone_removes_and_a_later_record_sets_again() -> None:
    cleared = records((b"P-1", document()), (b"P-2", document()), (b"P-1", None))
    assert summary(fold(cleared)) == {"P-2": (IN_FORCE, "block", 1)}
    assert summary(fold([*cleared, *records((b"P-1", document("allow")), first_offset=3)])) == {
        "P-1": (IN_FORCE, "allow", 3), "P-2": (IN_FORCE, "block", 1),
    }


def test_a_tombstone_for_an_unknown_product_is_nothing() -> None:
    assert fold(records((b"P-1", None))) == {}


def test_an_invalid_latest_record_means_no_override_even_after_a_valid_one() -> None:
    latest = fold(records((b"P-1", document("block")), (b"P-1", document("deny"))))
    (entry,) = latest.values()
    assert (entry.status(NOW), entry.override, entry.offset) == (INVALID, None, 1)
    assert entry.error == "decision: must be allow or block, got 'deny'"


def test_a_valid_record_after_an_invalid_one_is_in_force() -> None:
    latest = fold(records((b"P-1", b"{not json"), (b"P-1", document("allow"))))
    assert summary(latest) == {"P-1": (IN_FORCE, "allow", 1)}


@pytest.mark.parametrize(
    ("key", "value", "product_id", "error"),
    [
        pytest.param(b"P-1", b"[]", "P-1", "expected a JSON object", id="not-an-object"),
        pytest.param(b"P-1", document(reason=""), "P-1", "reason: expected a non-empty string", id="empty-reason"),
        pytest.param(b"P-1", document(expires_at="soon"), "P-1",
                     "expires_at: 'soon' is not a date (2026-12-01) or an RFC 3339 timestamp (2026-12-01T00:00:00Z)",
                     id="bad-expiry"),
        pytest.param(b"P-\xff", document(), "P-\\xff", "the key is not UTF-8", id="key-not-utf8"),
        pytest.param(b"", document(), "", "the key (product id) must have 1 to 128 characters", id="empty-key"),
        pytest.param(None, document(), None,
                     "the record has no key: the key is the product id the override is for", id="no-key"),
    ],
)
def test_invalid_records_are_entries_with_the_validation_message(
    key: bytes | None, value: bytes, product_id: str | None, error: str,
) -> None:
    (entry,) = fold(records((key, value))).values()
    assert (entry.product_id, entry.status(NOW), entry.error) == (product_id, INVALID, error)


def test_records_without_a_key_are_each_their_own_entry() -> None:
    latest = fold(records((None, document()), (None, document()), (None, None)))
    assert sorted((entry.offset, entry.status(NOW)) for entry in latest.values()) == [(0, INVALID), (1, INVALID)]


def test_across_partitions_the_later_timestamp_wins() -> None:
    """A product keeps its partition unless the topic's partition count changed; then the record time decides."""
    older = records((b"P-1", document("block")), partition=1, timestamp_ms=1_000)
    newer = records((b"P-1", document("allow")), partition=3, timestamp_ms=2_000)
    assert summary(fold([*older, *newer]))["P-1"][1] == "allow"
    assert summary(fold([*newer, *older]))["P-1"][1] == "allow"
    tombstone = records((b"P-1", None), partition=3, timestamp_ms=500)
    assert summary(fold([*older, *tombstone]))["P-1"][1] == "block"  # an older tombstone elsewhere clears nothing


def test_in_one_partition_the_offset_wins_whatever_the_timestamps() -> None:
    latest = fold([OverrideRecord(0, 0, 9_000, b"P-1", document("block")), OverrideRecord(0, 1, 1_000, b"P-1", document("allow"))])
    assert summary(latest)["P-1"][1] == "allow"


EXPIRY = "2026-12-01T00:00:00.000Z"


@pytest.mark.parametrize(
    ("now", "status"),
    [
        pytest.param(parse_instant(EXPIRY) - 0.001, IN_FORCE, id="a-millisecond-before"),
        pytest.param(parse_instant(EXPIRY), EXPIRED, id="at-the-expiry"),
        pytest.param(parse_instant(EXPIRY) + 86400, EXPIRED, id="a-day-after"),
    ],
)
def test_expiry_with_an_injected_clock(now: float, status: str) -> None:
    latest = fold(records((b"P-1", document(expires_at=EXPIRY)), (b"P-2", document()), (b"P-3", b"{}")))
    assert {entry.product_id: entry.status(now) for entry in latest.values()} == {"P-1": status, "P-2": IN_FORCE, "P-3": INVALID}
    assert [entry.product_id for entry in listed(latest, now, active=False)] == ["P-1", "P-2", "P-3"]
    assert [entry.product_id for entry in listed(latest, now, active=True)] == (["P-1", "P-2"] if status == IN_FORCE else ["P-2"])


def test_listed_sorts_by_product_id() -> None:
    latest = fold(records(*[(key.encode(), document()) for key in ("P-10", "P-2", "A-1", "P-1")]))
    assert [entry.product_id for entry in listed(latest, NOW, active=False)] == ["A-1", "P-1", "P-10", "P-2"]


# --- override list: what a person sees -------------------------------------------------------------------------


def test_the_table() -> None:
    latest = fold([
        *records((b"P-2", document("allow", expires_at="2027-01-01T00:00:00.000Z", reference="APPEAL-7", reason="r" * 80)),
                 partition=1),
        *records((b"P-1", document("block", expires_at="2026-11-01T00:00:00.000Z", author="system")), partition=2),
        *records((b"P-3", document("maybe")), (b"P-4\nx", document(reason="line one\nline two")), partition=3),
    ])
    assert render_table(listed(latest, NOW, active=False), NOW) == [
        "PRODUCT  DECISION  STATUS    EXPIRES                   REFERENCE  AUTHOR  CREATED_AT                REASON",
        "P-1      block     expired   2026-11-01T00:00:00.000Z  -          system  2026-11-01T00:00:00.000Z  why",
        "P-2      allow     in force  2027-01-01T00:00:00.000Z  APPEAL-7   dewi    2026-11-01T00:00:00.000Z  " + "r" * 59 + "…",
        "P-3      -         invalid   -                         -          -       -                         "
        "decision: must be allow or block, got 'maybe'",
        "P-4\\nx   block     in force  never                     -          dewi    2026-11-01T00:00:00.000Z  "
        "line one\\nline two",
    ]


def test_the_table_names_records_without_a_key_by_where_they_are() -> None:
    latest = fold(records((None, document()), partition=2, first_offset=40))
    assert render_table(listed(latest, NOW, active=False), NOW)[1].startswith(
        "(no key: partition 2 offset 40)  -         invalid"
    )


def test_an_empty_table_is_just_the_header() -> None:
    assert render_table([], NOW) == ["PRODUCT  DECISION  STATUS  EXPIRES  REFERENCE  AUTHOR  CREATED_AT  REASON"]


def test_the_summary_line() -> None:
    latest = fold(records((b"P-1", document(expires_at="2026-11-01")), (b"P-2", document()), (b"P-3", b"x"), (b"P-4", None)))
    assert summary_line(latest, NOW, topic="compliance.overrides", where="k:9092", records=4, active=False) == (
        "3 products with an override record on compliance.overrides at k:9092: 1 in force, 1 expired, 1 invalid; "
        "4 records read as of 2026-11-29T10:00:00.250Z"
    )
    assert summary_line(latest, NOW, topic="t", where="k:9092", records=4, active=True).endswith(
        "1 in force, 1 expired, 1 invalid (--active: only those in force shown); 4 records read as of 2026-11-29T10:00:00.250Z"
    )
    assert summary_line({}, NOW, topic="t", where="k", records=1, active=False).startswith(
        "0 products with an override record on t at k: 0 in force, 0 expired, 0 invalid; 1 record read"
    )


def test_json_lines_carry_every_field() -> None:
    latest = fold([
        *records((b"P-1", document(expires_at="2027-01-01T00:00:00.000Z", reference="T-1")), partition=2, first_offset=5),
        *records((b"P-2", b"{}"), partition=0),
    ])
    rows = [entry.as_dict(NOW, "compliance.overrides") for entry in listed(latest, NOW, active=False)]
    assert rows == [
        {"product_id": "P-1", "status": "in_force", "decision": "block", "reason": "why", "reference": "T-1",
         "author": "dewi", "created_at": "2026-11-01T00:00:00.000Z", "expires_at": "2027-01-01T00:00:00.000Z",
         "error": None, "topic": "compliance.overrides", "partition": 2, "offset": 5},
        {"product_id": "P-2", "status": "invalid", "decision": None, "reason": None, "reference": None, "author": None,
         "created_at": None, "expires_at": None, "error": "decision: must be allow or block, got 'None'",
         "topic": "compliance.overrides", "partition": 0, "offset": 0},
    ]


@pytest.mark.parametrize(
    ("items", "said"),
    [
        pytest.param([], "it had none", id="none"),
        pytest.param([(b"P-1", document("allow"))],
                     "it had allow in force until cleared, set by dewi at 2026-11-01T00:00:00.000Z", id="in-force"),
        pytest.param([(b"P-1", document("block", expires_at="2027-01-01T00:00:00.000Z"))],
                     "it had block in force until 2027-01-01T00:00:00.000Z, set by dewi at 2026-11-01T00:00:00.000Z",
                     id="in-force-until"),
        pytest.param([(b"P-1", document("block", expires_at="2026-11-02T00:00:00.000Z"))],
                     "it had block, set by dewi at 2026-11-01T00:00:00.000Z, expired at 2026-11-02T00:00:00.000Z",
                     id="expired"),
        pytest.param([(b"P-1", document("allow")), (b"P-1", b"[]")],
                     "its latest record was invalid (expected a JSON object), so none was in force", id="invalid"),
        pytest.param([(b"P-1", document("allow")), (b"P-1", None)], "it had none", id="cleared-before"),
    ],
)
def test_what_clear_says_it_replaced(items: list[tuple[bytes, bytes | None]], said: str) -> None:
    assert describe_previous(fold(records(*items)).get(b"P-1"), NOW) == said
