"""Evasion signals: a blocked product back with the same seller and title, now domestic or outside the clusters."""

from __future__ import annotations

from typing import TYPE_CHECKING

from worker.core.classify import ALLOW, BLOCK, Decision, Reason
from worker.core.event import ProductEvent
from worker.core.policy import Policy

if TYPE_CHECKING:
    from worker.core.state import ProductState

ORIGIN_CHANGED_AFTER_BLOCK = Reason.ORIGIN_CHANGED_AFTER_BLOCK
CATEGORY_CHANGED_AFTER_BLOCK = Reason.CATEGORY_CHANGED_AFTER_BLOCK
HELD_FOR_REVIEW = Reason.HELD_FOR_REVIEW
Signals = tuple[str, ...]


def same_seller(before: ProductEvent, after: ProductEvent) -> bool:
    """The seller ids when both events carry one; otherwise all there is to go by, the seller countries."""
    if before.seller_id is not None and after.seller_id is not None:
        return before.seller_id == after.seller_id
    return before.seller_country == after.seller_country


def is_cross_border(facts: ProductEvent, policy: Policy) -> bool:
    """What classify says of these countries under ``policy`` (the previous facts may have been decided under another)."""
    homes = policy.home_countries
    return (policy.checks_seller and facts.seller_country not in homes) or (
        policy.checks_ship_from and facts.ship_from_country not in homes
    )


def detect(previous: ProductState, event: ProductEvent, title_digest: str | None, decision: Decision, policy: Policy) -> Signals:
    """The signals ``event`` raises against the product's state under ``policy`` (docs/policy.md, "Review signals").

    Only a product whose decision in force is block, back with the same seller and the same
    title (digests, both present) and allowed by its facts, not by a seller exemption. Both
    sides are judged by the policy in force, so a policy change alone never raises one.
    """
    enabled = policy.review_signals
    if (
        not enabled
        or previous.decision != BLOCK
        or decision.decision != ALLOW
        or decision.reasons[0] == Reason.SELLER_EXEMPT
        or previous.title_digest is None
        or previous.title_digest != title_digest
        or not same_seller(previous.facts, event)
    ):
        return ()
    before = previous.facts
    raised = []
    if ORIGIN_CHANGED_AFTER_BLOCK in enabled and not decision.cross_border and is_cross_border(before, policy):
        raised.append(ORIGIN_CHANGED_AFTER_BLOCK)
    if (
        CATEGORY_CHANGED_AFTER_BLOCK in enabled
        and decision.cluster is None
        and policy.match(before.category_path, before.category_id, before.hs_code).cluster is not None
    ):
        raised.append(CATEGORY_CHANGED_AFTER_BLOCK)
    return tuple(raised)


def hold(decision: Decision, signals: Signals) -> Decision:
    """Blocked whatever the facts say: HELD_FOR_REVIEW, then the classification as it is, then the signals."""
    return decision._replace(decision=BLOCK, reasons=(HELD_FOR_REVIEW, *decision.reasons, *signals))


def flag(decision: Decision, signals: Signals, policy: Policy) -> Decision:
    """The decision as the facts have it, with those of ``signals`` the policy raises after its reasons when it
    allows (a blocked product needs no review)."""
    codes = tuple(code for code in policy.review_signals if code in signals)
    if not codes or decision.decision != ALLOW:
        return decision
    return decision._replace(reasons=(*decision.reasons, *codes))


def carry_hold(held: Signals, decision: Decision, policy: Policy) -> tuple[Decision, Signals]:
    """A held product decided again: still held by the signals ``policy`` holds; else released, and flagged with
    those it still raises. Returns the decision and the signals that hold it now (empty: released)."""
    kept = tuple(code for code in held if code in policy.held_signals)
    if kept:
        return hold(decision, kept), kept
    return flag(decision, held, policy), ()


def review(
    previous: ProductState, event: ProductEvent, title_digest: str | None, decision: Decision, policy: Policy,
) -> tuple[Decision, Signals, Signals]:
    """The decision with the review signals applied, the signals this event raised, and those that hold the product."""
    carried = previous.held_signals
    if carried:
        held_decision, kept = carry_hold(carried, decision, policy)
        if kept:
            return held_decision, (), kept
    raised = detect(previous, event, title_digest, decision, policy)
    if raised and policy.held_signals:  # on_signal: hold holds every signal the policy raises
        return hold(decision, raised), raised, raised
    return flag(decision, (*carried, *raised), policy), raised, ()
