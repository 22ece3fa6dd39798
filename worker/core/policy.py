"""The compliance policy as data: load, validate (schemas/policy.schema.json) and index for fast matching."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Context, Decimal
from importlib import resources
from pathlib import Path
from typing import Any, Final, NamedTuple

import orjson
import yaml

from worker.core.countries import COUNTRY_CODES
from worker.core.errors import ErrorCode, InvalidEvent, InvalidPolicy
from worker.core.memo import VerdictMemo

SIGNALS: Final = ("seller_country", "ship_from_country")
# Evasion signals a policy's `review` section may turn on (the reason code is the name in upper case), and what a
# raised signal does: `flag` lets the decision follow the facts, `hold` keeps the product blocked.
REVIEW_SIGNALS: Final = ("origin_changed_after_block", "category_changed_after_block")
ON_SIGNAL: Final = ("flag", "hold")
BUNDLED_POLICY: Final = "default.yaml"

VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+-]{0,63}")
CLUSTER_NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
RULE_ID_RE = re.compile(r"[a-z]{2,3}(?:-[0-9]{1,6}){0,15}")
HS_PREFIX_RE = re.compile(r"[0-9]{2}(?:[0-9]{2}){0,4}")
MAX_RULES = 10_000
MAX_EXEMPT_SELLERS = 10_000
MAX_SELLER_ID_LENGTH = 128  # as product.seller.id in the event schema
MAX_EXCHANGE_RATES = 1_000
# An RFC 3339 timestamp with its offset, or a bare date (midnight UTC).
INSTANT_RE = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})"
    r"(?:T([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2}))?"
)
# Decimal strings, never YAML/JSON numbers (which a parser may read as binary floating point).
AMOUNT_RE = re.compile(r"(?:0|[1-9][0-9]{0,14})(?:\.[0-9]{1,6})?")  # as product.price.amount
RATE_RE = re.compile(r"(?:0|[1-9][0-9]{0,14})(?:\.[0-9]{1,18})?")
CURRENCY_RE = re.compile(r"[A-Z]{3}")
APPLIES_TO: Final = ("cross_border",)
# Enough digits that amount (21 significant digits) x rate (33) is exact: no rounding anywhere.
EXACT: Final = Context(prec=64)
MAX_PATH_DEPTH = 16
PATH_CACHE_SIZE = 65_536


class MatchKind:
    """How a product was placed in (or kept out of) a cluster; the values are reason codes."""

    CATEGORY_ID = "MATCHED_CATEGORY_ID"
    CATEGORY_PATH = "MATCHED_CATEGORY_PATH"
    HS_CODE = "MATCHED_HS_CODE"
    UNMAPPED = "UNMAPPED_CATEGORY"


class Rule(NamedTuple):
    """One mapping line: a taxonomy subtree (by id and/or path) or an HS prefix to a cluster (None: carve-out)."""

    cluster: str | None
    path: str | None = None
    id: str | None = None
    hs_prefix: str | None = None


class CategoryMatch(NamedTuple):
    cluster: str | None
    kind: str
    rule: Rule | None
    conflict: bool = False  # category.id and category.path matched rules of different clusters


@dataclass(frozen=True)
class Cluster:
    name: str
    title: str
    effective_from: float | None = None  # epoch seconds; before it the cluster is not restricted
    effective_from_text: str | None = None  # as written in the policy


def parse_instant(text: str) -> float:
    """Epoch seconds of an RFC 3339 timestamp with offset, or of a date (``2026-12-01`` = midnight UTC).

    Raises ValueError naming what is wrong; the caller adds where it came from.
    """
    found = INSTANT_RE.fullmatch(text)
    if found is None:
        raise ValueError(f"{text!r} is not a date (2026-12-01) or an RFC 3339 timestamp (2026-12-01T00:00:00Z)")
    year, month, day, hour, minute, second, fraction, offset = found.groups()
    if offset is None or offset == "Z":
        zone = timezone.utc
    else:
        hours, minutes = int(offset[1:3]), int(offset[4:6])
        if hours > 23 or minutes > 59:
            raise ValueError(f"{text!r} has an impossible UTC offset {offset}")
        sign = -1 if offset[0] == "-" else 1
        zone = timezone(sign * timedelta(hours=hours, minutes=minutes))
    try:
        moment = datetime(int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(second or 0), tzinfo=zone)
        epoch = moment.timestamp()
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"{text!r} is not a real date and time ({exc})") from None
    return epoch + (float(fraction) if fraction else 0.0)


@dataclass(frozen=True)
class MinimumPrice:
    """Cross-border finished goods below ``amount`` ``currency`` a unit are blocked (Permendag 31/2023, art. 19).

    ``exchange_rates`` maps a currency to the units of ``currency`` that one unit of it is worth.
    """

    enabled: bool
    amount: Decimal
    currency: str
    applies_to: str
    exempt_hs_prefixes: frozenset[str]
    exchange_rates: Mapping[str, Decimal]

    def exempts(self, hs_code: str | None) -> bool:
        """Whether an HS code falls under an exempt prefix (no HS code: never exempt)."""
        if hs_code is None or not self.exempt_hs_prefixes:
            return False
        prefixes = self.exempt_hs_prefixes
        return any(hs_code[:length] in prefixes for length in range(2, len(hs_code) + 1, 2))

    def convert(self, amount: str, currency: str, policy_version: str) -> Decimal:
        """``amount`` in ``currency`` expressed in the rule's currency, exactly (Decimal, no rounding)."""
        value = Decimal(amount)
        if currency == self.currency:
            return value
        rate = self.exchange_rates.get(currency)
        if rate is None:
            raise InvalidEvent(
                ErrorCode.NO_EXCHANGE_RATE,
                f"product.price.currency: no exchange rate from {currency!r} to {self.currency!r} in policy {policy_version}",
            )
        return EXACT.multiply(value, rate)

    def is_below(self, amount: str | None, currency: str | None, policy_version: str) -> bool:
        """Whether a price is below the minimum; a missing price cannot be judged and is an error."""
        if amount is None or currency is None:
            raise InvalidEvent(
                ErrorCode.PRICE_REQUIRED,
                f"product.price: required for cross-border items outside the restricted clusters while policy "
                f"{policy_version} has a minimum price ({self.amount} {self.currency})",
            )
        return self.convert(amount, currency, policy_version) < self.amount


