"""`compliance-worker check`: the installed console script on a 100,000-line sample, and check_lines in process."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.unit.conftest import VALID_EVENT, make_event
from worker.commands.check import check_lines
from worker.core import InvalidEvent, Policy, decode_event
from worker.core.errors import ErrorCode

SAMPLE_SIZE = 100_000
ERROR_LINE_RE = re.compile(r"line ([0-9]+): ([A-Z_0-9]+): (.+)")
SUMMARY_RE = re.compile(r"checked ([0-9,]+) lines in [0-9.]+s \([0-9,]+ lines/s\): ([0-9,]+) decided, ([0-9,]+) invalid")


def _number(text: str) -> int:
    return int(text.replace(",", ""))


@pytest.fixture(scope="module")
def script() -> str:
    found = shutil.which("compliance-worker", path=str(Path(sys.executable).parent))
    assert found is not None, "the console script is not installed next to the interpreter (pip install -e .)"
    return found


def run(script: str, *args: str, stdin: bytes | None = None, **env: str) -> subprocess.CompletedProcess[bytes]:
    environment = {key: value for key, value in os.environ.items() if key != "POLICY_FILE"}
    environment.update(env)
    return subprocess.run([script, *args], input=stdin, capture_output=True, env=environment, timeout=120, check=False)


def stderr_lines(result: subprocess.CompletedProcess[bytes]) -> list[str]:
    return result.stderr.decode("utf-8").splitlines()


def error_reports(result: subprocess.CompletedProcess[bytes]) -> list[re.Match[str]]:
    return [match for line in stderr_lines(result) if (match := ERROR_LINE_RE.fullmatch(line))]


@pytest.fixture(scope="module")
def sample_file(script: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("check") / "sample.jsonl"
    with path.open("wb") as out:
        result = subprocess.run([script, "sample", "--count", str(SAMPLE_SIZE)], stdout=out, stderr=subprocess.PIPE, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return path


@pytest.fixture(scope="module")
def checked(script: str, sample_file: Path) -> subprocess.CompletedProcess[bytes]:
    return run(script, "check", str(sample_file))


@pytest.fixture(scope="module")
def checked_json(script: str, sample_file: Path) -> subprocess.CompletedProcess[bytes]:
    return run(script, "check", "--summary-json", str(sample_file))


# --- the console script on a real sample -----------------------------------------------------


def test_sample_has_the_requested_number_of_lines(sample_file: Path) -> None:
    lines = sample_file.read_bytes().split(b"\n")
    assert lines[-1] == b""
    assert len(lines) - 1 == SAMPLE_SIZE
    assert all(lines[:-1])


def test_check_decides_every_valid_line_and_reports_every_invalid_one(checked: subprocess.CompletedProcess[bytes]) -> None:
    assert checked.returncode == 0, checked.stderr[-2000:]
    summary = next(match for line in stderr_lines(checked) if (match := SUMMARY_RE.fullmatch(line)))
    lines, decided, invalid = (_number(group) for group in summary.groups())
    assert lines == SAMPLE_SIZE
    assert decided + invalid == SAMPLE_SIZE
    assert checked.stdout.count(b"\n") == decided
    assert len(error_reports(checked)) == invalid
    assert 0 < invalid < SAMPLE_SIZE // 50  # the sample's ~1% malformed messages


def test_every_line_is_either_decided_or_reported_once(checked: subprocess.CompletedProcess[bytes], sample_file: Path) -> None:
    decisions = [orjson.loads(line) for line in checked.stdout.splitlines()]
    decided_lines = [decision["source"]["line"] for decision in decisions]
    reported_lines = [int(match.group(1)) for match in error_reports(checked)]
    assert decided_lines == sorted(set(decided_lines))
    assert reported_lines == sorted(set(reported_lines))
    assert sorted(decided_lines + reported_lines) == list(range(1, SAMPLE_SIZE + 1))
    assert {decision["source"]["file"] for decision in decisions} == {str(sample_file)}
    assert {decision["policy_version"] for decision in decisions} == {"2026.11.0"}


def test_error_reports_carry_the_decoders_code_and_message(checked: subprocess.CompletedProcess[bytes], sample_file: Path) -> None:
    raw_lines = sample_file.read_bytes().split(b"\n")
    codes = Counter()
    for match in error_reports(checked):
        number, code, message = int(match.group(1)), match.group(2), match.group(3)
        with pytest.raises(InvalidEvent) as caught:
            decode_event(raw_lines[number - 1])
        assert (caught.value.code, caught.value.message) == (code, message)
        codes[code] += 1
    assert set(codes) <= set(ErrorCode)
    assert {ErrorCode.INVALID_JSON, ErrorCode.INVALID_UTF8, ErrorCode.NOT_AN_OBJECT, ErrorCode.SCHEMA_VIOLATION} <= set(codes)


def _summary_json(result: subprocess.CompletedProcess[bytes]) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr[-2000:]
    parsed = orjson.loads(stderr_lines(result)[-1])
    assert set(parsed) == {"summary", "policy_version"}
    return parsed["summary"]


def _text_summary(result: subprocess.CompletedProcess[bytes]) -> tuple[int, int, int]:
    """(lines, decided, invalid) from the human summary on stderr."""
    assert result.returncode == 0, result.stderr[-2000:]
    match = next(match for line in stderr_lines(result) if (match := SUMMARY_RE.fullmatch(line)))
    lines, decided, invalid = (_number(group) for group in match.groups())
    return lines, decided, invalid


def test_summary_json_on_valid_input_is_one_parseable_line(script: str) -> None:
    stdin = b"".join(orjson.dumps(make_event(event_id=f"e-{n}")) + b"\n" for n in range(10))
    result = run(script, "check", "--summary-json", stdin=stdin)
    assert stderr_lines(result) == [stderr_lines(result)[-1]]
    assert orjson.loads(stderr_lines(result)[-1])["policy_version"] == "2026.11.0"
    assert _summary_json(result) == {
        "lines": 10, "decided": 10, "decisions": {"block": 10}, "clusters": {"textile_fashion": 10}, "errors": {},
    }


def test_summary_json_is_one_parseable_line_that_adds_up(
    checked_json: subprocess.CompletedProcess[bytes], checked: subprocess.CompletedProcess[bytes]
) -> None:
    summary = _summary_json(checked_json)
    assert summary["lines"] == SAMPLE_SIZE
    assert summary["decided"] == sum(summary["decisions"].values()) == sum(summary["clusters"].values())
    assert summary["decided"] + sum(summary["errors"].values()) == SAMPLE_SIZE
    assert set(summary["decisions"]) == {"allow", "block"}
    assert set(summary["clusters"]) == {"textile_fashion", "food_beverage", "crafts", "none"}
    assert checked_json.stdout.count(b"\n") == summary["decided"]
    assert Counter(match.group(2) for match in error_reports(checked_json)) == summary["errors"]
    assert len(stderr_lines(checked_json)) == sum(summary["errors"].values()) + 1
    # the same decisions as the run without --summary-json (decision ids are deterministic)
    ids = [orjson.loads(line)["decision_id"] for line in checked_json.stdout.splitlines()]
    assert ids == [orjson.loads(line)["decision_id"] for line in checked.stdout.splitlines()]


def test_check_dash_reads_standard_input(script: str, sample_file: Path, tmp_path: Path) -> None:
    head = b"".join(sample_file.read_bytes().splitlines(keepends=True)[:2000])
    (tmp_path / "head.jsonl").write_bytes(head)
    from_stdin = run(script, "check", "-", stdin=head)
    default_is_stdin = run(script, "check", stdin=head)
    from_file = run(script, "check", str(tmp_path / "head.jsonl"))
    assert _text_summary(from_stdin) == _text_summary(default_is_stdin) == _text_summary(from_file)
    assert _text_summary(from_stdin)[0] == 2000
    stdin_decisions = [orjson.loads(line) for line in from_stdin.stdout.splitlines()]
    assert {decision["source"]["file"] for decision in stdin_decisions} == {"-"}
    assert [decision["decision_id"] for decision in stdin_decisions] == [
        orjson.loads(line)["decision_id"] for line in default_is_stdin.stdout.splitlines()
    ] == [orjson.loads(line)["decision_id"] for line in from_file.stdout.splitlines()]
    assert error_reports(from_stdin) and [m.groups() for m in error_reports(from_stdin)] == [m.groups() for m in error_reports(from_file)]


def test_blank_lines_are_skipped_but_counted(script: str) -> None:
    valid = orjson.dumps(VALID_EVENT)
    stdin = b"\n" + valid + b"\n   \n\t\r\n" + valid + b"\r\n\n" + b"[]\n"
    result = run(script, "check", stdin=stdin)
    assert _text_summary(result) == (7, 2, 1)
    lines = [decision["source"]["line"] for decision in map(orjson.loads, result.stdout.splitlines())]
    assert lines == [2, 5]
    assert stderr_lines(result)[0] == "line 7: NOT_AN_OBJECT: expected a JSON object, got an array"
    assert len(error_reports(result)) == 1


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_unreadable_input_exits_1_with_one_clear_line(script: str, tmp_path: Path, kind: str) -> None:
    path = tmp_path / "nope.jsonl" if kind == "missing" else tmp_path
    result = run(script, "check", str(path))
    assert result.returncode == 1
    assert result.stdout == b""
    reason = "No such file or directory" if kind == "missing" else "Is a directory"
    assert stderr_lines(result) == [f"compliance-worker check: cannot read {path}: {reason}"]


@pytest.mark.parametrize("via", ["flag", "env"])
def test_invalid_policy_exits_2_with_one_line_naming_the_problem(script: str, tmp_path: Path, via: str) -> None:
    policy = tmp_path / "policy.yaml"
    bundled = (Path(__file__).resolve().parents[3] / "worker" / "policies" / "default.yaml").read_bytes()
    policy.write_bytes(bundled.replace(b"signals: [seller_country, ship_from_country]", b"signals: [seller_country, origin]"))
    stdin = orjson.dumps(VALID_EVENT) + b"\n"
    if via == "flag":
        result = run(script, "check", "--policy", str(policy), stdin=stdin)
    else:
        result = run(script, "check", stdin=stdin, POLICY_FILE=str(policy))
    assert result.returncode == 2
    assert result.stdout == b""
    (line,) = stderr_lines(result)
    assert line.startswith(f"compliance-worker check: {policy}: cross_border.signals: must be a non-empty list"), line


def test_missing_policy_file_exits_2(script: str, tmp_path: Path) -> None:
    result = run(script, "check", "--policy", str(tmp_path / "gone.yaml"), stdin=b"")
    assert result.returncode == 2
    assert stderr_lines(result) == [f"compliance-worker check: {tmp_path / 'gone.yaml'}: cannot read policy file: No such file or directory"]


def test_other_policy_file_is_used(script: str, tmp_path: Path) -> None:
    policy = tmp_path / "policy.json"
    policy.write_bytes(orjson.dumps({
        "version": "only-ship-from-1",
        "cross_border": {"home_countries": ["ID"], "signals": ["ship_from_country"]},
        "clusters": {"textile_fashion": {"title": "Textile"}},
        "category_rules": [{"id": "aa", "cluster": "textile_fashion"}],
    }))
    stdin = orjson.dumps(make_event(product__ship_from_country="ID")) + b"\n"  # foreign seller, local warehouse
    result = run(script, "check", "--policy", str(policy), stdin=stdin)
    (decision,) = map(orjson.loads, result.stdout.splitlines())
    assert (decision["policy_version"], decision["decision"], decision["cross_border"]) == ("only-ship-from-1", "allow", False)


def test_reader_going_away_stops_quietly(script: str, sample_file: Path) -> None:
    environment = {key: value for key, value in os.environ.items() if key != "POLICY_FILE"}
    with subprocess.Popen([script, "check", str(sample_file)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environment) as child:
        assert child.stdout is not None and child.stderr is not None
        first = child.stdout.readline()
        child.stdout.close()  # like `| head -1`
        stderr = child.stderr.read().decode()
        returncode = child.wait(timeout=60)
    assert orjson.loads(first)["source"]["line"] >= 1
    assert "Traceback" not in stderr
    assert "cannot read" not in stderr, stderr.splitlines()[-1]
    assert returncode == 0


# --- check_lines in process -------------------------------------------------------------------


def _check(lines: list[bytes], policy: Policy, **kwargs: Any) -> tuple[Any, list[dict[str, Any]], list[str]]:
    out, err = io.BytesIO(), io.StringIO()
    summary = check_lines(io.BytesIO(b"".join(lines)), policy, out, err, source_name="in-memory", **kwargs)
    return summary, [orjson.loads(line) for line in out.getvalue().splitlines()], err.getvalue().splitlines()


def test_check_lines_decides_reports_and_skips(policy: Policy) -> None:
    domestic = orjson.dumps(make_event(product__seller__country="ID", product__ship_from_country="ID"))
    lines = [
        orjson.dumps(VALID_EVENT) + b"\n",
        b"\n",
        domestic + b"\r\n",
        b'{"event_id": \n',
        b"\xff\n",
        b"  \n",
        orjson.dumps(make_event(product__ship_from_country="XX")) + b"\n",
        orjson.dumps(make_event(product__category={"path": "Electronics > Communications"}, product__hs_code=...)),  # no final newline
    ]
    summary, decisions, errors = _check(lines, policy)
    assert [decision["source"] for decision in decisions] == [{"file": "in-memory", "line": n} for n in (1, 3, 8)]
    assert [decision["decision"] for decision in decisions] == ["block", "allow", "allow"]
    assert [decision["cluster"] for decision in decisions] == ["textile_fashion", "textile_fashion", None]
    assert [line.split(": ")[:2] for line in errors] == [
        ["line 4", "INVALID_JSON"], ["line 5", "INVALID_UTF8"], ["line 7", "SCHEMA_VIOLATION"],
    ]
    assert errors[2] == "line 7: SCHEMA_VIOLATION: product.ship_from_country: 'XX' is not a country code (ISO 3166-1 alpha-2, upper case)"
    assert summary.as_dict() == {
        "lines": 8,
        "decided": 3,
        "decisions": {"allow": 2, "block": 1},
        "clusters": {"none": 1, "textile_fashion": 2},
        "errors": {"INVALID_JSON": 1, "INVALID_UTF8": 1, "SCHEMA_VIOLATION": 1},
    }
    rendered = summary.render(2.0)
    assert rendered.startswith("checked 8 lines in 2.00s (4 lines/s): 3 decided, 3 invalid")


def test_check_lines_with_text_streams_of_str(policy: Policy) -> None:
    """Decisions are bytes; reports go to any text stream (here a StringIO), never to the decision stream."""
    out, err = io.BytesIO(), io.StringIO()
    summary = check_lines([b"[]\n", orjson.dumps(VALID_EVENT)], policy, out, err, source_name="list")
    assert err.getvalue() == "line 1: NOT_AN_OBJECT: expected a JSON object, got an array\n"
    assert out.getvalue().endswith(b"\n") and out.getvalue().count(b"\n") == 1
    assert summary.lines == 2


def test_check_lines_on_empty_input(policy: Policy) -> None:
    progress = io.StringIO()
    summary, decisions, errors = _check([], policy, progress=progress)
    assert (summary.lines, decisions, errors, progress.getvalue()) == (0, [], [], "")
    assert summary.render(0.0).startswith("checked 0 lines in 0.00s (0 lines/s): 0 decided, 0 invalid")


def test_check_lines_reports_progress_and_clears_it(policy: Policy) -> None:
    progress = io.StringIO()
    line = orjson.dumps(VALID_EVENT) + b"\n"
    summary, decisions, _ = _check([line] * 2048, policy, progress=progress)
    assert len(decisions) == summary.lines == 2048
    assert progress.getvalue().startswith("\r1,024 lines, ")
    assert progress.getvalue().endswith("\r\033[K")
