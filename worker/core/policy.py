"""The compliance policy as data: load, validate (schemas/policy.schema.json) and index for fast matching."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Final, NamedTuple

import orjson
import yaml

from worker.core.countries import COUNTRY_CODES
from worker.core.errors import InvalidPolicy

SIGNALS: Final = ("seller_country", "ship_from_country")
BUNDLED_POLICY: Final = "default.yaml"

VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+-]{0,63}")
CLUSTER_NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
RULE_ID_RE = re.compile(r"[a-z]{2,3}(?:-[0-9]{1,6}){0,15}")
HS_PREFIX_RE = re.compile(r"[0-9]{2}(?:[0-9]{2}){0,4}")
MAX_RULES = 10_000
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


def normalize_path(path: str) -> tuple[str, ...]:
    """Split a taxonomy path into case- and whitespace-insensitive segments."""
    return tuple(" ".join(segment.split()).casefold() for segment in path.split(">"))


def path_prefixes(segments: tuple[str, ...]) -> list[str]:
    """Every prefix of a path as a lookup key, longest first."""
    return [" > ".join(segments[:depth]) for depth in range(len(segments), 0, -1)]


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
    _expect_keys(root, "policy", {"version", "cross_border", "clusters", "category_rules"}, {"description", "hs_fallback"})

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
        _expect_keys(settings, where, {"title"}, set())
        clusters[name] = Cluster(name, _text(settings["title"], f"{where}.title", 200))

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
    )


def parse_policy_bytes(data: bytes, *, source: str = "policy document") -> Policy:
    """Parse a policy document given as YAML or JSON bytes (JSON is valid YAML, but orjson is stricter and faster)."""
    try:
        stripped = data.lstrip()
        if stripped.startswith(b"{"):
            document = orjson.loads(data)
        else:
            document = yaml.safe_load(data.decode("utf-8"))
    except (orjson.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise InvalidPolicy(f"{source}: not valid YAML or JSON: {exc}") from None
    except RecursionError:  # PyYAML composes recursively: '[[[[...' must be rejected, not crash the loader
        raise InvalidPolicy(f"{source}: not valid YAML or JSON: nested too deeply") from None
    try:
        return parse_policy(document)
    except InvalidPolicy as exc:
        raise InvalidPolicy(f"{source}: {exc.message}") from None


def load_policy_file(path: str | Path) -> Policy:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InvalidPolicy(f"{path}: cannot read policy file: {exc.strerror}") from None
    return parse_policy_bytes(data, source=str(path))


def load_bundled_policy() -> Policy:
    """The default policy shipped inside the package."""
    data = resources.files("worker.policies").joinpath(BUNDLED_POLICY).read_bytes()
    return parse_policy_bytes(data, source=f"bundled {BUNDLED_POLICY}")
