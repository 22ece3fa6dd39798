"""The `state` bench: one worker's per-product state at --state-products distinct products, RocksDB next to memory."""

from __future__ import annotations

import asyncio
import glob
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from bench import procs
from bench.kafka_io import TOPIC_CONFIG, HarnessError, Topics
from bench.procs import Proc

if TYPE_CHECKING:
    from bench.harness import BrokerBenches

# Targets of issue 15, reported as true/false in the summary (never asserted).
STATE_TARGETS = {
    "state_peak_rss<=1GiB": 1024.0,  # MiB, the most any RocksDB worker process of the bench used
    "state_restart_ready<=30s": 30.0,  # seconds from starting again on its STATE_DIR to ready
    "state_rocksdb>=0.85x_memory": 0.85,  # events/s, same input, same run
}
STATE_TABLE_CHANGELOG = "{app_id}-decision-state-changelog"
# What the re-screening flips: food items leave the food & beverage cluster, so their blocks become allows.
FOOD_RULE = '{id: fb-2, path: "Food, Beverages & Tobacco > Food Items", cluster: food_beverage}'
FOOD_UNRESTRICTED = '{id: fb-2, path: "Food, Beverages & Tobacco > Food Items", cluster: null}'


def say(message: str) -> None:
    sys.stderr.write(f"bench: {message}\n")
    sys.stderr.flush()


def mib(kib: int) -> float:
    return round(kib / 1024, 1)


def distinct_products(events: Iterable[tuple[bytes, bytes]]) -> Iterator[tuple[bytes, bytes]]:
    """The sample events with every valid one made a product of its own (version 1): generate() draws product numbers
    at random, so N events cover only about 63% of N products. Malformed ones stay as they are (dead letters)."""
    for index, (key, value) in enumerate(events):
        try:
            event = orjson.loads(value)
            product = event["product"]
            product["id"], product["version"] = f"P-{index:08d}", 1
        except (orjson.JSONDecodeError, KeyError, TypeError):
            yield key, value
            continue
        yield product["id"].encode(), orjson.dumps(event)


