"""Every real Shopify category under the bundled policy: id and path agree, and the counts pinned in docs/policy.md hold."""

from __future__ import annotations

import re
from collections import Counter
from functools import cache
from pathlib import Path

import orjson
import pytest

from tests.unit.conftest import make_event
from worker.core import Decision, Policy, classify, decode_event
from worker.core.classify import Reason

ROOT = Path(__file__).resolve().parents[3]
SHARED_TAXONOMY = Path("/work/shared/data/shopify-categories.txt")
DOCS = ROOT / "docs" / "policy.md"
TOTAL_CATEGORIES = 10_365
TABLE_RE = re.compile(r"<!-- taxonomy-counts:begin -->\n(.*?)<!-- taxonomy-counts:end -->", re.DOTALL)
ROW_RE = re.compile(r"\|\s*([a-z_]+)\s*\|\s*([0-9][0-9,]*)\s*\|")


@cache
def categories() -> tuple[tuple[str, str], ...]:
    rows = []
    for line in SHARED_TAXONOMY.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            category_id, _, path = line.partition("\t")
            rows.append((category_id, path))
    return tuple(rows)


def documented_counts() -> dict[str, int]:
    """The rows of the marked table in docs/policy.md, as cluster (or 'none', 'total') -> count."""
    match = TABLE_RE.search(DOCS.read_text(encoding="utf-8"))
    assert match is not None, "docs/policy.md lost its taxonomy-counts markers"
    lines = [line for line in match.group(1).splitlines() if line.strip()]
    assert lines[0].replace(" ", "") == "|cluster|Shopifycategories|", lines[0]
    assert set(lines[1]) <= set("|-: "), lines[1]
    counts: dict[str, int] = {}
    for line in lines[2:]:
        row = ROW_RE.fullmatch(line.strip())
        assert row is not None, f"unparseable row in the counts table: {line!r}"
        name, count = row.group(1), int(row.group(2).replace(",", ""))
        assert name not in counts, f"row {name!r} appears twice"
        counts[name] = count
    return counts


def decide(policy: Policy, path: str, category_id: str | None) -> Decision:
    category = {"path": path} if category_id is None else {"id": category_id, "path": path}
    return classify(decode_event(orjson.dumps(make_event(product__category=category, product__hs_code=...))), policy)


@pytest.fixture(scope="module")
def by_id_and_path(policy: Policy) -> dict[str, Decision]:
    return {category_id: decide(policy, path, category_id) for category_id, path in categories()}


@pytest.fixture(scope="module")
def by_path(policy: Policy) -> dict[str, Decision]:
    return {category_id: decide(policy, path, None) for category_id, path in categories()}


def test_the_shared_taxonomy_has_every_category_once() -> None:
    assert len(categories()) == TOTAL_CATEGORIES
    assert len({category_id for category_id, _ in categories()}) == TOTAL_CATEGORIES
    assert len({path for _, path in categories()}) == TOTAL_CATEGORIES


def test_id_and_path_give_the_same_cluster_for_every_category(by_id_and_path: dict[str, Decision], by_path: dict[str, Decision]) -> None:
    differences = {
        category_id: (by_id_and_path[category_id].cluster, by_path[category_id].cluster)
        for category_id in by_path
        if by_id_and_path[category_id].cluster != by_path[category_id].cluster
    }
    assert differences == {}


def test_no_real_category_carries_an_id_path_conflict(by_id_and_path: dict[str, Decision]) -> None:
    conflicts = [category_id for category_id, decision in by_id_and_path.items() if Reason.CATEGORY_ID_PATH_CONFLICT in decision.reasons]
    assert conflicts == []


def test_the_gid_form_of_the_id_decides_the_same(policy: Policy, by_id_and_path: dict[str, Decision]) -> None:
    for category_id, path in categories()[::7]:
        assert decide(policy, path, f"gid://shopify/TaxonomyCategory/{category_id}").cluster == by_id_and_path[category_id].cluster


def test_matched_categories_say_how_they_matched(by_id_and_path: dict[str, Decision], by_path: dict[str, Decision]) -> None:
    """Every category under a rule matched it by id (id+path run) and by path (path-only run); the rest are unmapped."""
    for category_id, decision in by_id_and_path.items():
        path_decision = by_path[category_id]
        assert (Reason.MATCHED_CATEGORY_ID in decision.reasons) == (Reason.MATCHED_CATEGORY_PATH in path_decision.reasons), category_id
        assert (Reason.UNMAPPED_CATEGORY in decision.reasons) == (Reason.UNMAPPED_CATEGORY in path_decision.reasons), category_id


def test_documented_table_totals_the_whole_taxonomy() -> None:
    counts = documented_counts()
    assert counts["total"] == TOTAL_CATEGORIES
    assert sum(count for name, count in counts.items() if name != "total") == TOTAL_CATEGORIES


def test_counts_per_cluster_equal_the_documented_table(policy: Policy, by_id_and_path: dict[str, Decision], by_path: dict[str, Decision]) -> None:
    documented = documented_counts()
    documented.pop("total")
    assert set(documented) == set(policy.clusters) | {"none"}
    for decisions in (by_id_and_path, by_path):
        actual = Counter(decision.cluster or "none" for decision in decisions.values())
        assert dict(actual) == documented
