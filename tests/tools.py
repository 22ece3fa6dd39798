"""System tools the tests need: missing ones skip locally and fail the run in CI (CI=true)."""

from __future__ import annotations

import os
import shutil

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_binary(name: str, hint: str) -> str:
    """The path of ``name``; without it, skip (or fail under CI, where everything must run)."""
    binary = shutil.which(name)
    if binary is None:
        message = f"no `{name}` ({hint})"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return binary
