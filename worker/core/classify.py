"""The decision: block when an item is cross-border and in a restricted cluster in force, or (when the policy
says so) a cross-border item below the minimum price; an exempt seller's items are never blocked."""

from __future__ import annotations

import hashlib
import time
from typing import Any, Final, NamedTuple

from worker.core.event import EventFacts, ProductEvent
from worker.core.policy import MatchKind, Policy

BLOCK: Final = "block"
ALLOW: Final = "allow"


class Reason:
    """Stable reason codes carried in every decision (documented in the README)."""

    # The outcome: exactly one of these comes first.
    CROSS_BORDER_RESTRICTED_CLUSTER = "CROSS_BORDER_RESTRICTED_CLUSTER"
    DOMESTIC_ITEM = "DOMESTIC_ITEM"
    NOT_RESTRICTED_CATEGORY = "NOT_RESTRICTED_CATEGORY"
    SELLER_EXEMPT = "SELLER_EXEMPT"
    CROSS_BORDER_BELOW_MINIMUM_PRICE = "CROSS_BORDER_BELOW_MINIMUM_PRICE"
    MANUAL_OVERRIDE = "MANUAL_OVERRIDE"  # compliance staff decided this product (worker/core/overrides.py)
    # Set by the worker's per-product state (worker/core/state.py), never by classify itself.
    STALE_VERSION = "STALE_VERSION"  # alone: an older version than the one decided; the decision in force repeated
    POLICY_CHANGE = "POLICY_CHANGE"  # first, before the new classification: re-screened under a new policy
    HELD_FOR_REVIEW = "HELD_FOR_REVIEW"  # first, before the classification: kept blocked by an evasion signal
    # Evasion signals (worker/core/signals.py), after the evidence; a decision that carries one has review: true.
    ORIGIN_CHANGED_AFTER_BLOCK = "ORIGIN_CHANGED_AFTER_BLOCK"
    CATEGORY_CHANGED_AFTER_BLOCK = "CATEGORY_CHANGED_AFTER_BLOCK"
    # The evidence behind it.
    FOREIGN_SELLER = "FOREIGN_SELLER"
    FOREIGN_SHIP_FROM = "FOREIGN_SHIP_FROM"
    MATCHED_CATEGORY_ID = MatchKind.CATEGORY_ID
    MATCHED_CATEGORY_PATH = MatchKind.CATEGORY_PATH
    MATCHED_HS_CODE = MatchKind.HS_CODE
    UNMAPPED_CATEGORY = MatchKind.UNMAPPED
    CATEGORY_ID_PATH_CONFLICT = "CATEGORY_ID_PATH_CONFLICT"
    CLUSTER_NOT_YET_EFFECTIVE = "CLUSTER_NOT_YET_EFFECTIVE"
    PRICE_AT_OR_ABOVE_MINIMUM = "PRICE_AT_OR_ABOVE_MINIMUM"
    HS_EXEMPT_FROM_MINIMUM_PRICE = "HS_EXEMPT_FROM_MINIMUM_PRICE"


OUTCOMES: Final = frozenset({
    Reason.CROSS_BORDER_RESTRICTED_CLUSTER, Reason.DOMESTIC_ITEM, Reason.NOT_RESTRICTED_CATEGORY,
    Reason.SELLER_EXEMPT, Reason.CROSS_BORDER_BELOW_MINIMUM_PRICE, Reason.MANUAL_OVERRIDE,
})
# In REVIEW_SIGNALS' order (worker/core/policy.py names them in lower case).
SIGNAL_CODES: Final = (Reason.ORIGIN_CHANGED_AFTER_BLOCK, Reason.CATEGORY_CHANGED_AFTER_BLOCK)
_SIGNAL_CODE_SET: Final = frozenset(SIGNAL_CODES)


class Decision(NamedTuple):
    """The outcome for one event; ``record()`` adds the delivery fields of the decision schema."""

    decision_id: str
    event_id: str
    product_id: str
    product_version: int | None
    decision: str
    cross_border: bool
    cluster: str | None
    reasons: tuple[str, ...]
    policy_version: str

    @property
    def review(self) -> bool:
        """Whether a reviewer should look: the reasons carry an evasion signal."""
        return not _SIGNAL_CODE_SET.isdisjoint(self.reasons)

    def record(self, decided_at: str, source: dict[str, Any]) -> dict[str, Any]:
        """The decision as the JSON object of schemas/decision.schema.json."""
        return {
            "decision_id": self.decision_id,
            "event_id": self.event_id,
            "product_id": self.product_id,
            "product_version": self.product_version,
            "decision": self.decision,
            "cross_border": self.cross_border,
            "cluster": self.cluster,
            "reasons": list(self.reasons),
            "review": self.review,
            "policy_version": self.policy_version,
            "decided_at": decided_at,
            "source": source,
        }


