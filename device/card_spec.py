"""What a card process is started with: :class:`CardSpec`, msgpack/JSON friendly.

The supervisor (farm/supervisor.py) builds one per card epoch and hands it across the process
start as a dict; :mod:`device.card` re-exports it for its callers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

__all__ = ["CardSpec", "affinity_cpus"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CardSpec:
    """Everything a card process needs; msgpack/JSON friendly so it crosses process starts."""

    farm_id: str
    device_id: int
    epoch: int
    backend: str
    hbm_bytes: int
    soc_name: str
    speed_factor: float
    jitter_sigma: float
    exec_slots: int
    time_scale: float
    heartbeat_interval_s: float
    heartbeat_liveness: int
    seed: int
    min_completion_delay_s: float = 0.0
    op_timeout_s: float = 1091.0  # device watchdog: a hung task fails after this long
    farm_start_s: float = 0.0  # time.monotonic() of the farm's start (fault plan times)
    faults: dict[str, Any] | None = None  # this card's part of the fault plan
    intra_op_threads: int = 1  # onnxruntime intra-op threads per ONNX model (profile)
    cpu_affinity: list[int] | str | None = None  # CPUs to pin the card to, "auto", None: any
    timer_spin_s: float = 0.0  # most a card spins before a due completion (device/pacing.py)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CardSpec:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def affinity_cpus(
    setting: list[int] | str | None, device_id: int, threads: int, allowed: set[int]
) -> set[int] | None:
    """The CPUs a card is pinned to, or None (no pinning). ``"auto"`` gives card ``d`` the
    ``threads`` allowed CPUs starting at position ``d × threads`` (round-robin, wrapping), so
    cards with one thread spread one per CPU; a list is taken as is (the profile checked it)."""
    if not setting:
        return None
    if setting != "auto":
        return set(setting)
    cpus = sorted(allowed)
    count = min(threads, len(cpus))
    return {cpus[(device_id * count + k) % len(cpus)] for k in range(count)}
