"""`compliance-worker simulate`: the counts of what a new policy would change, in process and through the CLI."""

from __future__ import annotations

import copy
import io
import itertools
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from tests.unit.conftest import make_event
from worker.commands.cli import main
from worker.core import Policy, parse_policy
from worker.core.policy import BUNDLED_POLICY
from worker.commands.sample import generate
from worker.commands.simulate import SimulationSummary, cluster_label, simulate_lines

DEC_1 = 1_796_083_200.0  # 2026-12-01T00:00:00Z
APPAREL = "Apparel & Accessories > Clothing > Clothing Tops"
CRAFT_KIT = "Arts & Entertainment > Hobbies & Creative Arts > Arts & Crafts > Art & Craft Kits"
VASE = "Home & Garden > Decor > Vases"
PHONE = "Electronics > Communications > Telephony > Mobile Phones"


@cache
def _bundled() -> dict[str, Any]:
    return yaml.safe_load(resources.files("worker.policies").joinpath(BUNDLED_POLICY).read_bytes())


def bundled_document() -> dict[str, Any]:
    return copy.deepcopy(_bundled())


def new_document() -> dict[str, Any]:
    """Crafts from 2026-12-01, seller S-7 exempt, US$100 minimum with rupiah, vases carved out of crafts."""
    document = bundled_document()
    document["version"] = "2026.12.0"
    document["clusters"]["crafts"]["effective_from"] = "2026-12-01"
    document["exempt_sellers"] = ["S-7"]
    document["minimum_price"] = {
        "enabled": True, "amount": "100.00", "currency": "USD", "exempt_hs_prefixes": ["4901"],
        "exchange_rates": {"IDR": "0.0000625"},
    }
    for rule in document["category_rules"]:
        if rule.get("id") == "hg-3-67":
            rule["cluster"] = None
    return document


def line(path: str, seller: str = "CN", ship_from: str = "CN", seller_id: str = "S-1", price: tuple[str, str] | None = ("12.50", "USD"),
         hs_code: str | None = None) -> bytes:
    return orjson.dumps(make_event(
        product__category={"path": path},
        product__seller={"id": seller_id, "country": seller},
        product__ship_from_country=ship_from,
        product__hs_code=hs_code if hs_code is not None else ...,
        product__price={"amount": price[0], "currency": price[1]} if price is not None else ...,
    )) + b"\n"


CATALOG = [
    line(CRAFT_KIT, price=("150.00", "USD")),          # block -> allow: crafts not yet in force, price above the minimum
    line(CRAFT_KIT, "ID", "ID"),                       # allow, unchanged
    line(APPAREL, seller_id="S-7"),                    # block -> allow: exempt seller
    line(APPAREL),                                     # block, unchanged
    line(PHONE),                                       # allow -> block: US$12.50 is below the minimum
    line(PHONE, price=("1600000", "IDR")),             # allow, unchanged: exactly US$100
    line(PHONE, price=("1599999", "IDR")),             # allow -> block
    line(PHONE, price=("12.50", "EUR")),               # invalid only under the new policy: no rate
    line(PHONE, price=None),                           # invalid only under the new policy: no price
    line(PHONE, hs_code="4901.99"),                    # allow, unchanged: books are exempt
    line(VASE, price=("150.00", "USD")),               # block -> allow, and crafts -> none
    line(VASE, "ID", "ID"),                            # allow, unchanged, but in another cluster
    b"\n",                                             # blank: skipped
    b'{"event_id": "truncated\n',                      # invalid under both
    b"[1, 2]\n",                                       # invalid under both
]


