"""Decode and validate one product-upsert event from raw bytes (schemas/product-upsert.schema.json)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, NamedTuple

import msgspec
import orjson
from msgspec.structs import astuple

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


class EventFacts(msgspec.Struct, gc=False):
    """ProductEvent's fields, in its order, as a msgspec Struct: what the fast path decodes into and encodes.

    Only strings, ints and None, so it cannot take part in a reference cycle (gc=False).
    """

    event_id: str
    product_id: str
    product_version: int | None
    seller_id: str | None
    seller_country: str
    ship_from_country: str
    category_path: str
    category_id: str | None
    hs_code: str | None
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
    facts = decode_typical(raw)
    if facts is not None:
        return _tuple_new(ProductEvent, astuple(facts))
    return decode_event_reference(raw)


def decode_event_reference(raw: bytes) -> ProductEvent:
    """decode_event without its fastest path: what decides every event that path leaves, and the tests' reference."""
    document = parse_json(raw)
    if type(document) is not dict:
        raise InvalidEvent(ErrorCode.NOT_AN_OBJECT, f"expected a JSON object, got {_json_type(document)}")
    return validate_event(document)


def validate_event(document: dict[str, Any]) -> ProductEvent:
    """Validate a parsed event object against the product-upsert schema."""
    event = _accept_typical(document)
    return event if event is not None else validate_event_strictly(document)


# --- the fast path -----------------------------------------------------------------------
# Every event is validated, so the common case of a well-formed event takes one
# function with no calls per field, and strings that repeat across events
# (category paths and ids, HS codes, currencies) are checked once and remembered.
# Anything unusual returns None and goes to validate_event_strictly, which is the
# reference and the one that explains what is wrong. Tests check that the two agree.

_CACHE_LIMIT = 65_536
_valid_paths: dict[str, bool] = {}
_category_ids: dict[str, str | None] = {}
_hs_codes: dict[str, str | None] = {}


def _remember(cache: dict[str, Any], key: str, value: Any) -> Any:
    if len(cache) >= _CACHE_LIMIT:
        cache.clear()  # a flood of distinct strings must not grow memory without bound
    cache[key] = value
    return value


def _path_ok(path: str) -> bool:
    known = _valid_paths.get(path)
    if known is None:
        known = _remember(
            _valid_paths, path, 0 < len(path) <= MAX_PATH_LENGTH and CATEGORY_PATH_RE.fullmatch(path) is not None
        )
    return known


def _normal_category_id(raw: str) -> str | None:
    try:
        return _category_ids[raw]
    except KeyError:
        pass
    ok = 0 < len(raw) <= MAX_CATEGORY_ID_LENGTH and CATEGORY_ID_RE.fullmatch(raw) is not None
    return _remember(_category_ids, raw, (raw.rpartition("/")[2] if raw.startswith("gid:") else raw) if ok else None)


def _normal_hs_code(raw: str) -> str | None:
    try:
        return _hs_codes[raw]
    except KeyError:
        pass
    ok = 0 < len(raw) <= 16 and HS_CODE_RE.fullmatch(raw) is not None
    return _remember(_hs_codes, raw, raw.replace(".", "") if ok else None)


