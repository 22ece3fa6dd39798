"""A real Prometheus scrapes a real worker on the real broker: every dashboard and rule query is checked.

Prometheus (Debian's `prometheus` package, installed by scripts/system-deps.sh) runs with the project's
recording and alert rules, scrapes the test worker every second while events are fed to it, and answers
every PromQL expression of deploy/grafana/compliance-worker.json and deploy/prometheus/rules/*.yml through
its HTTP API. Without a `prometheus` binary the test is skipped, or fails when CI=true.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import re
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiokafka import AIOKafkaProducer

from tests.integration.conftest import ROOT, WorkerProcess, free_port
from tests.tools import require_binary
from worker.commands.sample import generate

DASHBOARD = ROOT / "deploy" / "grafana" / "compliance-worker.json"
RULE_FILES = sorted((ROOT / "deploy" / "prometheus" / "rules").glob("*.rules.yml"))
JOB = "compliance-worker"
SCRAPE_INTERVAL = "1s"
# What Grafana substitutes for $__rate_interval with a 1 s scrape interval over a short range: 4 scrapes + 1.
RATE_INTERVAL = "5s"
DEADLINE_SECONDS = 45.0
# Rule expressions that may return nothing even while events flow: the alerts. A healthy worker fires none of
# them, and these are checked to be empty below (CompliancePolicyRejected against the worker's real
# compliance_policy_rejected_total series, which it exports at 0 from its start).
EXPECTED_QUIET_ALERTS = ("ComplianceNoWorkerUp", "ComplianceWorkerDown", "CompliancePolicyRejected",
                         "CompliancePolicyVersionMismatch")


@pytest.fixture(scope="module")
def prometheus_binary() -> str:
    return require_binary("prometheus", "Debian package prometheus; scripts/system-deps.sh installs it")


class Prometheus:
    """A Prometheus server subprocess with the project's rules, scraping one worker."""

    def __init__(self, binary: str, directory: Path, target: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = directory / "prometheus.log"
        config = {
            "global": {"scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": SCRAPE_INTERVAL,
                       "evaluation_interval": SCRAPE_INTERVAL},
            "rule_files": [str(path) for path in RULE_FILES],
            "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [target]}]}],
        }
        self.config_path = directory / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [binary, f"--config.file={self.config_path}", f"--storage.tsdb.path={directory / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self._log, stderr=self._log,
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()

    def tail_log(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def api(self, path: str, **params: str) -> dict[str, Any]:
        """GET /api/v1/<path>; returns the decoded body, also for 4xx answers (status "error")."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            with error:
                return json.loads(error.read())

    def query(self, expr: str) -> dict[str, Any]:
        return self.api("query", query=expr)

    def ready(self) -> bool:
        with urllib.request.urlopen(self.url + "/-/ready", timeout=5) as response:
            return response.status == 200

    def wait_until(self, what: str, check: Callable[[], Any], detail: Callable[[], object] | None = None,
                   timeout: float = DEADLINE_SECONDS) -> Any:
        """Poll `check` until it returns something truthy; fail with `detail()` (or its last result) if not."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"prometheus exited with {self.process.returncode}:\n{self.tail_log()}", pytrace=False)
            try:
                last = check()
            except OSError as error:
                last = error
            else:
                if last:
                    return last
            time.sleep(0.25)
        shown = detail() if detail is not None else last
        pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}: {shown!r}\n{self.tail_log()}",
                    pytrace=False)


class Feeder(threading.Thread):
    """Produces sample events (2% malformed, some tombstones) at a steady pace until stopped (bounded)."""

    def __init__(self, bootstrap: str, topic: str, per_tick: int = 100, tick: float = 0.2,
                 max_seconds: float = 120.0) -> None:
        super().__init__(name="feeder", daemon=True)
        self.bootstrap, self.topic = bootstrap, topic
        self.per_tick, self.tick, self.max_seconds = per_tick, tick, max_seconds
        self.sent = 0
        self.error: BaseException | None = None
        self._stop_event = threading.Event()

    def run(self) -> None:
        try:
            asyncio.run(self._feed())
        except BaseException as error:  # noqa: BLE001 - handed to the test thread by stop()
            self.error = error

    async def _feed(self) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=5)
        await producer.start()
        try:
            events = generate(int(self.per_tick * self.max_seconds / self.tick), seed=31, malformed_ratio=0.02)
            started = time.monotonic()
            while not self._stop_event.is_set() and time.monotonic() - started < self.max_seconds:
                batch = list(itertools.islice(events, self.per_tick))
                if not batch:
                    break
                batch.append((f"P-gone-{self.sent}".encode(), None))
                futures = [await producer.send(self.topic, value, key=key) for key, value in batch]
                await asyncio.gather(*futures)
                self.sent += len(batch)
                await asyncio.sleep(self.tick)
        finally:
            await producer.stop()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(30)
        if self.error is not None:
            raise self.error


