"""Decode and validate one product-upsert event from raw bytes (schemas/product-upsert.schema.json)."""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import orjson

from worker.core.countries import COUNTRY_CODES
from worker.core.errors import ErrorCode, InvalidEvent

# Bounds keep a hostile message from costing unbounded work; they mirror the JSON Schema.
MAX_PAYLOAD_BYTES = 1_048_576  # Kafka's default max.message.bytes
MAX_ID_LENGTH = 128
MAX_TITLE_LENGTH = 2_000
MAX_PATH_LENGTH = 1_024
MAX_PATH_DEPTH = 16
MAX_SHORT_TEXT = 64
MAX_CATEGORY_ID_LENGTH = 160

# Each segment starts with a non-space, non-'>' character: no empty segments, at most 16.
CATEGORY_PATH_RE = re.compile(r"\s*[^>\s][^>]*(?:>\s*[^>\s][^>]*){0,15}")
CATEGORY_ID_RE = re.compile(r"(?:gid://shopify/TaxonomyCategory/)?[a-z]{2,3}(?:-[0-9]{1,6}){0,15}")
HS_CODE_RE = re.compile(r"[0-9]{2}(?:[0-9]{2}(?:\.?[0-9]{2}){0,3})?")
AMOUNT_RE = re.compile(r"(?:0|[1-9][0-9]{0,14})(?:\.[0-9]{1,6})?")
CURRENCY_RE = re.compile(r"[A-Z]{3}")
TIMESTAMP_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?(?:Z|[+-][0-9]{2}:[0-9]{2})")
MAX_VERSION = 2**63 - 1


class ProductEvent(NamedTuple):
    """The fields of a valid product-upsert event that decisions depend on or echo."""

    event_id: str
    product_id: str
    product_version: int | None
    seller_id: str | None
    seller_country: str
    ship_from_country: str
    category_path: str
    category_id: str | None  # Shopify id without the gid:// prefix
    hs_code: str | None  # digits only, dots removed
    price_amount: str | None
    price_currency: str | None
    occurred_at: str | None
    title: str | None


def _violation(message: str) -> InvalidEvent:
    return InvalidEvent(ErrorCode.SCHEMA_VIOLATION, message)


def _optional_object(parent: dict[str, Any], key: str, field: str) -> dict[str, Any] | None:
    value = parent.get(key)
    if value is None or type(value) is dict:
        return value
    raise _violation(f"{field}: expected an object, got {_json_type(value)}")


def _object(parent: dict[str, Any], key: str, field: str) -> dict[str, Any]:
    value = _optional_object(parent, key, field)
    if value is None:
        raise _violation(f"{field}: required object is missing")
    return value


def _text(parent: dict[str, Any], key: str, field: str, *, max_length: int) -> str:
    value = _optional_text(parent, key, field, max_length=max_length)
    if value is None:
        raise _violation(f"{field}: required string is missing")
    return value


def _optional_text(parent: dict[str, Any], key: str, field: str, *, max_length: int) -> str | None:
    value = parent.get(key)
    if value is None:
        return None
    if type(value) is not str:
        raise _violation(f"{field}: expected a string, got {_json_type(value)}")
    if not value:
        raise _violation(f"{field}: must not be empty")
    if len(value) > max_length:
        raise _violation(f"{field}: longer than {max_length} characters")
    return value


def _country(parent: dict[str, Any], key: str, field: str) -> str:
    value = parent.get(key)
    if type(value) is str and value in COUNTRY_CODES:
        return value
    if value is None:
        raise _violation(f"{field}: required country code is missing")
    if type(value) is not str:
        raise _violation(f"{field}: expected a string, got {_json_type(value)}")
    raise _violation(f"{field}: {_quote(value)} is not a country code (ISO 3166-1 alpha-2, upper case)")


def _optional_matching(
    parent: dict[str, Any], key: str, field: str, pattern: re.Pattern[str], what: str, *, max_length: int
) -> str | None:
    value = _optional_text(parent, key, field, max_length=max_length)
    if value is not None and pattern.fullmatch(value) is None:
        raise _violation(f"{field}: {_quote(value)} is not {what}")
    return value


