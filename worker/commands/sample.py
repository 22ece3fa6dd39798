"""Realistic sample catalogs drawn from the Shopify taxonomy: for `make run`, benchmarks and tests."""

from __future__ import annotations

import gzip
import random
from collections.abc import Iterator
from functools import cache
from importlib import resources
from typing import NamedTuple

import orjson

TAXONOMY_FILE = "shopify-categories-2024-10.txt.gz"

# Top-level subtrees that hold most restricted categories; half the events are drawn from them
# so that a sample exercises every cluster, the other half uniformly from the whole taxonomy.
FOCUS_PREFIXES = (
    "Apparel & Accessories",
    "Food, Beverages & Tobacco",
    "Arts & Entertainment > Hobbies & Creative Arts > Arts & Crafts",
    "Luggage & Bags",
    "Home & Garden > Decor",
    "Home & Garden > Linens & Bedding",
)
# (seller country, ship-from country, weight): mostly local, then the usual import routes.
ORIGINS = (
    ("ID", "ID", 55),
    ("CN", "CN", 18),
    ("SG", "ID", 6),  # foreign seller with a local warehouse: still cross-border
    ("ID", "CN", 6),  # local reseller shipping from abroad: cross-border
    ("MY", "MY", 5),
    ("US", "US", 3),
    ("JP", "JP", 3),
    ("KR", "KR", 2),
    ("TH", "TH", 2),
)
UNMAPPED_PATHS = (
    ("Marketplace > Imported Goods > Assorted", "6109.10"),
    ("Marketplace > Oleh-oleh > Makanan Ringan", "1905.90"),
    ("Marketplace > Kerajinan Tangan", "4602"),
    ("Marketplace > Elektronik", "8517.13"),
)
TITLE_WORDS = ("premium", "original", "murah", "grosir", "handmade", "import", "lokal", "promo", "terbaru", "asli")
CURRENCIES = (("IDR", 15_000, 2_500_000), ("USD", 1, 400), ("CNY", 5, 2_000))


class Category(NamedTuple):
    id: str
    path: str


@cache
def taxonomy() -> tuple[Category, ...]:
    """All 10,365 categories of the bundled Shopify taxonomy (2024-10)."""
    data = resources.files("worker.data").joinpath(TAXONOMY_FILE).read_bytes()
    categories = []
    for line in gzip.decompress(data).decode("utf-8").splitlines():
        if line and not line.startswith("#"):
            category_id, _, path = line.partition("\t")
            categories.append(Category(category_id, path))
    return tuple(categories)


def _malformed(rng: random.Random, good: dict, index: int) -> bytes:
    """One of the usual ways a message goes wrong upstream."""
    kind = index % 8
    if kind == 0:
        return orjson.dumps(good)[: rng.randint(5, 60)]  # truncated
    if kind == 1:
        return b'{"event_id": "\xff\xfe broken", "product": {}}'  # not UTF-8
    if kind == 2:
        return orjson.dumps([good])  # not an object
    bad = orjson.loads(orjson.dumps(good))
    product = bad["product"]
    if kind == 3:
        del product["ship_from_country"]
    elif kind == 4:
        product["seller"]["country"] = "XX1"
    elif kind == 5:
        product["version"] = "seven"
    elif kind == 6:
        product["category"]["path"] = "Apparel & Accessories >  > Shirts"
    else:
        product["hs_code"] = "62-05"
    return orjson.dumps(bad)


def generate(
    count: int, *, seed: int = 7, malformed_ratio: float = 0.01, products: int | None = None
) -> Iterator[tuple[bytes, bytes]]:
    """Yield (key, value) pairs of product-upsert messages; ~malformed_ratio of the values are invalid."""
    rng = random.Random(seed)
    categories = taxonomy()
    focus = [c for c in categories if c.path.startswith(FOCUS_PREFIXES)]
    origins = [o[:2] for o in ORIGINS]
    origin_weights = [o[2] for o in ORIGINS]
    product_count = products or max(1, count // 3)
    versions: dict[int, int] = {}
    for index in range(count):
        product_number = rng.randrange(product_count)
        version = versions.get(product_number, 0) + 1
        versions[product_number] = version
        product_id = f"P-{product_number:07d}"
        seller_country, ship_from = rng.choices(origins, origin_weights)[0]
        roll = rng.random()
        if roll < 0.03:
            path, hs_code = rng.choice(UNMAPPED_PATHS)
            category: dict[str, str] = {"path": path}
        else:
            chosen = rng.choice(focus if roll < 0.5 else categories)
            category = {"path": chosen.path}
            if rng.random() < 0.7:
                category["id"] = chosen.id
            hs_code = None
        leaf = category["path"].rpartition(" > ")[2]
        currency, low, high = rng.choice(CURRENCIES)
        product = {
            "id": product_id,
            "version": version,
            "title": f"{leaf} {rng.choice(TITLE_WORDS)} {rng.choice(TITLE_WORDS)}",
            "seller": {"id": f"S-{rng.randrange(5000):04d}", "country": seller_country},
            "ship_from_country": ship_from,
            "category": category,
            "price": {"amount": f"{rng.uniform(low, high):.2f}", "currency": currency},
        }
        if hs_code is not None:
            product["hs_code"] = hs_code
        event = {
            "event_id": f"{seed:x}-{index:09d}",
            "event_type": "product.upserted",
            "occurred_at": "2026-11-29T10:00:00Z",
            "product": product,
        }
        if rng.random() < malformed_ratio:
            yield product_id.encode(), _malformed(rng, event, index)
        else:
            yield product_id.encode(), orjson.dumps(event)
