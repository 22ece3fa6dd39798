"""Decoding and validation: every error code, with a message that names the field."""

from __future__ import annotations

import orjson
import pytest

from tests.unit.conftest import VALID_EVENT, make_event
from worker.core import InvalidEvent, decode_event
from worker.core.errors import ErrorCode
from worker.core.event import MAX_PAYLOAD_BYTES


def test_valid_event_decodes_to_its_fields() -> None:
    event = decode_event(orjson.dumps(VALID_EVENT))
    assert event.event_id == "9f1c-0001"
    assert event.product_id == "P-1001"
    assert event.product_version == 7
    assert (event.seller_country, event.ship_from_country) == ("CN", "CN")
    assert event.category_id == "aa-1-13"
    assert event.hs_code == "620520"
    assert (event.price_amount, event.price_currency) == ("12.50", "USD")


@pytest.mark.parametrize(
    ("changes", "check"),
    [
        pytest.param({"product__category__id": "gid://shopify/TaxonomyCategory/aa-1-13"}, ("category_id", "aa-1-13"), id="gid-prefix-stripped"),
        pytest.param({"product__hs_code": "62"}, ("hs_code", "62"), id="hs-chapter-only"),
        pytest.param({"product__hs_code": "6205.20.10"}, ("hs_code", "62052010"), id="hs-eight-digits-dotted"),
        pytest.param({"product__version": None}, ("product_version", None), id="null-optional-is-absent"),
        pytest.param({"product__version": ...}, ("product_version", None), id="missing-optional"),
        pytest.param({"product__price": ...}, ("price_amount", None), id="no-price"),
        pytest.param({"extra": {"nested": [1, 2, 3]}}, ("event_id", "9f1c-0001"), id="unknown-fields-ignored"),
        pytest.param({"product__seller__id": ...}, ("seller_id", None), id="seller-id-optional"),
    ],
)
def test_accepted_variations(changes: dict, check: tuple[str, object]) -> None:
    event = decode_event(orjson.dumps(make_event(**changes)))
    field, expected = check
    assert getattr(event, field) == expected


