#!/usr/bin/env python3
"""Builds deploy/grafana/compliance-worker.json, the worker's Grafana dashboard.

    python deploy/grafana/build_dashboard.py           # rewrite the JSON
    python deploy/grafana/build_dashboard.py --check   # exit 1 if the committed JSON is out of date

Edit the panels here, run it, commit both files. tests/unit/test_deploy.py checks that the JSON is what this
builder makes; tests/integration/test_prometheus.py evaluates every query against a real Prometheus scraping
a real worker; docs/operations.md describes every panel (same titles). Standard library only.

Variables: $datasource (any Prometheus data source), $job (the scrape job, from compliance_policy_info) and
$instance (one or more workers, or All). Fleet-wide stats at the top use the recording rules in
deploy/prometheus/rules/recording.rules.yml and follow $job only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

OUTPUT = Path(__file__).with_name("compliance-worker.json")
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
JOB = 'job="$job"'
SEL = 'job="$job", instance=~"$instance"'
RATE = "$__rate_interval"
OUT_METRICS = "compliance_decisions_total|compliance_dead_letters_total|compliance_tombstones_total"


def target(expr: str, legend: str = "__auto", ref: str = "A", instant: bool = False) -> dict[str, Any]:
    query: dict[str, Any] = {"datasource": DATASOURCE, "refId": ref, "expr": expr, "legendFormat": legend}
    if instant:
        query["instant"], query["range"] = True, False
    return query


def targets(*queries: tuple[str, str]) -> list[dict[str, Any]]:
    return [target(expr, legend, ref=chr(ord("A") + i)) for i, (expr, legend) in enumerate(queries)]


def stat(title: str, description: str, expr: str, unit: str, legend: str = "__auto",
         thresholds: list[tuple[float | None, str]] | None = None, text_mode: str = "value") -> dict[str, Any]:
    steps = [{"color": color, "value": value} for value, color in (thresholds or [(None, "green")])]
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": [target(expr, legend)],
        "fieldConfig": {
            "defaults": {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps}},
            "overrides": [],
        },
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "none",
            "textMode": text_mode,
            "justifyMode": "auto",
            "orientation": "auto",
        },
    }


def timeseries(title: str, description: str, queries: list[dict[str, Any]], unit: str,
               stack: bool = False, minimum: float | None = 0) -> dict[str, Any]:
    custom: dict[str, Any] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never",
                              "spanNulls": False}
    if stack:
        custom["stacking"] = {"mode": "normal", "group": "A"}
        custom["fillOpacity"] = 40
    defaults: dict[str, Any] = {"unit": unit, "custom": custom}
    if minimum is not None:
        defaults["min"] = minimum
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": queries,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"],
                       "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    }


def row(title: str) -> dict[str, Any]:
    return {"type": "row", "title": title, "collapsed": False, "panels": []}


def overview() -> list[tuple[dict[str, Any], int]]:
    """(panel, width) for the top row of single numbers."""
    return [
        (stat("Workers up", "Scrape targets of $job that answered the last scrape (`up == 1`).",
              f"count(up{{{JOB}}} == 1)", "none", thresholds=[(None, "red"), (1, "green")]), 3),
        (stat("Policy in force", "Each policy (version and first 12 hex digits of its digest) in use and how many "
              "workers use it. More than one line means the workers disagree.",
              f"count by (version, digest) (compliance_policy_info{{{SEL}}})", "none",
              legend="{{version}} ({{digest}})", text_mode="value_and_name"), 5),
        (stat("Policy age", "Time since the oldest loaded policy of the selected workers was loaded.",
              f"time() - min(compliance_policy_loaded_timestamp_seconds{{{SEL}}})", "s"), 2),
        (stat("Events in", "Events consumed per second, whole job, last minute (recording rule).",
              f"sum(job:compliance_events_in:rate1m{{{JOB}}})", "reqps"), 3),
        (stat("Records out", "Decisions + dead letters + tombstones produced per second, whole job, last minute "
              "(recording rule).", f"sum(job:compliance_events_out:rate1m{{{JOB}}})", "reqps"), 3),
        (stat("Blocked (5m)", "Share of decisions that are block, whole job, last 5 minutes (recording rule).",
              f"max(job:compliance_block_ratio:rate5m{{{JOB}}})", "percentunit"), 2),
        (stat("Dead-lettered (5m)", "Share of input messages dead-lettered, whole job, last 5 minutes "
              "(recording rule; the alert fires above 5%).",
              f"max(job:compliance_dead_letter_ratio:rate5m{{{JOB}}})", "percentunit",
              thresholds=[(None, "green"), (0.01, "yellow"), (0.05, "red")]), 2),
        (stat("p99 latency (5m)", "99th percentile decision latency, whole job, last 5 minutes (recording rule; "
              "the alert fires above 1 s).", f"max(job:compliance_decision_latency_seconds:p99_5m{{{JOB}}})", "s",
              thresholds=[(None, "green"), (0.5, "yellow"), (1, "red")]), 2),
        (stat("Total lag", "Messages not yet committed, summed over all input partitions (recording rule).",
              f"sum(job_topic:compliance_consumer_lag:sum{{{JOB}}})", "short",
              thresholds=[(None, "green"), (1000, "yellow"), (100000, "red")]), 2),
    ]


def sections() -> list[tuple[str, list[dict[str, Any]]]]:
    """(row title, panels); the panels of a row are laid out two per line."""
    return [
        ("Throughput and decisions", [
            timeseries(
                "Throughput in / out",
                "Events consumed from the input topic and records produced (decisions + dead letters + tombstones) "
                "per second. In steady state the two lines overlap; out below in means a backlog is building.",
                targets(
                    (f"sum(rate(faust_messages_received_total{{{SEL}}}[{RATE}]))", "in (consumed)"),
                    (f'sum(rate({{__name__=~"{OUT_METRICS}", {SEL}}}[{RATE}]))', "out (produced)"),
                    (f"sum(rate(compliance_tombstones_total{{{SEL}}}[{RATE}]))", "of which tombstones"),
                ),
                "reqps",
            ),
            timeseries(
                "Decisions by outcome and cluster",
                "Decisions per second by decision (block/allow) and restricted cluster (none = in no cluster), "
                "stacked.",
                targets((f"sum by (decision, cluster) (rate(compliance_decisions_total{{{SEL}}}[{RATE}]))",
                         "{{decision}} / {{cluster}}")),
                "reqps", stack=True,
            ),
            timeseries(
                "Block ratio",
                "Share of decisions that block, overall and per restricted cluster. A jump usually follows a "
                "policy change or a new cross-border seller.",
                targets(
                    (f'sum(rate(compliance_decisions_total{{decision="block", {SEL}}}[{RATE}])) / '
                     f"sum(rate(compliance_decisions_total{{{SEL}}}[{RATE}]))", "all decisions"),
                    (f'sum by (cluster) (rate(compliance_decisions_total{{decision="block", {SEL}}}[{RATE}])) / '
                     f'sum by (cluster) (rate(compliance_decisions_total{{cluster!="none", {SEL}}}[{RATE}]))',
                     "{{cluster}}"),
                ),
                "percentunit",
            ),
            timeseries(
                "Dead letters by code",
                "Input messages sent to the dead-letter topic per second, by error code (see the README's "
                "dead-letter error codes).",
                targets((f"sum by (code) (rate(compliance_dead_letters_total{{{SEL}}}[{RATE}]))", "{{code}}")),
                "reqps", stack=True,
            ),
            timeseries(
                "Review signals",
                "Evasion signals raised in each interval, by reason code: blocked products back with the same "
                "seller and title, now domestic or outside the restricted clusters (0 unless the policy has a "
                "review section).",
                targets((f"sum by (signal) (increase(compliance_review_signals_total{{{SEL}}}[{RATE}]))",
                         "{{signal}}")),
                "short", stack=True,
            ),
        ]),
        ("Latency", [
            timeseries(
                "Decision latency p50 / p99",
                "Event consumed by the worker -> decision acknowledged by the broker (acks=all), from the "
                "compliance_decision_latency_seconds histogram. Target: p99 below 1 s.",
                targets(
                    ("histogram_quantile(0.50, sum by (le) "
                     f"(rate(compliance_decision_latency_seconds_bucket{{{SEL}}}[{RATE}])))", "p50"),
                    ("histogram_quantile(0.99, sum by (le) "
                     f"(rate(compliance_decision_latency_seconds_bucket{{{SEL}}}[{RATE}])))", "p99"),
                ),
                "s",
            ),
            timeseries(
                "Batch size",
                "Average input messages handled per batch, per worker. Batches grow (up to 2,000) when a "
                "worker has a backlog and shrink to a few messages when it keeps up.",
                targets((f"sum by (instance) (rate(compliance_batch_size_sum{{{SEL}}}[{RATE}])) / "
                         f"sum by (instance) (rate(compliance_batch_size_count{{{SEL}}}[{RATE}]))", "{{instance}}")),
                "short",
            ),
        ]),
        ("Kafka consumer", [
            timeseries(
                "Consumer lag per partition",
                "End offset (the last stable offset: an upstream's open transaction is not lag) minus committed "
                "offset of each input partition, as reported by the worker that owns it. One partition far above "
                "the others points to a hot key or a stuck worker.",
                targets((f"max by (topic, partition) (compliance_consumer_lag{{{SEL}}})",
                         "{{topic}} [{{partition}}]")),
                "short",
            ),
            timeseries(
                "Consumer lag total",
                "Lag summed over all input partitions. Rising for 10 minutes pages "
                "(ComplianceConsumerLagGrowing).",
                targets((f"sum by (topic) (max by (topic, partition) (compliance_consumer_lag{{{SEL}}}))",
                         "{{topic}}")),
                "short",
            ),
            timeseries(
                "Rebalances",
                "Consumer-group rebalances completed per worker in each interval, and rebalances in progress. "
                "Frequent rebalances mean workers join and leave (crashes, scaling, failed liveness probes); they do "
                "not make workers unready.",
                targets(
                    (f"sum by (instance) (increase(faust_rebalance_done_latency_count{{{SEL}}}[{RATE}]))",
                     "completed {{instance}}"),
                    (f"sum(faust_total_rebalances{{{SEL}}}) + sum(faust_total_rebalances_recovering{{{SEL}}})",
                     "in progress"),
                ),
                "short",
            ),
            timeseries(
                "Assigned partitions per worker",
                "Input partitions each worker owns. A worker with none is idle: there are more workers than "
                "partitions; it is still Ready and holds standby copies of state.",
                targets((f"count by (instance) (compliance_consumer_end_offset{{{SEL}}})", "{{instance}}")),
                "short",
            ),
        ]),
        ("Compliance staff", [
            timeseries(
                "Overrides",
                "Overrides in force (set by compliance staff with `compliance-worker override`, the same number on "
                "every worker: each reads them all), and decisions made by one per second, by decision. A rejected "
                "override document (not valid: the product then has none) shows as its own line.",
                targets(
                    (f"max(compliance_overrides_active{{{SEL}}})", "in force"),
                    (f"sum by (decision) (rate(compliance_override_decisions_total{{{SEL}}}[{RATE}]))",
                     "decided: {{decision}} /s"),
                    (f"sum(increase(compliance_overrides_rejected_total{{{SEL}}}[{RATE}]))", "rejected"),
                ),
                "short",
            ),
        ]),
        ("Process", [
            timeseries(
                "CPU",
                "CPU time used per second by each worker process (1 = one full core). A worker is one Python "
                "process and cannot use more than about one core.",
                targets((f"rate(process_cpu_seconds_total{{{SEL}}}[{RATE}])", "{{instance}}")),
                "short",
            ),
            timeseries(
                "Memory",
                "Resident memory of each worker process. Compare with the container limit (512 MiB in "
                "deploy/k8s/statefulset.yaml); the RocksDB cache (STATE_CACHE_MB) is part of it.",
                targets((f"process_resident_memory_bytes{{{SEL}}}", "{{instance}}")),
                "bytes",
            ),
        ]),
    ]


def variables() -> list[dict[str, Any]]:
    def query_variable(name: str, label: str, query: str, **extra: Any) -> dict[str, Any]:
        return {
            "name": name,
            "label": label,
            "type": "query",
            "datasource": DATASOURCE,
            "query": {"query": query, "refId": f"{name}-variable"},
            "definition": query,
            "refresh": 2,
            "sort": 1,
            "hide": 0,
            "current": {},
            "options": [],
            "includeAll": False,
            "multi": False,
            **extra,
        }

    return [
        {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
         "current": {}, "hide": 0, "refresh": 1, "regex": "", "options": []},
        query_variable("job", "Job", "label_values(compliance_policy_info, job)"),
        query_variable("instance", "Worker", 'label_values(compliance_policy_info{job="$job"}, instance)',
                       includeAll=True, multi=True, allValue=".*"),
    ]


def build() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    y = 0

    def place(panel: dict[str, Any], x: int, w: int, h: int) -> None:
        panel["id"] = len(panels) + 1
        panel["gridPos"] = {"h": h, "w": w, "x": x, "y": y}
        panels.append(panel)

    place(row("Overview"), 0, 24, 1)
    y += 1
    x = 0
    for panel, width in overview():
        place(panel, x, width, 4)
        x += width
    y += 4
    for title, section in sections():
        place(row(title), 0, 24, 1)
        y += 1
        for index, panel in enumerate(section):
            place(panel, 12 * (index % 2), 12, 8)
            if index % 2:
                y += 8
        if len(section) % 2:
            y += 8

    return {
        "title": "Compliance worker",
        "uid": "compliance-worker",
        "description": "Throughput, decisions, dead letters, latency, consumer lag, rebalances, policy and process "
                       "health of the compliance worker (docs/operations.md describes every panel).",
        "tags": ["compliance-worker", "kafka", "faust"],
        "editable": True,
        "graphTooltip": 1,
        "timezone": "browser",
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "links": [],
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
            "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard",
        }]},
        "templating": {"list": variables()},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed JSON differs")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUTPUT.exists() or OUTPUT.read_text(encoding="utf-8") != text:
            print(f"{OUTPUT} is out of date: run python {Path(__file__).as_posix()}", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT} ({len(build()['panels'])} panels)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
