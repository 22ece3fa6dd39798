"""Per-product decision state: transitions (previous_decision, changed), stale versions, holds, re-screening, storage."""

from __future__ import annotations

import hashlib
import time
from typing import Any, NamedTuple

import msgspec
import orjson

from worker.core.classify import Decision, Reason, classify, decision_id
from worker.core.errors import InvalidEvent
from worker.core.event import ProductEvent
from worker.core.overrides import Override, overridden, released
from worker.core.policy import Policy
from worker.core.signals import carry_hold, review

STALE_VERSION = Reason.STALE_VERSION
POLICY_CHANGE = Reason.POLICY_CHANGE
STATE_FORMAT = 2  # the first element of every stored state; version 1 was a JSON object (read, never written)

# Version 1's facts, in ProductEvent's order (the changelog of an older worker holds such records).
_V1_FACT_FIELDS = (
    "event_id", "product_id", "product_version", "seller_id", "seller_country", "ship_from_country",
    "category_path", "category_id", "hs_code", "price_amount", "price_currency", "occurred_at", "title",
)


def title_digest(title: str | None) -> str | None:
    """What the state keeps of a title: enough to tell the same title again (evasion signals), 16 hex characters."""
    return None if title is None else hashlib.blake2b(title.encode(), digest_size=8).hexdigest()


class StoredState(msgspec.Struct, array_like=True, tag=STATE_FORMAT, gc=False):
    """A product's state as stored: a JSON array ``[2, decision, product_version, ...]``, keyed by the product id.

    Only what deciding, re-screening and looking up a product need: the product id is
    the key, the partition is the store's, the decision id follows from the event id
    and the policy version (stored only where it does not: an override's decision,
    or a re-screening that published nothing), and the title is kept as a digest. New fields go at the end
    with a default, so every version-2 record stays readable.
    """

    decision: str
    product_version: int | None
    cluster: str | None
    cross_border: bool
    policy_version: str
    decided_at_ms: int
    reasons: tuple[str, ...]
    event_id: str
    seller_id: str | None
    seller_country: str
    ship_from_country: str
    category_path: str
    category_id: str | None
    hs_code: str | None
    price_amount: str | None
    price_currency: str | None
    occurred_at: str | None
    title_digest: str | None
    held_signals: tuple[str, ...] = ()  # the evasion signals that keep the product blocked (empty: not held)
    published_id: str | None = None  # the decision in force's id when the event id and policy version do not give it


class StoredDecision(msgspec.Struct, array_like=True, tag=STATE_FORMAT, gc=False):
    """What deciding the next event of a product needs from its stored state: the rest is skipped, not decoded."""

    decision: str
    product_version: int | None


class _StoredPolicyVersion(msgspec.Struct, array_like=True, tag=STATE_FORMAT, gc=False):
    decision: str
    product_version: int | None
    cluster: str | None
    cross_border: bool
    policy_version: str


decode_stored_decision = msgspec.json.Decoder(StoredDecision).decode
_decode_policy_version = msgspec.json.Decoder(_StoredPolicyVersion).decode


def stored_policy_version(data: bytes) -> str:
    """The policy version a stored state was decided under, without decoding the rest (re-screening scans by it)."""
    if data[:1] == b"{":
        return str(orjson.loads(data)["policy_version"])
    return _decode_policy_version(data).policy_version
decode_stored_state = msgspec.json.Decoder(StoredState).decode
_encoder = msgspec.json.Encoder()


