"""Policy loading and validation: the bundled policy, every rejection with a message naming the key, and schema agreement."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from jsonschema import Draft202012Validator

from worker.core import InvalidPolicy, Policy, load_bundled_policy, load_policy_file, parse_policy
from worker.core.policy import BUNDLED_POLICY, normalize_path, parse_policy_bytes
from worker.commands.sample import taxonomy

ROOT = Path(__file__).resolve().parents[3]
SHARED_TAXONOMY = Path("/work/shared/data/shopify-categories.txt")
POLICY_SCHEMA = Draft202012Validator(json.loads((ROOT / "schemas" / "policy.schema.json").read_text(encoding="utf-8")))


def bundled_bytes() -> bytes:
    return resources.files("worker.policies").joinpath(BUNDLED_POLICY).read_bytes()


@cache
def _bundled_document() -> dict[str, Any]:
    return yaml.safe_load(bundled_bytes())


def bundled_document() -> dict[str, Any]:
    """A fresh copy of the bundled policy as parsed from its YAML."""
    return copy.deepcopy(_bundled_document())


def shared_taxonomy_rows() -> list[tuple[str, str]]:
    rows = []
    for line in SHARED_TAXONOMY.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            category_id, tab, path = line.partition("\t")
            assert tab, f"not ID<TAB>path: {line!r}"
            rows.append((category_id, path))
    return rows


# --- the bundled policy ----------------------------------------------------------------


def test_bundled_policy_loads(policy: Policy) -> None:
    assert policy.version == "2026.11.0"
    assert policy.home_countries == frozenset({"ID"})
    assert policy.signals == ("seller_country", "ship_from_country")
    assert set(policy.clusters) == {"textile_fashion", "food_beverage", "crafts"}
    assert policy.hs_fallback_enabled
    assert len(policy.category_rules) == len(bundled_document()["category_rules"])
    assert len(policy.hs_rules) == len(bundled_document()["hs_fallback"]["rules"])


def test_packaged_taxonomy_equals_the_shared_data_file() -> None:
    packaged = [(category.id, category.path) for category in taxonomy()]
    assert len(packaged) == 10_365
    assert packaged == shared_taxonomy_rows()


def test_every_category_rule_names_a_real_category_whose_id_and_path_agree() -> None:
    paths_by_id = dict(shared_taxonomy_rows())
    ids_by_path = {path: category_id for category_id, path in paths_by_id.items()}
    for index, rule in enumerate(bundled_document()["category_rules"]):
        where = f"category_rules[{index}] {rule}"
        if "id" in rule:
            assert rule["id"] in paths_by_id, f"{where}: id is not a Shopify category"
        if "path" in rule:
            assert rule["path"] in ids_by_path, f"{where}: path is not a Shopify category (exact spelling)"
        if "id" in rule and "path" in rule:
            assert paths_by_id[rule["id"]] == rule["path"], f"{where}: id and path name different categories"


def test_bundled_policy_validates_against_the_schema() -> None:
    errors = [error.message for error in POLICY_SCHEMA.iter_errors(bundled_document())]
    assert errors == []


def test_policy_schema_country_list_is_the_loaders() -> None:
    from worker.core.countries import COUNTRY_CODES

    schema = POLICY_SCHEMA.schema["properties"]["cross_border"]["properties"]["home_countries"]["items"]
    assert set(schema["enum"]) == COUNTRY_CODES
    assert len(schema["enum"]) == len(COUNTRY_CODES) == 249


# --- rejections --------------------------------------------------------------------------

Mutation = Callable[[dict[str, Any]], Any]


def _walk(document: Any, dotted: str) -> tuple[Any, Any]:
    *parents, leaf = dotted.split(".")
    target = document
    for key in parents:
        target = target[int(key)] if isinstance(target, list) else target[key]
    return target, int(leaf) if isinstance(target, list) else leaf


def put(dotted: str, value: Any) -> Mutation:
    def mutate(document: dict[str, Any]) -> dict[str, Any]:
        target, leaf = _walk(document, dotted)
        target[leaf] = value
        return document

    return mutate


def drop(dotted: str) -> Mutation:
    def mutate(document: dict[str, Any]) -> dict[str, Any]:
        target, leaf = _walk(document, dotted)
        del target[leaf]
        return document

    return mutate


def rename(dotted: str, new_name: str) -> Mutation:
    def mutate(document: dict[str, Any]) -> dict[str, Any]:
        target, leaf = _walk(document, dotted)
        target[new_name] = target.pop(leaf)
        return document

    return mutate


def append(dotted: str, item: Any) -> Mutation:
    def mutate(document: dict[str, Any]) -> dict[str, Any]:
        target, leaf = _walk(document, dotted)
        target[leaf].append(item)
        return document

    return mutate


def add_keys(dotted: str, keys: dict[Any, Any]) -> Mutation:
    """Add keys of any type (YAML allows numbers and null as keys) to the mapping at ``dotted`` ('' for the root)."""

    def mutate(document: dict[str, Any]) -> dict[str, Any]:
        target, leaf = _walk(document, dotted) if dotted else ({"": document}, "")
        target[leaf].update(keys)
        return document

    return mutate


def replace_with(value: Any) -> Mutation:
    return lambda _document: value


RULES = len(bundled_document()["category_rules"])
MIN_PRICE = {"enabled": True, "amount": "100.00", "currency": "USD", "exchange_rates": {"IDR": "0.0000625"}}
REVIEW = {"enabled": True, "signals": ["origin_changed_after_block", "category_changed_after_block"], "on_signal": "hold"}
HS_RULES = len(bundled_document()["hs_fallback"]["rules"])

# (mutation, substring of the message, whether policy.schema.json can express the rule too)
REJECTIONS = [
    pytest.param(put("category_rules.0.cluster", "textiles"), "category_rules[0].cluster: unknown cluster 'textiles'", False,
                 id="unknown-cluster-in-rule"),
    pytest.param(put("hs_fallback.rules.0.cluster", "snacks"), "hs_fallback.rules[0].cluster: unknown cluster 'snacks'", False,
                 id="unknown-cluster-in-hs-rule"),
    pytest.param(append("category_rules", {"id": "aa", "cluster": "crafts"}), f"category_rules[{RULES}].id: duplicate rule for id 'aa'", False,
                 id="duplicate-id-rule"),
    pytest.param(append("category_rules", {"path": "Apparel & Accessories", "cluster": "crafts"}),
                 f"category_rules[{RULES}].path: duplicate rule", False, id="duplicate-path-rule"),
    pytest.param(append("category_rules", {"path": "  apparel &  ACCESSORIES ", "cluster": "crafts"}),
                 f"category_rules[{RULES}].path: duplicate rule", False, id="duplicate-path-differing-in-case-and-spacing"),
    pytest.param(append("category_rules", {"path": "Apparel & Accessories>Jewelry  >watches", "cluster": None}),
                 f"category_rules[{RULES}].path: duplicate rule", False, id="duplicate-path-spacing-around-separator"),
    pytest.param(append("hs_fallback.rules", {"prefix": "62", "cluster": "crafts"}),
                 f"hs_fallback.rules[{HS_RULES}].prefix: duplicate rule for HS prefix '62'", False, id="duplicate-hs-prefix"),
    pytest.param(put("category_rules.0.path", "Apparel & Accessories >  > Clothing"), "category_rules[0].path: malformed prefix", True,
                 id="path-empty-segment"),
    pytest.param(put("category_rules.0.path", "Apparel & Accessories >"), "category_rules[0].path: malformed prefix", True,
                 id="path-trailing-separator"),
    pytest.param(put("category_rules.0.path", "> Apparel & Accessories"), "category_rules[0].path: malformed prefix", True,
                 id="path-leading-separator"),
    pytest.param(put("category_rules.0.path", " > ".join(["A"] * 17)), "category_rules[0].path: malformed prefix", True,
                 id="path-17-segments"),
    pytest.param(put("category_rules.0.path", ""), "category_rules[0].path", True, id="path-empty"),
    pytest.param(put("category_rules.0.id", "AA-1"), "category_rules[0].id: malformed prefix 'AA-1'", True, id="id-upper-case"),
    pytest.param(put("category_rules.0.id", "aa_1"), "category_rules[0].id: malformed prefix 'aa_1'", True, id="id-underscore"),
    pytest.param(put("category_rules.0.id", "aa-"), "category_rules[0].id: malformed prefix", True, id="id-trailing-dash"),
    pytest.param(put("category_rules.0.id", 1), "category_rules[0].id: expected a string", True, id="id-number"),
    pytest.param(put("hs_fallback.rules.0.prefix", "6"), "hs_fallback.rules[0].prefix: malformed prefix '6'", True, id="hs-one-digit"),
    pytest.param(put("hs_fallback.rules.0.prefix", "62a"), "hs_fallback.rules[0].prefix: malformed prefix '62a'", True, id="hs-letter"),
    pytest.param(put("hs_fallback.rules.0.prefix", "620"), "hs_fallback.rules[0].prefix: malformed prefix '620'", True, id="hs-odd-length"),
    pytest.param(put("hs_fallback.rules.0.prefix", "620520101010"), "hs_fallback.rules[0].prefix: malformed prefix", True, id="hs-twelve-digits"),
    pytest.param(put("hs_fallback.rules.0.prefix", 62), "hs_fallback.rules[0].prefix: expected a string", True, id="hs-number"),
    pytest.param(rename("category_rules", "category_rule"), "unknown key 'category_rule'", True, id="top-level-key-typo"),
    pytest.param(put("category_rule", []), "policy: unknown key 'category_rule'", True, id="unknown-top-level-key"),
    pytest.param(put("category_rules.0.clustr", "crafts"), "category_rules[0]: unknown key 'clustr'", True, id="unknown-key-in-rule"),
    pytest.param(put("hs_fallback.rule", []), "hs_fallback: unknown key 'rule'", True, id="unknown-key-in-hs-fallback"),
    pytest.param(add_keys("clusters.crafts", {1: "x"}), "clusters.crafts: unknown key 1", True, id="unknown-number-key"),
    pytest.param(add_keys("", {1: "x", None: "y", "zz": "z"}), "policy: unknown key", True, id="unknown-keys-of-mixed-types"),
    pytest.param(put("cross_border.home_country", ["ID"]), "cross_border: unknown key 'home_country'", True, id="unknown-key-in-cross-border"),
    pytest.param(put("category_rules.0", {"cluster": "crafts"}), "category_rules[0]: a rule needs an 'id', a 'path' or both", True,
                 id="rule-without-id-or-path"),
    pytest.param(drop("category_rules.0.cluster"), "category_rules[0]: missing required key 'cluster'", True, id="rule-without-cluster"),
    pytest.param(drop("version"), "policy: missing required key 'version'", True, id="missing-version"),
    pytest.param(put("version", "2026 11"), "version: '2026 11'", True, id="version-with-space"),
    pytest.param(put("version", "-2026.11"), "version: '-2026.11'", True, id="version-leading-dash"),
    pytest.param(put("version", "v" * 65), "version: must be 1 to 64 characters", True, id="version-too-long"),
    pytest.param(put("version", 2026.11), "version: expected a string, got float", True, id="version-unquoted-number"),
    pytest.param(put("cross_border.home_countries", ["IDN"]), "cross_border.home_countries[0]: 'IDN' is not an ISO 3166-1", True,
                 id="home-country-alpha3"),
    pytest.param(put("cross_border.home_countries", ["ID", "id"]), "cross_border.home_countries[1]: 'id'", True,
                 id="home-country-lower-case"),
    pytest.param(put("cross_border.home_countries", ["XX"]), "cross_border.home_countries[0]: 'XX'", True, id="home-country-unassigned"),
    pytest.param(put("cross_border.home_countries", [["ID"]]), "cross_border.home_countries[0]", True, id="home-country-nested-list"),
    pytest.param(put("cross_border.home_countries", []), "cross_border.home_countries: must name at least one country", True,
                 id="home-countries-empty"),
    pytest.param(put("cross_border.home_countries", "ID"), "cross_border.home_countries: expected a list", True,
                 id="home-countries-not-a-list"),
    pytest.param(put("cross_border.signals", []), "cross_border.signals: must be a non-empty list", True, id="empty-signals"),
    pytest.param(put("cross_border.signals", ["origin_country"]), "cross_border.signals", True, id="unknown-signal"),
    pytest.param(put("cross_border.signals", ["seller_country", "seller_country"]), "cross_border.signals", True, id="duplicate-signal"),
    pytest.param(put("cross_border.signals", [["seller_country"]]), "cross_border.signals", True, id="signal-nested-list"),
    pytest.param(put("clusters.Food-Beverage", {"title": "F&B"}), "clusters.Food-Beverage: cluster names are lower_snake_case", True,
                 id="cluster-name-not-snake-case"),
    pytest.param(put("clusters.2crafts", {"title": "Crafts 2"}), "clusters.2crafts: cluster names are lower_snake_case", True,
                 id="cluster-name-starts-with-digit"),
    pytest.param(put("clusters", {}), "clusters: must declare at least one", True, id="no-clusters"),
    pytest.param(drop("clusters.crafts.title"), "clusters.crafts: missing required key 'title'", True, id="cluster-without-title"),
    pytest.param(put("clusters.crafts.title", ""), "clusters.crafts.title: must be 1 to 200", True, id="cluster-empty-title"),
    pytest.param(put("hs_fallback.enabled", "yes"), "hs_fallback.enabled: expected true or false", True, id="hs-enabled-string"),
    pytest.param(put("hs_fallback.enabled", 1), "hs_fallback.enabled: expected true or false", True, id="hs-enabled-number"),
    pytest.param(put("category_rules", {"id": "aa"}), "category_rules: expected a list", True, id="rules-not-a-list"),
    pytest.param(put("category_rules.0", "aa"), "category_rules[0]: expected a mapping", True, id="rule-not-a-mapping"),
    pytest.param(put("description", ""), "description: must be 1 to 1000", True, id="empty-description"),
    pytest.param(replace_with(["version", "2026.11.0"]), "policy: expected a mapping", True, id="not-a-mapping-list"),
    pytest.param(replace_with("version: 2026.11.0"), "policy: expected a mapping", True, id="not-a-mapping-string"),
    pytest.param(replace_with(None), "policy: expected a mapping", True, id="not-a-mapping-empty-document"),
    # --- the optional rules: effective dates, exempt sellers, minimum price ---
    pytest.param(put("clusters.crafts.effective_from", "2026-13-01"), "clusters.crafts.effective_from: '2026-13-01' is not a real date",
                 False, id="effective-from-month-13"),
    pytest.param(put("clusters.crafts.effective_from", "2026-02-30"), "clusters.crafts.effective_from: '2026-02-30' is not a real date",
                 False, id="effective-from-february-30"),
    pytest.param(put("clusters.crafts.effective_from", "2026-12-01T24:00:00Z"), "clusters.crafts.effective_from: '2026-12-01T24:00:00Z' is not a real",
                 False, id="effective-from-hour-24"),
    pytest.param(put("clusters.crafts.effective_from", "2026-12-01T00:00:00+24:00"), "clusters.crafts.effective_from: '2026-12-01T00:00:00+24:00' has an impossible UTC offset",
                 False, id="effective-from-offset-24-hours"),
    pytest.param(put("clusters.crafts.effective_from", "01/12/2026"), "clusters.crafts.effective_from: '01/12/2026' is not a date (2026-12-01) or an RFC 3339",
                 True, id="effective-from-day-month-year"),
    pytest.param(put("clusters.crafts.effective_from", "2026-12-01T00:00:00"), "clusters.crafts.effective_from: '2026-12-01T00:00:00' is not a date",
                 True, id="effective-from-timestamp-without-offset"),
    pytest.param(put("clusters.crafts.effective_from", "2026-12-01 00:00:00Z"), "clusters.crafts.effective_from: '2026-12-01 00:00:00Z' is not a date",
                 True, id="effective-from-space-separator"),
    pytest.param(put("clusters.crafts.effective_from", "2026-12-1"), "clusters.crafts.effective_from: '2026-12-1' is not a date",
                 True, id="effective-from-one-digit-day"),
    pytest.param(put("clusters.crafts.effective_from", 20261201), "clusters.crafts.effective_from: expected a date or RFC 3339 timestamp as a string, got int",
                 True, id="effective-from-number"),
    pytest.param(put("clusters.crafts.effective_form", "2026-12-01"), "clusters.crafts: unknown key 'effective_form'", True,
                 id="effective-from-typo"),
    pytest.param(put("exempt_sellers", "S-1"), "exempt_sellers: expected a list of seller ids, got str", True, id="exempt-sellers-not-a-list"),
    pytest.param(put("exempt_sellers", ["S-1", "S-2", "S-1"]), "exempt_sellers[2]: duplicate seller id 'S-1'", True,
                 id="exempt-sellers-duplicate"),
    pytest.param(put("exempt_sellers", [""]), "exempt_sellers[0]: must be 1 to 128 characters", True, id="exempt-seller-empty"),
    pytest.param(put("exempt_sellers", ["S" * 129]), "exempt_sellers[0]: must be 1 to 128 characters", True, id="exempt-seller-too-long"),
    pytest.param(put("exempt_sellers", [12345]), "exempt_sellers[0]: expected a string, got int", True, id="exempt-seller-unquoted-number"),
    pytest.param(put("exempt_sellers", [f"S-{n}" for n in range(10_001)]), "exempt_sellers: at most 10000 seller ids", True,
                 id="exempt-sellers-too-many"),
    pytest.param(put("minimum_price", True), "minimum_price: expected a mapping, got bool", True, id="min-price-not-a-mapping"),
    pytest.param(put("minimum_price", {"enabled": True, "currency": "USD"}), "minimum_price: missing required key 'amount'", True,
                 id="min-price-without-amount"),
    pytest.param(put("minimum_price", {"amount": "100.00", "currency": "USD"}), "minimum_price: missing required key 'enabled'", True,
                 id="min-price-without-enabled"),
    pytest.param(put("minimum_price", {"enabled": True, "amount": "100.00"}), "minimum_price: missing required key 'currency'", True,
                 id="min-price-without-currency"),
    pytest.param(put("minimum_price", {**MIN_PRICE, "exempt_hs": []}), "minimum_price: unknown key 'exempt_hs'", True,
                 id="min-price-unknown-key"),
    pytest.param(put("minimum_price", {**MIN_PRICE, "enabled": "yes"}), "minimum_price.enabled: expected true or false", True,
                 id="min-price-enabled-string"),
    pytest.param(put("minimum_price", {**MIN_PRICE, "amount": 100}), "minimum_price.amount: expected a decimal string such as '100.00' (quoted), got int",
                 True, id="min-price-amount-number"),
    pytest.param(put("minimum_price", {**MIN_PRICE, "amount": 100.0}), "minimum_price.amount: expected a decimal string", True,
                 id="min-price-amount-float"),
    pytest.param(put("minimum_price", {**MIN_PRICE, "amount": "0.00"}), "minimum_price.amount: must be greater than 0, got '0.00'", False,
                 id="min-price-amount-zero"),
    pytest.param(put("minimum_price", {**MIN_PRICE, "amount": "-100"}), "minimum_price.amount: '-100' is not a decimal such as '100.00'", True,
                 id="min-price-amount-negative"),
    pytest.param(put("minimum_price", {**MIN_PRICE, "amount": "1e2"}), "minimum_price.amount: '1e2' is not a decimal", True,
                 id="min-price-amount-exponent"),
    pytest.param(put("minimum_price", {**MIN_PRICE, "amount": "100,00"}), "minimum_price.amount: '100,00' is not a decimal", True,
                 id="min-price-amount-decimal-comma"),
    pytest.param(put("minimum_price", {**MIN_PRICE, "amount": "100.0000001"}), "minimum_price.amount: '100.0000001' is not a decimal", True,
                 id="min-price-amount-seven-decimals"),
    pytest.param(put("minimum_price", {**MIN_PRICE, "currency": "usd"}), "minimum_price.currency: 'usd' is not an ISO 4217 currency code", True,
                 id="min-price-currency-lower-case"),
    pytest.param(put("minimum_price", {**MIN_PRICE, "currency": "US$"}), "minimum_price.currency: 'US$' is not an ISO 4217", True,
                 id="min-price-currency-symbol"),
    pytest.param(put("minimum_price", {**MIN_PRICE, "currency": None}), "minimum_price.currency: expected an ISO 4217 currency code, got NoneType",
                 True, id="min-price-currency-null"),
    pytest.param(put("minimum_price", {**MIN_PRICE, "applies_to": "domestic"}), "minimum_price.applies_to: 'domestic' is not one of ['cross_border']",
                 True, id="min-price-applies-to-domestic"),
    pytest.param(put("minimum_price", {**MIN_PRICE, "exempt_hs_prefixes": "4901"}), "minimum_price.exempt_hs_prefixes: expected a list", True,
                 id="min-price-exempt-hs-not-a-list"),
    pytest.param(put("minimum_price", {**MIN_PRICE, "exempt_hs_prefixes": ["4901", "490"]}),
                 "minimum_price.exempt_hs_prefixes[1]: malformed prefix '490'", True, id="min-price-exempt-hs-odd-length"),
    pytest.param(put("minimum_price", {**MIN_PRICE, "exempt_hs_prefixes": ["4901", "4901"]}),
                 "minimum_price.exempt_hs_prefixes[1]: duplicate HS prefix '4901'", True, id="min-price-exempt-hs-duplicate"),
    pytest.param(put("minimum_price", {**MIN_PRICE, "exempt_hs_prefixes": [4901]}),
                 "minimum_price.exempt_hs_prefixes[0]: expected a string of digits, got int", True, id="min-price-exempt-hs-number"),
    pytest.param(put("minimum_price", {**MIN_PRICE, "exempt_hs_prefixes": ["49.01"]}),
                 "minimum_price.exempt_hs_prefixes[0]: malformed prefix '49.01'", True, id="min-price-exempt-hs-with-dot"),
    pytest.param(put("minimum_price", {**MIN_PRICE, "exchange_rates": [["IDR", "0.0000625"]]}),
                 "minimum_price.exchange_rates: expected a mapping of currency to rate, got list", True, id="min-price-rates-not-a-mapping"),
    pytest.param(put("minimum_price", {**MIN_PRICE, "exchange_rates": {"idr": "0.0000625"}}),
                 "minimum_price.exchange_rates.idr: 'idr' is not an ISO 4217 currency code", True, id="min-price-rate-currency-lower-case"),
    pytest.param(put("minimum_price", {**MIN_PRICE, "exchange_rates": {"IDR": 0.0000625}}),
                 "minimum_price.exchange_rates.IDR: expected a decimal string such as '0.0000625' (quoted), got float", True,
                 id="min-price-rate-float"),
    pytest.param(put("minimum_price", {**MIN_PRICE, "exchange_rates": {"IDR": "6.25e-5"}}),
                 "minimum_price.exchange_rates.IDR: '6.25e-5' is not a decimal", True, id="min-price-rate-exponent"),
    pytest.param(put("minimum_price", {**MIN_PRICE, "exchange_rates": {"IDR": "0.0000000"}}),
                 "minimum_price.exchange_rates.IDR: must be greater than 0", False, id="min-price-rate-zero"),
    pytest.param(put("minimum_price", {**MIN_PRICE, "exchange_rates": {"IDR": "0.0000625", "USD": "1"}}),
                 "minimum_price.exchange_rates.USD: a rate from USD to itself", False, id="min-price-rate-own-currency"),
    pytest.param(put("minimum_price", {**MIN_PRICE, "note": ""}), "minimum_price.note: must be 1 to 1000 characters", True,
                 id="min-price-empty-note"),
    # --- review signals ---
    pytest.param(put("review", True), "review: expected a mapping, got bool", True, id="review-not-a-mapping"),
    pytest.param(put("review", {"signals": REVIEW["signals"]}), "review: missing required key 'enabled'", True, id="review-without-enabled"),
    pytest.param(put("review", {"enabled": True}), "review: missing required key 'signals'", True, id="review-without-signals"),
    pytest.param(put("review", {**REVIEW, "on_signals": "hold"}), "review: unknown key 'on_signals'", True, id="review-unknown-key"),
    pytest.param(put("review", {**REVIEW, "enabled": "yes"}), "review.enabled: expected true or false, got str", True,
                 id="review-enabled-string"),
    pytest.param(put("review", {**REVIEW, "signals": "origin_changed_after_block"}), "review.signals: expected a list, got str", True,
                 id="review-signals-not-a-list"),
    pytest.param(put("review", {**REVIEW, "signals": []}), "review.signals: must be a non-empty list of distinct values from "
                 "['origin_changed_after_block', 'category_changed_after_block']", True, id="review-signals-empty"),
    pytest.param(put("review", {**REVIEW, "signals": ["ORIGIN_CHANGED_AFTER_BLOCK"]}), "review.signals: must be a non-empty list", True,
                 id="review-signal-as-reason-code"),
    pytest.param(put("review", {**REVIEW, "signals": ["seller_country"]}), "review.signals: must be a non-empty list", True,
                 id="review-signal-of-cross-border"),
    pytest.param(put("review", {**REVIEW, "signals": ["origin_changed_after_block"] * 2}), "review.signals: must be a non-empty list",
                 True, id="review-signal-duplicate"),
    pytest.param(put("review", {**REVIEW, "signals": [["origin_changed_after_block"]]}), "review.signals: must be a non-empty list",
                 True, id="review-signal-nested-list"),
    pytest.param(put("review", {**REVIEW, "on_signal": "block"}), "review.on_signal: 'block' is not one of ['flag', 'hold']", True,
                 id="review-on-signal-unknown"),
    pytest.param(put("review", {**REVIEW, "on_signal": ["hold"]}), "review.on_signal: ['hold'] is not one of ['flag', 'hold']", True,
                 id="review-on-signal-list"),
    pytest.param(put("review", {**REVIEW, "on_signal": None}), "review.on_signal: None is not one of", True, id="review-on-signal-null"),
    pytest.param(put("review", {**REVIEW, "note": ""}), "review.note: must be 1 to 1000 characters", True, id="review-empty-note"),
    pytest.param(put("cross_border.signals", ["origin_changed_after_block"]), "cross_border.signals", True,
                 id="review-signal-under-cross-border"),
]


@pytest.mark.parametrize(("mutation", "message_part", "schema_rejects"), REJECTIONS)
def test_invalid_policy_is_rejected_naming_the_key(mutation: Mutation, message_part: str, schema_rejects: bool) -> None:
    document = mutation(bundled_document())
    with pytest.raises(InvalidPolicy) as caught:
        parse_policy(document)
    assert message_part in caught.value.message, caught.value.message
    assert caught.value.retriable is False


@pytest.mark.parametrize(("mutation", "message_part", "schema_rejects"), REJECTIONS)
def test_schema_agrees_with_the_loader(mutation: Mutation, message_part: str, schema_rejects: bool) -> None:
    """Whatever the schema can express it rejects too; the rest (cluster references, duplicates) is the loader's alone."""
    document = mutation(bundled_document())
    assert POLICY_SCHEMA.is_valid(document) is not schema_rejects


