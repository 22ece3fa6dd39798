"""`compliance-worker status PRODUCT_ID`: a product's decision in force, as a worker's GET /products/{id} tells it."""

from __future__ import annotations

import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

import orjson

from worker.core.errors import ComplianceError
from worker.core.event import MAX_ID_LENGTH
from worker.settings import Settings

UNKNOWN_PRODUCT = 3  # exit status: no worker knows the product (HTTP 404)
BODY_SHOWN = 200  # characters of an unexpected answer's body quoted in the error line
UNAVAILABLE_REASONS = {
    "recovering": "the worker owning its partition is still restoring its state",
    "rebalancing": "the group is rebalancing its partitions",
    "owner_unreachable": "the worker owning its partition did not answer",
}


class StatusUsageError(ComplianceError):
    """An argument that cannot work: exit 2."""


class StatusUnavailable(ComplianceError):
    """No answer, or not one this command understands: exit 1 (may work on a retry)."""

    retriable = True


def product_url(base: str, product_id: str) -> str:
    """``{base}/products/{id}`` with the id percent-encoded whole (a / in it included)."""
    return f"{base.rstrip('/')}/products/{urllib.parse.quote(product_id, safe='')}"


def check_arguments(product_id: str, url: str) -> None:
    if not product_id:
        raise StatusUsageError("PRODUCT_ID: must not be empty")
    if len(product_id) > MAX_ID_LENGTH:
        raise StatusUsageError(f"PRODUCT_ID: longer than {MAX_ID_LENGTH} characters (no product id is)")
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise StatusUsageError(f"--url {url!r}: expected http://HOST:PORT or https://HOST:PORT")


def fetch(url: str, timeout: float) -> tuple[int, bytes]:
    """(HTTP status, body) of a GET; raises StatusUnavailable when no HTTP answer comes."""
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - http(s) only, checked
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, ConnectionRefusedError):
            why = "connection refused (is a worker running there? its port is WORKER_WEB_PORT; or give --url)"
        elif isinstance(reason, (socket.timeout, TimeoutError)):
            why = f"no answer within {timeout:g}s"
        else:
            why = str(reason)
        raise StatusUnavailable(f"cannot reach the worker at {url}: {why}") from None
    except (TimeoutError, socket.timeout):
        raise StatusUnavailable(f"cannot reach the worker at {url}: no answer within {timeout:g}s") from None
    except (OSError, ValueError) as exc:  # e.g. the connection reset mid-answer, a malformed URL
        raise StatusUnavailable(f"cannot reach the worker at {url}: {exc}") from None


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return document if isinstance(document, dict) else None


def _text(value: Any) -> str:
    """A value for a person: None as -, control characters escaped (upstream text may hold a newline)."""
    if value is None:
        return "-"
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def _quoted(body: bytes) -> str:
    text = body.decode("utf-8", "replace").strip()
    shown = _text(text[:BODY_SHOWN]) + ("…" if len(text) > BODY_SHOWN else "")
    return shown or "an empty body"


