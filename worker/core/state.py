"""Per-product decision state: transitions (previous_decision, changed), stale versions, re-screening."""

from __future__ import annotations

from typing import Any, NamedTuple

import msgspec
import orjson

from worker.core.classify import Decision, Reason, classify, decision_id
from worker.core.event import EventFacts, ProductEvent
from worker.core.policy import Policy

STALE_VERSION = Reason.STALE_VERSION
POLICY_CHANGE = Reason.POLICY_CHANGE

# The facts a decision rests on: enough to decide the product again under a new policy.
_FACT_FIELDS = (
    "event_id", "product_id", "product_version", "seller_id", "seller_country", "ship_from_country",
    "category_path", "category_id", "hs_code", "price_amount", "price_currency", "occurred_at", "title",
)


class StoredState(msgspec.Struct, gc=False):
    """ProductState as stored: a JSON object with these keys in this order (the facts in ProductEvent's order)."""

    decision: str
    cluster: str | None
    cross_border: bool
    policy_version: str
    decision_id: str
    partition: int
    facts: EventFacts


class _StoredVersion(msgspec.Struct, gc=False):
    product_version: int | None = None


class StoredDecision(msgspec.Struct, gc=False):
    """What deciding the next event of a product needs from its stored state: the rest is skipped, not decoded."""

    decision: str
    facts: _StoredVersion


decode_stored_decision = msgspec.json.Decoder(StoredDecision).decode
_encoder = msgspec.json.Encoder()


class ProductState(NamedTuple):
    """What the worker remembers of a product: its decision in force and the facts behind it."""

    decision: str
    cluster: str | None
    cross_border: bool
    policy_version: str
    decision_id: str
    partition: int  # the input partition the product's events arrive on (its state lives there too)
    facts: ProductEvent

    def encode(self) -> bytes:
        # Copied to its exact size: an encoder's result keeps its spare buffer, and states are kept per product.
        return bytes(memoryview(_encoder.encode(StoredState(
            self.decision, self.cluster, self.cross_border, self.policy_version, self.decision_id, self.partition,
            EventFacts(*self.facts),
        ))))

    @classmethod
    def decode(cls, data: bytes) -> ProductState:
        raw = orjson.loads(data)
        facts = raw["facts"]
        return cls(
            raw["decision"], raw["cluster"], raw["cross_border"], raw["policy_version"], raw["decision_id"],
            raw["partition"], ProductEvent(*(facts.get(name) for name in _FACT_FIELDS)),
        )

    @property
    def product_version(self) -> int | None:
        return self.facts.product_version


class Transition(NamedTuple):
    """A decision with where the product came from; ``state`` is what to store (None: leave it as it is)."""

    decision: Decision
    previous_decision: str | None
    changed: bool
    state: ProductState | None

    def record(self, decided_at: str, source: dict[str, Any]) -> dict[str, Any]:
        record = self.decision.record(decided_at, source)
        record["previous_decision"] = self.previous_decision
        record["changed"] = self.changed
        return record


def is_stale(event: ProductEvent, previous: ProductState) -> bool:
    """Older than the version already decided (events without versions are never stale)."""
    known = previous.product_version
    return event.product_version is not None and known is not None and event.product_version < known


def decide(
    event: ProductEvent, policy: Policy, previous: ProductState | None, partition: int, now: float | None = None
) -> Transition:
    """Decide one event against what is known of its product (raises InvalidEvent when it cannot be decided)."""
    if previous is not None and is_stale(event, previous):
        repeated = Decision(
            decision_id(event.event_id, policy.version), event.event_id, event.product_id, event.product_version,
            previous.decision, previous.cross_border, previous.cluster, (STALE_VERSION,), policy.version,
        )
        return Transition(repeated, previous.decision, False, None)
    decision = classify(event, policy, now)
    state = ProductState(
        decision.decision, decision.cluster, decision.cross_border, policy.version, decision.decision_id, partition, event
    )
    previous_decision = previous.decision if previous is not None else None
    return Transition(decision, previous_decision, previous_decision != decision.decision, state)


def rescreen(previous: ProductState, policy: Policy, now: float | None = None) -> Transition | None:
    """Decide a known product again under a new policy; None when it was already decided under this one.

    The returned transition's decision is to be published only when ``changed``;
    its state is to be stored either way, so the product is not re-screened twice
    for one policy version. Raises InvalidEvent when the new policy cannot decide
    the stored facts (a price rule without a rate for the product's currency).
    """
    if previous.policy_version == policy.version:
        return None
    fresh = classify(previous.facts, policy, now)
    decision = fresh._replace(reasons=(POLICY_CHANGE, *fresh.reasons))
    state = previous._replace(
        decision=decision.decision, cluster=decision.cluster, cross_border=decision.cross_border,
        policy_version=policy.version, decision_id=decision.decision_id,
    )
    return Transition(decision, previous.decision, decision.decision != previous.decision, state)
