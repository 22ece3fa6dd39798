"""The decision: block exactly when an item is cross-border and in a restricted cluster."""

from __future__ import annotations

import hashlib
from typing import Any, Final, NamedTuple

from worker.core.event import ProductEvent
from worker.core.policy import MatchKind, Policy

BLOCK: Final = "block"
ALLOW: Final = "allow"


class Reason:
    """Stable reason codes carried in every decision (documented in the README)."""

    # The outcome: exactly one of these comes first.
    CROSS_BORDER_RESTRICTED_CLUSTER = "CROSS_BORDER_RESTRICTED_CLUSTER"
    DOMESTIC_ITEM = "DOMESTIC_ITEM"
    NOT_RESTRICTED_CATEGORY = "NOT_RESTRICTED_CATEGORY"
    # The evidence behind it.
    FOREIGN_SELLER = "FOREIGN_SELLER"
    FOREIGN_SHIP_FROM = "FOREIGN_SHIP_FROM"
    MATCHED_CATEGORY_ID = MatchKind.CATEGORY_ID
    MATCHED_CATEGORY_PATH = MatchKind.CATEGORY_PATH
    MATCHED_HS_CODE = MatchKind.HS_CODE
    UNMAPPED_CATEGORY = MatchKind.UNMAPPED
    CATEGORY_ID_PATH_CONFLICT = "CATEGORY_ID_PATH_CONFLICT"


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
            "policy_version": self.policy_version,
            "decided_at": decided_at,
            "source": source,
        }


def decision_id(event_id: str, policy_version: str) -> str:
    """Deterministic id: the same event under the same policy always yields the same id, so copies can be dropped."""
    return hashlib.blake2b(f"{event_id}\x1f{policy_version}".encode(), digest_size=16).hexdigest()


def classify(event: ProductEvent, policy: Policy) -> Decision:
    """Decide one valid event under ``policy``. Pure: same inputs, same decision."""
    homes = policy.home_countries
    foreign_seller = policy.checks_seller and event.seller_country not in homes
    foreign_origin = policy.checks_ship_from and event.ship_from_country not in homes
    cross_border = foreign_seller or foreign_origin

    match = policy.match(event.category_path, event.category_id, event.hs_code)
    cluster = match.cluster

    if cluster is None:
        reasons = [Reason.NOT_RESTRICTED_CATEGORY]
    elif cross_border:
        reasons = [Reason.CROSS_BORDER_RESTRICTED_CLUSTER]
    else:
        reasons = [Reason.DOMESTIC_ITEM]
    if foreign_seller:
        reasons.append(Reason.FOREIGN_SELLER)
    if foreign_origin:
        reasons.append(Reason.FOREIGN_SHIP_FROM)
    reasons.append(match.kind)
    if match.conflict:
        reasons.append(Reason.CATEGORY_ID_PATH_CONFLICT)

    return Decision(
        decision_id(event.event_id, policy.version),
        event.event_id,
        event.product_id,
        event.product_version,
        BLOCK if cross_border and cluster is not None else ALLOW,
        cross_border,
        cluster,
        tuple(reasons),
        policy.version,
    )