def _accept_typical(d: dict[str, Any]) -> ProductEvent | None:  # noqa: C901, PLR0911, PLR0912 - one flat pass on purpose
    """The event if it is valid and unremarkable, else None (never raises)."""
    event_id = d.get("event_id")
    if type(event_id) is not str or not 0 < len(event_id) <= MAX_ID_LENGTH:
        return None
    value = d.get("event_type")
    if value is not None and (type(value) is not str or not 0 < len(value) <= MAX_SHORT_TEXT):
        return None
    occurred_at = d.get("occurred_at")
    if occurred_at is not None and (
        type(occurred_at) is not str or len(occurred_at) > MAX_SHORT_TEXT or TIMESTAMP_RE.fullmatch(occurred_at) is None
    ):
        return None
    product = d.get("product")
    if type(product) is not dict:
        return None
    product_id = product.get("id")
    if type(product_id) is not str or not 0 < len(product_id) <= MAX_ID_LENGTH:
        return None
    version = product.get("version")
    if version is not None and (type(version) is not int or not 0 <= version <= MAX_VERSION):
        return None
    title = product.get("title")
    if title is not None and (type(title) is not str or not 0 < len(title) <= MAX_TITLE_LENGTH):
        return None
    seller = product.get("seller")
    if type(seller) is not dict:
        return None
    seller_id = seller.get("id")
    if seller_id is not None and (type(seller_id) is not str or not 0 < len(seller_id) <= MAX_ID_LENGTH):
        return None
    seller_country = seller.get("country")
    if type(seller_country) is not str or seller_country not in COUNTRY_CODES:
        return None
    ship_from = product.get("ship_from_country")
    if type(ship_from) is not str or ship_from not in COUNTRY_CODES:
        return None
    category = product.get("category")
    if type(category) is not dict:
        return None
    path = category.get("path")
    if type(path) is not str or not _path_ok(path):
        return None
    category_id = category.get("id")
    if category_id is not None:
        if type(category_id) is not str:
            return None
        category_id = _normal_category_id(category_id)
        if category_id is None:
            return None
    hs_code = product.get("hs_code")
    if hs_code is not None:
        if type(hs_code) is not str:
            return None
        hs_code = _normal_hs_code(hs_code)
        if hs_code is None:
            return None
    amount = currency = None
    price = product.get("price")
    if price is not None:
        if type(price) is not dict:
            return None
        amount, currency = price.get("amount"), price.get("currency")
        if (
            type(amount) is not str or not 0 < len(amount) <= 24 or AMOUNT_RE.fullmatch(amount) is None
            or type(currency) is not str or len(currency) != 3 or CURRENCY_RE.fullmatch(currency) is None
        ):
            return None
    return ProductEvent(
        event_id, product_id, version, seller_id, seller_country, ship_from, path, category_id, hs_code,
        amount, currency, occurred_at, title,
    )


# --- the fastest path: typical events straight from bytes ----------------------------------
# msgspec decodes and checks types, lengths, bounds and country codes in C while it parses.
# It is used only where it cannot accept what orjson + validate_event would reject. With
# forbid_unknown_fields every value is typed and every string it accepts is valid UTF-8.
# A value it skips could hold what orjson rejects (1e400, bytes that are not UTF-8), so an
# event with fields beyond the schema's is taken only once orjson has accepted it whole.
# Everything else (7.0 as a version, null where a value is required, any error at all)
# returns None, and the caller takes the path above, which gives the same result or the
# same error. Tests check the two agree.

_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_LENGTH)]
_Country = Literal[tuple(sorted(COUNTRY_CODES))]  # type: ignore[valid-type]  # checked by a hash lookup in C


class _Seller(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    country: _Country
    id: _Id | None = None


class _Category(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    path: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_PATH_LENGTH)]
    id: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_CATEGORY_ID_LENGTH)] | None = None


class _Price(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    amount: Annotated[str, msgspec.Meta(min_length=1, max_length=24)]
    currency: Annotated[str, msgspec.Meta(min_length=3, max_length=3)]


class _Product(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    id: _Id
    seller: _Seller
    ship_from_country: _Country
    category: _Category
    version: Annotated[int, msgspec.Meta(ge=0, le=MAX_VERSION)] | None = None
    title: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TITLE_LENGTH)] | None = None
    hs_code: Annotated[str, msgspec.Meta(min_length=1, max_length=16)] | None = None
    price: _Price | None = None


class TypicalEvent(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A product-upsert event with the schema's fields only, as msgspec checks it (patterns aside)."""

    event_id: _Id
    product: _Product
    event_type: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_SHORT_TEXT)] | None = None
    occurred_at: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_SHORT_TEXT)] | None = None


# The same, with fields beyond the schema's skipped (a subclass may only loosen the config and retype fields).
class _SellerWithExtras(_Seller, forbid_unknown_fields=False):
    pass