@pytest.mark.parametrize(
    ("data", "message_part"),
    [
        pytest.param(b"version: [unclosed\n", "not valid YAML or JSON", id="yaml-syntax-error"),
        pytest.param(b"version: 1\n\tclusters: {}\n", "not valid YAML or JSON", id="yaml-tab-indent"),
        pytest.param(b'{"version": "1",', "not valid YAML or JSON", id="truncated-json"),
        pytest.param(b"version: '\xff\xfe'\n", "not valid YAML or JSON", id="not-utf8"),
        pytest.param(b"- version\n- clusters\n", "policy: expected a mapping", id="yaml-list"),
        pytest.param(b"", "policy: expected a mapping", id="empty-file"),
        pytest.param(b"   {}  ", "policy: missing required key", id="empty-json-object"),
        pytest.param(b"version: " + b"[" * 1000, "not valid YAML or JSON", id="yaml-nested-too-deeply"),
        pytest.param(b"[" * 1000, "not valid YAML or JSON", id="yaml-flow-nested-too-deeply"),
        pytest.param(b"- " * 3000 + b"x", "not valid YAML or JSON", id="yaml-block-nested-too-deeply"),
        pytest.param(b"{" * 5000, "not valid YAML or JSON", id="json-nested-too-deeply"),
    ],
)
def test_unparseable_bytes_are_rejected_naming_the_source(data: bytes, message_part: str) -> None:
    with pytest.raises(InvalidPolicy) as caught:
        parse_policy_bytes(data, source="policies/p.yaml")
    assert caught.value.message.startswith("policies/p.yaml: "), caught.value.message
    assert message_part in caught.value.message, caught.value.message


