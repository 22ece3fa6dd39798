"""Which input headers a decision carries: W3C trace context always, FORWARD_HEADERS besides, in any case."""

from __future__ import annotations

import pytest

from worker.stream.agent import header_filter

TRACE = ("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")


@pytest.mark.parametrize(
    ("names", "headers", "expected"),
    [
        pytest.param((), [TRACE, ("tracestate", b"a=1"), ("x-other", b"2")], [TRACE, ("tracestate", b"a=1")],
                     id="trace-context-only"),
        pytest.param((), [("x-other", b"2")], None, id="nothing-to-forward"),
        pytest.param(("X-Request-Id",), [("x-request-id", b"r1"), ("X-REQUEST-ID", b"r2"), ("x-other", b"")],
                     [("x-request-id", b"r1"), ("X-REQUEST-ID", b"r2")], id="any-case-and-repeats-kept-in-order"),
        pytest.param(("baggage",), [("TraceParent", b"t"), ("baggage", None)], [("TraceParent", b"t"), ("baggage", None)],
                     id="null-value-kept"),
    ],
)
def test_forwarded_headers(names: tuple[str, ...], headers: list[tuple[str, bytes | None]], expected: object) -> None:
    assert header_filter(names)(headers) == expected
