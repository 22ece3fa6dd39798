"""Faust's Prometheus monitor with its per-message work moved to scrape time."""

from __future__ import annotations

from collections.abc import Sequence
from time import monotonic
from typing import Any

from faust.sensors import prometheus as faust_prometheus
from faust.sensors.monitor import Monitor
from faust.types import TP, EventT, Message, StreamT

from worker.kafka.batches import BatchState


class PrometheusMonitor(faust_prometheus.PrometheusMonitor):
    """Faust's Prometheus monitor with the same metrics, brought up to date when scraped.

    Faust's hooks update several Prometheus metrics per message and per event,
    each a lock, and most a ``labels(...)`` lookup (a regex, for the stream's
    label). The plain counters that Faust's base ``Monitor`` keeps anyway hold
    the same facts, so the per-message hooks here only keep those, and
    ``sync()`` (called by the /metrics page before rendering) copies them into
    the Prometheus metrics. What a scrape shows is unchanged.
    """

    def __init__(self, metrics: faust_prometheus.FaustMetrics, **kwargs: Any) -> None:
        super().__init__(metrics, **kwargs)
        self._synced_received = 0
        self._synced_events = 0
        self._synced_by_topic: dict[str, int] = {}
        self._synced_by_stream: dict[str, int] = {}
        self._stream_children: dict[str, Any] = {}

    def on_message_in(self, tp: TP, offset: int, message: Message) -> None:
        Monitor.on_message_in(self, tp, offset, message)

    def on_stream_event_in(self, tp: TP, offset: int, stream: StreamT, event: EventT) -> dict[str, Any] | None:
        return Monitor.on_stream_event_in(self, tp, offset, stream, event)

    def on_stream_event_out(
        self, tp: TP, offset: int, stream: StreamT, event: EventT, state: dict[str, Any] | None = None
    ) -> None:
        Monitor.on_stream_event_out(self, tp, offset, stream, event, state)
        if state is not None:
            self._metrics.events_runtime_latency.observe(self.secs_to_ms(state["time_total"]))

    def on_message_out(self, tp: TP, offset: int, message: Message) -> None:
        Monitor.on_message_out(self, tp, offset, message)

    # --- a whole batch at once (worker/kafka/batches.py, when this monitor is the app's only sensor) ---------------

    def on_batch_in(self, stream: StreamT, tracked: Sequence[Message], events: Sequence[EventT]) -> BatchState:
        """``on_message_in`` for each of ``tracked`` and ``on_stream_event_in`` for each of ``events``: the same
        counters, one clock reading. The state returned is the batch's (``on_batch_out``)."""
        now = self.time()
        if tracked:
            self.messages_received_total += len(tracked)
            self.messages_active += len(tracked)
            by_topic, read_offsets = self.messages_received_by_topic, self.tp_read_offsets
            for message in tracked:
                by_topic[message.tp.topic] += 1
                read_offsets[message.tp] = message.offset
                message.time_in = now  # as Faust's on_message_in: the decide agent's latency metric reads it
        count = len(events)
        self.events_total += count
        inbound = self.stream_inbound_time
        arrived = monotonic()
        for event in events:
            inbound[event.message.tp] = arrived
        stream_key = self.stream_lookup.get(stream)
        if stream_key is None:
            stream_key = self.stream_lookup[stream] = str(stream)
        self.events_by_stream[stream_key] += count
        task_key = self.task_lookup.get(stream.task_owner)
        if task_key is None:
            task_key = self.task_lookup[stream.task_owner] = str(stream.task_owner)
        self.events_by_task[task_key] += count
        self.events_active += count
        return BatchState(time_in=now, time_out=None, time_total=None)

    def on_batch_out(self, events: int, messages_out: int, state: dict[str, Any]) -> None:
        """``on_stream_event_out`` for ``events`` events and ``on_message_out`` for ``messages_out`` of their messages.

        The batch's processing time is one sample of ``events_runtime`` and one observation of
        ``faust_events_runtime_ms``: every event of a batch is processed, and acked, together.
        """
        time_out = self.time()
        time_total = time_out - state["time_in"]
        state.update(time_out=time_out, time_total=time_total)
        self.events_active -= events
        self.messages_active -= messages_out
        self.events_runtime.append(time_total)
        self._metrics.events_runtime_latency.observe(self.secs_to_ms(time_total))

    def on_batch_dropped(self, events: int, messages: int) -> None:
        """Events of a batch ``on_batch_in`` reported, dropped unprocessed (``batches.drop_stale``): no longer active."""
        self.events_active -= events
        self.messages_active -= messages

    def track_tp_end_offset(self, tp: TP, offset: int) -> None:
        Monitor.track_tp_end_offset(self, tp, offset)

    def sync(self) -> None:
        """Copy the counts kept since the last scrape into the Prometheus metrics."""
        metrics = self._metrics
        metrics.messages_received.inc(self.messages_received_total - self._synced_received)
        self._synced_received = self.messages_received_total
        metrics.active_messages.set(self.messages_active)
        for topic, count in list(self.messages_received_by_topic.items()):
            metrics.messages_received_per_topics.labels(topic=topic).inc(count - self._synced_by_topic.get(topic, 0))
            self._synced_by_topic[topic] = count
        for tp, offset in list(self.tp_read_offsets.items()):
            metrics.messages_received_per_topics_partition.labels(topic=tp.topic, partition=tp.partition).set(offset)
        metrics.total_events.inc(self.events_total - self._synced_events)
        self._synced_events = self.events_total
        metrics.total_active_events.set(self.events_active)
        for stream, key in list(self.stream_lookup.items()):
            count = self.events_by_stream.get(key, 0)
            child = self._stream_children.get(key)
            if child is None:
                child = self._stream_children[key] = metrics.total_events_per_stream.labels(
                    stream=f"stream.{self._stream_label(stream)}.events"
                )
            child.inc(count - self._synced_by_stream.get(key, 0))
            self._synced_by_stream[key] = count
        for tp, offset in list(self.tp_end_offsets.items()):
            metrics.topic_partition_end_offset.labels(topic=tp.topic, partition=tp.partition).set(offset)