class ProductState(NamedTuple):
    """What the worker remembers of a product: its decision in force and the facts behind it.

    ``facts.title`` is always None (the state keeps only ``title_digest``); ``decided_at_ms`` is
    when the decision in force was made (epoch milliseconds); ``held_signals`` are the evasion
    signals that keep the product blocked until released (worker/core/signals.py);
    ``published_id`` is the id of the decision in force when ``facts.event_id`` and
    ``policy_version`` do not give it (None: they do).
    """

    decision: str
    cluster: str | None
    cross_border: bool
    policy_version: str
    decided_at_ms: int
    reasons: tuple[str, ...]
    facts: ProductEvent
    title_digest: str | None
    held_signals: tuple[str, ...] = ()
    published_id: str | None = None

    @classmethod
    def of(
        cls, decision: Decision, facts: ProductEvent, decided_at_ms: int, held_signals: tuple[str, ...] = (),
    ) -> ProductState:
        state = cls(
            decision.decision, decision.cluster, decision.cross_border, decision.policy_version, decided_at_ms,
            decision.reasons, facts._replace(title=None), title_digest(facts.title), held_signals,
        )
        return state.in_force(decision.decision_id)

    @property
    def product_version(self) -> int | None:
        return self.facts.product_version

    @property
    def decision_id(self) -> str:
        """The id of the decision in force: the last one published for the product."""
        return self.published_id or decision_id(self.facts.event_id, self.policy_version)

    def in_force(self, published_id: str) -> ProductState:
        """This state with ``published_id`` as the id of its decision in force (stored only where it must be)."""
        implied = decision_id(self.facts.event_id, self.policy_version)
        return self._replace(published_id=None if published_id == implied else published_id)

    def encode(self) -> bytes:
        facts = self.facts
        # Copied to its exact size: an encoder's result keeps its spare buffer, and states are kept per product.
        return bytes(memoryview(_encoder.encode(StoredState(
            self.decision, facts.product_version, self.cluster, self.cross_border, self.policy_version,
            self.decided_at_ms, self.reasons, facts.event_id, facts.seller_id, facts.seller_country,
            facts.ship_from_country, facts.category_path, facts.category_id, facts.hs_code, facts.price_amount,
            facts.price_currency, facts.occurred_at, self.title_digest, self.held_signals, self.published_id,
        ))))

    @classmethod
    def decode(cls, key: bytes, data: bytes) -> ProductState:
        """A stored state of either format (raises ValueError on bytes that are neither)."""
        if data[:1] == b"{":
            return cls._decode_v1(data)
        stored = decode_stored_state(data)
        facts = ProductEvent(
            stored.event_id, key.decode(), stored.product_version, stored.seller_id, stored.seller_country,
            stored.ship_from_country, stored.category_path, stored.category_id, stored.hs_code, stored.price_amount,
            stored.price_currency, stored.occurred_at, None,
        )
        return cls(
            stored.decision, stored.cluster, stored.cross_border, stored.policy_version, stored.decided_at_ms,
            stored.reasons, facts, stored.title_digest, stored.held_signals, stored.published_id,
        )

    @classmethod
    def _decode_v1(cls, data: bytes) -> ProductState:
        # Version 1 kept no reasons and no decision time: they are unknown until the product is decided again.
        raw = orjson.loads(data)
        facts = ProductEvent(*(raw["facts"].get(name) for name in _V1_FACT_FIELDS))
        state = cls(
            raw["decision"], raw["cluster"], raw["cross_border"], raw["policy_version"], 0, (),
            facts._replace(title=None), title_digest(facts.title),
        )
        return state.in_force(raw["decision_id"]) if raw.get("decision_id") else state


class Transition(NamedTuple):
    """A decision with where the product came from; ``state`` is what to store (None: leave it as it is);
    ``signals`` are the evasion signals this event raised (to count; a hold's later decisions repeat them)."""

    decision: Decision
    previous_decision: str | None
    changed: bool
    state: ProductState | None
    signals: tuple[str, ...] = ()
    policy_decision: str | None = None  # under an override in force: what the policy alone decided (None: it could not)

    def record(self, decided_at: str, source: dict[str, Any]) -> dict[str, Any]:
        record = self.decision.record(decided_at, source)
        record["previous_decision"] = self.previous_decision
        record["changed"] = self.changed
        return record


def is_stale(event: ProductEvent, previous: ProductState) -> bool:
    """Older than the version already decided (events without versions are never stale)."""
    known = previous.product_version
    return event.product_version is not None and known is not None and event.product_version < known


def _milliseconds(now: float | None) -> int:
    return int((time.time() if now is None else now) * 1000)