@pytest.mark.parametrize(
    ("raw", "code", "message_part"),
    [
        pytest.param(b"\xff\xfe{}", ErrorCode.INVALID_UTF8, "UTF-8", id="invalid-utf8"),
        pytest.param(b'{"event_id": "\xc3\x28"}', ErrorCode.INVALID_UTF8, "UTF-8", id="invalid-utf8-inside-string"),
        pytest.param(b'{"event_id": ', ErrorCode.INVALID_JSON, "JSON", id="truncated-json"),
        pytest.param(b"", ErrorCode.INVALID_JSON, "JSON", id="empty-message"),
        pytest.param(b"[" * 2000 + b"]" * 2000, ErrorCode.INVALID_JSON, "JSON", id="deeply-nested"),
        pytest.param(b"NaN", ErrorCode.INVALID_JSON, "JSON", id="nan-literal"),
        pytest.param(b"[1, 2]", ErrorCode.NOT_AN_OBJECT, "array", id="array"),
        pytest.param(b'"text"', ErrorCode.NOT_AN_OBJECT, "string", id="string"),
        pytest.param(b"null", ErrorCode.NOT_AN_OBJECT, "null", id="json-null"),
        pytest.param(b"42", ErrorCode.NOT_AN_OBJECT, "number", id="number"),
        pytest.param(b" " * (MAX_PAYLOAD_BYTES + 1), ErrorCode.PAYLOAD_TOO_LARGE, "limit", id="oversize"),
    ],
)
def test_undecodable_bytes(raw: bytes, code: ErrorCode, message_part: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        decode_event(raw)
    assert caught.value.code == code
    assert message_part in caught.value.message


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        pytest.param({"event_id": ...}, "event_id", id="missing-event-id"),
        pytest.param({"event_id": ""}, "event_id", id="empty-event-id"),
        pytest.param({"event_id": 42}, "event_id", id="event-id-number"),
        pytest.param({"event_id": "x" * 129}, "event_id", id="event-id-too-long"),
        pytest.param({"occurred_at": "yesterday"}, "occurred_at", id="bad-timestamp"),
        pytest.param({"event_type": ["product.upserted"]}, "event_type", id="event-type-array"),
        pytest.param({"product": ...}, "product", id="missing-product"),
        pytest.param({"product": "P-1"}, "product", id="product-not-object"),
        pytest.param({"product__id": ...}, "product.id", id="missing-product-id"),
        pytest.param({"product__id": 1001}, "product.id", id="product-id-number"),
        pytest.param({"product__version": "7"}, "product.version", id="version-string"),
        pytest.param({"product__version": -1}, "product.version", id="version-negative"),
        pytest.param({"product__version": 7.5}, "product.version", id="version-float"),
        pytest.param({"product__version": True}, "product.version", id="version-boolean"),
        pytest.param({"product__version": 2**63}, "product.version", id="version-too-big"),
        pytest.param({"product__title": "t" * 2001}, "product.title", id="title-too-long"),
        pytest.param({"product__seller": ...}, "product.seller", id="missing-seller"),
        pytest.param({"product__seller__country": ...}, "product.seller.country", id="missing-seller-country"),
        pytest.param({"product__seller__country": "XX"}, "product.seller.country", id="unassigned-country"),
        pytest.param({"product__seller__country": "cn"}, "product.seller.country", id="lowercase-country"),
        pytest.param({"product__seller__country": "CHN"}, "product.seller.country", id="alpha3-country"),
        pytest.param({"product__ship_from_country": "XX1"}, "product.ship_from_country", id="bad-ship-from"),
        pytest.param({"product__ship_from_country": 62}, "product.ship_from_country", id="ship-from-number"),
        pytest.param({"product__ship_from_country": ...}, "product.ship_from_country", id="missing-ship-from"),
        pytest.param({"product__category": ...}, "product.category", id="missing-category"),
        pytest.param({"product__category__path": ...}, "product.category.path", id="missing-path"),
        pytest.param({"product__category__path": "A >  > B"}, "product.category.path", id="empty-path-segment"),
        pytest.param({"product__category__path": "A > B >"}, "product.category.path", id="trailing-separator"),
        pytest.param({"product__category__path": " > ".join(["A"] * 17)}, "product.category.path", id="path-too-deep"),
        pytest.param({"product__category__path": "A" * 1025}, "product.category.path", id="path-too-long"),
        pytest.param({"product__category__id": "Apparel"}, "product.category.id", id="category-id-not-shopify"),
        pytest.param({"product__hs_code": "62-05"}, "product.hs_code", id="hs-code-dash"),
        pytest.param({"product__hs_code": "6"}, "product.hs_code", id="hs-code-one-digit"),
        pytest.param({"product__hs_code": 6205}, "product.hs_code", id="hs-code-number"),
        pytest.param({"product__price": {"amount": 12.5, "currency": "USD"}}, "product.price.amount", id="price-float"),
        pytest.param({"product__price": {"amount": "-1", "currency": "USD"}}, "product.price.amount", id="price-negative"),
        pytest.param({"product__price": {"amount": "12.50"}}, "product.price.currency", id="price-no-currency"),
        pytest.param({"product__price": {"amount": "12.50", "currency": "usd"}}, "product.price.currency", id="currency-lowercase"),
    ],
)
def test_schema_violations_name_the_field(changes: dict, field: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        decode_event(orjson.dumps(make_event(**changes)))
    assert caught.value.code == ErrorCode.SCHEMA_VIOLATION
    assert caught.value.message.startswith(f"{field}:"), caught.value.message


def test_invalid_event_is_a_value_error_and_not_retriable() -> None:
    with pytest.raises(ValueError) as caught:
        decode_event(b"[]")
    assert isinstance(caught.value, InvalidEvent)
    assert caught.value.retriable is False