def decision_id(event_id: str, policy_version: str) -> str:
    """Deterministic id: the same event under the same policy always yields the same id, so copies can be dropped."""
    return hashlib.blake2b(f"{event_id}\x1f{policy_version}".encode(), digest_size=16).hexdigest()


class Verdict(NamedTuple):
    """A decision without its ids: what the countries, the category and the HS code (and the policy) decide."""

    decision: str
    cross_border: bool
    cluster: str | None
    reasons: tuple[str, ...]


_tuple_new = tuple.__new__  # a NamedTuple without its Python-level __new__ (classify runs once per event)


def classify(event: ProductEvent, policy: Policy, now: float | None = None) -> Decision:
    """Decide one valid event under ``policy`` at ``now`` (epoch seconds). Pure: same inputs, same decision.

    ``now`` matters only for clusters with an ``effective_from`` date. When it is None and such a date matters,
    the wall clock is read, so a caller that forgets it never blocks before a cluster's date; callers that need
    reproducible decisions pass it. Raises InvalidEvent (PRICE_REQUIRED, NO_EXCHANGE_RATE) when the
    minimum-price rule must judge an item it cannot price.
    """
    return _tuple_new(Decision, (
        decision_id(event.event_id, policy.version), event.event_id, event.product_id, event.product_version,
        *judge(event, policy, now), policy.version,
    ))


def judge(event: ProductEvent | EventFacts, policy: Policy, now: float | None = None) -> Verdict:
    """classify without the ids; what the policy decided for the same facts before, when nothing else mattered.

    Most events repeat a (home or foreign seller, home or foreign origin, category, HS code) seen
    before, and unless a seller exemption, a cluster's date or a price decided it, the verdict is
    the same again: it is kept in the policy's memo (``Policy.verdicts``, worker/core/memo.py; a
    new policy starts empty). worker/core/fast.py reads the same keys.
    """
    exempt_sellers = policy.exempt_sellers
    if not (exempt_sellers and event.seller_id in exempt_sellers):
        homes = policy.home_countries
        key = (
            event.seller_country in homes, event.ship_from_country in homes,
            event.category_path, event.category_id, event.hs_code,
        )
        verdict = policy.verdicts.get(key)
        if verdict is None:
            verdict, reusable = judge_afresh(event, policy, now)
            if reusable:
                policy.verdicts.remember(key, verdict)
        return verdict
    return judge_afresh(event, policy, now)[0]


def judge_afresh(event: ProductEvent | EventFacts, policy: Policy, now: float | None = None) -> tuple[Verdict, bool]:
    """The reference: the verdict, and whether every event with the same home/foreign seller and origin, category
    and HS code gets it."""
    homes = policy.home_countries
    foreign_seller = policy.checks_seller and event.seller_country not in homes
    foreign_origin = policy.checks_ship_from and event.ship_from_country not in homes
    cross_border = foreign_seller or foreign_origin

    match = policy.match(event.category_path, event.category_id, event.hs_code)
    cluster = match.cluster
    restricted = cluster is not None
    not_yet_effective = False
    reusable = True
    if restricted and cluster in policy.effective_from:
        reusable = False  # depends on the time
        if not policy.cluster_in_force(cluster, time.time() if now is None else now):
            restricted = False
            not_yet_effective = True

    blocked = False
    price_evidence = None
    exempt_sellers = policy.exempt_sellers
    if exempt_sellers and event.seller_id in exempt_sellers:
        reasons = [Reason.SELLER_EXEMPT]
        reusable = False  # depends on the seller
    elif restricted:
        blocked = cross_border
        reasons = [Reason.CROSS_BORDER_RESTRICTED_CLUSTER if cross_border else Reason.DOMESTIC_ITEM]
    else:
        reasons = [Reason.NOT_RESTRICTED_CATEGORY]
        rule = policy.active_minimum_price
        if rule is not None and cross_border:  # applies_to: cross_border is the only scope so far
            if rule.exempts(event.hs_code):
                price_evidence = Reason.HS_EXEMPT_FROM_MINIMUM_PRICE
            else:
                reusable = False  # depends on the price
                if rule.is_below(event.price_amount, event.price_currency, policy.version):
                    blocked = True
                    reasons = [Reason.CROSS_BORDER_BELOW_MINIMUM_PRICE]
                else:
                    price_evidence = Reason.PRICE_AT_OR_ABOVE_MINIMUM
    if foreign_seller:
        reasons.append(Reason.FOREIGN_SELLER)
    if foreign_origin:
        reasons.append(Reason.FOREIGN_SHIP_FROM)
    reasons.append(match.kind)
    if match.conflict:
        reasons.append(Reason.CATEGORY_ID_PATH_CONFLICT)
    if not_yet_effective:
        reasons.append(Reason.CLUSTER_NOT_YET_EFFECTIVE)
    if price_evidence is not None:
        reasons.append(price_evidence)
    return Verdict(BLOCK if blocked else ALLOW, cross_border, cluster, tuple(reasons)), reusable