def du(path: Path) -> int:
    """Bytes the files under ``path`` take on disk (allocated blocks, as du counts them)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


def metrics_text(proc: Proc) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{proc.web_port}/metrics", timeout=5) as response:
            return response.read().decode()
    except (urllib.error.URLError, OSError):
        return None


def sample(text: str, name: str, **labels: str) -> float | None:
    """One sample of the metrics text, None when the series is not there."""
    wanted = sorted(f'{key}="{value}"' for key, value in labels.items())
    for found, value in re.findall(rf"^{re.escape(name)}(?:\{{(.*)\}})? (\S+)$", text, re.MULTILINE):
        if sorted(part for part in found.split(",") if part) == wanted:
            return float(value)
    return None


def held(text: str) -> dict[tuple[int, str], float]:
    """(partition, role) -> products, from compliance_state_products."""
    found = {}
    for labels, value in re.findall(r"^compliance_state_products\{(.*)\} (\S+)$", text, re.MULTILINE):
        parts = dict(part.split("=", 1) for part in labels.split(","))
        found[(int(parts["partition"].strip('"')), parts["role"].strip('"'))] = float(value)
    return found


def restored(proc: Proc, role: str = "active") -> float:
    text = metrics_text(proc)
    value = None if text is None else sample(text, "compliance_state_restored_records_total", role=role)
    if value is None:
        raise HarnessError(f"{proc.name}: no compliance_state_restored_records_total{{role={role!r}}} on /metrics")
    return value


class StateBench:
    """The phases of the state bench, on one pre-loaded input of distinct products."""

    def __init__(self, benches: BrokerBenches) -> None:
        self.benches = benches
        self.args = benches.args
        self.kafka = benches.kafka
        self.bootstrap = benches.bootstrap
        self.log_dir = benches.log_dir
        self.prefix = f"bench-{benches.run_id}-state"
        self.policy_topic = f"{self.prefix}.policies"
        self.rocksdb_peaks: dict[str, float] = {}  # phase -> peak RSS (MiB) of its RocksDB worker(s)

    def timeout(self) -> float:
        return 300 + self.args.state_products / 2000  # recovery and re-screening scale with the products

    def worker(self, topics: Topics, app_id: str, name: str, **settings: str) -> Proc:
        # The state directory is the log's path with .state: a worker started again under the same name finds its own.
        return procs.worker(self.bootstrap, topics, app_id, self.log_dir / f"{name}.log",
                            POLICY_TOPIC=self.policy_topic, **settings)

    async def ready(self, proc: Proc, partitions: int | None = None, what: str = "ready") -> dict[str, Any]:
        """Until /readyz is 200 with no rebalance or recovery under way (a worker past its first recovery is ready
        during a later one: the body's rebalancing and recovering say so) and every assigned partition is held as
        active state (and ``partitions`` of them, when given); the /readyz body."""
        deadline = time.monotonic() + self.timeout()
        body: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            proc.check()
            proc.sample()
            body = proc.readyz()
            if body is not None and body.get("ready") and not body.get("rebalancing") and not body.get("recovering"):
                assigned = set(body.get("assigned_partitions", []))
                text = metrics_text(proc)
                active = {p for p, role in held(text or "") if role == "active"}
                if assigned and assigned <= active and (partitions is None or len(assigned) == partitions):
                    return body
            await asyncio.sleep(0.1)
        raise HarnessError(f"{proc.name}: not {what} after {self.timeout():.0f}s (last /readyz: {body}); "
                           f"log:\n{proc.tail()}")

    def note_peak(self, phase: str, *started: Proc) -> None:
        for proc in started:
            proc.sample()
        self.rocksdb_peaks[phase] = max(mib(p.peak_rss_kb) for p in started)

    async def run(self) -> dict[str, Any]:
        from bench.compat import generate
        from bench.harness import MALFORMED_RATIO

        args = self.args
        topics = Topics.fresh(self.benches.run_id, "state", args.partitions, args.partitions)
        await self.kafka.create(topics)
        say(f"state: generating and writing {args.state_products:,} events of distinct products")
        count, preload_s = await self.kafka.preload(topics.input, distinct_products(
            generate(args.state_products, seed=args.seed + 2, malformed_ratio=MALFORMED_RATIO,
                     products=args.state_products)
        ))
        say(f"state: {count:,} events written in {preload_s:.1f}s")
        load = os.getloadavg()[0]
        app_id = f"{self.prefix}-rocksdb"
        rocksdb = await self.throughput(topics, app_id, "state-rocksdb", "rocksdb")
        memory_topics = Topics(topics.input, f"{self.prefix}-memory.decisions", f"{self.prefix}-memory.dead-letter",
                               topics.input_partitions, topics.output_partitions)
        await self.create_outputs(memory_topics)
        memory = await self.throughput(memory_topics, f"{self.prefix}-memory", "state-memory", "memory")
        products = rocksdb.pop("products")
        memory.pop("products")
        state_dir = self.log_dir / "state-rocksdb.state"
        local_bytes = du(state_dir)
        changelog = STATE_TABLE_CHANGELOG.format(app_id=app_id)
        changelog_bytes = self.changelog_bytes(changelog)

        local = await self.restart(topics, app_id, wipe=False)
        wiped, proc = await self.restart(topics, app_id, wipe=True, keep=True)
        try:
            rescreen = await self.rescreen(proc)
            self.note_peak("rescreen", proc)
        finally:
            proc.stop()
        rebalance = {
            "with_standby": await self.rebalance(topics, app_id, standby_replicas=1),
            "without_standby": await self.rebalance(topics, app_id, standby_replicas=0),
        }
        peak = max(self.rocksdb_peaks.values())
        line = {
            "bench": "state",
            "events": count,
            "products": products,
            "input_partitions": topics.input_partitions,
            "peak_rss_mb": peak,
            "peak_rss_mb_by_phase": self.rocksdb_peaks,
            "rocksdb": rocksdb,
            "memory": memory,
            "rocksdb/memory": round(rocksdb["events_per_s"] / memory["events_per_s"], 3) if memory["events_per_s"] else None,
            "state_dir_bytes": local_bytes,
            "state_dir_bytes_per_product": round(local_bytes / products, 1) if products else None,
            "changelog_bytes": changelog_bytes,
            "changelog_bytes_per_product": round(changelog_bytes / products, 1) if products and changelog_bytes else None,
            "restart_local": local,
            "restart_local_ready_s": local["ready_s"],
            "restart_wiped": wiped,
            "rebalance": rebalance,
            "rescreen": rescreen,
            "loadavg_1m_before": round(load, 2),
            "loadavg_1m_after": round(os.getloadavg()[0], 2),
        }
        say(f"state: {products:,} products; rocksdb {rocksdb['events_per_s']:,.0f} vs memory "
            f"{memory['events_per_s']:,.0f} events/s; peak RSS {peak} MiB; restart {local['ready_s']} s (local), "
            f"{wiped['ready_s']} s (wiped); re-screening {rescreen.get('products_per_s')} products/s")
        return line

    async def create_outputs(self, topics: Topics) -> None:
        from aiokafka.admin import NewTopic

        await self.kafka.admin.create_topics([
            NewTopic(name, topics.output_partitions, 1, topic_configs=TOPIC_CONFIG)
            for name in (topics.decisions, topics.dead_letter)
        ])

    def changelog_bytes(self, topic: str) -> int | None:
        data = self.benches.broker_data
        if data is None:
            return None  # --bootstrap: not our broker's disk
        return sum(p.stat().st_size for p in data.glob(f"{glob.escape(topic)}-*/*.log"))

    async def throughput(self, topics: Topics, app_id: str, name: str, store: str) -> dict[str, Any]:
        """The worker over the whole pre-loaded input with STATE_STORE=``store``: events/s and its RSS."""
        from bench.harness import rate, read_outputs

        ends = await self.kafka.observer.end_offsets(topics.input_tps())
        count = sum(ends.values())
        proc = self.worker(topics, app_id, name, STATE_STORE=store)
        say(f"state: {store} store over {count:,} events")
        proc.start()
        try:
            await self.benches._run_to_completion(name, topics, count, [proc])  # noqa: SLF001 - one bench's helper
            proc.sample()
            cpu_s = proc.cpu_s
        finally:
            exit_code = proc.stop()
        outputs = await read_outputs(self.kafka, topics)
        first, last = outputs.first_last()
        if store == "rocksdb":
            self.note_peak("rocksdb_throughput", proc)
        line = {
            "events_per_s": rate(count, (last - first) / 1000),
            "seconds": round((last - first) / 1000, 3),
            "cpu_s": round(cpu_s, 2),
            "peak_rss_mb": mib(proc.peak_rss_kb),
            "decisions": outputs.decisions,
            "dead_letters": outputs.dead_letters,
            "missing": outputs.missing,
            "duplicates": outputs.duplicates,
            "exit_code": exit_code,
            "products": outputs.decisions,  # each decision is a product of its own: one state each
        }
        say(f"state: {store}: {line['events_per_s']:,.0f} events/s, peak RSS {line['peak_rss_mb']} MiB")
        return line

    async def restart(self, topics: Topics, app_id: str, *, wipe: bool, keep: bool = False) -> Any:
        """The RocksDB worker started again on its STATE_DIR (or with it wiped): seconds until ready, records restored.
        The input is all decided: only the state's recovery stands between start and ready."""
        name = "state-rocksdb"
        state_dir = self.log_dir / f"{name}.state"
        if wipe:
            shutil.rmtree(state_dir)
        proc = self.worker(topics, app_id, name)
        proc.start()
        started = time.monotonic()
        try:
            body = await self.ready(proc, what="ready after a restart")
            ready_s = round(time.monotonic() - started, 2)
            line = {
                "ready_s": ready_s,
                "restored_records": restored(proc),
                "assigned_partitions": body.get("assigned_partitions"),
            }
            self.note_peak("restart_wiped" if wipe else "restart_local", proc)
        except BaseException:
            proc.stop()
            raise
        say(f"state: restart {'with the state directory wiped' if wipe else 'on local state'}: ready in "
            f"{ready_s} s, {line['restored_records']:,.0f} records restored")
        if keep:
            return line, proc
        stopped = time.monotonic()
        line["exit_code"] = proc.stop()
        line["stop_s"] = round(time.monotonic() - stopped, 2)
        return line

    async def rescreen(self, proc: Proc) -> dict[str, Any]:
        """A new policy version (food items unrestricted) published to the worker's POLICY_TOPIC: seconds from the
        publish to its `rescreen_finished` log line, and products re-screened per second."""
        from worker.core.policy import BUNDLED_POLICY

        text = resources.files("worker.policies").joinpath(BUNDLED_POLICY).read_text(encoding="utf-8")
        version = f"2099.1.0+{self.prefix}"
        if text.count(FOOD_RULE) != 1 or text.count('version: "') != 1:
            raise HarnessError(f"state: the bundled policy changed: {FOOD_RULE!r} or its version line not found once")
        text = re.sub(r'version: "[^"]*"', f'version: "{version}"', text).replace(FOOD_RULE, FOOD_UNRESTRICTED)
        path = self.log_dir / "state-policy.yaml"
        path.write_text(text, encoding="utf-8")
        log_from = proc.log_path.stat().st_size
        published = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-P", "-m", "worker", "policy", "publish", str(path), "--bootstrap", self.bootstrap,
             "--topic", self.policy_topic],
            env=procs.clean_env(), capture_output=True, text=True, timeout=120,
        )
        if result.returncode != 0:
            raise HarnessError(f"state: policy publish failed ({result.returncode}): {result.stderr}")
        deadline = published + self.timeout()
        while time.monotonic() < deadline:
            proc.check()
            proc.sample()
            finished = self._log_event(proc.log_path, log_from, "rescreen_finished", version)
            if finished is not None:
                wall_s = round(time.monotonic() - published, 2)
                products = finished["changed"] + finished["unchanged"]
                line = {
                    "policy_version": version,
                    "publish_to_finished_s": wall_s,
                    "seconds": finished["seconds"],
                    "products": products,
                    "changed": finished["changed"],
                    "unchanged": finished["unchanged"],
                    "products_per_s": round(products / max(finished["seconds"], 0.001), 1),
                }
                say(f"state: re-screened {products:,} products in {finished['seconds']} s ({wall_s} s after the "
                    f"publish), {finished['changed']:,} changed")
                return line
            await asyncio.sleep(0.2)
        raise HarnessError(f"state: no rescreen_finished for {version} after {self.timeout():.0f}s; log:\n{proc.tail()}")

    @staticmethod
    def _log_event(path: Path, start: int, event: str, version: str) -> dict[str, Any] | None:
        with path.open("rb") as log:
            log.seek(start)
            for line in log:
                if event.encode() not in line:
                    continue
                try:
                    entry = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(entry, dict) and entry.get("event") == event and entry.get("policy_version") == version:
                    return entry
        return None

    async def rebalance(self, topics: Topics, app_id: str, *, standby_replicas: int) -> dict[str, Any]:
        """Two workers of the state's group on fresh state directories; then one stops: seconds until the other holds
        every partition, is ready, and what it restored to get there (active records).

        The one that stays joins second, so the partitions it takes over were never its own: only a standby copy
        (TABLE_STANDBY_REPLICAS=1) spares it reading them from the changelog.
        """
        if self.args.partitions < 2:
            raise HarnessError("state: the rebalance phases need --partitions 2 or more")
        name = f"state-rebalance-standby{standby_replicas}"
        settings = {"TABLE_STANDBY_REPLICAS": str(standby_replicas)}
        for suffix in ("leaving", "staying"):
            shutil.rmtree(self.log_dir / f"{name}-{suffix}.state", ignore_errors=True)
        leaving = self.worker(topics, app_id, f"{name}-leaving", **settings).start()
        staying: Proc | None = None
        try:
            started = time.monotonic()
            await self.ready(leaving, partitions=self.args.partitions, what="ready alone")
            alone_s = round(time.monotonic() - started, 2)
            staying = self.worker(topics, app_id, f"{name}-staying", **settings).start()
            share = self.args.partitions // 2
            deadline = time.monotonic() + self.timeout()
            while True:
                bodies = [await self.ready(p, what="ready in a group of two") for p in (leaving, staying)]
                if all(len(b.get("assigned_partitions", [])) == share for b in bodies) and (
                    not standby_replicas or self._standbys_caught_up(staying, share)
                ):
                    break
                if time.monotonic() > deadline:
                    raise HarnessError(f"state: {name}: the group did not settle to {share} partitions each with "
                                       f"standbys caught up: {bodies}")
                await asyncio.sleep(0.5)
            before = restored(staying)
            stopping = time.monotonic()
            leaving_exit = leaving.stop()
            stop_s = round(time.monotonic() - stopping, 2)
            await self.ready(staying, partitions=self.args.partitions, what="ready with every partition")
            ready_s = round(time.monotonic() - stopping, 2)
            taken_over = restored(staying) - before
            self.note_peak(name, leaving, staying)
            line = {
                "standby_replicas": standby_replicas,
                "first_worker_alone_ready_s": alone_s,
                "stop_to_ready_s": ready_s,
                "leaving_stop_s": stop_s,
                "restored_records_on_takeover": taken_over,
                "peak_rss_mb": [mib(leaving.peak_rss_kb), mib(staying.peak_rss_kb)],
                "exit_code_leaving": leaving_exit,
            }
        finally:
            leaving.stop()
            staying_exit = staying.stop() if staying is not None else None
        line["exit_code_staying"] = staying_exit
        say(f"state: {name}: the other worker ready with every partition {ready_s} s after the stop, "
            f"{taken_over:,.0f} records restored for it")
        return line

    @staticmethod
    def _standbys_caught_up(proc: Proc, expected: int) -> bool:
        text = metrics_text(proc) or ""
        standbys = [p for p, role in held(text) if role == "standby"]
        if len(standbys) < expected:
            return False
        lags = [sample(text, "compliance_state_standby_lag_records", partition=str(p)) for p in standbys]
        return all(lag == 0 for lag in lags)
