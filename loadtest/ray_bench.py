"""``npufarm bench --ray ADDRESS``: the load generator's workers as Ray actors, placed by Ray on the
nodes and cards of a cluster that runs one farm per node, merged into one report.

::

    driver: RayBenchRun (a BenchRun)              node k (ray start, NPUFARM_ADDRESS=farm k)
    ────────────────────────────────              ─────────────────────────────────────────
    connect(ADDRESS); NodeSet: an agent per node  BenchActor × M, each resources={"NPU": k}:
    actors ══ Ray: start(slots), command(Phase) ═▶ Ray sets ASCEND_RT_VISIBLE_DEVICES; acl.init
      global card g = (node, device id)             finds farm k (the raylet's environment);
      phase times shifted by the actor's offset     loadtest.workers.Worker: a thread per
    Collector ◀═ collect(): Samples, PhaseDone ══   (card, stream), the local bench's loop;
      samples → report.build_result (counts)        an HdrHistogram per (phase, card) of the
      histograms → cluster_report (percentiles)     measured completed requests, encoded
    NodeSet.fault_events() ◀── each farm's fault log, on the driver's clock, cards made global

A fault plan (``faults``) is checked (parsed, ``node=`` routed) before any actor starts and
injected into the nodes' farms as the bench starts, its ``at_s`` counted from the bench's start
(the result's time 0) on every node (:meth:`loadtest.ray_nodes.NodeSet.inject` with
``since_s``), so its fault windows line up with the plan's times.

Slots are planned over the global cards exactly as on one farm (:func:`loadtest.plan.plan`) and
dealt to the actor that holds each card. A closed-loop ``--requests`` budget is split over the
actors by their active slots (each actor counts its own share). Ray is imported only here and
in :mod:`loadtest.ray_nodes` (the ``ray`` extra).
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
import time
from typing import Any

import numpy as np

import acl
from client.visible import RT_VISIBLE_DEVICES
from core.fault_plan import FaultPlan, FaultRule
from loadtest.bench_run import BenchRun
from loadtest.cluster_report import apply_histograms, cluster_section, per_node
from loadtest.histograms import LatencyHistogram
from loadtest.messages import STOP, Bye, Phase, PhaseDone, Samples, WorkerError
from loadtest.plan import BenchConfig, plan
from loadtest.ray_nodes import NodeSet, boot_id, clock_offset_s, connect
from loadtest.schema import latency_ms
from loadtest.workers import FLUSH_S, Worker

__all__ = ["BenchActor", "RayBenchRun", "run_ray_bench", "split_budget"]

logger = logging.getLogger(__name__)

_START_LEAD_S = 0.3  # a phase starts this long after its broadcast (Ray calls take ms)
_READY_TIMEOUT_S = 60.0
_CALL_TIMEOUT_S = 30.0


class _Budget:
    """One actor's share of a closed-loop request budget: a ``multiprocessing.Value``'s surface
    for :class:`loadtest.workers.Worker`."""

    def __init__(self) -> None:
        self.value = 0
        self._lock = threading.Lock()

    def get_lock(self) -> threading.Lock:
        return self._lock


class BenchActor:
    """One bench worker inside a Ray actor (made remote by :class:`RayBenchRun`): the local
    bench's :class:`loadtest.workers.Worker` on the devices Ray gave it, fed through queues."""

    def __init__(self, index: int, model: str, sync_timeout_ms: int, log_level: int) -> None:
        logging.basicConfig(level=log_level, format="%(asctime)s %(name)s %(message)s")
        self.index, self.model, self.sync_timeout_ms = index, model, sync_timeout_ms
        self.results: queue.Queue = queue.Queue()
        self.commands: queue.Queue = queue.Queue()
        self.stop_all, self.budget = threading.Event(), _Budget()
        self.windows: dict[int, tuple[float, float]] = {}
        self.hists: dict[int, dict[int, LatencyHistogram]] = {}
        self.thread: threading.Thread | None = None
        ret = acl.init()
        if ret != 0:
            raise RuntimeError(f"bench actor {index}: acl.init returned {ret}")

    def describe(self) -> dict[str, Any]:
        import ray  # in a Ray worker: present

        context = ray.get_runtime_context()
        count, ret = acl.rt.get_device_count()
        return {
            "index": self.index,
            "node_id": context.get_node_id(),
            "accelerator_ids": list(context.get_accelerator_ids().get("NPU", [])),
            "visible_devices": os.environ.get(RT_VISIBLE_DEVICES),
            "device_count": count if ret == 0 else 0,
            "address": os.environ.get("NPUFARM_ADDRESS"),
            "pid": os.getpid(),
            "boot_id": boot_id(),
            "monotonic_s": time.monotonic(),
        }

    def start(self, slots: list[tuple[int, int]]) -> None:
        worker = Worker(
            self.index,
            slots,
            self.model,
            self.sync_timeout_ms,
            self.results,
            self.stop_all,
            self.budget,
        )
        self.thread = threading.Thread(target=self._run, args=(worker,), daemon=True)
        self.thread.start()

    def _run(self, worker: Worker) -> None:
        try:
            worker.run(self.commands)
        except Exception as exc:
            logger.exception("bench actor %d failed", self.index)
            self.results.put(WorkerError(self.index, str(exc)))
        finally:
            self.results.put(Bye(self.index))

    def command(self, command: Phase, budget: int = 0) -> None:
        self.windows[command.index] = (command.warm_end, command.end)
        self.budget.value = budget
        self.commands.put(command)

    def stop(self) -> None:
        self.stop_all.set()
        self.commands.put(STOP)

    def collect(self, timeout_s: float) -> list:
        """What the worker sent since the last call (waits up to ``timeout_s`` for the first);
        each ``PhaseDone`` carries that phase's histograms (``stats["histograms"]``)."""
        try:
            messages = [self.results.get(timeout=timeout_s)]
        except queue.Empty:
            return []
        while True:
            try:
                messages.append(self.results.get_nowait())
            except queue.Empty:
                break
        for message in messages:
            if isinstance(message, Samples):
                self._record(message.rows)
            elif isinstance(message, PhaseDone):
                hists = self.hists.pop(message.phase, {})
                message.stats["histograms"] = {c: h.encode() for c, h in hists.items()}
        return messages

    def _record(self, rows: np.ndarray) -> None:
        """Latencies of the completed requests intended in their phase's measured window."""
        for phase in np.unique(rows["phase"]).tolist():
            w0, w1 = self.windows[phase]
            t = rows["intended_s"]
            measured = rows[(rows["phase"] == phase) & (rows["code"] == 0) & (t >= w0) & (t < w1)]
            hists = self.hists.setdefault(phase, {})
            for card in np.unique(measured["card"]).tolist():
                values = latency_ms(measured[measured["card"] == card])
                hists.setdefault(card, LatencyHistogram()).record_ms(values)

    def close(self) -> None:
        if self.thread is not None:
            self.thread.join(timeout=self.sync_timeout_ms / 1000.0 + 10.0)
        acl.finalize()


