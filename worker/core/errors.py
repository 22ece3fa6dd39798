"""One root exception for the project, with stable error codes for input that cannot be decided."""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Dead-letter error codes: stable strings that consumers and alerts may match on."""

    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    INVALID_UTF8 = "INVALID_UTF8"
    INVALID_JSON = "INVALID_JSON"
    NOT_AN_OBJECT = "NOT_AN_OBJECT"
    SCHEMA_VIOLATION = "SCHEMA_VIOLATION"
    TOMBSTONE_WITHOUT_KEY = "TOMBSTONE_WITHOUT_KEY"
    KEY_MISMATCH = "KEY_MISMATCH"  # the message's key is not its product.id (or it has none)
    # Valid events that the policy in force cannot decide (the minimum-price rule):
    PRICE_REQUIRED = "PRICE_REQUIRED"
    NO_EXCHANGE_RATE = "NO_EXCHANGE_RATE"


class ComplianceError(Exception):
    """Root of every error this project raises on purpose.

    ``retriable`` tells the caller whether the same call may succeed later
    (a broker hiccup) or never will (bad input, bad policy).
    """

    retriable: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidEvent(ComplianceError, ValueError):
    """An input message that cannot be decided; it goes to the dead-letter topic with ``code``."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code

    def __reduce__(self) -> tuple[type[InvalidEvent], tuple[ErrorCode, str]]:
        return (type(self), (self.code, self.message))


class InvalidPolicy(ComplianceError, ValueError):
    """A policy document that fails validation; it is never put in force."""
