"""What an ``npufarm bench`` run is, before anything runs: its :class:`BenchConfig`, the sweep
syntax of the CLI (:func:`parse_sweep`), the open-loop arrival schedules (:func:`arrival_offsets`)
and the plan (:func:`plan`): which (card, stream) slots exist and what each phase hands them.

Pure (no clock, no farm, no process): :mod:`loadtest.loadgen` runs the plan, and its docstring
says how slots are dealt to workers and how the open loop avoids coordinated omission.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from loadtest.schema import DEFAULT_PERCENTILES

__all__ = ["DEFAULT_MODEL", "BenchConfig", "parse_sweep", "arrival_offsets", "plan"]

DEFAULT_MODEL = str(Path(__file__).resolve().parents[1] / "configs" / "models" / "matmul.toml")


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark run: a sweep of closed-loop concurrencies or open-loop rates."""

    address: str | None = None  # None: NPUFARM_ADDRESS or the running default farm
    model: str = DEFAULT_MODEL
    cards: tuple[int, ...] | None = None  # None: every card of the farm
    streams_per_card: int | None = None  # None: closed ceil(max concurrency / cards), open 1
    workers: int | None = None  # processes; None: min(2, cards)
    mode: str = "closed"  # closed | open
    concurrency: tuple[int, ...] = (1,)
    rates: tuple[float, ...] = ()  # open loop, requests/s
    arrival: str = "constant"  # constant | poisson
    duration_s: float | None = 10.0  # per phase, after the warm-up
    requests: int | None = None  # per phase, after the warm-up
    warmup_s: float = 1.0
    slo_ms: float | None = None
    percentiles: tuple[float, ...] = DEFAULT_PERCENTILES
    seed: int = 0
    sync_timeout_ms: int = 10_000
    out_dir: str | None = None
    per_request: bool = False
    live: bool | None = None  # None: when stdout is a terminal
    ray: str | None = None  # a Ray cluster ("auto" or HOST:PORT): workers are Ray actors
    npus_per_worker: int = 1  # with ray: the NPU resources each actor asks for

    def __post_init__(self) -> None:
        if self.mode not in ("closed", "open") or self.arrival not in ("constant", "poisson"):
            raise ValueError(f"mode {self.mode!r} / arrival {self.arrival!r} unknown")
        values = self.concurrency if self.mode == "closed" else self.rates
        if not values or min(values) <= 0:
            raise ValueError(f"{self.mode} loop needs positive concurrency / rates, got {values}")
        if self.duration_s is None and self.requests is None:
            raise ValueError("bound each phase with duration_s or requests")
        if (self.duration_s or 1) <= 0 or (self.requests or 1) <= 0 or self.warmup_s < 0:
            raise ValueError("duration_s and requests must be > 0, warmup_s >= 0")
        if self.npus_per_worker < 1:
            raise ValueError(f"npus_per_worker must be >= 1, got {self.npus_per_worker}")
        if self.sync_timeout_ms <= 0 or (self.workers or 1) < 1 or (self.streams_per_card or 1) < 1:
            raise ValueError("sync_timeout_ms, workers and streams_per_card must be >= 1")


def parse_sweep(text: str, kind: type = float) -> tuple:
    """``"a:b:c"`` → a, a+c, a+2c, ... below b, then b itself: the stated bounds are both run
    (``1:16:4`` → 1, 5, 9, 13, 16); ``"a:b"`` steps by 1; ``"x,y,z"`` a list; ``"x"`` one."""
    text = text.strip()
    if ":" not in text:
        return tuple(kind(v) for v in text.split(",") if v.strip())
    parts = [float(p) for p in text.split(":")]
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] <= 0):
        raise ValueError(f"sweep {text!r}: expected start:stop[:step] with step > 0")
    start, stop, step = (*parts, 1.0) if len(parts) == 2 else parts
    if stop < start:
        raise ValueError(f"sweep {text!r}: stop {stop:g} is below start {start:g}")
    count = int(math.floor((stop - start) / step + 1e-9)) + 1
    values = [kind(start + i * step) for i in range(count)]
    if abs(float(values[-1]) - stop) > 1e-9 * max(1.0, abs(stop)):
        values.append(kind(stop))  # the step did not land on it: the bound is run too
    return tuple(dict.fromkeys(values))


def arrival_offsets(
    rate: float,
    arrival: str,
    *,
    warmup_s: float,
    duration_s: float | None,
    requests: int | None,
    seed: int = 0,
) -> np.ndarray:
    """Intended send times (s from the phase start, the first at 0 for constant arrivals): the
    warm-up ones, then ``requests`` or up to ``warmup_s + duration_s``, whichever ends first."""
    limit_s = warmup_s + duration_s if duration_s is not None else math.inf
    wanted = math.ceil(warmup_s * rate) + 1 + (requests if requests is not None else math.inf)
    if arrival == "constant":
        times = np.arange(min(wanted, limit_s * rate + 1)) / rate
    else:
        rng, chunks, last = np.random.default_rng(seed), [], 0.0
        while last < limit_s and sum(c.size for c in chunks) < wanted:
            chunks.append(last + np.cumsum(rng.exponential(1.0 / rate, 4096)))
            last = float(chunks[-1][-1])
        times = np.concatenate(chunks)
    times = times[times < limit_s]
    if requests is not None:
        times = times[: int((times < warmup_s).sum()) + requests]
    return times


def plan(config: BenchConfig, cards: list[int]) -> tuple[list[tuple[int, int]], list[dict]]:
    """(slots as (slot id, card), phases)."""
    n = len(cards)
    spc = config.streams_per_card or (
        math.ceil(max(config.concurrency) / n) if config.mode == "closed" else 1
    )
    slots = [(k, cards[k % n]) for k in range(n * spc)]
    if config.mode == "closed" and max(config.concurrency) > len(slots):
        raise ValueError(f"concurrency {max(config.concurrency)} > {n} cards × {spc} streams")
    phases = []
    for value in config.concurrency if config.mode == "closed" else config.rates:
        i = len(phases)
        if config.mode == "closed":
            phase = {
                "name": f"c{value}",
                "concurrency": value,
                "rate": None,
                "slots": dict.fromkeys(range(value)),
            }
        else:
            offsets = arrival_offsets(
                value,
                config.arrival,
                warmup_s=config.warmup_s,
                duration_s=config.duration_s,
                requests=config.requests,
                seed=config.seed + i,
            )
            sids = [sid for sid, _ in slots]
            phase = {
                "name": f"r{value:g}",
                "concurrency": None,
                "rate": value,
                "slots": {sid: offsets[j :: len(sids)] for j, sid in enumerate(sids)},
                "last_s": float(offsets[-1]) if offsets.size else 0.0,
            }
        phases.append({"index": i, "mode": config.mode, **phase})
    return slots, phases