def split_budget(total: int, weights: list[int]) -> list[int]:
    """``total`` split in proportion to ``weights`` (largest remainders; sums to ``total``)."""
    if not total or not sum(weights):
        return [0] * len(weights)
    exact = [total * w / sum(weights) for w in weights]
    shares = [math.floor(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: exact[i] - shares[i], reverse=True)
    for i in order[: total - sum(shares)]:
        shares[i] += 1
    return shares


class _StopAll:
    """``stop_all.set()`` of the base run (Ctrl-C): tells every actor to stop."""

    def __init__(self, run: RayBenchRun) -> None:
        self.run = run

    def set(self) -> None:
        for actor in self.run.actors:
            actor.stop.remote()


def run_ray_bench(
    config: BenchConfig, on_phase_start=None, faults: str | None = None
) -> dict[str, Any]:
    """:func:`loadtest.loadgen.run_bench` on a Ray cluster (``config.ray``); ``faults``: a fault
    plan TOML whose ``at_s`` count from the bench's start."""
    return RayBenchRun(config, on_phase_start, faults).run()


class RayBenchRun(BenchRun):
    """A :class:`loadtest.bench_run.BenchRun` whose workers are Ray actors (see the module doc)."""

    start_lead_s = _START_LEAD_S

    def __init__(self, config: BenchConfig, on_phase_start=None, faults: str | None = None) -> None:
        self.config, self.on_phase_start = config, on_phase_start
        self.interrupted_s: float | None = None
        self.setup_s = 0.0
        self.fault_rules: list[FaultRule] = FaultPlan.from_toml(faults).rules if faults else []
        self.ray = connect(config.ray or "auto")
        self.address = config.ray or "auto"
        self.nodes = NodeSet.start(self.ray)
        self.actors: list = []
        try:
            self.nodes.route(self.fault_rules)  # a node= no node answers to: refused now
            self._place_actors()
        except BaseException:
            self._release()
            self.nodes.close()
            raise
        self.slots, self.phases = plan(config, self.cards)
        self.n_workers = len(self.actors)
        owner = {g: i for i, cards in enumerate(self.local_cards) for g in cards}
        self.slot_owner = {sid: owner[card] for sid, card in self.slots}
        self.farm_start_s = time.monotonic()  # the merged fault events' reference
        self.hists: dict[int, dict[int, list[str]]] = {}

    def _place_actors(self) -> None:
        """Start the actors, learn where Ray put them, number the cards over the cluster."""
        ray, config, k = self.ray, self.config, self.config.npus_per_worker
        total = int(sum(n["Resources"].get("NPU", 0) for n in self.nodes.nodes))
        count = config.workers or total // k
        if count < 1:
            raise RuntimeError(f"{total} NPUs in the cluster: no worker of {k} NPUs fits")
        remote = ray.remote(num_cpus=0, resources={"NPU": k}, max_concurrency=4)(BenchActor)
        level = logging.getLogger().getEffectiveLevel()
        self.actors = [
            remote.remote(i, config.model, config.sync_timeout_ms, level) for i in range(count)
        ]
        before = time.monotonic()
        try:
            infos = ray.get([a.describe.remote() for a in self.actors], timeout=_READY_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            raise RuntimeError(
                f"{count} workers of {k} NPUs not placed within {_READY_TIMEOUT_S:g}s "
                f"({total} NPUs in the cluster)"
            ) from None
        after = time.monotonic()
        node_rank = {node_id: r for r, node_id in enumerate(self.nodes.ids)}
        keys = sorted(
            (node_rank[i["node_id"]], int(d)) for i in infos for d in i["accelerator_ids"]
        )
        card_of = {key: g for g, key in enumerate(keys)}
        self.workers = infos
        self.offsets = [clock_offset_s(i, before, after) for i in infos]
        self.local_cards = [
            [card_of[(node_rank[i["node_id"]], d)] for d in sorted(map(int, i["accelerator_ids"]))]
            for i in infos
        ]
        for info in self.nodes.infos:
            rank = node_rank[info["node_id"]]
            info["cards"] = {g: d for (r, d), g in card_of.items() if r == rank}
        all_cards = list(range(len(keys)))
        self.cards = list(config.cards) if config.cards is not None else all_cards
        if not self.cards or set(self.cards) - set(all_cards):
            raise ValueError(f"cards {self.cards}: the cluster's workers hold {all_cards}")

    # ---------------------------------------------------------------- the base run's hooks

    def _spawn(self) -> None:
        self.stop_all = _StopAll(self)
        calls = []
        for i, actor in enumerate(self.actors):
            local = {g: j for j, g in enumerate(self.local_cards[i])}
            mine = [(sid, local[card]) for sid, card in self.slots if self.slot_owner[sid] == i]
            calls.append(actor.start.remote(mine))
        self.ray.get(calls, timeout=_CALL_TIMEOUT_S)

    def _pump(self, timeout_s: float = FLUSH_S) -> None:
        live = [(i, a) for i, a in enumerate(self.actors) if i not in self.got.bye]
        refs = [a.collect.remote(timeout_s) for _, a in live]
        for (i, _), ref in zip(live, refs):
            try:
                batch = self.ray.get(ref, timeout=timeout_s + _CALL_TIMEOUT_S)
            except Exception as exc:  # RayActorError, GetTimeoutError: the actor is gone
                self.errors.append(f"bench actor {i}: {type(exc).__name__}: {exc}")
                self.got.bye.add(i)
                continue
            for message in batch:
                self.got.handle(self._translate(i, message))

    def _translate(self, i: int, message: Any) -> Any:
        """A message of actor ``i`` in the driver's terms: global cards, the driver's clock."""
        cards = np.asarray(self.local_cards[i] or [0])
        if isinstance(message, Samples):
            rows = message.rows.copy()
            rows["card"] = cards[rows["card"]]
            for name in ("intended_s", "start_s", "end_s"):
                rows[name] -= self.offsets[i]
            return Samples(message.index, rows)
        if isinstance(message, PhaseDone):
            stats = dict(message.stats)
            per_card = self.hists.setdefault(message.phase, {})
            for local, text in stats.pop("histograms", {}).items():
                per_card.setdefault(int(cards[int(local)]), []).append(text)
            return PhaseDone(message.index, message.phase, stats)
        return message

    def _inject_faults(self) -> None:
        """The plan's rules into the nodes' farms, ``at_s`` from ``bench_t0`` on every node."""
        if not self.fault_rules:
            return
        for item in self.nodes.inject(self.fault_rules, since_s=self.bench_t0):
            reply = item["reply"]
            if reply.get("code"):
                node = item["node_id"][:8]
                self.errors.append(f"fault rule refused by node {node}: {reply.get('error')}")
            else:
                logger.info("node %s: fault rule %s", item["node_id"][:8], reply.get("sent"))

    def _start_workers(self) -> None:
        self._inject_faults()
        self._await_ready(_READY_TIMEOUT_S)

    def _deliver(self, phase: dict[str, Any], window: tuple[float, float, float]) -> None:
        """Each actor its share of the slots and of the request budget, in its node's clock."""
        config = self.config
        shares = [
            {sid: v for sid, v in phase["slots"].items() if self.slot_owner[sid] == i}
            for i in range(self.n_workers)
        ]
        budgets = split_budget(config.requests or 0, [len(s) for s in shares])
        calls = []
        for i, actor in enumerate(self.actors):
            shifted = tuple(t + self.offsets[i] for t in window)
            command = Phase(phase["index"], *shifted, config.requests is not None, shares[i])
            calls.append(actor.command.remote(command, budgets[i]))
        self.ray.get(calls, timeout=_CALL_TIMEOUT_S)

    def _send_stop(self) -> None:
        for actor in self.actors:
            actor.stop.remote()

    def _workers_gone(self) -> bool:
        return False  # (an actor's end is known from its bye or the deadline)

    def _end_workers(self, deadline: float) -> None:
        self._release()

    def run(self) -> dict[str, Any]:
        try:
            return super().run()
        finally:
            self._release()
            self.nodes.close()

    def _release(self) -> None:
        """Close and kill the actors (their devices are reset by then)."""
        if self.actors:
            try:
                self.ray.get([a.close.remote() for a in self.actors], timeout=_CALL_TIMEOUT_S)
            except Exception as exc:  # already dead, or hung: killed below anyway
                logger.warning("bench actors did not close cleanly: %s", exc)
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []

    # ---------------------------------------------------------------- the result

    def _fault_events(self) -> list[dict[str, Any]]:
        """Every node's fault events since the bench started, on the driver's clock relative
        to ``farm_start_s``, with global card ids (and ``node_id``)."""
        events = []
        for info, got in zip(self.nodes.infos, self.nodes.call("fault_events")):
            start = got["farm_start_s"] - info["offset_s"]
            global_of = {d: g for g, d in info["cards"].items()}
            for event in got["events"]:
                at = start + float(event["t_s"])
                if at < self.bench_t0 or event.get("card") not in global_of:
                    continue
                events.append(
                    {
                        **event,
                        "t_s": at - self.farm_start_s,
                        "card": global_of[event["card"]],
                        "node_id": info["node_id"],
                    }
                )
        return sorted(events, key=lambda e: e["t_s"])

    def _status(self) -> dict[str, Any]:
        """A farm status for the cluster: every worker card, numbered globally."""
        statuses = self.nodes.call("status")
        cards = []
        for info, status in zip(self.nodes.infos, statuses):
            by_id = {c["device_id"]: c for c in status.get("cards", ())}
            for g, d in sorted(info["cards"].items()):
                cards.append({**by_id.get(d, {}), "device_id": g, "node_id": info["node_id"]})
        first = statuses[0] if statuses else {}
        return {
            "name": f"ray:{self.address}",
            "endpoint": self.address,
            "time_scale": first.get("time_scale"),
            "cards": cards,
        }

    def _result(self) -> dict[str, Any]:
        config = self.config
        status, events, runs = self._status(), self._fault_events(), self._runs()
        result = self._build_result(status, events, runs, "ray")
        percentiles = config.percentiles
        for phase, (plan_phase, samples, window, _) in zip(result["phases"], runs):
            hists = self.hists.get(plan_phase["index"], {})
            apply_histograms(phase, hists, percentiles)
            phase["per_node"] = per_node(
                samples,
                window,
                hists,
                self.nodes.infos,
                percentiles=percentiles,
                slo_ms=config.slo_ms,
            )
        result["cluster"] = cluster_section(self.address, self.nodes.infos, self.workers)
        self._write(result, runs)
        return result
