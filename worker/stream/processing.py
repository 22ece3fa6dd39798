"""One input message in, one output record out: decode, decide against the product's state, encode (no Kafka here)."""

from __future__ import annotations

import base64
from typing import Any, NamedTuple, Protocol

import orjson

from worker.core import InvalidEvent, Policy, decode_event
from worker.core.clock import format_timestamp
from worker.core.errors import ErrorCode
from worker.core.event import decode_typical
from worker.core.fast import FastPath
from worker.core.overrides import Override, override_record
from worker.core.state import ProductState, decide

DECISION = "decision"
DEAD_LETTER = "dead_letter"
TOMBSTONE = "tombstone"
FORWARD = "forward"  # KEY_MISMATCH=repartition: on to the repartition topic, keyed by the product id
MAX_ERROR_MESSAGE = 1000
_tuple_new = tuple.__new__  # a NamedTuple without its Python-level __new__, once per event
# A dead letter carries the input's bytes base64-encoded (4/3 of them) and its key twice: as the record key and,
# JSON-escaped (up to 6 bytes per byte), as source.key. For any message a topic with Kafka's default limit
# (message.max.bytes, 1 MiB) accepts that is at most ~7.4 MB, so the worker creates the dead-letter topic with
# this max.message.bytes (worker/kafka/topics.py) and sizes its producer's requests to match (worker/stream/app.py).
DEAD_LETTER_MAX_BYTES = 8 * 1024 * 1024
RECORD_OVERHEAD_BYTES = 1024  # record and batch headers around one record, generously


class Outcome(NamedTuple):
    """What to produce for one input message, and what to count."""

    kind: str  # DECISION, DEAD_LETTER, TOMBSTONE or FORWARD
    key: bytes | None
    value: bytes | None
    decision: str | None = None
    cluster: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    overridden: bool = False  # decided by an override in force (MANUAL_OVERRIDE)
    signals: tuple[str, ...] = ()  # the evasion signals this event raised (worker/core/signals.py)


class Overrides(Protocol):
    """The overrides in force (worker/stream/overrides.py: OverrideBook), keyed by product id bytes."""

    def __contains__(self, key: object) -> bool: ...

    def get(self, key: bytes) -> Override | None: ...

    def in_force(self, key: bytes, now: float) -> Override | None: ...


class NoOverrides:
    def __contains__(self, key: object) -> bool:
        return False

    def get(self, key: bytes) -> Override | None:
        return None

    def in_force(self, key: bytes, now: float) -> Override | None:
        return None


def dead_letter_record(
    raw: bytes | None, key: bytes | None, topic: str, partition: int, offset: int,
    code: str, message: str, failed_at: str,
) -> dict[str, Any]:
    return {
        "error": {"code": code, "message": message[:MAX_ERROR_MESSAGE]},
        "source": {
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "key": None if key is None else key.decode("utf-8", "replace"),
        },
        "payload_base64": base64.b64encode(raw or b"").decode("ascii"),
        "failed_at": failed_at,
    }


def _quoted(text: str) -> str:
    return orjson.dumps(text[:100]).decode()


class StateStore(Protocol):
    """Where per-product state lives, by input partition: the worker's state table, a dict in tests."""

    def get(self, key: bytes, partition: int) -> bytes | None: ...

    def put(self, key: bytes, value: bytes, partition: int) -> None: ...

    def delete(self, key: bytes, partition: int) -> None: ...


class MemoryStateStore(dict[bytes, bytes]):
    """A StateStore in a dict, for tests and offline use (one partition's worth: the partition is not kept)."""

    def get(self, key: bytes, partition: int = 0) -> bytes | None:  # type: ignore[override]
        return dict.get(self, key)

    def put(self, key: bytes, value: bytes, partition: int) -> None:
        self[key] = value

    def delete(self, key: bytes, partition: int) -> None:
        self.pop(key, None)


