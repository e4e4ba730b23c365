"""The messages between ``npufarm bench``'s parent (:mod:`loadtest.loadgen`) and its worker
processes (:mod:`loadtest.workers`), one frozen dataclass per kind.

They cross a ``multiprocessing`` queue, which pickles them by class reference: both sides import
this module, so a kind is a class the reader can ``match`` on, with named fields, instead of a
string tag and positional tuple members that each side had to agree on by hand.

Worker → parent (``results`` queue, shared by every worker)::

    Ready(index, startup_s)         every slot of the worker opened its device and model
    Samples(index, rows)            a numpy batch of SAMPLE_DTYPE rows, every FLUSH_S
    PhaseDone(index, phase, stats)  the worker's slots finished phase ``phase``
    WorkerError(index, message)     the worker failed (setup or a slot); it will stop
    Bye(index)                      last message of a worker, whatever happened

Parent → worker (one ``commands`` queue per worker): :class:`Phase` (this worker's share of a
phase), then :data:`STOP`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "Ready",
    "Samples",
    "PhaseDone",
    "WorkerError",
    "Bye",
    "WorkerMessage",
    "Phase",
    "Stop",
    "STOP",
    "Command",
]


@dataclass(frozen=True)
class Ready:
    """Worker ``index`` is ready; its setup took ``startup_s``."""

    index: int
    startup_s: float


@dataclass(frozen=True)
class Samples:
    """A batch of request samples (``loadtest.schema.SAMPLE_DTYPE`` rows) from worker ``index``."""

    index: int
    rows: np.ndarray


@dataclass(frozen=True)
class PhaseDone:
    """Worker ``index`` finished phase ``phase``; ``stats``: ``cpu_s``, ``wall_s``, ``missed``
    (open-loop sends never made) and ``active`` (its slots in the phase)."""

    index: int
    phase: int
    stats: dict[str, Any]


@dataclass(frozen=True)
class WorkerError:
    """Worker ``index`` failed with ``message``."""

    index: int
    message: str


@dataclass(frozen=True)
class Bye:
    """Worker ``index`` is exiting (always its last message)."""

    index: int


WorkerMessage = Ready | Samples | PhaseDone | WorkerError | Bye


@dataclass(frozen=True)
class Phase:
    """One phase for one worker: times on the host's ``time.monotonic()`` clock (start ``t0``,
    warm-up end, end); ``budget``: closed loop draws one token per measured request from the
    shared counter; ``slots``: this worker's slot ids, each with its open-loop send offsets
    from ``t0`` (None: closed loop)."""

    index: int
    t0: float
    warm_end: float
    end: float
    budget: bool
    slots: dict[int, np.ndarray | None]


@dataclass(frozen=True)
class Stop:
    """No more phases: the worker releases its devices and says :class:`Bye`."""


STOP = Stop()
Command = Phase | Stop