def test_missing_policy_file_has_a_clear_message(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(InvalidPolicy) as caught:
        load_policy_file(missing)
    assert caught.value.message == f"{missing}: cannot read policy file: No such file or directory"


def test_directory_as_policy_file_has_a_clear_message(tmp_path: Path) -> None:
    with pytest.raises(InvalidPolicy) as caught:
        load_policy_file(tmp_path)
    assert caught.value.message == f"{tmp_path}: cannot read policy file: Is a directory"


def test_invalid_policy_file_message_names_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_bytes(bundled_bytes().replace(b"home_countries: [ID]", b"home_countries: [IDN]"))
    with pytest.raises(InvalidPolicy) as caught:
        load_policy_file(path)
    assert caught.value.message.startswith(f"{path}: cross_border.home_countries[0]: 'IDN'"), caught.value.message


# --- YAML and JSON forms, digest ---------------------------------------------------------


def test_yaml_and_json_forms_of_the_same_policy_have_the_same_digest(tmp_path: Path, policy: Policy) -> None:
    document = bundled_document()
    forms = {
        "yaml-with-comments": bundled_bytes(),
        "yaml-redumped": yaml.safe_dump(document, sort_keys=True).encode(),
        "json-compact": orjson.dumps(document),
        "json-indented-leading-space": b"\n  " + orjson.dumps(document, option=orjson.OPT_INDENT_2),
        "json-other-key-order": json.dumps(dict(reversed(list(document.items())))).encode(),
    }
    for name, data in forms.items():
        parsed = parse_policy_bytes(data, source=name)
        assert parsed.digest == policy.digest, name
        assert (parsed.version, parsed.category_rules, parsed.hs_rules) == (policy.version, policy.category_rules, policy.hs_rules), name
    json_file = tmp_path / "policy.json"
    json_file.write_bytes(forms["json-indented-leading-space"])
    assert load_policy_file(json_file).digest == policy.digest


def test_digest_is_the_sha256_of_the_canonical_json_document(policy: Policy) -> None:
    import hashlib

    assert policy.digest == hashlib.sha256(orjson.dumps(bundled_document(), option=orjson.OPT_SORT_KEYS)).hexdigest()


@pytest.mark.parametrize(
    "mutation",
    [
        pytest.param(put("description", "changed"), id="description"),
        pytest.param(put("category_rules.0.note", "a reviewer's note"), id="note-added"),
        pytest.param(put("hs_fallback.enabled", False), id="hs-fallback-off"),
        pytest.param(put("version", "2026.11.1"), id="version"),
        pytest.param(put("review", {**REVIEW, "enabled": False}), id="review-configured-off"),
    ],
)
def test_any_change_to_the_document_changes_the_digest(mutation: Mutation, policy: Policy) -> None:
    assert parse_policy(mutation(bundled_document())).digest != policy.digest


# --- indexing details the decision relies on ----------------------------------------------


def test_rule_paths_are_stored_normalised() -> None:
    parsed = parse_policy(put("category_rules.0.path", "  APPAREL &   Accessories ")(bundled_document()))
    assert parsed.category_rules[0].path == "apparel & accessories"
    assert normalize_path(" A >b  C> d ") == ("a", "b c", "d")


def test_fresh_policy_has_an_empty_path_cache_and_fills_it() -> None:
    fresh = load_bundled_policy()
    assert fresh._path_cache == {}
    rule = fresh.match_path("Apparel & Accessories > Clothing")
    assert rule is not None and rule.cluster == "textile_fashion"
    assert fresh._path_cache == {"Apparel & Accessories > Clothing": rule}
