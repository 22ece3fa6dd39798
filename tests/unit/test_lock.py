"""requirements/*.lock agree with pyproject.toml: every install path (make, CI, the Docker image) gets what CI tested."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^ ;\\]+)")


def pins(lock: str) -> dict[str, str]:
    """name -> version of every package in a lock file."""
    found = {}
    for line in (ROOT / "requirements" / lock).read_text(encoding="utf-8").splitlines():
        match = PIN.match(line)
        if match:
            found[canonicalize_name(match.group(1))] = match.group(2)
    return found


def direct(requirements: list[str]) -> dict[str, str]:
    result = {}
    for text in requirements:
        requirement = Requirement(text)
        [specifier] = requirement.specifier  # pyproject.toml pins every direct dependency exactly
        assert specifier.operator == "==", text
        result[canonicalize_name(requirement.name)] = specifier.version
    return result


RUNTIME = direct(PYPROJECT["dependencies"])
TEST = direct(PYPROJECT["optional-dependencies"]["test"])
BENCH = direct(PYPROJECT["optional-dependencies"]["bench"])  # in test.lock too: one venv for make test and make bench


@pytest.mark.parametrize(("lock", "wanted"), [("runtime.lock", RUNTIME), ("test.lock", {**RUNTIME, **TEST, **BENCH})],
                         ids=["runtime", "test"])
def test_the_lock_pins_every_direct_dependency_at_pyprojects_version(lock: str, wanted: dict[str, str]) -> None:
    locked = pins(lock)
    assert {name: locked.get(name) for name in wanted} == wanted, "run `make lock` after changing pyproject.toml"


def test_the_image_gets_the_versions_ci_tested_and_no_test_tools() -> None:
    runtime, test = pins("runtime.lock"), pins("test.lock")
    assert {name: test.get(name) for name in runtime} == runtime
    assert not (set(TEST) | set(BENCH)) & set(runtime)


def test_the_extras_agree_on_every_package_they_share() -> None:
    assert {name: BENCH[name] for name in set(BENCH) & set(TEST)} == {name: TEST[name] for name in set(BENCH) & set(TEST)}


@pytest.mark.parametrize("lock", ["runtime.lock", "test.lock"])
def test_every_locked_package_has_hashes(lock: str) -> None:
    text = (ROOT / "requirements" / lock).read_text(encoding="utf-8")
    entries = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2])  # after the two header lines
    assert len(entries) == len(pins(lock))
    for entry in entries:
        assert "--hash=sha256:" in entry, entry.splitlines()[0]


def test_every_install_path_installs_from_the_lock() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "--require-hashes -r requirements/test.lock" in makefile and "--no-deps -e ." in makefile
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text(encoding="utf-8")
    assert "--require-hashes -r requirements/runtime.lock" in dockerfile and "--no-deps ." in dockerfile
    assert "make test" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")  # CI installs through make