@pytest.fixture
def prometheus(prometheus_binary: str, worker: WorkerProcess, tmp_path: Path) -> Iterator[Prometheus]:
    server = Prometheus(prometheus_binary, tmp_path, f"127.0.0.1:{worker.web_port}")
    try:
        yield server
    finally:
        server.stop()


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(panel title, refId, expr) of every query of every panel."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    found = []
    for panel in dashboard["panels"]:
        for query in panel.get("targets", []):
            found.append((panel["title"], query["refId"], query["expr"]))
    return found


def rule_expressions() -> list[tuple[str, str, str]]:
    """(kind, name, expr) of every recording and alerting rule."""
    found = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]:
            for rule in group["rules"]:
                kind = "record" if "record" in rule else "alert"
                found.append((kind, rule[kind], rule["expr"]))
    return found


def substitute(expr: str, instance: str) -> str:
    """Grafana's variables as Grafana would fill them in for this job and these workers."""
    text = expr.replace("$__rate_interval", RATE_INTERVAL).replace("$job", JOB).replace("$instance", instance)
    assert "$" not in text, f"unknown variable left in {text!r}"
    return text


def has_finite_sample(body: dict[str, Any]) -> bool:
    data = body.get("data", {})
    if data.get("resultType") != "vector":
        return False
    return any(math.isfinite(float(sample["value"][1])) for sample in data["result"])


def test_every_dashboard_and_rule_query_is_valid_and_panels_show_data(
    prometheus: Prometheus, worker: WorkerProcess
) -> None:
    prometheus.wait_until("Prometheus to be ready", prometheus.ready)
    feeder = Feeder(worker.bootstrap, worker.input_topic)
    feeder.start()
    try:
        prometheus.wait_until("the worker to be scraped", lambda: [
            target for target in prometheus.api("targets")["data"]["activeTargets"] if target["health"] == "up"
        ])

        # Every rule is loaded and evaluates without error.
        def rules_evaluated() -> list[dict[str, Any]]:
            groups = prometheus.api("rules")["data"]["groups"]
            rules = [rule for group in groups for rule in group["rules"]]
            assert len(rules) == len(rule_expressions()), "Prometheus did not load every rule"
            bad = [rule for rule in rules if rule["health"] == "err"]
            assert not bad, f"rules failing in Prometheus: {bad}"
            return rules if all(rule["health"] == "ok" for rule in rules) else []

        prometheus.wait_until("every rule to be evaluated", rules_evaluated)

        # Every rule expression is valid PromQL against live data; the recording rules return data.
        for kind, name, expr in rule_expressions():
            body = prometheus.query(expr)
            assert body["status"] == "success", f"{kind} {name}: {body}"

        recordings = {name: expr for kind, name, expr in rule_expressions() if kind == "record"}
        prometheus.wait_until(
            "every recording rule to return a number",
            lambda: all(has_finite_sample(prometheus.query(expr)) for expr in recordings.values()),
            detail=lambda: {name: prometheus.query(expr)["data"] for name, expr in recordings.items()
                            if not has_finite_sample(prometheus.query(expr))},
        )

        # Every panel query, for all workers and for the one worker picked by name, returns a number.
        one_instance = re.sub(r"([.])", r"\\\\\1", f"127.0.0.1:{worker.web_port}")  # as Grafana escapes it
        for instance in (".*", one_instance):
            pending = {(title, ref): substitute(expr, instance) for title, ref, expr in dashboard_queries()}
            for (title, ref), expr in pending.items():
                body = prometheus.query(expr)
                assert body["status"] == "success", f"panel {title!r} query {ref} is invalid: {body}"

            def panels_have_data() -> bool:
                for key in [key for key, expr in pending.items() if has_finite_sample(prometheus.query(expr))]:
                    del pending[key]
                return not pending

            prometheus.wait_until(f"every panel to show a number (instance={instance})", panels_have_data,
                                  detail=lambda: {key: prometheus.query(expr)["data"] for key, expr in pending.items()})

        # The dashboard's variables resolve: label_values(metric{selector}, label).
        dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
        expected = {"job": JOB, "instance": f"127.0.0.1:{worker.web_port}"}
        for variable in dashboard["templating"]["list"]:
            if variable["type"] != "query":
                continue
            match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"]["query"])
            assert match, variable["query"]
            selector, label = substitute(match.group(1), ".*"), match.group(2)
            values = prometheus.api(f"label/{label}/values", **{"match[]": selector})["data"]
            assert expected[variable["name"]] in values, (variable["name"], values)

        # A healthy single worker: these alerts stay quiet.
        alerts = {name: expr for kind, name, expr in rule_expressions() if kind == "alert"}
        assert set(EXPECTED_QUIET_ALERTS) <= set(alerts)
        for name in EXPECTED_QUIET_ALERTS:
            assert prometheus.query(alerts[name])["data"]["result"] == [], name
    finally:
        feeder.stop()
    assert feeder.sent > 0
    assert worker.process is not None and worker.process.poll() is None, worker.tail_log()
