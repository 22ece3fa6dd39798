"""`python -m bench` end to end on the test session's broker with tiny sizes: the harness works, the lines parse.

No timing assertions: the numbers of a 2,000-event run on a shared machine mean nothing; `make bench` measures.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parents[2]
EVENTS = 2000
PROCESS_BENCHES = ("raw_aiokafka", "confluent_raw", "quix_streams", "naive_faust", "worker")
THROUGHPUT_KEYS = {
    "events", "events_per_s", "outputs", "decisions", "dead_letters", "duplicates", "missing", "seconds",
    "startup_s", "wall_s", "cpu_s", "peak_rss_mb", "input_partitions", "exit_code",
}


def test_every_bench_prints_one_json_line_and_a_summary(kafka: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable, "-m", "bench", "--events", str(EVENTS),
            "--only", "core,raw_aiokafka,confluent_raw,quix_streams,naive_faust,worker,latency,latency_hot,override,scale",
            "--core-repeats", "1", "--latency-rate", "1000", "--latency-seconds", "1", "--latency-warmup", "0.5",
            "--hot-products", "50", "--override-count", "5", "--scale-rounds", "2",
            "--bootstrap", kafka, "--log-dir", str(tmp_path / "bench"),
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr[-4000:]}"
    lines = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert [line["bench"] for line in lines] == [
        "core", "raw_aiokafka", "confluent_raw", "quix_streams", "naive_faust", "worker", "latency", "latency_hot",
        "override", "scale", "summary",
    ]
    by_bench = {line["bench"]: line for line in lines}
    assert not any("error" in line for line in lines), result.stderr[-4000:]

    core = by_bench["core"]
    assert core["events"] == EVENTS and core["events_per_s"] > 0 and core["orjson_roundtrip_events_per_s"] > 0
    assert core["core/orjson_roundtrip"] > 0
    assert sum(core["outcomes"].values()) == EVENTS and core["outcomes"]["dead_letter"] > 0

    for name in PROCESS_BENCHES:
        line = by_bench[name]
        assert THROUGHPUT_KEYS <= set(line), name
        # Every input event came out exactly once, as a decision or a dead letter.
        assert (line["events"], line["outputs"], line["missing"], line["duplicates"]) == (EVENTS, EVENTS, 0, 0), name
        assert line["decisions"] + line["dead_letters"] == EVENTS and line["dead_letters"] > 0, name
        assert line["events_per_s"] > 0 and line["peak_rss_mb"] > 0, name

    for name in ("latency", "latency_hot"):
        latency = by_bench[name]
        assert (latency["events"], latency["missing"], latency["duplicates"]) == (1000, 0, 0), name
        # The warm-up's events are decided too (missing counts them) but measured apart.
        assert (latency["warmup_s"], latency["warmup_events"]) == (0.5, 500), name
        assert 0 <= latency["warmup_p99_ms"] <= latency["warmup_max_ms"], name
        assert 0 <= latency["p50_ms"] <= latency["p99_ms"] <= latency["max_ms"], name
        assert latency["p99_after_first_second_ms"] is None or latency["p99_after_first_second_ms"] <= latency["max_ms"]
    assert by_bench["latency_hot"]["products"] == 50
    override = by_bench["override"]
    assert (override["overrides"], override["decided"], override["missing"]) == (5, 5, 0), override
    assert 0 <= override["p50_ms"] <= override["p99_ms"] <= override["max_ms"]

    scale = by_bench["scale"]
    assert scale["input_partitions"] == 2
    assert scale["one_worker"]["workers"] == 1 and scale["two_workers"]["workers"] == 2
    assert scale["two_workers"]["missing"] == 0 and scale["scale_ratio"] > 0
    assert len(scale["scale_ratios"]) == 2 and scale["scale_ratio"] == min(scale["scale_ratios"]), "the lower middle"
    assert scale["scale_ratio"] == round(scale["events_per_s"] / scale["one_worker_events_per_s"], 3), "of one round"
    for phase in ("one_worker", "two_workers"):
        assert len(scale[phase]["cpu_s"]) == scale[phase]["workers"], phase
        assert isinstance(scale[phase]["cpu_us_per_event"], float) and scale[phase]["cpu_us_per_event"] >= 0, phase

    summary = by_bench["summary"]
    assert summary["cores"] >= 1 and summary["worker_peak_rss_mb"] > 0 and summary["errors"] == []
    for name in ("raw_aiokafka", "confluent_raw", "quix_streams", "naive_faust"):
        assert summary[f"worker/{name}"] > 0, name
    assert summary["peak_rss_mb"] == {name: by_bench[name]["peak_rss_mb"] for name in PROCESS_BENCHES}
    assert set(summary["targets"]) == {
        "worker>=5x_naive_faust", "worker>=0.5x_raw_aiokafka", "worker>=1.0x_quix_streams", "worker>=1.3x_quix_streams",
        "worker_peak_rss<quix_streams_peak_rss", "latency_p99<50ms", "scale>=1.6x", "rss_flat_within_10%",
        "state_peak_rss<=1GiB", "state_restart_ready<=30s", "state_rocksdb>=0.85x_memory",
    }
    not_run = {"rss_flat_within_10%", "state_peak_rss<=1GiB", "state_restart_ready<=30s", "state_rocksdb>=0.85x_memory"}
    assert all(summary["targets"][name] is None for name in not_run)  # rss and state were not asked for
    assert all(isinstance(summary["targets"][name], bool) for name in summary["targets"] if name not in not_run)
    assert (tmp_path / "bench" / "results.jsonl").read_text().splitlines() == result.stdout.splitlines()


def test_the_exactly_once_bench_runs_the_worker_under_transactions(kafka: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--events", str(EVENTS), "--only", "exactly_once", "--bootstrap", kafka,
         "--log-dir", str(tmp_path / "bench")],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr[-4000:]}"
    lines = {line["bench"]: line for line in map(orjson.loads, result.stdout.splitlines())}
    assert list(lines) == ["exactly_once", "summary"]
    line = lines["exactly_once"]
    assert THROUGHPUT_KEYS <= set(line) and line["processing_guarantee"] == "exactly_once"
    # Every input event came out exactly once, committed (the bench reads read_committed).
    assert (line["events"], line["outputs"], line["missing"], line["duplicates"]) == (EVENTS, EVENTS, 0, 0)
    assert line["exit_code"] == 0 and line["events_per_s"] > 0
    starting = orjson.loads((tmp_path / "bench" / "exactly_once.log").read_text().splitlines()[0])
    assert starting["event"] == "starting" and starting["settings"]["processing_guarantee"] == "exactly_once"


def test_the_state_bench_on_a_few_thousand_products(kafka: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable, "-m", "bench", "--only", "state", "--state-products", str(EVENTS), "--events", "100",
            "--bootstrap", kafka, "--log-dir", str(tmp_path / "bench"),
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr[-4000:]}"
    state, summary = (orjson.loads(line) for line in result.stdout.splitlines())
    assert (state["bench"], summary["bench"], summary["errors"]) == ("state", "summary", []), result.stderr[-4000:]
    assert state["events"] == EVENTS and 0.95 * EVENTS < state["products"] < EVENTS  # ~1% malformed: dead letters
    for store in ("rocksdb", "memory"):
        line = state[store]
        assert (line["decisions"], line["dead_letters"], line["missing"], line["duplicates"], line["exit_code"]) == (
            state["products"], EVENTS - state["products"], 0, 0, 0), store
        assert line["events_per_s"] > 0 and line["peak_rss_mb"] > 0, store
    assert state["rocksdb/memory"] == round(state["rocksdb"]["events_per_s"] / state["memory"]["events_per_s"], 3)
    assert state["state_dir_bytes_per_product"] > 0 and state["changelog_bytes"] is None  # not the bench's broker
    # On its own directory it reads nothing again; wiped, every product's one changelog record.
    assert (state["restart_local"]["restored_records"], state["restart_wiped"]["restored_records"]) == (
        0, state["products"])
    assert state["restart_local_ready_s"] == state["restart_local"]["ready_s"] > 0
    rescreen = state["rescreen"]
    assert rescreen["products"] == state["products"] and 0 < rescreen["changed"] < state["products"]
    assert rescreen["products_per_s"] > 0 and rescreen["publish_to_finished_s"] >= rescreen["seconds"]
    with_standby, without = state["rebalance"]["with_standby"], state["rebalance"]["without_standby"]
    assert (with_standby["standby_replicas"], without["standby_replicas"]) == (1, 0)
    assert with_standby["restored_records_on_takeover"] < without["restored_records_on_takeover"]
    assert without["restored_records_on_takeover"] >= state["products"] / 4  # two partitions' changelog, never held
    assert state["peak_rss_mb"] == max(state["peak_rss_mb_by_phase"].values()) > 0
    assert summary["state_rocksdb/memory"] == state["rocksdb/memory"]
    for target in ("state_peak_rss<=1GiB", "state_restart_ready<=30s", "state_rocksdb>=0.85x_memory"):
        assert isinstance(summary["targets"][target], bool), target
    assert summary["targets"]["latency_p99<50ms"] is None  # latency was not asked for


def test_the_rss_bench_reads_the_state_cache_beside_the_rss(kafka: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable, "-m", "bench", "--only", "rss", "--rss-events", str(3 * EVENTS), "--events", str(EVENTS),
            "--bootstrap", kafka, "--log-dir", str(tmp_path / "bench"),
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr[-4000:]}"
    rss, summary = (orjson.loads(line) for line in result.stdout.splitlines())
    assert (rss["bench"], summary["bench"], summary["errors"]) == ("rss", "summary", []), result.stderr[-4000:]
    assert (rss["events"], rss["mark_events"], rss["missing"], rss["duplicates"], rss["exit_code"]) == (
        3 * EVENTS, EVENTS, 0, 0, 0)
    assert 0 < rss["peak_rss_mb_at_mark"] <= rss["peak_rss_mb"]
    # peak_growth is of the unrounded RSS; the MiB figures are rounded to 0.1, so their ratio may differ by ~0.001
    assert rss["peak_growth"] == pytest.approx(rss["peak_rss_mb"] / rss["peak_rss_mb_at_mark"], abs=0.005)
    # The RocksDB cache's gauge was read (an absent gauge is None, not 0) at the mark, the end and every tenth seen.
    assert rss["state_cache_mb_at_mark"] is not None and rss["state_cache_mb_at_end"] is not None, rss
    assert 0 < rss["state_cache_mb_at_mark"] < rss["rss_mb_at_mark"]
    assert 0 < rss["state_cache_mb_at_end"] < rss["rss_mb_at_end"]
    assert rss["rss_mb_by_tenth"][-1] is not None
    for rss_mb, cache_mb in zip(rss["rss_mb_by_tenth"], rss["state_cache_mb_by_tenth"]):
        assert (rss_mb is None) == (cache_mb is None) and (cache_mb is None or 0 < cache_mb < rss_mb)
    assert isinstance(summary["targets"]["rss_flat_within_10%"], bool)