def _plural(count: int, singular: str, plural: str | None = None) -> str:
    return f"{count:,} {singular if count == 1 else plural or singular + 's'}"


def normalize_path(path: str) -> tuple[str, ...]:
    """Split a taxonomy path into case- and whitespace-insensitive segments."""
    return tuple(" ".join(segment.split()).casefold() for segment in path.split(">"))


def path_prefixes(segments: tuple[str, ...]) -> list[str]:
    """Every prefix of a path as a lookup key, longest first."""
    return [" > ".join(segments[:depth]) for depth in range(len(segments), 0, -1)]


@dataclass(frozen=True)
class Review:
    """The policy's `review` section: which evasion signals are raised, and whether a raised one holds the product."""

    enabled: bool
    signals: tuple[str, ...]  # as named in the policy, in REVIEW_SIGNALS order
    on_signal: str  # "flag" or "hold"

    @property
    def codes(self) -> tuple[str, ...]:
        """The reason codes of the signals, in a fixed order (REVIEW_SIGNALS')."""
        return tuple(name.upper() for name in self.signals)


@dataclass(frozen=True, eq=False)
class Policy:
    """A validated policy with indexes that make matching O(path depth)."""

    version: str
    description: str
    home_countries: frozenset[str]
    signals: tuple[str, ...]
    clusters: Mapping[str, Cluster]
    category_rules: tuple[Rule, ...]
    hs_fallback_enabled: bool
    hs_rules: tuple[Rule, ...]
    digest: str
    _by_id: dict[str, Rule] = field(repr=False)
    _by_path: dict[str, Rule] = field(repr=False)
    _by_hs: dict[str, Rule] = field(repr=False)
    _path_cache: dict[str, Rule | None] = field(default_factory=dict, repr=False)
    # What classify.judge has already decided under this policy (worker/core/memo.py).
    verdicts: VerdictMemo = field(default_factory=lambda: VerdictMemo(PATH_CACHE_SIZE), repr=False, compare=False)
    # The optional rules; absent, the decision is exactly "cross-border and in a restricted cluster".
    exempt_sellers: frozenset[str] = frozenset()
    minimum_price: MinimumPrice | None = None  # as configured, possibly disabled
    effective_from: Mapping[str, float] = field(default_factory=dict, repr=False)  # epoch seconds; only dated clusters
    review: Review | None = None  # as configured, possibly disabled
    active_minimum_price: MinimumPrice | None = field(init=False, repr=False)  # the rule when it is enabled
    # The reason codes of the evasion signals raised under this policy, in a fixed order (empty: review is off),
    # and those of them that hold a product blocked (empty unless on_signal is hold).
    review_signals: tuple[str, ...] = field(init=False, repr=False)
    held_signals: frozenset[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        rule = self.minimum_price
        object.__setattr__(self, "active_minimum_price", rule if rule is not None and rule.enabled else None)
        review = self.review
        codes = review.codes if review is not None and review.enabled else ()
        object.__setattr__(self, "review_signals", codes)
        object.__setattr__(self, "held_signals", frozenset(codes) if review is not None and review.on_signal == "hold" else frozenset())

    def summary(self) -> str:
        """One line: what the policy holds and which optional rules are on (for `policy validate`)."""
        line = (
            f"version {self.version}, {_plural(len(self.clusters), 'cluster')}, "
            f"{_plural(len(self.category_rules), 'category rule')}, {_plural(len(self.hs_rules), 'HS rule')} "
            f"(HS fallback {'on' if self.hs_fallback_enabled else 'off'})"
        )
        optional = []
        dated = [f"{c.name} from {c.effective_from_text}" for c in self.clusters.values() if c.effective_from_text is not None]
        if dated:
            optional.append(f"effective dates ({', '.join(dated)})")
        if self.exempt_sellers:
            optional.append(_plural(len(self.exempt_sellers), "exempt seller"))
        rule = self.minimum_price
        if rule is not None:
            optional.append(
                f"minimum price {rule.amount} {rule.currency} for {rule.applies_to.replace('_', '-')} items"
                f"{'' if rule.enabled else ' (configured, disabled)'}: "
                f"{_plural(len(rule.exempt_hs_prefixes), 'exempt HS prefix', 'exempt HS prefixes')}, "
                f"{_plural(len(rule.exchange_rates), 'exchange rate')}"
            )
        review = self.review
        if review is not None:
            optional.append(
                f"review signals {', '.join(review.signals)} (on_signal: {review.on_signal})"
                f"{'' if review.enabled else ' (configured, disabled)'}"
            )
        return f"{line}; optional rules: {'; '.join(optional) if optional else 'none'}"

    def cluster_in_force(self, cluster: str, now: float) -> bool:
        """Whether a restricted cluster's effective date (if any) has been reached at ``now`` (epoch seconds)."""
        starts = self.effective_from.get(cluster)
        return starts is None or now >= starts

    @property
    def checks_seller(self) -> bool:
        return "seller_country" in self.signals

    @property
    def checks_ship_from(self) -> bool:
        return "ship_from_country" in self.signals

    def match_id(self, category_id: str) -> Rule | None:
        by_id = self._by_id
        key = category_id
        while True:
            rule = by_id.get(key)
            if rule is not None:
                return rule
            cut = key.rfind("-")
            if cut < 0:
                return None
            key = key[:cut]

    def match_path(self, path: str) -> Rule | None:
        cache = self._path_cache
        try:
            return cache[path]
        except KeyError:
            pass
        rule = None
        for key in path_prefixes(normalize_path(path)):
            rule = self._by_path.get(key)
            if rule is not None:
                break
        if len(cache) >= PATH_CACHE_SIZE:
            cache.clear()  # a flood of distinct paths must not grow memory without bound
        cache[path] = rule
        return rule

    def match_hs(self, hs_code: str) -> Rule | None:
        by_hs = self._by_hs
        for length in range(len(hs_code) - len(hs_code) % 2, 0, -2):
            rule = by_hs.get(hs_code[:length])
            if rule is not None:
                return rule
        return None

    def match(self, category_path: str, category_id: str | None, hs_code: str | None) -> CategoryMatch:
        """Place a product in a cluster: category id first, then path, then the HS-code fallback."""
        path_rule = self.match_path(category_path)
        if category_id is not None:
            id_rule = self.match_id(category_id)
            if id_rule is not None:
                conflict = path_rule is not None and path_rule.cluster != id_rule.cluster
                return CategoryMatch(id_rule.cluster, MatchKind.CATEGORY_ID, id_rule, conflict)
        if path_rule is not None:
            return CategoryMatch(path_rule.cluster, MatchKind.CATEGORY_PATH, path_rule)
        if hs_code is not None and self.hs_fallback_enabled:
            hs_rule = self.match_hs(hs_code)
            if hs_rule is not None:
                return CategoryMatch(hs_rule.cluster, MatchKind.HS_CODE, hs_rule)
        return CategoryMatch(None, MatchKind.UNMAPPED, None)


# --- loading and validation -------------------------------------------------------------


def _fail(where: str, message: str) -> InvalidPolicy:
    return InvalidPolicy(f"{where}: {message}")


def _expect_keys(document: Mapping[str, Any], where: str, required: set[str], optional: set[str]) -> None:
    # Unknown keys first: a typo ('category_rule') is the likelier story than a missing key.
    unknown = sorted(set(document) - required - optional, key=str)  # YAML keys may be numbers too
    if unknown:
        raise _fail(where, f"unknown key {unknown[0]!r} (allowed: {', '.join(sorted(required | optional))})")
    missing = sorted(required - document.keys())
    if missing:
        raise _fail(where, f"missing required key {missing[0]!r}")


def _expect(value: object, kind: type | tuple[type, ...], where: str, what: str) -> Any:
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise _fail(where, f"expected {what}, got {type(value).__name__}")
    return value


def _text(value: object, where: str, max_length: int) -> str:
    text = _expect(value, str, where, "a string")
    if not text or len(text) > max_length:
        raise _fail(where, f"must be 1 to {max_length} characters")
    return text


def _parse_rule_path(value: object, where: str) -> str:
    path = _text(value, where, 1024)
    segments = normalize_path(path)
    if len(segments) > MAX_PATH_DEPTH or any(not segment for segment in segments):
        raise _fail(where, f"malformed prefix {path!r}: expected 'A > B > C' with 1 to {MAX_PATH_DEPTH} non-empty segments")
    return " > ".join(segments)


def _cluster_ref(value: object, where: str, clusters: Mapping[str, Cluster]) -> str | None:
    if value is None:
        return None
    name = _expect(value, str, where, "a cluster name or null")
    if name not in clusters:
        raise _fail(where, f"unknown cluster {name!r} (declared: {', '.join(clusters)})")
    return name


def parse_policy(document: object) -> Policy:
    """Validate a policy document (already parsed from YAML or JSON) and build its indexes."""
    root = _expect(document, dict, "policy", "a mapping")
    _expect_keys(
        root, "policy", {"version", "cross_border", "clusters", "category_rules"},
        {"description", "hs_fallback", "exempt_sellers", "minimum_price", "review"},
    )

    version = _text(root["version"], "version", 64)
    if VERSION_RE.fullmatch(version) is None:
        raise _fail("version", f"{version!r} must be letters, digits and . _ : + - (at most 64)")
    description = _text(root.get("description", "-"), "description", 1000)

    cross_border = _expect(root["cross_border"], dict, "cross_border", "a mapping")
    _expect_keys(cross_border, "cross_border", {"home_countries", "signals"}, set())
    homes = _expect(cross_border["home_countries"], list, "cross_border.home_countries", "a list of country codes")
    if not homes:
        raise _fail("cross_border.home_countries", "must name at least one country")
    for index, country in enumerate(homes):
        if not isinstance(country, str) or country not in COUNTRY_CODES:
            raise _fail(f"cross_border.home_countries[{index}]", f"{country!r} is not an ISO 3166-1 alpha-2 code")
    signals = _expect(cross_border["signals"], list, "cross_border.signals", "a list")
    if (
        not signals
        or not all(isinstance(signal, str) for signal in signals)  # a nested list is unhashable: reject, not crash
        or len(set(signals)) != len(signals)
        or not set(signals) <= set(SIGNALS)
    ):
        raise _fail("cross_border.signals", f"must be a non-empty list of distinct values from {list(SIGNALS)}")

    raw_clusters = _expect(root["clusters"], dict, "clusters", "a mapping of cluster name to settings")
    if not raw_clusters:
        raise _fail("clusters", "must declare at least one restricted cluster")
    clusters: dict[str, Cluster] = {}
    for name, settings in raw_clusters.items():
        where = f"clusters.{name}"
        if not isinstance(name, str) or CLUSTER_NAME_RE.fullmatch(name) is None:
            raise _fail(where, "cluster names are lower_snake_case, at most 64 characters")
        settings = _expect(settings, dict, where, "a mapping")
        _expect_keys(settings, where, {"title"}, {"effective_from"})
        title = _text(settings["title"], f"{where}.title", 200)
        if "effective_from" in settings:
            starts = _instant(settings["effective_from"], f"{where}.effective_from")
            clusters[name] = Cluster(name, title, starts, settings["effective_from"])
        else:
            clusters[name] = Cluster(name, title)

    raw_rules = _expect(root["category_rules"], list, "category_rules", "a list")
    if len(raw_rules) > MAX_RULES:
        raise _fail("category_rules", f"at most {MAX_RULES} rules")
    rules: list[Rule] = []
    by_id: dict[str, Rule] = {}
    by_path: dict[str, Rule] = {}
    for index, raw_rule in enumerate(raw_rules):
        where = f"category_rules[{index}]"
        raw_rule = _expect(raw_rule, dict, where, "a mapping")
        _expect_keys(raw_rule, where, {"cluster"}, {"id", "path", "note"})
        if "id" not in raw_rule and "path" not in raw_rule:
            raise _fail(where, "a rule needs an 'id', a 'path' or both")
        if "note" in raw_rule:
            _text(raw_rule["note"], f"{where}.note", 1000)
        cluster = _cluster_ref(raw_rule["cluster"], f"{where}.cluster", clusters)
        rule_id = rule_path = None
        if "id" in raw_rule:
            rule_id = _text(raw_rule["id"], f"{where}.id", 128)
            if RULE_ID_RE.fullmatch(rule_id) is None:
                raise _fail(f"{where}.id", f"malformed prefix {rule_id!r}: expected a Shopify taxonomy id such as 'aa-1'")
            if rule_id in by_id:
                raise _fail(f"{where}.id", f"duplicate rule for id {rule_id!r}")
        if "path" in raw_rule:
            rule_path = _parse_rule_path(raw_rule["path"], f"{where}.path")
            if rule_path in by_path:
                raise _fail(f"{where}.path", f"duplicate rule for path {raw_rule['path']!r}")
        rule = Rule(cluster, path=rule_path, id=rule_id)
        if rule_id is not None:
            by_id[rule_id] = rule
        if rule_path is not None:
            by_path[rule_path] = rule
        rules.append(rule)

    hs_enabled = False
    hs_rules: list[Rule] = []
    by_hs: dict[str, Rule] = {}
    if "hs_fallback" in root:
        fallback = _expect(root["hs_fallback"], dict, "hs_fallback", "a mapping")
        _expect_keys(fallback, "hs_fallback", {"enabled"}, {"rules"})
        hs_enabled = _expect(fallback["enabled"], bool, "hs_fallback.enabled", "true or false")
        raw_hs = _expect(fallback.get("rules", []), list, "hs_fallback.rules", "a list")
        if len(raw_hs) > MAX_RULES:
            raise _fail("hs_fallback.rules", f"at most {MAX_RULES} rules")
        for index, raw_rule in enumerate(raw_hs):
            where = f"hs_fallback.rules[{index}]"
            raw_rule = _expect(raw_rule, dict, where, "a mapping")
            _expect_keys(raw_rule, where, {"prefix", "cluster"}, {"note"})
            prefix = _expect(raw_rule["prefix"], str, f"{where}.prefix", "a string of digits")
            if HS_PREFIX_RE.fullmatch(prefix) is None:
                raise _fail(f"{where}.prefix", f"malformed prefix {prefix!r}: expected 2, 4, 6, 8 or 10 digits")
            if prefix in by_hs:
                raise _fail(f"{where}.prefix", f"duplicate rule for HS prefix {prefix!r}")
            rule = Rule(_cluster_ref(raw_rule["cluster"], f"{where}.cluster", clusters), hs_prefix=prefix)
            by_hs[prefix] = rule
            hs_rules.append(rule)

    exempt_sellers = _parse_exempt_sellers(root["exempt_sellers"]) if "exempt_sellers" in root else frozenset()
    minimum_price = _parse_minimum_price(root["minimum_price"]) if "minimum_price" in root else None
    review = _parse_review(root["review"]) if "review" in root else None

    return Policy(
        version=version,
        description=description,
        home_countries=frozenset(homes),
        signals=tuple(signals),
        clusters=clusters,
        category_rules=tuple(rules),
        hs_fallback_enabled=hs_enabled,
        hs_rules=tuple(hs_rules),
        digest=hashlib.sha256(orjson.dumps(root, option=orjson.OPT_SORT_KEYS)).hexdigest(),
        _by_id=by_id,
        _by_path=by_path,
        _by_hs=by_hs,
        exempt_sellers=exempt_sellers,
        minimum_price=minimum_price,
        review=review,
        effective_from={
            name: cluster.effective_from for name, cluster in clusters.items() if cluster.effective_from is not None
        },
    )


def _instant(value: object, where: str) -> float:
    text = _expect(value, str, where, "a date or RFC 3339 timestamp as a string")
    try:
        return parse_instant(text)
    except ValueError as exc:
        raise _fail(where, str(exc)) from None


def _decimal(value: object, where: str, pattern: re.Pattern[str], example: str) -> Decimal:
    if not isinstance(value, str):
        raise _fail(where, f"expected a decimal string such as {example!r} (quoted), got {type(value).__name__}")
    if len(value) > 40 or pattern.fullmatch(value) is None:
        raise _fail(where, f"{value[:40]!r} is not a decimal such as {example!r}")
    number = Decimal(value)
    if number <= 0:
        raise _fail(where, f"must be greater than 0, got {value!r}")
    return number


def _parse_exempt_sellers(value: object) -> frozenset[str]:
    sellers = _expect(value, list, "exempt_sellers", "a list of seller ids")
    if len(sellers) > MAX_EXEMPT_SELLERS:
        raise _fail("exempt_sellers", f"at most {MAX_EXEMPT_SELLERS} seller ids")
    seen: set[str] = set()
    for index, seller in enumerate(sellers):
        seller_id = _text(seller, f"exempt_sellers[{index}]", MAX_SELLER_ID_LENGTH)
        if seller_id in seen:
            raise _fail(f"exempt_sellers[{index}]", f"duplicate seller id {seller_id!r}")
        seen.add(seller_id)
    return frozenset(seen)


def _parse_minimum_price(value: object) -> MinimumPrice:
    where = "minimum_price"
    rule = _expect(value, dict, where, "a mapping")
    _expect_keys(rule, where, {"enabled", "amount", "currency"}, {"applies_to", "exempt_hs_prefixes", "exchange_rates", "note"})
    enabled = _expect(rule["enabled"], bool, f"{where}.enabled", "true or false")
    amount = _decimal(rule["amount"], f"{where}.amount", AMOUNT_RE, "100.00")
    currency = _expect(rule["currency"], str, f"{where}.currency", "an ISO 4217 currency code")
    if CURRENCY_RE.fullmatch(currency) is None:
        raise _fail(f"{where}.currency", f"{currency!r} is not an ISO 4217 currency code (three upper-case letters)")
    applies_to = rule.get("applies_to", "cross_border")
    if applies_to not in APPLIES_TO:
        raise _fail(f"{where}.applies_to", f"{applies_to!r} is not one of {list(APPLIES_TO)}")
    if "note" in rule:
        _text(rule["note"], f"{where}.note", 1000)

    raw_prefixes = _expect(rule.get("exempt_hs_prefixes", []), list, f"{where}.exempt_hs_prefixes", "a list of HS prefixes")
    if len(raw_prefixes) > MAX_RULES:
        raise _fail(f"{where}.exempt_hs_prefixes", f"at most {MAX_RULES} prefixes")
    prefixes: set[str] = set()
    for index, prefix in enumerate(raw_prefixes):
        at = f"{where}.exempt_hs_prefixes[{index}]"
        prefix = _expect(prefix, str, at, "a string of digits")
        if HS_PREFIX_RE.fullmatch(prefix) is None:
            raise _fail(at, f"malformed prefix {prefix!r}: expected 2, 4, 6, 8 or 10 digits")
        if prefix in prefixes:
            raise _fail(at, f"duplicate HS prefix {prefix!r}")
        prefixes.add(prefix)

    raw_rates = _expect(rule.get("exchange_rates", {}), dict, f"{where}.exchange_rates", "a mapping of currency to rate")
    if len(raw_rates) > MAX_EXCHANGE_RATES:
        raise _fail(f"{where}.exchange_rates", f"at most {MAX_EXCHANGE_RATES} rates")
    rates: dict[str, Decimal] = {}
    for code, rate in raw_rates.items():
        at = f"{where}.exchange_rates.{code}"
        if not isinstance(code, str) or CURRENCY_RE.fullmatch(code) is None:
            raise _fail(at, f"{code!r} is not an ISO 4217 currency code (three upper-case letters)")
        if code == currency:
            raise _fail(at, f"a rate from {currency} to itself; prices in {currency} are compared as they are")
        rates[code] = _decimal(rate, at, RATE_RE, "0.0000625")

    return MinimumPrice(enabled, amount, currency, applies_to, frozenset(prefixes), rates)


def _parse_review(value: object) -> Review:
    where = "review"
    section = _expect(value, dict, where, "a mapping")
    _expect_keys(section, where, {"enabled", "signals"}, {"on_signal", "note"})
    enabled = _expect(section["enabled"], bool, f"{where}.enabled", "true or false")
    signals = _expect(section["signals"], list, f"{where}.signals", "a list")
    if (
        not signals
        or not all(isinstance(signal, str) for signal in signals)  # a nested list is unhashable: reject, not crash
        or len(set(signals)) != len(signals)
        or not set(signals) <= set(REVIEW_SIGNALS)
    ):
        raise _fail(f"{where}.signals", f"must be a non-empty list of distinct values from {list(REVIEW_SIGNALS)}")
    on_signal = section.get("on_signal", "flag")
    if on_signal not in ON_SIGNAL:
        raise _fail(f"{where}.on_signal", f"{on_signal!r} is not one of {list(ON_SIGNAL)}")
    if "note" in section:
        _text(section["note"], f"{where}.note", 1000)
    return Review(enabled, tuple(name for name in REVIEW_SIGNALS if name in signals), on_signal)


class _PolicyLoader(yaml.SafeLoader):
    """YAML without implicit timestamps: `effective_from: 2026-12-01` stays the string a JSON document would hold."""


_PolicyLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's message on one line: what is wrong and where (its own text spans lines and quotes the source)."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        what = "; ".join(part for part in (exc.context, exc.problem) if part)
        return f"{what} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(exc).split())


def parse_policy_bytes(data: bytes, *, source: str = "policy document") -> Policy:
    """Parse a policy document given as YAML or JSON bytes (JSON is valid YAML, but orjson is stricter and faster)."""
    try:
        stripped = data.lstrip()
        if stripped.startswith(b"{"):
            document = orjson.loads(data)
        else:
            document = yaml.load(data.decode("utf-8"), Loader=_PolicyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise InvalidPolicy(f"{source}: not valid YAML or JSON: {_yaml_problem(exc)}") from None
    except (orjson.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidPolicy(f"{source}: not valid YAML or JSON: {exc}") from None
    except RecursionError:  # PyYAML composes recursively: '[[[[...' must be rejected, not crash the loader
        raise InvalidPolicy(f"{source}: not valid YAML or JSON: nested too deeply") from None
    try:
        return parse_policy(document)
    except InvalidPolicy as exc:
        raise InvalidPolicy(f"{source}: {exc.message}") from None


def read_policy_file(path: str | Path) -> tuple[bytes, Policy]:
    """The file's bytes and the policy they hold, read once (so what is validated is what gets published)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InvalidPolicy(f"{path}: cannot read policy file: {exc.strerror}") from None
    return data, parse_policy_bytes(data, source=str(path))


def load_policy_file(path: str | Path) -> Policy:
    return read_policy_file(path)[1]


def load_bundled_policy() -> Policy:
    """The default policy shipped inside the package."""
    data = resources.files("worker.policies").joinpath(BUNDLED_POLICY).read_bytes()
    return parse_policy_bytes(data, source=f"bundled {BUNDLED_POLICY}")
