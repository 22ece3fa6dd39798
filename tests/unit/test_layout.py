"""The package's layering holds: each room of worker/ imports only the rooms below it (README, "Where things are")."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "worker"

# Room -> the rooms of ours it may import (itself always). Outside libraries are checked by FORBIDDEN_OUTSIDE.
ALLOWED: dict[str, set[str]] = {
    "core": set(),  # pure decisions
    "settings": {"core"},  # one frozen Settings object, read by everything above
    "kafka": {"core", "settings"},  # extensions of Faust and aiokafka; never the running worker or the commands
    "stream": {"core", "settings", "kafka"},  # the running worker
    "commands": {"core", "settings", "kafka", "stream"},  # the command line on top
    "__main__": {"commands"},
}
# The core is plain Python: no Kafka client, stream framework or metrics library, at any depth.
FORBIDDEN_OUTSIDE = {"core": {"aiokafka", "faust", "mode", "prometheus_client", "kafka", "confluent_kafka", "aiohttp"}}


def room_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def imports_of(path: Path) -> list[tuple[int, str]]:
    """Every module an ``import`` or ``from ... import`` names (inside functions and TYPE_CHECKING too), absolute."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's own package
                base = list(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-node.level])
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module == "worker":  # from worker import x: x may be a module of ours
                found.extend((node.lineno, f"worker.{alias.name}") for alias in node.names)
            else:
                found.append((node.lineno, module))
    return found


def violations(path: Path) -> list[str]:
    room = room_of(path)
    allowed = ALLOWED.get(room)
    if allowed is None:
        return [f"{path.relative_to(PACKAGE.parent)}: room {room!r} is not in the layering table (test_layout.py)"]
    problems = []
    for line, module in imports_of(path):
        top, _, rest = module.partition(".")
        where = f"{path.relative_to(PACKAGE.parent)}:{line}"
        if top == "worker":
            target = rest.partition(".")[0]
            if target in ("", "__version__"):
                continue  # the package root: its version only
            if target != room and target not in allowed:
                problems.append(f"{where}: {room} imports {module} ({target} is above it)")
        elif top in FORBIDDEN_OUTSIDE.get(room, set()):
            problems.append(f"{where}: {room} imports {module}")
    return problems


RESOURCES = {"policies", "data"}  # packaged files, no code
MODULES = sorted(
    p for p in PACKAGE.rglob("*.py")
    if p.relative_to(PACKAGE).parts[0] not in RESOURCES and p != PACKAGE / "__init__.py"
)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_imports_only_the_rooms_below_it(path: Path) -> None:
    assert violations(path) == []


def test_every_room_is_a_package_in_the_table_and_the_readme() -> None:
    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    rooms = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name not in RESOURCES and any(p.glob("*.py"))}
    assert rooms == {"core", "kafka", "stream", "commands"}
    for room in rooms:
        assert (PACKAGE / room / "__init__.py").exists(), f"worker/{room}/ is not a regular package"
        assert room in ALLOWED
        assert f"worker/{room}/" in readme, f"the README's tree does not name worker/{room}/"


@pytest.mark.parametrize(("room", "source", "forbidden"), [
    ("kafka", "from worker.stream.metrics import ComplianceMetrics\n", "kafka imports worker.stream.metrics"),
    ("kafka", "from worker.commands import cli\n", "kafka imports worker.commands"),
    ("core", "import faust\n", "core imports faust"),
    ("core", "from worker.settings import Settings\n", "core imports worker.settings"),
    ("stream", "def f():\n    from worker.commands.sample import generate\n", "stream imports worker.commands.sample"),
    ("settings", "from worker import stream\n", "settings imports worker.stream"),
    ("core", "from ..kafka import consumer\n", "core imports worker.kafka"),
], ids=["kafka->stream", "kafka->commands", "core->faust", "core->settings", "lazy stream->commands",
        "from-worker-import", "relative core->kafka"])
def test_a_forbidden_import_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, room: str, source: str, forbidden: str) -> None:
    fake_package = tmp_path / "worker"
    module = fake_package / f"{room}.py" if room == "settings" else fake_package / room / "probe.py"
    module.parent.mkdir(parents=True, exist_ok=True)
    module.write_text(source, encoding="utf-8")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake_package)
    found = violations(module)
    assert len(found) == 1 and forbidden in found[0], found
