"""Deciding a typical event in one pass: decoded, checked and encoded in C, everything unusual left to the reference path."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import msgspec

from worker.core.classify import Verdict, judge
from worker.core.errors import InvalidEvent
from worker.core.event import EventFacts, parse_typical, typical_category, typical_facts
from worker.core.policy import PATH_CACHE_SIZE, Policy
from worker.core.state import StoredState, decode_stored_decision, decode_stored_state, title_digest

# key, state to store, decision record, decision, cluster
FastDecision = tuple[bytes, bytes, bytes, str, str | None]


class _Source(msgspec.Struct, gc=False):
    topic: str
    partition: int
    offset: int


class _DecisionRecord(msgspec.Struct, gc=False):
    """Transition.record() with a topic source: the same keys in the same order, so the same bytes."""

    decision_id: str
    event_id: str
    product_id: str
    product_version: int | None
    decision: str
    cross_border: bool
    cluster: str | None
    reasons: tuple[str, ...]
    review: bool
    policy_version: str
    decided_at: str
    source: _Source
    previous_decision: str | None
    changed: bool


class FastPath:
    """What Processor.process does for an event that is typical in every way, or None to say "take the reference path".

    Typical: decode_typical accepts it (a valid event whose values msgspec reads as the
    reference decoder does), the policy can decide it (no PRICE_REQUIRED or NO_EXCHANGE_RATE),
    it is not older than the version already decided, and it can be no case for review: under
    a policy with review signals, a blocked product that its facts now allow (it may raise a
    signal) or that a signal holds goes the reference way. The verdict is classify's
    (classify.judge, which keeps the verdicts that hold for every event of a kind). It returns
    the same bytes as the reference path (tests compare them). One per policy; not for use
    from several threads at once (it reuses one encoding buffer).
    """

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._remembered = policy.verdicts.get  # filled by classify.judge for the policy's lifetime
        self._exempt_sellers = policy.exempt_sellers
        self._homes = policy.home_countries
        self._version = policy.version
        self._review = bool(policy.review_signals)
        self._holds = policy.held_signals
        self._id_suffix = f"\x1f{policy.version}".encode()  # decision_id hashes f"{event_id}\x1f{policy_version}"
        # One lookup per event instead of four: (path, category id, HS code) as sent -> [category id, HS code
        # as ProductEvent holds them, then the verdicts for seller and origin abroad/abroad, abroad/home,
        # home/abroad, home/home, each None until classify.judge has kept one for all such events].
        self._kinds: dict[tuple[str, str | None, str | None], list[Any]] = {}
        encoder = msgspec.json.Encoder()
        self._encode = encoder.encode
        self._encode_into = encoder.encode_into
        self._buffer = bytearray(1024)

    def decide(  # noqa: PLR0913
        self, raw: bytes, stored_state: Callable[[bytes, int], bytes | None], topic: str, partition: int, offset: int,
        now: float, decided_at: str, state_partition: int,
    ) -> FastDecision | None:
        event = parse_typical(raw)
        if event is None:
            return None
        product = event.product
        category = product.category
        kind_key = (category.path, category.id, product.hs_code)
        kind = self._kinds.get(kind_key)
        if kind is None:
            kind = self._new_kind(kind_key)
            if kind is None:
                return None
        facts = typical_facts(event, kind[0], kind[1])
        if facts is None:
            return None
        exempt_sellers = self._exempt_sellers
        if exempt_sellers and facts.seller_id in exempt_sellers:
            verdict = self._judge(facts, now)
        else:
            homes = self._homes
            seller_home, origin_home = facts.seller_country in homes, facts.ship_from_country in homes
            slot = 2 + 2 * seller_home + origin_home
            verdict = kind[slot]
            if verdict is None:
                kept = self._remembered((seller_home, origin_home, facts.category_path, kind[0], kind[1]))
                if kept is not None:
                    verdict = kind[slot] = tuple(kept)  # a plain tuple unpacks faster than a NamedTuple
                else:
                    verdict = self._judge(facts, now)  # judge keeps it when it holds for every such event
        if verdict is None:
            return None
        product_key = facts.product_id.encode()
        stored = stored_state(product_key, state_partition)
        previous_decision = None
        if stored is not None:
            # Only two fields are read; the rest is skipped unchecked. States are written by ProductState.encode
            # and this class, never with what the reference path's reader would reject.
            try:
                previous = decode_stored_decision(stored)
            except ValueError:
                return None  # an older format, or bytes the reference path will fail on as it always did
            known, version = previous.product_version, facts.product_version
            if version is not None and known is not None and version < known:
                return None  # stale: the reference path repeats the decision in force
            previous_decision = previous.decision
            if previous_decision == "block" and self._review:
                if verdict[0] == "allow":
                    return None  # back with the same seller and title, it raises a signal: the reference path looks
                if self._holds and self._is_held(stored):
                    return None  # held, whatever the facts say
        event_id = facts.event_id
        decision_id = hashlib.blake2b(event_id.encode() + self._id_suffix, digest_size=16).hexdigest()
        decision, cross_border, cluster, reasons = verdict
        policy_version = self._version
        buffer = self._buffer
        # Encoded into a reused buffer and copied out at its exact size: states are kept per product.
        self._encode_into(StoredState(
            decision, facts.product_version, cluster, cross_border, policy_version, int(now * 1000), reasons,
            event_id, facts.seller_id, facts.seller_country, facts.ship_from_country, facts.category_path,
            facts.category_id, facts.hs_code, facts.price_amount, facts.price_currency, facts.occurred_at,
            title_digest(facts.title),
        ), buffer)
        record = self._encode(_DecisionRecord(
            decision_id, event_id, facts.product_id, facts.product_version, decision, cross_border, cluster, reasons,
            False, policy_version, decided_at, _Source(topic, partition, offset), previous_decision,
            previous_decision != decision,
        ))
        return product_key, bytes(buffer), record, decision, cluster

    def _is_held(self, stored: bytes) -> bool:
        """Whether a signal this policy holds keeps the product blocked (the state read in full, only for a block;
        bytes it cannot read raise as the reference path's reader would)."""
        return not self._holds.isdisjoint(decode_stored_state(stored).held_signals)

    def _judge(self, facts: EventFacts, now: float) -> Verdict | None:
        try:
            return judge(facts, self.policy, now)
        except InvalidEvent:
            return None  # the policy cannot price it: the reference path makes the dead letter

    def _new_kind(self, key: tuple[str, str | None, str | None]) -> list[Any] | None:
        normal = typical_category(*key)
        if normal is None:
            return None  # invalid: the reference path says what is wrong
        if len(self._kinds) >= PATH_CACHE_SIZE:
            self._kinds.clear()  # a flood of distinct categories must not grow memory without bound
        kind: list[Any] = [*normal, None, None, None, None]
        self._kinds[key] = kind
        return kind