def render(answer: Mapping[str, Any]) -> str:
    """The 200 answer for a person; fields it does not know are left out, missing ones shown as -."""
    lines = [f"{_text(answer.get('product_id'))}: {_text(answer.get('decision'))}"]

    def row(label: str, value: str, indent: int = 2) -> None:
        lines.append(f"{' ' * indent}{label + ':':<{17 - indent}}{value}")

    reasons = answer.get("reasons")
    row("reasons", ", ".join(map(_text, reasons)) if isinstance(reasons, list) and reasons else "-")
    cluster = answer.get("cluster")
    cross_border = answer.get("cross_border")
    origin = ("cross-border" if cross_border else "domestic") if isinstance(cross_border, bool) else "cross-border: -"
    row("cluster", f"{_text(cluster) if cluster is not None else 'none'} ({origin})")
    row("policy", _text(answer.get("policy_version")))
    decided = [f"product version {_text(answer.get('product_version'))}"]
    if answer.get("decision_id") is not None:
        decided.append(f"decision {_text(answer.get('decision_id'))}")
    row("decided at", f"{_text(answer.get('decided_at'))} ({', '.join(decided)})")
    facts = answer.get("facts")
    if isinstance(facts, dict):
        occurred = f", occurred at {_text(facts.get('occurred_at'))}" if facts.get("occurred_at") is not None else ""
        row("facts", f"from event {_text(facts.get('event_id'))}{occurred}")
        seller = _text(facts.get("seller_country"))
        if facts.get("seller_id") is not None:
            seller = f"{_text(facts.get('seller_id'))}, {seller}"
        row("seller", seller, 4)
        row("ships from", _text(facts.get("ship_from_country")), 4)
        category = _text(facts.get("category_path"))
        if facts.get("category_id") is not None:
            category += f" (id {_text(facts.get('category_id'))})"
        row("category", category, 4)
        row("HS code", _text(facts.get("hs_code")), 4)
        price = facts.get("price")
        if isinstance(price, dict):
            row("price", f"{_text(price.get('amount'))} {_text(price.get('currency'))}", 4)
        else:
            row("price", _text(price), 4)
    else:
        row("facts", "-")
    override = answer.get("override")
    if isinstance(override, dict):
        in_force = override.get("in_force")
        expires = override.get("expires_at")
        if in_force is True:
            state = f"in force until {_text(expires)}" if expires is not None else "in force until cleared"
        elif in_force is False:
            state = f"not in force (expired at {_text(expires)})" if expires is not None else "not in force"
        else:
            state = f"until {_text(expires)}" if expires is not None else "until cleared"
        row("override", f"{_text(override.get('decision'))}, {state}")
        row("reason", _text(override.get("reason")), 4)
        if override.get("reference") is not None:
            row("reference", _text(override.get("reference")), 4)
        row("set by", f"{_text(override.get('author'))} at {_text(override.get('created_at'))}", 4)
    else:
        row("override", "none")
    if answer.get("held_signal") is not None:
        row("held signal", _text(answer.get("held_signal")))
    answered = _text(answer.get("answered_by"))
    if answer.get("partition") is not None:
        answered += f" (partition {_text(answer.get('partition'))})"
    row("answered by", answered)
    return "\n".join(lines)


def run_status(
    env: Mapping[str, str], product_id: str, *, url: str | None, timeout: float, as_json: bool,
) -> int:
    """0: the decision in force is printed; 3: unknown product; 1: no answer (raises StatusUnavailable)."""
    base = url if url is not None else f"http://127.0.0.1:{Settings.from_env(env).worker_web_port}"
    check_arguments(product_id, base)
    address = product_url(base, product_id)
    status, body = fetch(address, timeout)
    answer = _json_object(body)
    if status == 200 and answer is not None:
        sys.stdout.write((orjson.dumps(answer).decode() if as_json else render(answer)) + "\n")
        return 0
    if status == 404 and answer is not None and answer.get("error") is not None:
        if as_json:
            sys.stdout.write(orjson.dumps(answer).decode() + "\n")
        else:
            sys.stdout.write(f"{_text(product_id)}: unknown product (no worker has decided it; {address})\n")
        return UNKNOWN_PRODUCT
    if status == 503 and answer is not None:
        if as_json:
            sys.stdout.write(orjson.dumps(answer).decode() + "\n")
        reason = answer.get("reason")
        if isinstance(reason, str):
            why = f"{_text(reason)} ({UNAVAILABLE_REASONS[reason]})" if reason in UNAVAILABLE_REASONS else _text(reason)
        else:
            why = _text(answer.get("error"))
        raise StatusUnavailable(f"{_text(product_id)}: the worker cannot answer now: {why} ({address}); try again")
    if status == 404:
        raise StatusUnavailable(
            f"{address} answered 404 without a product answer ({_quoted(body)}): does this worker serve /products/{{id}}?"
        )
    raise StatusUnavailable(f"{address} answered HTTP {status}: {_quoted(body)}")
