"""Prometheus metrics of a farm, served by the farm process on a loopback port.

``npufarm up --metrics-port 9464`` (or ``metrics_port`` in the caller) exposes
``http://127.0.0.1:9464/metrics``. The broker feeds it what it already sees: completion rows
(tasks by card and code, task run time and queueing histograms), card heartbeats (HBM used, queue
depth, running tasks, streams, health), fault events, the malformed messages it dropped and the
task items cards refused as malformed. Every family is declared in one table, :data:`_FAMILIES`.
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import start_http_server

__all__ = ["FarmMetrics"]

logger = logging.getLogger(__name__)

_TIME_BUCKETS_S = (0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0)


def _number(value: Any) -> float:
    """A card-reported figure as a gauge value (0 for anything that is not a number)."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _numbers(*values: Any) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


#: (attribute, family, name, help, labels); histograms use the run-time buckets
_FAMILIES: tuple[tuple[str, type, str, str, tuple[str, ...]], ...] = (
    ("tasks", Counter, "npufarm_tasks", "Tasks ended on a card, by ACL code", ("card", "code")),
    ("task_seconds", Histogram, "npufarm_task_run_seconds", "Task run time on the card", ("card",)),
    (
        "queue_seconds",
        Histogram,
        "npufarm_task_queue_seconds",
        "Time a task waited on its card before it started",
        ("card",),
    ),
    ("queued", Gauge, "npufarm_card_queued_tasks", "Tasks queued on a card's streams", ("card",)),
    (
        "stream_queued",
        Gauge,
        "npufarm_stream_queued_tasks",
        "Tasks queued or running on a stream (the 32 busiest streams of each card)",
        ("card", "stream"),
    ),
    ("running", Gauge, "npufarm_card_running_tasks", "Tasks running on a card", ("card",)),
    ("streams", Gauge, "npufarm_card_streams", "Streams with state on a card", ("card",)),
    ("hbm_used", Gauge, "npufarm_card_hbm_used_bytes", "HBM allocated on a card", ("card",)),
    ("hbm_total", Gauge, "npufarm_card_hbm_bytes", "HBM size of a card", ("card",)),
    ("healthy", Gauge, "npufarm_card_healthy", "1 while a card is ready, 0 when lost", ("card",)),
    ("epoch", Gauge, "npufarm_card_epoch", "Current epoch (restarts + 1) of a card", ("card",)),
    ("faults", Counter, "npufarm_faults_injected", "Injected faults that fired", ("card", "kind")),
    (
        "reclaimed_clients",
        Counter,
        "npufarm_clients_reclaimed",
        "Clients whose resources the farm reclaimed, by cause (exited, silent)",
        ("cause",),
    ),
    (
        "reclaimed",
        Gauge,
        "npufarm_card_reclaimed",
        "Resources a card reclaimed from departed clients, cumulative over its epochs",
        ("card", "what"),
    ),
    (
        "malformed_tasks",
        Counter,
        "npufarm_malformed_tasks",
        "Header-counted task items a card refused as malformed (taken out of the ledger)",
        ("card",),
    ),
    (
        "malformed_frames",
        Counter,
        "npufarm_malformed_messages",
        "Malformed messages the broker dropped, by sender",
        ("peer",),
    ),
)


class FarmMetrics:
    """The farm's metric families on a private registry, and the HTTP server exposing them."""

    def __init__(self, port: int, farm: str) -> None:
        self.registry = CollectorRegistry()
        for attribute, family, name, text, labels in _FAMILIES:
            extra = {"buckets": _TIME_BUCKETS_S} if family is Histogram else {}
            metric = family(name, text, labels, registry=self.registry, **extra)
            setattr(self, attribute, metric)
        self._stream_labels: dict[str, set[str]] = {}
        self.server, self.thread = start_http_server(port, addr="127.0.0.1", registry=self.registry)
        self.port = self.server.server_port
        logger.info("farm %s metrics at http://127.0.0.1:%d/metrics", farm, self.port)

    def tasks_ended(self, card: int, rows: list) -> None:
        label = str(card)
        for row in rows:
            if not isinstance(row, list) or len(row) < 6 or not _numbers(row[2], row[3], row[5]):
                continue
            self.tasks.labels(label, str(row[1])).inc()
            self.task_seconds.labels(label).observe(max(0.0, row[3] - row[2]))
            self.queue_seconds.labels(label).observe(max(0.0, row[2] - row[5]))

    def card_stats(
        self, card: int, stats: dict[str, Any], reclaimed: dict[str, int] | None = None
    ) -> None:
        label = str(card)
        for what, value in (reclaimed or {}).items():
            self.reclaimed.labels(label, what).set(value)
        self.queued.labels(label).set(_number(stats.get("queued")))
        self.running.labels(label).set(_number(stats.get("running")))
        self.streams.labels(label).set(_number(stats.get("streams")))
        self.hbm_used.labels(label).set(_number(stats.get("hbm_used")))
        self.hbm_total.labels(label).set(_number(stats.get("hbm_total")))
        depths = stats.get("stream_queues")
        current = {
            f"{stream & 0xFFFFFFFF:#x}": _number(depth)
            for stream, depth in (depths.items() if isinstance(depths, dict) else ())
            if isinstance(stream, int)
        }
        for stream in self._stream_labels.get(label, set()) - current.keys():
            self.stream_queued.remove(label, stream)
        for stream, depth in current.items():
            self.stream_queued.labels(label, stream).set(depth)
        self._stream_labels[label] = set(current)

    def card_state(self, card: int, healthy: bool, epoch: int) -> None:
        self.healthy.labels(str(card)).set(1 if healthy else 0)
        self.epoch.labels(str(card)).set(epoch)

    def client_reclaimed(self, cause: str) -> None:
        self.reclaimed_clients.labels(cause).inc()

    def malformed(self, peer: str) -> None:
        self.malformed_frames.labels(peer).inc()

    def tasks_refused(self, card: int, count: int) -> None:
        """Items of a card's SUBMIT it could never answer (the ledger's ``malformed``)."""
        self.malformed_tasks.labels(str(card)).inc(count)

    def fault(self, card: int, kind: str) -> None:
        self.faults.labels(str(card), kind).inc()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5.0)