def test_counts_by_direction_cluster_and_error(policy: Policy) -> None:
    summary = simulate_lines(iter(CATALOG), policy, parse_policy(new_document()), DEC_1 - 1)
    assert summary.lines == len(CATALOG)
    assert summary.decided == 10
    assert summary.changes == Counter({
        ("block", "allow", "crafts"): 1,
        ("block", "allow", "textile_fashion"): 1,
        ("block", "allow", "crafts→none"): 1,
        ("allow", "block", "none"): 2,
    })
    assert summary.changed == 5
    assert summary.unchanged == Counter({"allow": 4, "block": 1})
    assert summary.reclassified == 1
    assert summary.invalid_both == Counter({"INVALID_JSON": 1, "NOT_AN_OBJECT": 1})
    assert summary.invalid_new_only == Counter({"NO_EXCHANGE_RATE": 1, "PRICE_REQUIRED": 1})
    assert summary.invalid_current_only == Counter()
    assert summary.invalid == 4


def test_decision_time_is_the_same_for_both_and_decides_effective_dates(policy: Policy) -> None:
    new = parse_policy(new_document())
    kit = line(CRAFT_KIT, price=("150.00", "USD"))
    before = simulate_lines(iter([kit]), policy, new, DEC_1 - 1)
    at = simulate_lines(iter([kit]), policy, new, DEC_1)
    assert before.changes == Counter({("block", "allow", "crafts"): 1})
    assert at.changes == Counter() and at.unchanged == Counter({"block": 1})


def test_swapping_the_policies_reverses_every_change(policy: Policy) -> None:
    new = parse_policy(new_document())
    forward = simulate_lines(iter(CATALOG), policy, new, DEC_1 - 1)
    backward = simulate_lines(iter(CATALOG), new, policy, DEC_1 - 1)
    reverse_label = {"crafts→none": "none→crafts"}
    assert backward.changes == Counter({
        (after, before, reverse_label.get(label, label)): count for (before, after, label), count in forward.changes.items()
    })
    assert backward.invalid_current_only == forward.invalid_new_only
    assert backward.invalid_new_only == forward.invalid_current_only


def test_same_policy_changes_nothing(policy: Policy) -> None:
    lines = [value for _key, value in generate(3000, seed=5)]
    summary = simulate_lines(iter(lines), policy, policy, DEC_1)
    assert summary.changed == 0 and summary.reclassified == 0
    assert summary.decided == sum(summary.unchanged.values())
    assert summary.decided + summary.invalid == len(lines)
    assert summary.invalid_current_only == summary.invalid_new_only == Counter()


@pytest.mark.parametrize(
    ("before", "after", "label"),
    [
        pytest.param("crafts", "crafts", "crafts", id="same"),
        pytest.param(None, None, "none", id="none"),
        pytest.param("crafts", None, "crafts→none", id="moved-out"),
        pytest.param(None, "crafts", "none→crafts", id="moved-in"),
    ],
)
def test_cluster_label(before: str | None, after: str | None, label: str) -> None:
    assert cluster_label(before, after) == label


def test_summary_as_dict_and_text(policy: Policy) -> None:
    summary = simulate_lines(iter(CATALOG), policy, parse_policy(new_document()), DEC_1 - 1)
    assert summary.as_dict() == {
        "lines": 15,
        "decided": 10,
        "invalid": 4,
        "changed": 5,
        "changes": {
            "allow_to_block": {"total": 2, "clusters": {"none": 2}},
            "block_to_allow": {"total": 3, "clusters": {"crafts": 1, "crafts→none": 1, "textile_fashion": 1}},
        },
        "unchanged": {"allow": 4, "block": 1},
        "reclassified": 1,
        "errors": {
            "both": {"INVALID_JSON": 1, "NOT_AN_OBJECT": 1},
            "current_only": {},
            "new_only": {"NO_EXCHANGE_RATE": 1, "PRICE_REQUIRED": 1},
        },
        "review": {"stateful": False, "products": 0, "signals": {"current": {}, "new": {}}, "held": {"current": 0, "new": 0}},
    }
    assert summary.render().splitlines() == [
        "simulated 15 lines: 10 decided under both policies, 4 invalid under at least one",
        "  changed:   5 decisions (50.00% of those decided)",
        "    allow→block         2: none 2",
        "    block→allow         3: crafts 1, crafts→none 1, textile_fashion 1",
        "  unchanged: allow 4, block 1 (1 of them in another cluster)",
        "  invalid under both:          INVALID_JSON 1, NOT_AN_OBJECT 1",
        "  invalid only under current:  none",
        "  invalid only under new:      NO_EXCHANGE_RATE 1, PRICE_REQUIRED 1",
        "  review signals:              off in both policies (each line decided on its own)",
    ]