class Processor:
    """Turns input messages into decision, dead-letter or tombstone records under the policy in force."""

    def __init__(
        self, policy: Policy, state: StateStore | None = None, dead_letter_max_bytes: int = DEAD_LETTER_MAX_BYTES,
        overrides: Overrides | None = None,
    ) -> None:
        self.policy = policy
        self.state: StateStore = state if state is not None else MemoryStateStore()
        self.overrides: Overrides = overrides if overrides is not None else NoOverrides()
        self.dead_letter_max_bytes = dead_letter_max_bytes  # the dead-letter topic's max.message.bytes

    @property
    def policy(self) -> Policy:
        return self._policy

    @policy.setter
    def policy(self, policy: Policy) -> None:
        # The policy topic swaps it while the worker runs; a fast path belongs to one policy.
        self._policy = policy
        self._fast = FastPath(policy)

    def process(
        self, key: bytes | None, value: bytes | None, topic: str, partition: int, offset: int, now: float,
        state_partition: int | None = None,
    ) -> Outcome:
        """Never raises for bad input: anything that cannot be decided becomes a dead letter.

        ``topic``, ``partition`` and ``offset`` say where the event came from (the decision's ``source``); its
        product's state is in ``state_partition``, the same partition unless the event came through the
        repartition topic (KEY_MISMATCH=repartition).
        """
        home = partition if state_partition is None else state_partition
        if value is not None:
            fast = self._fast.decide(value, self.state.get, topic, partition, offset, now, format_timestamp(now), home)
            if fast is not None:  # the typical event, to the same bytes as below (worker/core/fast.py)
                product_key, state, record, decision, cluster = fast
                if key != product_key:
                    return self._key_mismatch(value, key, product_key, topic, partition, offset, now)
                if product_key not in self.overrides:  # an overridden product is the reference path's
                    self.state.put(product_key, state, home)
                    return _tuple_new(Outcome, (DECISION, product_key, record, decision, cluster, None, None, False, ()))
        if value is None:
            if key is None:
                return self._dead_letter(
                    None, None, topic, partition, offset, now,
                    ErrorCode.TOMBSTONE_WITHOUT_KEY, "a tombstone (null value) needs the product id as its key",
                )
            self.state.delete(key, home)  # the product was removed: forget its decision
            return Outcome(TOMBSTONE, key, None)
        try:
            event = decode_event(value)
            product_key = event.product_id.encode()
            if key != product_key:
                return self._key_mismatch(value, key, product_key, topic, partition, offset, now)
            stored = self.state.get(product_key, home)
            previous = ProductState.decode(product_key, stored) if stored is not None else None
            override = self.overrides.in_force(product_key, now)
            transition = decide(event, self.policy, previous, now, staff=override)
        except InvalidEvent as exc:
            return self._dead_letter(value, key, topic, partition, offset, now, exc.code, exc.message)
        if transition.state is not None:
            self.state.put(product_key, transition.state.encode(), home)
        decision = transition.decision
        record = transition.record(format_timestamp(now), {"topic": topic, "partition": partition, "offset": offset})
        made_by_override = override is not None and transition.state is not None
        if made_by_override:
            record["override"] = override_record(override, transition.policy_decision or "undecidable")  # type: ignore[arg-type]
        return Outcome(
            DECISION, product_key, orjson.dumps(record), decision.decision, decision.cluster,
            overridden=made_by_override, signals=transition.signals,
        )

    def route(
        self, key: bytes | None, value: bytes | None, topic: str, partition: int, offset: int, now: float,
    ) -> Outcome:
        """KEY_MISMATCH=repartition, the first step: an event to send on keyed by its product id (FORWARD), or the
        dead letter of one that will never be decided whatever its key (the decision is the second step's)."""
        if value is None:
            if key is None:
                return self._dead_letter(
                    None, None, topic, partition, offset, now,
                    ErrorCode.TOMBSTONE_WITHOUT_KEY, "a tombstone (null value) needs the product id as its key",
                )
            return Outcome(FORWARD, key, None)  # its key is the only product id it has
        facts = decode_typical(value)
        if facts is None:
            try:
                product_id = decode_event(value).product_id
            except InvalidEvent as exc:
                return self._dead_letter(value, key, topic, partition, offset, now, exc.code, exc.message)
        else:
            product_id = facts.product_id
        return Outcome(FORWARD, product_id.encode(), value)

    def _key_mismatch(
        self, raw: bytes, key: bytes | None, product_key: bytes, topic: str, partition: int, offset: int, now: float
    ) -> Outcome:
        # The product's state lives on the partition its key puts it on: decided under another key, one product's
        # state would be split across partitions (and workers), so its order, `changed` and STALE_VERSION go wrong.
        product_id = product_key.decode()
        if key is None:
            message = f"the message has no key; its key must be its product.id {_quoted(product_id)}"
        else:
            message = f"the key {_quoted(key.decode('utf-8', 'replace'))} is not the product.id {_quoted(product_id)}"
        return self._dead_letter(raw, key, topic, partition, offset, now, ErrorCode.KEY_MISMATCH, message)

    def _dead_letter(
        self, raw: bytes | None, key: bytes | None, topic: str, partition: int, offset: int, now: float,
        code: str, message: str,
    ) -> Outcome:
        record = dead_letter_record(raw, key, topic, partition, offset, code, message, format_timestamp(now))
        value = orjson.dumps(record)
        limit = self.dead_letter_max_bytes - RECORD_OVERHEAD_BYTES
        if len(value) + len(key or b"") > limit:
            # The broker would refuse it and the worker could not go on: send one that says what is missing
            # and where the original is (source topic, partition, offset) instead.
            record["payload_base64"] = ""
            record["payload_omitted_bytes"] = len(raw or b"")
            if record["source"]["key"] is not None:
                record["source"]["key"] = record["source"]["key"][:MAX_ERROR_MESSAGE]
            value = orjson.dumps(record)
            if key is not None and len(key) + len(value) > limit:
                key = None
        return Outcome(DEAD_LETTER, key, value, error_code=code, error_message=message)
