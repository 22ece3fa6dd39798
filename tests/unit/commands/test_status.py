"""`compliance-worker status`: the worker's GET /products/{id} answers (fixtures of its shapes) shown for a person, and
the exit status of each (a real HTTP exchange: tests/integration/test_status_cli.py)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from worker.commands import status
from worker.commands.cli import main
from worker.commands.status import check_arguments, product_url, render

ANSWER: dict[str, Any] = {
    "product_id": "P-1",
    "decision": "block",
    "reasons": ["MANUAL_OVERRIDE", "FOREIGN_SELLER", "FOREIGN_SHIP_FROM", "MATCHED_CATEGORY_PATH"],
    "cluster": "textile_fashion",
    "cross_border": True,
    "policy_version": "2026.11.0",
    "decided_at": "2026-11-29T10:00:00.123Z",
    "product_version": 7,
    "decision_id": "6f1c0a5e2b9d4c3e8a7b6c5d4e3f2a1b",
    "facts": {
        "event_id": "9f1c-1", "seller_id": "S-88", "seller_country": "CN", "ship_from_country": "CN",
        "category_path": "Apparel & Accessories > Clothing > Shirts & Tops", "category_id": "aa-1-13",
        "hs_code": "6205.20", "price": {"amount": "12.50", "currency": "USD"}, "occurred_at": "2026-11-29T09:59:58Z",
    },
    "override": {
        "decision": "block", "reason": "Counterfeit batik reported by the brand owner", "reference": "CASE-42",
        "author": "dewi", "created_at": "2026-11-28T08:00:00.000Z", "expires_at": "2027-01-01T00:00:00.000Z",
        "in_force": True,
    },
    "held_signal": None,
    "answered_by": "http://10.0.0.7:6066",
    "partition": 2,
}
NOT_FOUND = {"product_id": "P-404", "error": "unknown product", "answered_by": "http://10.0.0.7:6066"}


def answer(**changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(ANSWER)
    for name, value in changes.items():
        if value is ...:
            body.pop(name, None)
        else:
            body[name] = value
    return body


def test_a_full_answer() -> None:
    assert render(ANSWER).splitlines() == [
        "P-1: block",
        "  reasons:       MANUAL_OVERRIDE, FOREIGN_SELLER, FOREIGN_SHIP_FROM, MATCHED_CATEGORY_PATH",
        "  cluster:       textile_fashion (cross-border)",
        "  policy:        2026.11.0",
        "  decided at:    2026-11-29T10:00:00.123Z (product version 7, decision 6f1c0a5e2b9d4c3e8a7b6c5d4e3f2a1b)",
        "  facts:         from event 9f1c-1, occurred at 2026-11-29T09:59:58Z",
        "    seller:      S-88, CN",
        "    ships from:  CN",
        "    category:    Apparel & Accessories > Clothing > Shirts & Tops (id aa-1-13)",
        "    HS code:     6205.20",
        "    price:       12.50 USD",
        "  override:      block, in force until 2027-01-01T00:00:00.000Z",
        "    reason:      Counterfeit batik reported by the brand owner",
        "    reference:   CASE-42",
        "    set by:      dewi at 2026-11-28T08:00:00.000Z",
        "  answered by:   http://10.0.0.7:6066 (partition 2)",
    ]


def test_a_domestic_product_in_no_cluster_without_override_and_sparse_facts() -> None:
    body = answer(
        decision="allow", reasons=["NOT_RESTRICTED_CATEGORY", "UNMAPPED_CATEGORY"], cluster=None, cross_border=False,
        product_version=None, override=None,
        facts={"event_id": "e-2", "seller_id": None, "seller_country": "ID", "ship_from_country": "ID",
               "category_path": "Misc", "category_id": None, "hs_code": None, "price": None, "occurred_at": None},
    )
    assert render(body).splitlines() == [
        "P-1: allow",
        "  reasons:       NOT_RESTRICTED_CATEGORY, UNMAPPED_CATEGORY",
        "  cluster:       none (domestic)",
        "  policy:        2026.11.0",
        "  decided at:    2026-11-29T10:00:00.123Z (product version -, decision 6f1c0a5e2b9d4c3e8a7b6c5d4e3f2a1b)",
        "  facts:         from event e-2",
        "    seller:      ID",
        "    ships from:  ID",
        "    category:    Misc",
        "    HS code:     -",
        "    price:       -",
        "  override:      none",
        "  answered by:   http://10.0.0.7:6066 (partition 2)",
    ]


@pytest.mark.parametrize(
    ("override", "lines"),
    [
        pytest.param({"decision": "allow", "reason": "appeal", "reference": None, "author": "a",
                      "created_at": "2026-11-01T00:00:00.000Z", "expires_at": "2026-11-02T00:00:00.000Z", "in_force": False},
                     ["  override:      allow, not in force (expired at 2026-11-02T00:00:00.000Z)",
                      "    reason:      appeal", "    set by:      a at 2026-11-01T00:00:00.000Z"], id="expired"),
        pytest.param({"decision": "allow", "reason": "appeal", "reference": None, "author": "a",
                      "created_at": "2026-11-01T00:00:00.000Z", "expires_at": None, "in_force": True},
                     ["  override:      allow, in force until cleared",
                      "    reason:      appeal", "    set by:      a at 2026-11-01T00:00:00.000Z"], id="until-cleared"),
        pytest.param({"decision": "block", "reason": "r", "author": "a", "created_at": "c"},
                     ["  override:      block, until cleared", "    reason:      r", "    set by:      a at c"],
                     id="no-in-force-field"),
    ],
)
def test_overrides(override: dict[str, Any], lines: list[str]) -> None:
    shown = render(answer(override=override)).splitlines()
    start = next(index for index, line in enumerate(shown) if line.startswith("  override:"))
    assert shown[start:start + len(lines)] == lines
    assert not shown[start + len(lines)].startswith("    ")


def test_a_held_signal_is_shown() -> None:
    shown = render(answer(held_signal="ORIGIN_CHANGED_AFTER_BLOCK")).splitlines()
    assert shown[-2:] == ["  held signal:   ORIGIN_CHANGED_AFTER_BLOCK", "  answered by:   http://10.0.0.7:6066 (partition 2)"]


def test_unknown_fields_are_tolerated_and_missing_ones_shown_as_dashes() -> None:
    assert render(answer(future_field={"x": 1}, facts={**ANSWER["facts"], "new_fact": True})) == render(ANSWER)
    sparse = render({"product_id": "P-9", "decision": "allow"}).splitlines()
    assert sparse[0] == "P-9: allow"
    assert "  facts:         -" in sparse and "  override:      none" in sparse and "  answered by:   -" in sparse


def test_text_from_upstream_cannot_break_the_lines() -> None:
    body = answer(facts={**ANSWER["facts"], "category_path": "A > B\n\x1b[31mred"}, product_id="P\r1")
    shown = render(body)
    assert "    category:    A > B\\n\\x1b[31mred (id aa-1-13)" in shown.splitlines()
    assert shown.splitlines()[0] == "P\\r1: block"


@pytest.mark.parametrize(
    ("base", "product_id", "url"),
    [
        pytest.param("http://127.0.0.1:6066", "P-1", "http://127.0.0.1:6066/products/P-1", id="plain"),
        pytest.param("http://w:6066/", "P-1", "http://w:6066/products/P-1", id="trailing-slash"),
        pytest.param("http://w:6066", "P/1 ?#%", "http://w:6066/products/P%2F1%20%3F%23%25", id="reserved-characters"),
        pytest.param("http://w:6066", "P-Ü", "http://w:6066/products/P-%C3%9C", id="utf8"),
    ],
)
def test_the_url(base: str, product_id: str, url: str) -> None:
    assert product_url(base, product_id) == url


@pytest.mark.parametrize(
    ("product_id", "url", "message"),
    [
        pytest.param("", "http://w:1", "PRODUCT_ID: must not be empty", id="empty-product-id"),
        pytest.param("P" * 129, "http://w:1", "PRODUCT_ID: longer than 128 characters (no product id is)", id="oversize-id"),
        pytest.param("P-1", "w:6066", "--url 'w:6066': expected http://HOST:PORT or https://HOST:PORT", id="no-scheme"),
        pytest.param("P-1", "ftp://w", "--url 'ftp://w': expected http://HOST:PORT or https://HOST:PORT", id="ftp"),
        pytest.param("P-1", "http://", "--url 'http://': expected http://HOST:PORT or https://HOST:PORT", id="no-host"),
    ],
)
def test_bad_arguments_exit_2_in_one_line(
    capsys: pytest.CaptureFixture[str], product_id: str, url: str, message: str,
) -> None:
    with pytest.raises(status.StatusUsageError, match="^" + message.replace("?", r"\?").replace("(", r"\(").replace(")", r"\)") + "$"):
        check_arguments(product_id, url)
    assert main(["status", product_id, "--url", url], env={}) == 2
    assert capsys.readouterr() == ("", f"compliance-worker status: {message}\n")


# --- what each answer makes of the exit status (the HTTP exchange itself: the integration test) ----------------


@dataclass
class FakeWorker:
    """Stands in for ``status.fetch``: answers ``code`` and ``body``, notes the URLs asked."""

    code: int = 200
    body: bytes = b""
    asked: list[str] = field(default_factory=list)

    def fetch(self, url: str, timeout: float) -> tuple[int, bytes]:
        self.asked.append(url)
        return self.code, self.body


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> FakeWorker:
    worker = FakeWorker()
    monkeypatch.setattr(status, "fetch", worker.fetch)
    return worker


def ask(capsys: pytest.CaptureFixture[str], served: FakeWorker, code: int, body: bytes, *argv: str,
        env: dict[str, str] | None = None) -> tuple[int, str, str]:
    served.code, served.body = code, body
    result = main(["status", *argv], env=env or {})
    captured = capsys.readouterr()
    return result, captured.out, captured.err


def test_200_prints_the_answer(capsys: pytest.CaptureFixture[str], served: FakeWorker) -> None:
    code, out, err = ask(capsys, served, 200, orjson.dumps(ANSWER), "P-1")
    assert (code, out, err) == (0, render(ANSWER) + "\n", "")
    assert served.asked == ["http://127.0.0.1:6066/products/P-1"]


def test_the_default_url_follows_worker_web_port(capsys: pytest.CaptureFixture[str], served: FakeWorker) -> None:
    ask(capsys, served, 200, orjson.dumps(ANSWER), "P/1", env={"WORKER_WEB_PORT": "7070"})
    assert served.asked == ["http://127.0.0.1:7070/products/P%2F1"]


def test_json_prints_the_answer_as_it_came(capsys: pytest.CaptureFixture[str], served: FakeWorker) -> None:
    body = answer(future_field=[1, 2])
    code, out, _ = ask(capsys, served, 200, orjson.dumps(body), "P-1", "--json", "--url", "http://w:1")
    assert (code, orjson.loads(out), out.count("\n")) == (0, body, 1)


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_404_is_an_unknown_product_with_exit_3(capsys: pytest.CaptureFixture[str], served: FakeWorker, as_json: bool) -> None:
    code, out, err = ask(capsys, served, 404, orjson.dumps(NOT_FOUND), "P-404", "--url", "http://w:1",
                         *(["--json"] if as_json else []))
    assert (code, err) == (3, "")
    if as_json:
        assert orjson.loads(out) == NOT_FOUND
    else:
        assert out == "P-404: unknown product (no worker has decided it; http://w:1/products/P-404)\n"


@pytest.mark.parametrize(
    ("reason", "said"),
    [
        pytest.param("recovering", "recovering (the worker owning its partition is still restoring its state)", id="recovering"),
        pytest.param("rebalancing", "rebalancing (the group is rebalancing its partitions)", id="rebalancing"),
        pytest.param("owner_unreachable", "owner_unreachable (the worker owning its partition did not answer)",
                     id="owner-unreachable"),
        pytest.param("shutting_down", "shutting_down", id="a-reason-this-version-does-not-know"),
    ],
)
def test_503_says_why_with_exit_1(capsys: pytest.CaptureFixture[str], served: FakeWorker, reason: str, said: str) -> None:
    body = {"product_id": "P-1", "error": "not available", "reason": reason}
    assert ask(capsys, served, 503, orjson.dumps(body), "P-1", "--url", "http://w:1") == (
        1, "", f"compliance-worker status: P-1: the worker cannot answer now: {said} (http://w:1/products/P-1); try again\n",
    )


@pytest.mark.parametrize(
    ("code", "body", "message"),
    [
        pytest.param(404, b"404: Not Found", "http://w:1/products/P-1 answered 404 without a product answer (404: Not "
                     "Found): does this worker serve /products/{id}?", id="404-from-a-worker-without-the-endpoint"),
        pytest.param(500, b"Internal Server Error", "http://w:1/products/P-1 answered HTTP 500: Internal Server Error",
                     id="500"),
        pytest.param(200, b"<html>", "http://w:1/products/P-1 answered HTTP 200: <html>", id="200-not-json"),
        pytest.param(200, b"[1]", "http://w:1/products/P-1 answered HTTP 200: [1]", id="200-not-an-object"),
        pytest.param(502, b"", "http://w:1/products/P-1 answered HTTP 502: an empty body", id="502-empty"),
        pytest.param(500, b"x" * 300, "http://w:1/products/P-1 answered HTTP 500: " + "x" * 200 + "…", id="long-body"),
    ],
)
def test_other_answers_exit_1_in_one_line(
    capsys: pytest.CaptureFixture[str], served: FakeWorker, code: int, body: bytes, message: str,
) -> None:
    assert ask(capsys, served, code, body, "P-1", "--url", "http://w:1") == (1, "", f"compliance-worker status: {message}\n")