def test_empty_catalog(policy: Policy) -> None:
    summary = simulate_lines(iter([]), policy, policy, DEC_1)
    assert summary == SimulationSummary()
    assert "0 decisions\n" in summary.render() + "\n"


def _peak_bytes(policy: Policy, new: Policy, lines: Iterator[bytes]) -> int:
    tracemalloc.start()
    try:
        simulate_lines(lines, policy, new, DEC_1)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_the_catalog(policy: Policy) -> None:
    """One pass over a generator: ten times the lines, about the same peak memory."""
    new = parse_policy(new_document())
    distinct = [value + b"\n" for _key, value in generate(1000, seed=3)]
    simulate_lines(iter(distinct), policy, new, DEC_1)  # warm the path caches
    small = _peak_bytes(policy, new, itertools.islice(itertools.cycle(distinct), 2_000))
    large = _peak_bytes(policy, new, itertools.islice(itertools.cycle(distinct), 20_000))
    assert large < small + 256 * 1024, (small, large)


# --- review signals: each product's lines in file order ---------------------------------------

ORIGIN, CATEGORY = "ORIGIN_CHANGED_AFTER_BLOCK", "CATEGORY_CHANGED_AFTER_BLOCK"


def with_review(on_signal: str, version: str) -> Policy:
    document = bundled_document()
    document["version"] = version
    document["review"] = {"enabled": True, "signals": ["origin_changed_after_block", "category_changed_after_block"],
                          "on_signal": on_signal}
    return parse_policy(document)


def upsert(product: str, version: int, country: str, path: str = APPAREL, seller_id: str = "S-1") -> bytes:
    return orjson.dumps(make_event(
        event_id=f"{product}-{version}", product__id=product, product__version=version, product__hs_code=...,
        product__category={"path": path}, product__seller={"id": seller_id, "country": country},
        product__ship_from_country=country,
    )) + b"\n"


EVASIONS = [
    upsert("P-1", 1, "CN"),              # blocked
    upsert("P-2", 1, "CN"),              # blocked
    upsert("P-1", 2, "ID"),              # back domestic: ORIGIN_CHANGED_AFTER_BLOCK
    upsert("P-2", 2, "CN", PHONE),       # moved out of the clusters: CATEGORY_CHANGED_AFTER_BLOCK
    upsert("P-1", 3, "ID"),              # again: nothing new (flag), still held (hold)
    upsert("P-3", 1, "CN"),              # blocked
    upsert("P-3", 2, "ID", seller_id="S-2"),  # another seller: no signal
    upsert("P-1", 1, "CN"),              # stale: repeats the decision in force
]


@pytest.mark.parametrize(
    ("on_signal", "changes", "unchanged", "held"),
    [
        pytest.param("flag", Counter(), Counter({"block": 3, "allow": 5}), 0, id="flag-changes-no-decision"),
        # Held: P-1's two domestic lines and P-2's move stay blocked, and the stale line repeats the block in force.
        pytest.param("hold", Counter({("allow", "block", "textile_fashion"): 3, ("allow", "block", "none"): 1}),
                     Counter({"block": 3, "allow": 1}), 3, id="hold-keeps-three-blocked"),
    ],
)
def test_signals_are_reported_per_policy(
    policy: Policy, on_signal: str, changes: Counter[tuple[str, str, str]], unchanged: Counter[str], held: int,
) -> None:
    new = with_review(on_signal, f"t-{on_signal}")
    summary = simulate_lines(iter(EVASIONS), policy, new, DEC_1)
    assert (summary.stateful, summary.products, summary.decided) == (True, 3, 8)
    assert summary.signals_new == Counter({ORIGIN: 1, CATEGORY: 1})
    assert summary.signals_current == Counter()
    assert (summary.held_current, summary.held_new) == (0, held)
    assert (summary.changes, summary.unchanged) == (changes, unchanged)
    document = summary.as_dict()["review"]
    assert document == {
        "stateful": True, "products": 3, "signals": {"current": {}, "new": {CATEGORY: 1, ORIGIN: 1}}, "held": {"current": 0, "new": held},
    }
    lines = summary.render().splitlines()
    assert lines[-3:] == [
        "  review signals, current:     off",
        f"  review signals, new:         {CATEGORY} 1, {ORIGIN} 1; {held} decisions held",
        "  products remembered:         3 (each line decided against its product's earlier ones)",
    ]


