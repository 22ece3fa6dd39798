"""The decision table: block exactly when cross-border and in a restricted cluster."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tests.unit.conftest import make_event
from worker.core import Policy, classify, decode_event, parse_policy
from worker.core.classify import Reason, decision_id

APPAREL = "Apparel & Accessories > Clothing > Clothing Tops"
SNACKS = "Food, Beverages & Tobacco > Food Items > Snack Foods"
WINE = "Food, Beverages & Tobacco > Beverages > Alcoholic Beverages > Wine"
CRAFT_KIT = "Arts & Entertainment > Hobbies & Creative Arts > Arts & Crafts > Art & Craft Kits"
VASE = "Home & Garden > Decor > Vases"
FABRIC = "Arts & Entertainment > Hobbies & Creative Arts > Arts & Crafts > Art & Crafting Materials > Textiles > Fabric > Cotton"
WATCH = "Apparel & Accessories > Jewelry > Watches"
CIGARS = "Food, Beverages & Tobacco > Tobacco Products > Cigars"
PHONE = "Electronics > Communications > Telephony > Mobile Phones"
UNKNOWN = "Marketplace > Imported Goods > Assorted"


def event(path: str, seller: str = "CN", ship_from: str = "CN", **extra: Any) -> dict[str, Any]:
    changes: dict[str, Any] = {
        "product__category": {"path": path},
        "product__seller__country": seller,
        "product__ship_from_country": ship_from,
        "product__hs_code": ...,
    }
    changes.update(extra)
    return make_event(**changes)


# (event, decision, cluster, cross_border, reasons)
TABLE = [
    pytest.param(event(APPAREL), "block", "textile_fashion", True,
                 [Reason.CROSS_BORDER_RESTRICTED_CLUSTER, Reason.FOREIGN_SELLER, Reason.FOREIGN_SHIP_FROM, Reason.MATCHED_CATEGORY_PATH],
                 id="textile-imported-from-china"),
    pytest.param(event(SNACKS), "block", "food_beverage", True,
                 [Reason.CROSS_BORDER_RESTRICTED_CLUSTER, Reason.FOREIGN_SELLER, Reason.FOREIGN_SHIP_FROM, Reason.MATCHED_CATEGORY_PATH],
                 id="food-imported"),
    pytest.param(event(WINE, "FR", "FR"), "block", "food_beverage", True,
                 [Reason.CROSS_BORDER_RESTRICTED_CLUSTER, Reason.FOREIGN_SELLER, Reason.FOREIGN_SHIP_FROM, Reason.MATCHED_CATEGORY_PATH],
                 id="beverage-imported"),
    pytest.param(event(CRAFT_KIT, "JP", "JP"), "block", "crafts", True,
                 [Reason.CROSS_BORDER_RESTRICTED_CLUSTER, Reason.FOREIGN_SELLER, Reason.FOREIGN_SHIP_FROM, Reason.MATCHED_CATEGORY_PATH],
                 id="crafts-imported"),
    pytest.param(event(VASE, "VN", "VN"), "block", "crafts", True,
                 [Reason.CROSS_BORDER_RESTRICTED_CLUSTER, Reason.FOREIGN_SELLER, Reason.FOREIGN_SHIP_FROM, Reason.MATCHED_CATEGORY_PATH],
                 id="handicraft-decor-imported"),
    pytest.param(event(FABRIC, "IN", "IN"), "block", "textile_fashion", True,
                 [Reason.CROSS_BORDER_RESTRICTED_CLUSTER, Reason.FOREIGN_SELLER, Reason.FOREIGN_SHIP_FROM, Reason.MATCHED_CATEGORY_PATH],
                 id="crafting-fabric-is-textile-longest-prefix"),
    pytest.param(event(APPAREL, "SG", "ID"), "block", "textile_fashion", True,
                 [Reason.CROSS_BORDER_RESTRICTED_CLUSTER, Reason.FOREIGN_SELLER, Reason.MATCHED_CATEGORY_PATH],
                 id="foreign-seller-local-warehouse"),
    pytest.param(event(APPAREL, "ID", "CN"), "block", "textile_fashion", True,
                 [Reason.CROSS_BORDER_RESTRICTED_CLUSTER, Reason.FOREIGN_SHIP_FROM, Reason.MATCHED_CATEGORY_PATH],
                 id="local-seller-ships-from-abroad"),
    pytest.param(event(APPAREL, "ID", "ID"), "allow", "textile_fashion", False,
                 [Reason.DOMESTIC_ITEM, Reason.MATCHED_CATEGORY_PATH],
                 id="local-seller-textile"),
    pytest.param(event(SNACKS, "ID", "ID"), "allow", "food_beverage", False,
                 [Reason.DOMESTIC_ITEM, Reason.MATCHED_CATEGORY_PATH],
                 id="local-seller-food"),
    pytest.param(event(CRAFT_KIT, "ID", "ID"), "allow", "crafts", False,
                 [Reason.DOMESTIC_ITEM, Reason.MATCHED_CATEGORY_PATH],
                 id="local-seller-crafts"),
    pytest.param(event(PHONE), "allow", None, True,
                 [Reason.NOT_RESTRICTED_CATEGORY, Reason.FOREIGN_SELLER, Reason.FOREIGN_SHIP_FROM, Reason.UNMAPPED_CATEGORY],
                 id="imported-electronics-unrestricted"),
    pytest.param(event(WATCH), "allow", None, True,
                 [Reason.NOT_RESTRICTED_CATEGORY, Reason.FOREIGN_SELLER, Reason.FOREIGN_SHIP_FROM, Reason.MATCHED_CATEGORY_PATH],
                 id="watch-carve-out"),
    pytest.param(event(CIGARS), "allow", None, True,
                 [Reason.NOT_RESTRICTED_CATEGORY, Reason.FOREIGN_SELLER, Reason.FOREIGN_SHIP_FROM, Reason.UNMAPPED_CATEGORY],
                 id="tobacco-not-food"),
    pytest.param(event(UNKNOWN), "allow", None, True,
                 [Reason.NOT_RESTRICTED_CATEGORY, Reason.FOREIGN_SELLER, Reason.FOREIGN_SHIP_FROM, Reason.UNMAPPED_CATEGORY],
                 id="unknown-category-no-hs"),
    pytest.param(event(UNKNOWN, product__hs_code="6109.10"), "block", "textile_fashion", True,
                 [Reason.CROSS_BORDER_RESTRICTED_CLUSTER, Reason.FOREIGN_SELLER, Reason.FOREIGN_SHIP_FROM, Reason.MATCHED_HS_CODE],
                 id="unknown-category-hs-fallback-textile"),
    pytest.param(event(UNKNOWN, product__hs_code="1905.90"), "block", "food_beverage", True,
                 [Reason.CROSS_BORDER_RESTRICTED_CLUSTER, Reason.FOREIGN_SELLER, Reason.FOREIGN_SHIP_FROM, Reason.MATCHED_HS_CODE],
                 id="unknown-category-hs-fallback-food"),
    pytest.param(event(UNKNOWN, product__hs_code="9703"), "block", "crafts", True,
                 [Reason.CROSS_BORDER_RESTRICTED_CLUSTER, Reason.FOREIGN_SELLER, Reason.FOREIGN_SHIP_FROM, Reason.MATCHED_HS_CODE],
                 id="unknown-category-hs-fallback-crafts-heading"),
    pytest.param(event(UNKNOWN, product__hs_code="2402"), "allow", None, True,
                 [Reason.NOT_RESTRICTED_CATEGORY, Reason.FOREIGN_SELLER, Reason.FOREIGN_SHIP_FROM, Reason.UNMAPPED_CATEGORY],
                 id="unknown-category-hs-tobacco-unmapped"),
    pytest.param(event(UNKNOWN, "ID", "ID", product__hs_code="6109.10"), "allow", "textile_fashion", False,
                 [Reason.DOMESTIC_ITEM, Reason.MATCHED_HS_CODE],
                 id="hs-fallback-domestic"),
    pytest.param(event(WATCH, product__hs_code="6109.10"), "allow", None, True,
                 [Reason.NOT_RESTRICTED_CATEGORY, Reason.FOREIGN_SELLER, Reason.FOREIGN_SHIP_FROM, Reason.MATCHED_CATEGORY_PATH],
                 id="carve-out-match-stops-hs-fallback"),
    pytest.param(event(APPAREL, product__category={"id": "aa-1-13", "path": APPAREL}), "block", "textile_fashion", True,
                 [Reason.CROSS_BORDER_RESTRICTED_CLUSTER, Reason.FOREIGN_SELLER, Reason.FOREIGN_SHIP_FROM, Reason.MATCHED_CATEGORY_ID],
                 id="category-id-match"),
    pytest.param(event(APPAREL, product__category={"id": "el-4", "path": APPAREL}), "block", "textile_fashion", True,
                 [Reason.CROSS_BORDER_RESTRICTED_CLUSTER, Reason.FOREIGN_SELLER, Reason.FOREIGN_SHIP_FROM, Reason.MATCHED_CATEGORY_PATH],
                 id="unmapped-id-falls-back-to-path"),
    pytest.param(event(PHONE, product__category={"id": "aa-6-11", "path": APPAREL}), "allow", None, True,
                 [Reason.NOT_RESTRICTED_CATEGORY, Reason.FOREIGN_SELLER, Reason.FOREIGN_SHIP_FROM, Reason.MATCHED_CATEGORY_ID, Reason.CATEGORY_ID_PATH_CONFLICT],
                 id="id-path-conflict-id-wins"),
    pytest.param(event("  apparel & accessories>clothing >  CLOTHING TOPS "), "block", "textile_fashion", True,
                 [Reason.CROSS_BORDER_RESTRICTED_CLUSTER, Reason.FOREIGN_SELLER, Reason.FOREIGN_SHIP_FROM, Reason.MATCHED_CATEGORY_PATH],
                 id="path-case-and-spacing-insensitive"),
    pytest.param(event("Apparel & Accessories > Clothing Accessoriesx"), "block", "textile_fashion", True,
                 [Reason.CROSS_BORDER_RESTRICTED_CLUSTER, Reason.FOREIGN_SELLER, Reason.FOREIGN_SHIP_FROM, Reason.MATCHED_CATEGORY_PATH],
                 id="whole-segments-only-falls-to-root-rule"),
]


@pytest.mark.parametrize(("raw_event", "decision", "cluster", "cross_border", "reasons"), TABLE)
def test_decision_table(
    policy: Policy, raw_event: dict, decision: str, cluster: str | None, cross_border: bool, reasons: list[str]
) -> None:
    result = classify(decode_event(orjson.dumps(raw_event)), policy)
    assert (result.decision, result.cluster, result.cross_border) == (decision, cluster, cross_border)
    assert list(result.reasons) == reasons
    assert result.policy_version == policy.version


def test_phone_with_textile_hs_code_uses_the_fallback(policy: Policy) -> None:
    """The HS fallback applies whenever the category matched nothing, including a real but unmapped one."""
    result = classify(decode_event(orjson.dumps(event(PHONE, product__hs_code="6109.10"))), policy)
    assert result.cluster == "textile_fashion"
    assert Reason.MATCHED_HS_CODE in result.reasons


def test_decision_id_is_deterministic_and_depends_on_event_and_policy(policy: Policy) -> None:
    parsed = decode_event(orjson.dumps(event(APPAREL)))
    first, second = classify(parsed, policy), classify(parsed, policy)
    assert first == second
    assert first.decision_id == decision_id(parsed.event_id, policy.version)
    assert decision_id("e-1", "v1") != decision_id("e-2", "v1")
    assert decision_id("e-1", "v1") != decision_id("e-1", "v2")
    assert len(first.decision_id) == 32


def _narrow_policy(signals: list[str], homes: list[str] | None = None) -> Policy:
    return parse_policy({
        "version": "narrow-1",
        "cross_border": {"home_countries": homes or ["ID"], "signals": signals},
        "clusters": {"textile_fashion": {"title": "Textile"}},
        "category_rules": [{"path": "Apparel & Accessories", "cluster": "textile_fashion"}],
    })


@pytest.mark.parametrize(
    ("signals", "homes", "seller", "ship_from", "expected"),
    [
        pytest.param(["ship_from_country"], None, "SG", "ID", "allow", id="ship-from-only-ignores-foreign-seller"),
        pytest.param(["ship_from_country"], None, "ID", "CN", "block", id="ship-from-only-blocks-import"),
        pytest.param(["seller_country"], None, "ID", "CN", "allow", id="seller-only-ignores-origin"),
        pytest.param(["seller_country", "ship_from_country"], ["ID", "SG"], "SG", "SG", "allow", id="widened-home-countries"),
    ],
)
def test_policy_narrows_or_widens_cross_border(
    signals: list[str], homes: list[str] | None, seller: str, ship_from: str, expected: str
) -> None:
    result = classify(decode_event(orjson.dumps(event(APPAREL, seller, ship_from))), _narrow_policy(signals, homes))
    assert result.decision == expected


def test_record_has_every_contract_field(policy: Policy) -> None:
    result = classify(decode_event(orjson.dumps(event(APPAREL))), policy)
    record = result.record("2026-11-29T10:00:00.123Z", {"topic": "t", "partition": 0, "offset": 42})
    assert set(record) == {
        "decision_id", "event_id", "product_id", "product_version", "decision", "cross_border",
        "cluster", "reasons", "review", "policy_version", "decided_at", "source",
    }
    assert record["reasons"][0] == Reason.CROSS_BORDER_RESTRICTED_CLUSTER
    assert record["review"] is False, "classify alone never raises a review signal"
