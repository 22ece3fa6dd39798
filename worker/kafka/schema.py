"""A Faust schema that hands keys and values over as the bytes Kafka delivered."""

from __future__ import annotations

from typing import Any

import faust
from faust.types import Message


class RawSchema(faust.Schema):
    """Keys and values stay the bytes Kafka delivered: the worker decodes them itself, once.

    Faust's "raw" serializer gives the same result through the codec registry
    (two lookups and a payload preparation per key and per value); this schema
    hands ``message.key`` and ``message.value`` over directly.
    """

    def loads_key(self, app: Any, message: Message, *, loads: Any = None, serializer: Any = None) -> Any:
        return message.key

    def loads_value(self, app: Any, message: Message, *, loads: Any = None, serializer: Any = None) -> Any:
        return message.value