def _matching(
    parent: dict[str, Any], key: str, field: str, pattern: re.Pattern[str], what: str, *, max_length: int
) -> str:
    value = _optional_matching(parent, key, field, pattern, what, max_length=max_length)
    if value is None:
        raise _violation(f"{field}: required string is missing")
    return value


def _quote(value: str) -> str:
    return repr(value if len(value) <= 40 else value[:40] + "…")


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def parse_json(raw: bytes) -> object:
    """Parse raw bytes as JSON, mapping every failure to INVALID_UTF8, INVALID_JSON or PAYLOAD_TOO_LARGE."""
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise InvalidEvent(
            ErrorCode.PAYLOAD_TOO_LARGE, f"message is {len(raw)} bytes, the limit is {MAX_PAYLOAD_BYTES}"
        )
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as utf8_error:
            raise InvalidEvent(
                ErrorCode.INVALID_UTF8, f"not valid UTF-8 at byte {utf8_error.start}"
            ) from None
        raise InvalidEvent(ErrorCode.INVALID_JSON, f"not valid JSON: {exc}") from None


def decode_event(raw: bytes) -> ProductEvent:
    """Decode one product-upsert message; raise InvalidEvent with a stable code if it cannot be decided."""
    document = parse_json(raw)
    if type(document) is not dict:
        raise InvalidEvent(ErrorCode.NOT_AN_OBJECT, f"expected a JSON object, got {_json_type(document)}")
    return validate_event(document)


def validate_event(document: dict[str, Any]) -> ProductEvent:
    """Validate a parsed event object against the product-upsert schema."""
    event_id = _text(document, "event_id", "event_id", max_length=MAX_ID_LENGTH)
    _optional_text(document, "event_type", "event_type", max_length=MAX_SHORT_TEXT)
    occurred_at = _optional_matching(
        document, "occurred_at", "occurred_at", TIMESTAMP_RE, "an RFC 3339 timestamp", max_length=MAX_SHORT_TEXT
    )
    product = _object(document, "product", "product")
    product_id = _text(product, "id", "product.id", max_length=MAX_ID_LENGTH)

    version = product.get("version")
    if type(version) is float and version.is_integer():
        version = int(version)  # JSON (and the schema's "integer") does not tell 7.0 from 7
    if version is not None and (type(version) is not int or not 0 <= version <= MAX_VERSION):
        raise _violation(f"product.version: expected an integer from 0 to 2^63-1, got {_json_type(version)}")

    title = _optional_text(product, "title", "product.title", max_length=MAX_TITLE_LENGTH)

    seller = _object(product, "seller", "product.seller")
    seller_id = _optional_text(seller, "id", "product.seller.id", max_length=MAX_ID_LENGTH)
    seller_country = _country(seller, "country", "product.seller.country")
    ship_from_country = _country(product, "ship_from_country", "product.ship_from_country")

    category = _object(product, "category", "product.category")
    category_path = _matching(
        category, "path", "product.category.path", CATEGORY_PATH_RE,
        f"a taxonomy path ('A > B > C', at most {MAX_PATH_DEPTH} non-empty segments)",
        max_length=MAX_PATH_LENGTH,
    )
    category_id = _optional_matching(
        category, "id", "product.category.id", CATEGORY_ID_RE, "a Shopify taxonomy id such as 'aa-1-13'",
        max_length=MAX_CATEGORY_ID_LENGTH,
    )
    if category_id is not None and category_id.startswith("gid:"):
        category_id = category_id.rpartition("/")[2]

    hs_code = _optional_matching(
        product, "hs_code", "product.hs_code", HS_CODE_RE, "an HS code such as '6205.20'", max_length=16
    )
    if hs_code is not None:
        hs_code = hs_code.replace(".", "")

    price_amount = price_currency = None
    price = _optional_object(product, "price", "product.price")
    if price is not None:
        price_amount = _matching(
            price, "amount", "product.price.amount", AMOUNT_RE, "a decimal amount such as '12.50'", max_length=24
        )
        price_currency = _matching(
            price, "currency", "product.price.currency", CURRENCY_RE, "an ISO 4217 currency code", max_length=3
        )

    return ProductEvent(
        event_id,
        product_id,
        version,
        seller_id,
        seller_country,
        ship_from_country,
        category_path,
        category_id,
        hs_code,
        price_amount,
        price_currency,
        occurred_at,
        title,
    )
