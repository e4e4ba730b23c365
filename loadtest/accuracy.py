"""The bench's accuracy figure: observed latency set against the modelled duration.

A card models an execution of a model with a ``[latency]`` table as ``(fixed + per_batch ×
batch + per_mib × input MiB) / speed_factor × time_scale`` (:func:`device.models.
modelled_duration_s`). When that is one fixed number for a card — latency modelled (> 0), no
jitter in the model nor in the card's profile — ``npufarm bench`` reports, per phase and per
card, the observed p50 and p99 of the requests' own latency (``end_s − start_s``: the input
copy, execute, sync, the output copy; from the actual send, not the intended one, so an open
loop's send lag, the generator's, is not charged to the farm) divided by it, and whether they
are within :data:`TARGETS` (p50 within ±5 %, p99 within ±10 %). Otherwise the figure is None and
``accuracy.reason`` says why (no latency table, jitter, time scale 0, a card's model unknown).

The card's model comes from its heartbeat stats (``stats.timing``: speed factor, jitter, time
scale, and the completion lead the card uses, device/timing.py), read from the farm's STATUS at
the end of the run; the model's latency table from the model file the bench drove. A phase
figure needs one modelled duration for all the cards it drove; the per-card figures do not.
Reading the model file aside, everything here is pure.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from device.model_spec import ModelFormatError, ModelSpec
from device.models import load_model_file, modelled_duration_s
from loadtest.schema import as_samples

__all__ = ["TARGETS", "modelled_ms_by_card", "figure", "annotate"]

logger = logging.getLogger(__name__)

TARGETS = {"p50": 0.05, "p99": 0.10}
"""Largest relative deviation from the modelled duration that counts as accurate."""


def _card_ms(spec: ModelSpec, timing: Mapping[str, Any]) -> tuple[float | None, str | None]:
    """(modelled ms, None) or (None, why not) for one card's ``stats.timing``."""
    try:
        speed, jitter = float(timing["speed_factor"]), float(timing["jitter_sigma"])
        scale = float(timing["time_scale"])
    except (KeyError, TypeError, ValueError):
        return None, "the card does not report its latency model"
    if jitter > 0:
        return None, f"the card's latency is jittered (jitter_sigma {jitter:g})"
    if scale <= 0 or speed <= 0:
        return None, f"time scale {scale:g}: no modelled latency"
    duration_s = modelled_duration_s(spec.latency, spec, speed, scale, np.random.default_rng(0))
    return duration_s * 1e3, None


def modelled_ms_by_card(
    model: str | Path, status: Mapping[str, Any], cards: Sequence[int]
) -> tuple[dict[str, float], str | None]:
    """The fixed modelled duration (ms) of ``model`` on each driven card (keys: device ids as
    strings), or ``({}, why not)``. ``status``: the farm's STATUS reply."""
    try:
        spec = load_model_file(model)
    except ModelFormatError as exc:
        return {}, f"model unreadable: {exc}"
    latency = spec.latency
    if latency.jitter_sigma > 0:
        return {}, f"the model's latency is jittered (jitter_sigma {latency.jitter_sigma:g})"
    if not (latency.fixed_s or latency.per_batch_s or latency.per_mib_s):
        return {}, "the model has no modelled latency ([latency] table)"
    by_id = {c.get("device_id"): c for c in status.get("cards") or ()}
    out: dict[str, float] = {}
    for card in cards:
        timing = ((by_id.get(card) or {}).get("stats") or {}).get("timing") or {}
        ms, why = _card_ms(spec, timing)
        if ms is None:
            return {}, f"card {card}: {why}"
        out[str(card)] = ms
    return out, None


def _ratios(service_ms: np.ndarray, modelled_ms: float) -> dict[str, Any]:
    out: dict[str, Any] = {"modelled_ms": round(modelled_ms, 4), "requests": int(service_ms.size)}
    within = bool(service_ms.size)
    for key, target in TARGETS.items():
        value = float(np.percentile(service_ms, float(key[1:]))) if service_ms.size else None
        ratio = round(value / modelled_ms, 4) if value is not None else None
        out[f"{key}_ms"] = round(value, 4) if value is not None else None
        out[f"{key}_ratio"] = ratio
        within = within and ratio is not None and abs(ratio - 1.0) <= target
    out["within"] = within
    return out


def figure(
    samples: np.ndarray, window: tuple[float, float], modelled: Mapping[str, float]
) -> dict[str, Any] | None:
    """A phase's accuracy from its samples (warm-up included; those intended in ``window`` and
    completed count): the requests' own latency (``end_s - start_s``) at p50 and p99, and their
    ratio to the modelled duration, over all its cards when they share one (else those None)
    and ``per_card``; None without a modelled duration."""
    if not modelled:
        return None
    samples = as_samples(samples)
    t = samples["intended_s"]
    done = samples[(t >= window[0]) & (t < window[1]) & (samples["code"] == 0)]
    service_ms = (done["end_s"] - done["start_s"]) * 1000.0
    per_card = {
        str(card): _ratios(service_ms[done["card"] == card], modelled[str(card)])
        for card in np.unique(done["card"]).tolist()
        if str(card) in modelled
    }
    shared = set(modelled.values())
    if len(shared) == 1:
        return {**_ratios(service_ms, shared.pop()), "per_card": per_card}
    empty = dict.fromkeys(("modelled_ms", "p50_ms", "p50_ratio", "p99_ms", "p99_ratio", "within"))
    return {**empty, "requests": int(service_ms.size), "per_card": per_card}


def annotate(
    result: dict[str, Any],
    model: str | Path,
    status: Mapping[str, Any],
    cards: Sequence[int],
    runs: Sequence[tuple[Mapping[str, Any], np.ndarray, tuple[float, float], Any]],
) -> None:
    """Add ``accuracy`` to ``result`` (model, targets, modelled ms per card, why not, each
    card's completion lead in µs) and to each of its phases (:func:`figure`; ``runs``: per
    phase of ``result``, in order, ``(phase, samples, window, ...)`` as the bench has them)."""
    modelled, reason = modelled_ms_by_card(model, status, cards)
    by_id = {c.get("device_id"): c for c in status.get("cards") or ()}
    leads = {
        str(card): ((by_id.get(card) or {}).get("stats") or {}).get("timing", {}).get("lead_us")
        for card in cards
    }
    result["accuracy"] = {
        "model": Path(model).stem,
        "targets": dict(TARGETS),
        "modelled_ms": {card: round(ms, 4) for card, ms in modelled.items()},
        "reason": reason,
        "completion_lead_us": leads,
    }
    for phase, (_, samples, window, *_) in zip(result.get("phases", []), runs):
        phase["accuracy"] = figure(samples, window, modelled)