def test_signals_under_both_policies_are_counted_apart(policy: Policy) -> None:
    flag, hold = with_review("flag", "t-flag"), with_review("hold", "t-hold")
    summary = simulate_lines(iter(EVASIONS), flag, hold, DEC_1)
    assert summary.signals_current == summary.signals_new == Counter({ORIGIN: 1, CATEGORY: 1})
    assert (summary.held_current, summary.held_new) == (0, 3)
    backward = simulate_lines(iter(EVASIONS), hold, flag, DEC_1)
    assert (backward.held_current, backward.held_new) == (3, 0)


def test_without_review_signals_each_line_stands_alone(policy: Policy) -> None:
    """The stale line is decided on its own (block), as before: no state, constant memory."""
    summary = simulate_lines(iter(EVASIONS), policy, parse_policy(new_document()), DEC_1)
    assert (summary.stateful, summary.products) == (False, 0)
    stale = simulate_lines(iter([EVASIONS[2], EVASIONS[7]]), policy, with_review("flag", "t-flag"), DEC_1)
    assert stale.stateful and stale.unchanged == Counter({"allow": 2}), "the stale line repeats P-1's allow under both"


def test_stateful_memory_grows_with_products_not_lines(policy: Policy) -> None:
    """Lines of the same 333 products over and over: about the same peak, however many lines."""
    new = with_review("hold", "t-hold")
    distinct = [value + b"\n" for _key, value in generate(1000, seed=3)]
    simulate_lines(iter(distinct), policy, new, DEC_1)  # warm the path caches
    small = _peak_bytes(policy, new, itertools.islice(itertools.cycle(distinct), 2_000))
    large = _peak_bytes(policy, new, itertools.islice(itertools.cycle(distinct), 20_000))
    assert large < small + 256 * 1024, (small, large)


# --- the command -------------------------------------------------------------------------------


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    catalog = tmp_path / "catalog.jsonl"
    catalog.write_bytes(b"".join(CATALOG))
    new = tmp_path / "new.yaml"
    new.write_text(yaml.safe_dump(new_document()), encoding="utf-8")
    same = tmp_path / "same.json"
    same.write_bytes(orjson.dumps(bundled_document()))
    return {"catalog": catalog, "new": new, "same": same}