class _CategoryWithExtras(_Category, forbid_unknown_fields=False):
    pass


class _PriceWithExtras(_Price, forbid_unknown_fields=False):
    pass


class _ProductWithExtras(_Product, forbid_unknown_fields=False):
    seller: _SellerWithExtras
    category: _CategoryWithExtras
    price: _PriceWithExtras | None = None


class _EventWithExtras(TypicalEvent, forbid_unknown_fields=False):
    product: _ProductWithExtras


_decode_event_struct = msgspec.json.Decoder(TypicalEvent).decode
_decode_event_struct_with_extras = msgspec.json.Decoder(_EventWithExtras).decode
_tuple_new = tuple.__new__  # a NamedTuple without its Python-level __new__: the fields are already checked
_timestamps: dict[str, bool] = {}
_currencies: dict[str, bool] = {}


def decode_typical(raw: bytes) -> EventFacts | None:
    """The event's facts if ``raw`` is a valid event with nothing unusual in it, else None (never raises)."""
    event = parse_typical(raw)
    if event is None:
        return None
    product = event.product
    category = product.category
    normal = typical_category(category.path, category.id, product.hs_code)
    return None if normal is None else typical_facts(event, *normal)


def parse_typical(raw: bytes) -> TypicalEvent | None:
    """Step 1 of decode_typical: parsed, with types, lengths, bounds and country codes checked (never raises)."""
    if len(raw) > MAX_PAYLOAD_BYTES:
        return None
    # ValueError: msgspec.DecodeError, UnicodeDecodeError for a string that is not UTF-8, orjson.JSONDecodeError;
    # RecursionError: msgspec's nesting limit (lower than orjson's) in a value it skips.
    try:
        return _decode_event_struct(raw)
    except (ValueError, RecursionError):
        pass
    try:  # perhaps fields beyond the schema's, which the contract allows
        event = _decode_event_struct_with_extras(raw)
        orjson.loads(raw)  # what the skipped values hold must be what orjson accepts
    except (ValueError, RecursionError):
        return None
    return event


def typical_category(path: str, category_id: str | None, hs_code: str | None) -> tuple[str | None, str | None] | None:
    """Step 2: the category id and HS code as ProductEvent holds them, if path, id and HS code are valid; else None.

    Patterns are checked here rather than by msgspec, so that strings that repeat are checked once each.
    """
    if not (_valid_paths.get(path) or _path_ok(path)):
        return None
    if category_id is not None:
        category_id = _category_ids.get(category_id) or _normal_category_id(category_id)
        if category_id is None:
            return None
    if hs_code is not None:
        hs_code = _hs_codes.get(hs_code) or _normal_hs_code(hs_code)
        if hs_code is None:
            return None
    return category_id, hs_code


def typical_facts(event: TypicalEvent, category_id: str | None, hs_code: str | None) -> EventFacts | None:
    """Step 3: the facts, if the timestamp and the price are valid too; else None."""
    occurred_at = event.occurred_at
    if occurred_at is not None and not (
        _timestamps.get(occurred_at)
        or _remember(_timestamps, occurred_at, TIMESTAMP_RE.fullmatch(occurred_at) is not None)
    ):
        return None
    product = event.product
    price = product.price
    if price is None:
        amount = currency = None
    else:
        amount, currency = price.amount, price.currency
        if AMOUNT_RE.fullmatch(amount) is None or not (
            _currencies.get(currency) or _remember(_currencies, currency, CURRENCY_RE.fullmatch(currency) is not None)
        ):
            return None
    seller = product.seller
    return EventFacts(
        event.event_id, product.id, product.version, seller.id, seller.country, product.ship_from_country,
        product.category.path, category_id, hs_code, amount, currency, occurred_at, product.title,
    )


def validate_event_strictly(document: dict[str, Any]) -> ProductEvent:
    """The reference validator: field by field, raising InvalidEvent with a message that names the field."""
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
