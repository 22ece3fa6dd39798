"""The fault tests' oracle: each input offset's decisions and dead letters, read back by their source and checked."""

from __future__ import annotations

import base64
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from tests.integration.kafka import Record
from worker.core import InvalidEvent, decode_event
from worker.core.errors import ErrorCode

Source = tuple[int, int]  # input (partition, offset)

# What makes two decisions of one event the same decision; `decided_at`, `previous_decision` and `changed` may
# differ on a repeat (the product's state recovered after a crash can already hold the first copy).
DECISION_FIELDS = (
    "decision_id", "event_id", "product_id", "product_version", "decision", "cluster", "cross_border", "reasons",
    "policy_version", "source",
)
IN_FORCE = ("decision", "cluster", "cross_border")


@dataclass
class Output:
    """One decision or dead letter with where it sits on its output topic."""

    record: Record
    body: dict[str, Any]
    dead_letter: bool


@dataclass
class Outputs:
    """Every output by the input offset it came from."""

    by_source: dict[Source, list[Output]] = field(default_factory=lambda: defaultdict(list))

    @classmethod
    def read(cls, decisions: Iterable[Record], dead_letters: Iterable[Record]) -> Outputs:
        outputs = cls()
        for records, dead in ((decisions, False), (dead_letters, True)):
            for record in records:
                if record.value is None:
                    continue  # a forwarded tombstone names no source
                body = orjson.loads(record.value)
                source = body["source"]
                outputs.by_source[(source["partition"], source["offset"])].append(Output(record, body, dead))
        return outputs

    @property
    def repeats(self) -> int:
        """Outputs beyond the first of each input offset."""
        return sum(len(found) - 1 for found in self.by_source.values())

    def repeated(self) -> set[Source]:
        return {source for source, found in self.by_source.items() if len(found) > 1}

    def decision_count(self) -> int:
        return sum(1 for found in self.by_source.values() for output in found if not output.dead_letter)


def check_against_input(inputs: dict[Source, Record], outputs: Outputs) -> list[str]:
    """Problems, if any: every input offset has at least one output, of the right kind, for the right message.

    A valid event has only decisions, for its event id and key; a malformed one only dead letters, each carrying
    its exact bytes and key and the code the decoder gives. Copies of one offset (at-least-once repeats) are the
    same decision (``DECISION_FIELDS``), or else the product's state already held a later version when the event
    came again (its changelog is ahead of the committed offsets after a crash): then the copy is a STALE_VERSION
    decision with the same ``decision_id`` that repeats the decision in force, i.e. that of a later version of the
    product decided before it.
    """
    problems: list[str] = []
    by_product: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for found in outputs.by_source.values():
        for output in found:
            if not output.dead_letter:
                by_product[output.body["product_id"]].append(output.body)
    for source in set(outputs.by_source) - set(inputs):
        problems.append(f"input[{source[0]}]@{source[1]}: outputs for an offset the input does not have")
    for source, record in sorted(inputs.items()):
        where = f"input[{source[0]}]@{source[1]}"
        found = sorted(outputs.by_source.get(source, []), key=lambda o: o.record.offset)
        if not found:
            problems.append(f"{where}: no output")
            continue
        try:
            event = decode_event(record.value or b"")
            if record.key != event.product_id.encode():
                raise InvalidEvent(ErrorCode.KEY_MISMATCH, "the key is not product.id")
        except InvalidEvent as error:
            for output in found:
                body = output.body
                if not output.dead_letter:
                    problems.append(f"{where}: a decision for a malformed message")
                elif base64.b64decode(body["payload_base64"]) != (record.value or b""):
                    problems.append(f"{where}: a dead letter without the original bytes")
                elif body["error"]["code"] != error.code or output.record.key != record.key:
                    problems.append(f"{where}: a dead letter with another code or key: {body['error']}")
            continue
        first = found[0].body
        for output in found:
            body = output.body
            if output.dead_letter or body["event_id"] != event.event_id or output.record.key != record.key:
                problems.append(f"{where}: an output for another event or key: {body}")
            elif body is not first and any(body[name] != first[name] for name in DECISION_FIELDS):
                if not _repeats_a_later_decision(body, first, by_product[body["product_id"]]):
                    problems.append(f"{where}: a repeat that is another decision:\n  {first}\n  {body}")
    return problems


def _repeats_a_later_decision(copy: dict[str, Any], first: dict[str, Any], product: list[dict[str, Any]]) -> bool:
    if copy["reasons"] != ["STALE_VERSION"] or copy["decision_id"] != first["decision_id"]:
        return False
    if any(copy[name] != first[name] for name in ("event_id", "product_version", "policy_version", "source")):
        return False
    return any(
        (other["product_version"] or 0) > (copy["product_version"] or 0) and other["reasons"] != ["STALE_VERSION"]
        and all(other[name] == copy[name] for name in IN_FORCE)
        for other in product
    )


def input_offsets(records: Iterable[Record]) -> dict[Source, Record]:
    return {(record.partition, record.offset): record for record in records}