def run(capsys: pytest.CaptureFixture[str], *argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    code = main(list(argv), env=env or {})
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_command_prints_the_summary(capsys: pytest.CaptureFixture[str], files: dict[str, Path]) -> None:
    code, out, err = run(capsys, "simulate", "--policy", str(files["new"]), "--at", "2026-11-30T23:59:59Z", str(files["catalog"]))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == (
        f"current policy 2026.11.0 (bundled default.yaml) vs new policy 2026.12.0 ({files['new']}), "
        "decided at 2026-11-30T23:59:59.000Z"
    )
    assert lines[1] == "simulated 15 lines: 10 decided under both policies, 4 invalid under at least one"
    assert "    block→allow         3: crafts 1, crafts→none 1, textile_fashion 1" in lines


def test_command_json(capsys: pytest.CaptureFixture[str], files: dict[str, Path], policy: Policy) -> None:
    code, out, _err = run(capsys, "simulate", "--json", "--policy", str(files["new"]), "--at", "2026-12-01", str(files["catalog"]))
    assert code == 0
    document = orjson.loads(out)
    assert set(document) == {"summary", "current_policy", "new_policy", "at"}
    assert document["at"] == "2026-12-01T00:00:00.000Z"
    assert document["current_policy"] == {"version": "2026.11.0", "digest": policy.digest, "source": "bundled default.yaml"}
    assert document["new_policy"]["version"] == "2026.12.0"
    # From the date on, crafts is restricted again: only the exempt seller and the vase carve-out remain.
    assert document["summary"]["changes"]["block_to_allow"] == {"total": 2, "clusters": {"crafts→none": 1, "textile_fashion": 1}}
    assert document["summary"]["review"]["stateful"] is False


def test_command_reports_review_signals(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    catalog, new = tmp_path / "evasions.jsonl", tmp_path / "hold.yaml"
    catalog.write_bytes(b"".join(EVASIONS))
    document = bundled_document()
    document.update(version="2026.12.0", review={"enabled": True, "signals": ["origin_changed_after_block"], "on_signal": "hold"})
    new.write_text(yaml.safe_dump(document), encoding="utf-8")
    code, out, err = run(capsys, "simulate", "--policy", str(new), str(catalog))
    assert (code, err) == (0, "")
    assert f"  review signals, new:         {ORIGIN} 1; 2 decisions held" in out.splitlines()
    code, out, err = run(capsys, "simulate", "--json", "--policy", str(new), str(catalog))
    assert orjson.loads(out)["summary"]["review"]["signals"] == {"current": {}, "new": {ORIGIN: 1}}


def test_current_policy_from_flag_or_environment(capsys: pytest.CaptureFixture[str], files: dict[str, Path]) -> None:
    args = ("simulate", "--json", "--policy", str(files["new"]), str(files["catalog"]))
    via_flag = orjson.loads(run(capsys, *args[:1], "--current", str(files["new"]), *args[1:])[1])
    via_env = orjson.loads(run(capsys, *args, env={"POLICY_FILE": str(files["new"])})[1])
    for document in (via_flag, via_env):
        assert document["current_policy"]["source"] == str(files["new"])
        assert document["summary"]["changed"] == 0


def test_command_reads_standard_input(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(files["catalog"].read_bytes())))
    code, out, _err = run(capsys, "simulate", "--json", "--policy", str(files["same"]), "-")
    assert code == 0
    assert orjson.loads(out)["summary"]["decided"] == 12  # the same policy: no price errors


def test_unreadable_catalog_exits_1(capsys: pytest.CaptureFixture[str], files: dict[str, Path], tmp_path: Path) -> None:
    code, out, err = run(capsys, "simulate", "--policy", str(files["new"]), str(tmp_path / "missing.jsonl"))
    assert (code, out) == (1, "")
    assert err == f"compliance-worker simulate: cannot read {tmp_path / 'missing.jsonl'}: No such file or directory\n"


@pytest.mark.parametrize("which", ["--policy", "--current"])
def test_invalid_policy_exits_2_naming_file_and_key(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], tmp_path: Path, which: str
) -> None:
    broken = tmp_path / "broken.yaml"
    document = new_document()
    document["minimum_price"]["amount"] = 100
    broken.write_text(yaml.safe_dump(document), encoding="utf-8")
    other = "--current" if which == "--policy" else "--policy"
    code, out, err = run(capsys, "simulate", which, str(broken), other, str(files["new"]), str(files["catalog"]))
    assert (code, out) == (2, "")
    assert err == (
        f"compliance-worker simulate: {broken}: minimum_price.amount: expected a decimal string such as '100.00' (quoted), got int\n"
    )


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["simulate", "catalog.jsonl"], id="without-new-policy"),
        pytest.param(["simulate", "--policy", "new.yaml"], id="without-catalog"),
        pytest.param(["simulate", "--policy", "new.yaml", "--at", "tomorrow", "catalog.jsonl"], id="bad-at"),
        pytest.param(["simulate", "--policy", "new.yaml", "--at", "2026-02-30", "catalog.jsonl"], id="impossible-at"),
    ],
)
def test_bad_arguments_exit_2_with_usage(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv, env={})
    assert exited.value.code == 2
    assert "usage: compliance-worker simulate" in capsys.readouterr().err