def decide(
    event: ProductEvent, policy: Policy, previous: ProductState | None, now: float | None = None,
    staff: Override | None = None,
) -> Transition:
    """Decide one event against what is known of its product and the override in force for it (``staff``).

    Raises InvalidEvent when it cannot be decided: the policy cannot price it and no override decides it.
    """
    if previous is not None and is_stale(event, previous):
        repeated = Decision(
            decision_id(event.event_id, policy.version), event.event_id, event.product_id, event.product_version,
            previous.decision, previous.cross_border, previous.cluster, (STALE_VERSION,), policy.version,
        )
        return Transition(repeated, previous.decision, False, None)
    previous_decision = previous.decision if previous is not None else None
    try:
        decision = classify(event, policy, now)
    except InvalidEvent:
        if staff is None:
            raise
        # The override decides what the policy cannot (no price, no exchange rate): no evidence of the policy's.
        homes = policy.home_countries
        cross_border = (policy.checks_seller and event.seller_country not in homes) or (
            policy.checks_ship_from and event.ship_from_country not in homes
        )
        decision = Decision(
            decision_id(event.event_id, policy.version), event.event_id, event.product_id, event.product_version,
            staff.decision, cross_border, None, (), policy.version,
        )
        transition = Transition(decision, previous_decision, False, ProductState.of(decision, event, _milliseconds(now)))
        return with_override(transition, staff)._replace(policy_decision=None)
    if previous is None:
        transition = Transition(decision, None, True, ProductState.of(decision, event, _milliseconds(now)))
    else:
        raised: tuple[str, ...] = ()
        held: tuple[str, ...] = ()
        if policy.review_signals or previous.held_signals:
            decision, raised, held = review(previous, event, title_digest(event.title), decision, policy)
        transition = Transition(
            decision, previous.decision, previous.decision != decision.decision,
            ProductState.of(decision, event, _milliseconds(now), held), raised,
        )
    return transition if staff is None else with_override(transition, staff)


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
    held: tuple[str, ...] = ()
    if previous.held_signals:
        fresh, held = carry_hold(previous.held_signals, fresh, policy)
    decision = fresh._replace(reasons=(POLICY_CHANGE, *fresh.reasons))
    changed = decision.decision != previous.decision
    state = previous._replace(
        decision=decision.decision, cluster=decision.cluster, cross_border=decision.cross_border,
        policy_version=policy.version, reasons=decision.reasons, decided_at_ms=_milliseconds(now), held_signals=held,
    ).in_force(decision.decision_id)
    return Transition(decision, previous.decision, changed, state)


def with_override(transition: Transition, override: Override) -> Transition:
    """``transition`` as an override in force makes it: the override's outcome, stored as the decision in force."""
    decision = overridden(transition.decision, override)
    changed = transition.previous_decision != decision.decision
    state = transition.state
    if state is not None:  # staff decided it: a hold for review ends here too
        state = state._replace(decision=decision.decision, reasons=decision.reasons, held_signals=()).in_force(
            decision.decision_id,
        )
    return Transition(
        decision, transition.previous_decision, changed, state, transition.signals, transition.decision.decision,
    )


def redecide(
    previous: ProductState, policy: Policy, override: Override | None, ended: Override | None = None,
    now: float | None = None,
) -> Transition | None:
    """A known product decided again because its override changed: set (``override``), or ended (``ended``: the one
    cleared or expired). None when nothing would change. Raises InvalidEvent when the policy cannot decide the
    stored facts and no override says what to do."""
    overridden_now = previous.reasons[:1] == (Reason.MANUAL_OVERRIDE,)
    if override is None and not overridden_now:
        return None  # the policy decides it already
    fresh = classify(previous.facts, policy, now)
    if override is not None:
        decision = overridden(fresh, override)
    else:
        decision = released(fresh, ended.digest if ended is not None else str(previous.decided_at_ms))
    if (decision.decision, decision.reasons, policy.version) == (previous.decision, previous.reasons, previous.policy_version):
        return None  # already so (an override read again after a restart)
    state = previous._replace(
        decision=decision.decision, cluster=decision.cluster, cross_border=decision.cross_border,
        policy_version=policy.version, reasons=decision.reasons, decided_at_ms=_milliseconds(now), held_signals=(),
    ).in_force(decision.decision_id)
    return Transition(decision, previous.decision, decision.decision != previous.decision, state)
