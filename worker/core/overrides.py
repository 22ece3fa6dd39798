"""Per-product overrides decided by compliance staff (appeals): the document, its validation, and what it does."""

from __future__ import annotations

import hashlib
from typing import Any, NamedTuple

import orjson

from worker.core.classify import OUTCOMES, Decision, Reason, decision_id
from worker.core.errors import ComplianceError
from worker.core.event import MAX_ID_LENGTH
from worker.core.policy import parse_instant

MANUAL_OVERRIDE = Reason.MANUAL_OVERRIDE
MAX_REASON_LENGTH = 2_000
MAX_SHORT_FIELD = 128
DECISIONS = ("allow", "block")


class InvalidOverride(ComplianceError, ValueError):
    """An override document that cannot be put in force; the message names the field."""


class Override(NamedTuple):
    """One product's override as a staff member set it (the latest valid document for its product id)."""

    product_id: str
    decision: str  # allow or block
    reason: str
    reference: str | None  # a ticket or appeal id
    author: str
    created_at: str  # RFC 3339, as written
    expires_at: str | None  # RFC 3339, as written; None: until cleared
    expires_at_s: float | None  # the same in epoch seconds
    digest: str  # of the document's bytes: what tells one override from the next for the same product

    def in_force(self, now: float) -> bool:
        return self.expires_at_s is None or now < self.expires_at_s

    def describe(self) -> dict[str, Any]:
        """The override as decisions and lookups show it."""
        return {
            "decision": self.decision, "reason": self.reason, "reference": self.reference, "author": self.author,
            "created_at": self.created_at, "expires_at": self.expires_at,
        }

    def document(self) -> dict[str, Any]:
        """The document as published on the overrides topic (schemas/override.schema.json)."""
        return {key: value for key, value in self.describe().items() if value is not None or key == "reference"}


def _text(document: dict[str, Any], key: str, *, required: bool, max_length: int) -> str | None:
    value = document.get(key)
    if value is None:
        if required:
            raise InvalidOverride(f"{key}: required")
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidOverride(f"{key}: expected a non-empty string")
    if len(value) > max_length:
        raise InvalidOverride(f"{key}: longer than {max_length} characters")
    return value


def _instant(document: dict[str, Any], key: str, *, required: bool) -> tuple[str | None, float | None]:
    text = _text(document, key, required=required, max_length=64)
    if text is None:
        return None, None
    try:
        return text, parse_instant(text)
    except ValueError as exc:
        raise InvalidOverride(f"{key}: {exc}") from None


def parse_override(key: bytes | None, value: bytes) -> Override:
    """An override from its record: the key is the product id, the value the JSON document (raises InvalidOverride)."""
    if key is None:
        raise InvalidOverride("the record has no key: the key is the product id the override is for")
    try:
        product_id = key.decode()
    except UnicodeDecodeError:
        raise InvalidOverride("the key is not UTF-8") from None
    if not product_id or len(product_id) > MAX_ID_LENGTH:
        raise InvalidOverride(f"the key (product id) must have 1 to {MAX_ID_LENGTH} characters")
    try:
        document = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise InvalidOverride(f"not JSON ({exc})") from None
    if not isinstance(document, dict):
        raise InvalidOverride("expected a JSON object")
    decision = document.get("decision")
    if decision not in DECISIONS:
        raise InvalidOverride(f"decision: must be allow or block, got {str(decision)[:40]!r}")
    reason = _text(document, "reason", required=True, max_length=MAX_REASON_LENGTH)
    reference = _text(document, "reference", required=False, max_length=MAX_SHORT_FIELD)
    author = _text(document, "author", required=True, max_length=MAX_SHORT_FIELD)
    created_at, _ = _instant(document, "created_at", required=True)
    expires_at, expires_at_s = _instant(document, "expires_at", required=False)
    digest = hashlib.blake2b(value, digest_size=8).hexdigest()
    return Override(
        product_id, decision, reason or "", reference, author or "", created_at or "", expires_at, expires_at_s, digest,
    )


def overridden(decision: Decision, override: Override) -> Decision:
    """The decision an override in force makes of the policy's: its outcome, MANUAL_OVERRIDE first.

    The policy's evidence (countries, how the category matched) follows, its outcome code does not (the
    decision's ``override.policy_decision`` says what the policy alone would have decided). The decision id
    differs from the policy's for the same event, so a consumer that drops copies by id keeps both.
    """
    evidence = tuple(reason for reason in decision.reasons if reason not in OUTCOMES)
    return decision._replace(
        decision=override.decision, reasons=(MANUAL_OVERRIDE, *evidence),
        decision_id=decision_id(decision.event_id, f"{decision.policy_version}\x1f{override.digest}"),
    )


def released(decision: Decision, ended: str) -> Decision:
    """The policy's decision again once an override expired or was cleared (``ended``: its digest), under an id
    of its own: the same event under the same policy was decided before, and a consumer must not drop this one."""
    return decision._replace(decision_id=decision_id(decision.event_id, f"{decision.policy_version}\x1f{ended}\x1fend"))


def override_record(override: Override, policy_decision: str) -> dict[str, Any]:
    """What a decision made by an override carries about it (the audit trail on the decisions topic)."""
    return {**override.describe(), "policy_decision": policy_decision}
